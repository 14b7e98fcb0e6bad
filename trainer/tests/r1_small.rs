//! A shortened R1 pipeline (a few minutes on 2 CPU cores): a base model that mixes
//! languages (its corpus writes half the steps' words in Chinese), cold-start SFT, reasoning
//! RL with the language-consistency reward, rejection sampling, SFT of the base on the kept
//! samples plus non-reasoning data, and RL over both task families with rewards routed by
//! task. Asserts that language consistency rises far above sampling noise, that the
//! non-reasoning task is learned, and that routing shows in the metrics.

use serde_json::Value;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use trainer::eval::EvalReport;
use trainer::pipeline::{self, Pipeline};

const RECIPE: &str = r#"
[run]
name = "r1"
seed = 2

[[eval_rewards]]
kind = "accuracy"
[[eval_rewards]]
kind = "format"
[[eval_rewards]]
kind = "language_consistency"
detect_latin_language = false
tasks = ["increment"]

[[stages]]
name = "data"
kind = "tasks"
task = "increment"
digits = 3
train_size = 1000
heldout_size = 100
sft_size = 300

[[stages]]
name = "data-compare"
kind = "tasks"
task = "compare"
digits = 3
train_size = 500
heldout_size = 50
sft_size = 150
dir = "{run}/data/compare"

[[stages]]
name = "base"
kind = "pretrain"
task = "increment"
digits = 3
corpus_size = 4000
slip_rate = 0.3
format_rate = 0.5
template_rate = 0.0
mix_rate = 0.5
direct_task = "compare"
direct_rate = 0.25
[stages.model]
hidden = 96
layers = 3
heads = 4
kv_heads = 2
intermediate = 256
vocab = 512
[stages.train]
steps = 1000
batch_size = 32
lr = 3e-3
warmup_steps = 20
log_every = 50

[[stages]]
name = "eval-base"
kind = "eval"
data = ["{run}/data/heldout.jsonl", "{run}/data/compare/heldout.jsonl"]
template = "User: {prompt}. Assistant:"
samples = 2
[stages.sampling]
max_new_tokens = 48

[[stages]]
name = "cold-start"
kind = "sft"
model = "{stages.base.model}"
data = "{run}/data/sft.jsonl"
template = "User: {prompt}. Assistant:"
epochs = 2
[stages.train]
batch_size = 16
lr = 1e-3
warmup_steps = 2
log_every = 2

[[stages]]
name = "reasoning-rl"
kind = "grpo"
[stages.data]
train = "{run}/data/train.jsonl"
template = "User: {prompt}. Assistant:"
[stages.rollout]
group_size = 8
prompts_per_step = 8
max_new_tokens = 48
[[stages.rewards]]
kind = "accuracy"
[[stages.rewards]]
kind = "format"
[[stages.rewards]]
kind = "language_consistency"
detect_latin_language = false
[stages.optim]
lr = 1e-4
[stages.train]
steps = 30
save_every = 0
log_samples_every = 0

[[stages]]
name = "eval-reasoning-rl"
kind = "eval"
data = ["{run}/data/heldout.jsonl", "{run}/data/compare/heldout.jsonl"]
template = "User: {prompt}. Assistant:"
samples = 2
[stages.sampling]
max_new_tokens = 48

[[stages]]
name = "rejection-sampling"
kind = "rejection_sample"
data = "{run}/data/train.jsonl"
template = "User: {prompt}. Assistant:"
limit = 200
samples = 4
[stages.sampling]
max_new_tokens = 48
[[stages.rewards]]
kind = "accuracy"
[[stages.rewards]]
kind = "format"
[[stages.rewards]]
kind = "language_consistency"
detect_latin_language = false
[stages.filters]
min_scores = { accuracy = 1.0, format = 1.0, language_consistency = 1.0 }
max_per_prompt = 1

[[stages]]
name = "sft"
kind = "sft"
model = "{stages.base.model}"
data = ["{stages.rejection-sampling.data}", "{run}/data/compare/sft.jsonl"]
template = "User: {prompt}. Assistant:"
epochs = 2
[stages.train]
batch_size = 16
lr = 1e-3
warmup_steps = 2
log_every = 2

[[stages]]
name = "rl-all"
kind = "grpo"
[stages.data]
train = ["{run}/data/train.jsonl", "{run}/data/compare/train.jsonl"]
template = "User: {prompt}. Assistant:"
[stages.rollout]
group_size = 8
prompts_per_step = 8
max_new_tokens = 48
[[stages.rewards]]
kind = "accuracy"
[[stages.rewards]]
kind = "format"
[[stages.rewards]]
kind = "language_consistency"
detect_latin_language = false
tasks = ["increment"]
[stages.optim]
lr = 1e-4
[stages.train]
steps = 10
save_every = 0
log_samples_every = 0

[[stages]]
name = "eval-final"
kind = "eval"
data = ["{run}/data/heldout.jsonl", "{run}/data/compare/heldout.jsonl"]
template = "User: {prompt}. Assistant:"
samples = 2
[stages.sampling]
max_new_tokens = 48
"#;

fn report(run: &std::path::Path, name: &str) -> EvalReport {
    serde_json::from_str(&std::fs::read_to_string(run.join("eval").join(format!("{name}.json"))).unwrap()).unwrap()
}

#[test]
fn the_r1_pipeline_makes_reasoning_monolingual_and_learns_the_direct_task() {
    let tmp = tempfile::tempdir().unwrap();
    let mut table: toml::Table = RECIPE.parse().unwrap();
    trainer::config::apply_sets(&mut table, &[format!("run.output_dir=\"{}\"", tmp.path().display())]).unwrap();
    let p: Pipeline = trainer::config::from_table(table.clone(), "test recipe").unwrap();
    pipeline::run(p, &table, false, true, Arc::new(AtomicBool::new(false))).unwrap();
    let run = tmp.path().join("r1");
    let lang = |r: &EvalReport| r.tasks["increment"].language_consistency_rate.unwrap();
    let (base, rl, fin) = (report(&run, "eval-base"), report(&run, "eval-reasoning-rl"), report(&run, "eval-final"));
    let n = base.tasks["increment"].samples as f64;
    assert_eq!(n, 200.0);
    assert_eq!(base.tasks["compare"].samples, 100);
    // Half the base model's steps are in Chinese: few of its completions are entirely English.
    // Sampling noise of a rate over n samples is at most 0.5 / sqrt(n) ~ 0.035.
    let noise = 0.5 / n.sqrt();
    for (name, r) in [("reasoning RL", &rl), ("final", &fin)] {
        assert!(
            lang(r) - lang(&base) > (6.0 * noise).max(0.3),
            "{name}: language consistency {:.3} -> {:.3}: not a clear rise",
            lang(&base),
            lang(r)
        );
    }
    // The base answers the direct task in plain text; the second SFT teaches it R1's format
    // with an empty <think> (answering it well takes the full recipe's larger model and data).
    let cfmt = |r: &EvalReport| r.tasks["compare"].format_rate.unwrap();
    assert!(cfmt(&fin) > 0.8 && cfmt(&fin) - cfmt(&base) > 0.5, "compare format {:.3} -> {:.3}", cfmt(&base), cfmt(&fin));
    let len = |r: &EvalReport, t: &str| r.tasks[t].mean_completion_tokens;
    assert!(
        len(&fin, "compare") < 0.5 * len(&fin, "increment"),
        "compare is answered without reasoning: {:.1} vs {:.1} tokens",
        len(&fin, "compare"),
        len(&fin, "increment")
    );
    // Language consistency is not measured on the direct task (routed to `increment` only).
    assert!(fin.tasks["compare"].language_consistency_rate.is_none());

    // Rejection sampling kept only correct, well-formatted, entirely English samples.
    let kept: Vec<Value> = std::fs::read_to_string(run.join("stages/rejection-sampling/data.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(kept.len() >= 10, "only {} samples kept", kept.len());
    for k in &kept {
        for r in ["accuracy", "format", "language_consistency"] {
            assert_eq!(k["rewards"][r], 1.0, "{k}");
        }
        assert!(!k["completion"].as_str().unwrap().contains('位'), "{k}");
    }

    // Routing in the all-scenario RL: the language reward scored exactly the increment
    // samples of each step, and both tasks were in the batches.
    let rows: Vec<Value> = std::fs::read_to_string(run.join("stages/rl-all/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut compare_seen = 0.0;
    for r in rows.iter().filter(|r| r.get("reward").is_some()) {
        let inc = r["tasks/increment/count"].as_f64().unwrap_or(0.0);
        compare_seen += r["tasks/compare/count"].as_f64().unwrap_or(0.0);
        assert_eq!(r["rewards/language_consistency/count"].as_f64().unwrap(), inc, "{r}");
        assert_eq!(r["rewards/accuracy/count"].as_f64().unwrap(), 64.0);
    }
    assert!(compare_seen > 0.0, "no compare prompt in 10 steps");
    let state = std::fs::read_to_string(run.join("pipeline.json")).unwrap();
    assert!(state.contains("rejection-sampling/data.jsonl"));
}
