//! The rejection-sampling stage on a tiny random model: the kept samples are exactly those
//! that pass the filters, checked against scores and filters recomputed here from the raw
//! completions; the per-prompt cap and deduplication hold; and a stage killed between shards
//! resumes to byte-identical output files.

use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use trainer::pipeline::{self, Pipeline};
use trainer::tiny::{self, TinyShape};

fn recipe(out: &Path, model: &Path, prompts: &Path) -> String {
    format!(
        r#"
[run]
name = "rs"
seed = 5
output_dir = "{out}"

[[stages]]
name = "sample"
kind = "rejection_sample"
model = "{model}"
data = "{prompts}"
samples = 8
shard_size = 4
[stages.sampling]
temperature = 1.0
top_k = 3
max_new_tokens = 6
stop = ["s"]
# This random model writes runs of ':', 's', 'plu' and broken bytes: the share of ':' is
# the score, and the stop string gives completions of every length.
[[stages.rewards]]
kind = "char_fraction"
name = "colons"
chars = ":"
[stages.filters]
min_scores = {{ colons = 0.5 }}
min_tokens = 2
drop_truncated = true
dedup = true
max_per_prompt = 2
"#,
        out = out.display(),
        model = model.display(),
        prompts = prompts.display(),
    )
}

fn run(table: &toml::Table, resume: bool) {
    let p: Pipeline = trainer::config::from_table(table.clone(), "test").unwrap();
    pipeline::run(p, table, resume, true, Arc::new(AtomicBool::new(false))).unwrap();
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn rejection_sampling_keeps_exactly_what_passes_and_resumes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let shape = TinyShape { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64, vocab: 320 };
    tiny::create_random_model(&model, shape, &tiny::default_corpus(1, 200), 3).unwrap();
    let prompts = tmp.path().join("prompts.jsonl");
    let body: String = (0..10)
        .map(|i| format!("{{\"prompt\": \"What is {i} + {}?\", \"answer\": \"{}\", \"task\": \"addition\"}}\n", i * 7, i * 8))
        .collect();
    std::fs::write(&prompts, body).unwrap();

    let a = tmp.path().join("a");
    let table: toml::Table = recipe(&a, &model, &prompts).parse().unwrap();
    run(&table, false);
    let stage = a.join("rs/stages/sample");
    let shards: Vec<_> = (0..3).map(|i| stage.join(format!("shards/shard-{i:05}.jsonl"))).collect();
    let records: Vec<Value> = shards.iter().flat_map(|s| lines(s)).collect();
    assert_eq!(records.len(), 10 * 8, "every sample of every prompt is recorded");

    // Recompute every verdict here, independently of the stage's code.
    let mut expected_kept = vec![];
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for prompt in 0..10 {
        let mut seen = HashSet::new();
        let mut kept = 0;
        for r in records.iter().filter(|r| r["prompt_index"] == prompt) {
            let text = r["completion"].as_str().unwrap();
            let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
            let score = if chars.is_empty() { 0.0 } else { chars.iter().filter(|&&c| c == ':').count() as f64 / chars.len() as f64 };
            assert!((r["rewards"]["colons"].as_f64().unwrap() - score).abs() < 1e-12, "score of {text:?}");
            let tokens = r["completion_tokens"].as_u64().unwrap();
            let norm = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let reason = if r["finish_reason"] == "length" {
                Some("truncated")
            } else if tokens < 2 {
                Some("length")
            } else if score < 0.5 {
                Some("min_scores")
            } else if !seen.insert(norm) {
                Some("duplicate")
            } else if kept >= 2 {
                Some("per_prompt")
            } else {
                kept += 1;
                None
            };
            assert_eq!(r["rejected_by"].as_str(), reason, "verdict of {r}");
            match reason {
                Some(x) => *reasons.entry(x).or_default() += 1,
                None => expected_kept.push((r["prompt_index"].clone(), r["sample_index"].clone(), text.to_string())),
            }
        }
    }
    // The data exercises every filter, so the checks above are not vacuous.
    for f in ["truncated", "length", "min_scores", "duplicate", "per_prompt"] {
        assert!(reasons.get(f).copied().unwrap_or(0) > 0, "no sample was rejected by {f}: {reasons:?}");
    }
    assert!(!expected_kept.is_empty());

    // data.jsonl holds exactly the kept samples, in order, with scores and provenance.
    let data = lines(&stage.join("data.jsonl"));
    let got: Vec<_> = data
        .iter()
        .map(|d| (d["source"]["prompt_index"].clone(), d["source"]["sample_index"].clone(), d["completion"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, expected_kept);
    for d in &data {
        assert!(d["prompt"].as_str().unwrap().starts_with("What is"));
        assert_eq!(d["task"], "addition");
        assert!(d["rewards"]["colons"].as_f64().unwrap() >= 0.5);
        assert_eq!(d["source"]["stage"], "sample");
    }
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(stage.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["kept"].as_u64().unwrap() as usize, data.len());
    assert_eq!(summary["samples"], 80);
    for (f, n) in &reasons {
        assert_eq!(summary["rejected_by"][f].as_u64().unwrap() as usize, *n, "{f}");
    }
    let state = std::fs::read_to_string(a.join("rs/pipeline.json")).unwrap();
    assert!(state.contains("data.jsonl"), "the stage's dataset is recorded for {{stages.sample.data}}");

    // A second run killed after its first shard (shards are written whole, then renamed;
    // a half-written temporary file is left behind) resumes to the same files.
    let b = tmp.path().join("b");
    let table_b: toml::Table = recipe(&b, &model, &prompts).parse().unwrap();
    run(&table_b, false);
    let stage_b = b.join("rs/stages/sample");
    for f in ["data.jsonl", "summary.json", "shards/shard-00001.jsonl", "shards/shard-00002.jsonl"] {
        std::fs::remove_file(stage_b.join(f)).unwrap();
    }
    std::fs::remove_file(b.join("rs/pipeline.json")).unwrap();
    std::fs::write(stage_b.join("shards/shard-00001.tmp"), "{\"half\": ").unwrap();
    let first_shard = std::fs::metadata(stage_b.join("shards/shard-00000.jsonl")).unwrap().modified().unwrap();
    run(&table_b, true);
    assert_eq!(
        std::fs::metadata(stage_b.join("shards/shard-00000.jsonl")).unwrap().modified().unwrap(),
        first_shard,
        "the finished shard was not sampled again"
    );
    for f in ["shards/shard-00000.jsonl", "shards/shard-00001.jsonl", "shards/shard-00002.jsonl", "data.jsonl"] {
        assert_eq!(std::fs::read(stage.join(f)).unwrap(), std::fs::read(stage_b.join(f)).unwrap(), "{f} differs after resume");
    }
    let sa: Value = serde_json::from_str(&std::fs::read_to_string(stage.join("summary.json")).unwrap()).unwrap();
    let mut sb: Value = serde_json::from_str(&std::fs::read_to_string(stage_b.join("summary.json")).unwrap()).unwrap();
    sb["model"] = sa["model"].clone();
    assert_eq!(sa, sb);
}
