//! Pipeline mechanics on a tiny model: an `sft` stage learns its completions (loss falls,
//! loss only on completion tokens), its model folder stands alone, and a resumed pipeline
//! skips finished stages.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use trainer::pipeline::{self, Pipeline};

#[test]
fn sft_stage_learns_and_resume_skips_finished_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let sft = tmp.path().join("sft.jsonl");
    let lines: String = (0..64).map(|i| format!("{{\"prompt\": \"echo {i}\", \"completion\": \" <answer> {i} </answer>\"}}\n")).collect();
    std::fs::write(&sft, lines).unwrap();
    let recipe = format!(
        r#"
[run]
name = "p"
output_dir = "{out}"
[[stages]]
name = "base"
kind = "pretrain"
task = "increment"
digits = 2
corpus_size = 200
template_rate = 0.0
[stages.model]
hidden = 32
layers = 1
heads = 2
kv_heads = 1
intermediate = 64
vocab = 300
[stages.train]
steps = 5
batch_size = 8
[[stages]]
name = "sft"
kind = "sft"
data = "{sft}"
template = "{{prompt}} ->"
[stages.train]
steps = 60
batch_size = 16
lr = 3e-3
warmup_steps = 5
log_every = 5
"#,
        out = tmp.path().display(),
        sft = sft.display()
    );
    let table: toml::Table = recipe.parse().unwrap();
    let p: Pipeline = trainer::config::from_table(table.clone(), "test").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    pipeline::run(p.clone(), &table, false, true, stop.clone()).unwrap();
    let run = tmp.path().join("p");
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("stages/sft/metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = rows.first().unwrap()["loss"].as_f64().unwrap();
    let last = rows.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < 0.5 * first, "SFT loss did not fall: {first} -> {last}");
    // Loss tokens are completion tokens only: ~6-8 per example, far fewer than the sequence.
    let ntok = rows.last().unwrap()["num_tokens"].as_f64().unwrap();
    assert!(ntok <= 16.0 * 10.0, "loss counted prompt tokens too: {ntok} tokens in a batch of 16");
    let model = run.join("stages/sft/model");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(model.join(f).exists(), "{f} missing from the SFT model folder");
    }
    rollout::folder::Policy::load(&model, tch::Kind::Float, tch::Device::Cpu).unwrap();
    // A second start refuses; a resume skips both finished stages and changes nothing.
    assert!(pipeline::run(p.clone(), &table, false, true, stop.clone()).is_err());
    let before = std::fs::read(model.join("model.safetensors")).unwrap();
    let state_before = std::fs::read_to_string(run.join("pipeline.json")).unwrap();
    pipeline::run(p, &table, true, true, stop).unwrap();
    assert_eq!(std::fs::read(model.join("model.safetensors")).unwrap(), before);
    assert_eq!(std::fs::read_to_string(run.join("pipeline.json")).unwrap(), state_before);
}

/// Pretrain/SFT steps resume mid-stage: stopped at step 7 (Ctrl-C) with a checkpoint, then
/// resumed, the weights end bit-identical to an uninterrupted run of the same 12 steps (on
/// CPU), and an interruption leaves the previous checkpoint whole.
#[test]
fn lm_training_resumes_mid_stage_bit_identically() {
    use trainer::lm::{self, LmCfg, LmExample};
    use trainer::metrics::{Row, Sink};
    use trainer::tiny::{self, TinyShape};
    struct StopAt(u64, Arc<AtomicBool>);
    impl Sink for StopAt {
        fn log(&mut self, step: u64, _: &Row) -> anyhow::Result<()> {
            if step == self.0 {
                self.1.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let shape = TinyShape { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64, vocab: 320 };
    let model = tmp.path().join("m");
    tiny::create_random_model(&model, shape, &tiny::default_corpus(1, 200), 3).unwrap();
    let examples: Vec<LmExample> =
        (0..40).map(|i| LmExample { ids: (0..(5 + i % 23)).map(|j| ((i * 7 + j * 13) % 300) as i64).collect(), loss_from: 0 }).collect();
    let cfg = LmCfg { steps: 12, batch_size: 6, log_every: 1, save_every: 5, warmup_steps: 2, ..Default::default() };
    let load = || rollout::folder::Policy::load(&model, tch::Kind::Float, tch::Device::Cpu).unwrap();

    let straight = load();
    let never = AtomicBool::new(false);
    let out = lm::train(&straight, &examples, &cfg, 9, &mut [], true, None, &never).unwrap();
    assert_eq!(out, lm::LmOutcome { steps_done: 12, interrupted: false });

    let ckpt = tmp.path().join("ckpt");
    let stop = Arc::new(AtomicBool::new(false));
    let first = load();
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(StopAt(7, stop.clone()))];
    let out = lm::train(&first, &examples, &cfg, 9, &mut sinks, true, Some(&ckpt), &stop).unwrap();
    assert_eq!(out, lm::LmOutcome { steps_done: 7, interrupted: true });
    assert_eq!(lm::checkpoint_step(&ckpt), Some(7));
    assert!(!ckpt.with_extension("tmp").exists() && !ckpt.with_extension("old").exists());

    struct Steps(Arc<std::sync::Mutex<Vec<u64>>>);
    impl Sink for Steps {
        fn log(&mut self, step: u64, _: &Row) -> anyhow::Result<()> {
            self.0.lock().unwrap().push(step);
            Ok(())
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let resumed = load(); // a fresh process: random init, then the checkpoint
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(Steps(seen.clone()))];
    let out = lm::train(&resumed, &examples, &cfg, 9, &mut sinks, true, Some(&ckpt), &never).unwrap();
    assert_eq!(*seen.lock().unwrap(), [8, 9, 10, 11, 12], "only the remaining steps ran");
    assert_eq!(out, lm::LmOutcome { steps_done: 12, interrupted: false });
    let (a, b) = (straight.named_tensors(), resumed.named_tensors());
    for (k, t) in &a {
        assert!(t.equal(&b[k]), "{k} differs after resume");
    }
    assert!(
        !a["model.layers.0.mlp.up_proj.weight"].equal(&load().named_tensors()["model.layers.0.mlp.up_proj.weight"]),
        "training moved the weights"
    );
    // A real out-of-memory error at step 9 (after the step-5 checkpoint) saves step 8, the
    // last completed step, and says so; resuming from it ends where the straight run did.
    let ckpt = tmp.path().join("ckpt-oom");
    let failing = LmCfg { fail_alloc_at_step: Some(9), ..cfg.clone() };
    let e = format!("{:#}", lm::train(&load(), &examples, &failing, 9, &mut [], true, Some(&ckpt), &never).unwrap_err());
    assert!(e.contains("step 9 failed") && e.contains("step-8") && e.contains("Out of memory") && e.contains("batch_size"), "{e}");
    assert_eq!(lm::checkpoint_step(&ckpt), Some(8));
    let again = load();
    lm::train(&again, &examples, &cfg, 9, &mut [], true, Some(&ckpt), &never).unwrap();
    for (k, t) in &a {
        assert!(t.equal(&again.named_tensors()[k]), "{k} differs after resuming from the out-of-memory checkpoint");
    }
}

/// SFT rows come from any dataset with their own column names: the same rows as
/// `question` / `solution` with `[stages.fields]` and
/// `completion_field`, and as `prompt` / `completion`, give the same token sequences; a row
/// without its completion is reported with its line.
#[test]
fn sft_rows_map_fields_like_every_dataset() {
    use trainer::config::FieldsCfg;
    use trainer::tiny::{self, TinyShape};
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    let shape = TinyShape { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64, vocab: 320 };
    tiny::create_random_model(&model, shape, &tiny::default_corpus(2, 200), 3).unwrap();
    let tk = rollout::tokenizer::Tokenizer::from_dir(&model).unwrap();
    let plain = tmp.path().join("plain.jsonl");
    let named = tmp.path().join("named.jsonl");
    let rows = [("What is 2 + 3?", "<think> 2 + 3 = 5 </think> <answer> 5 </answer>"), ("Which is larger, 4 or 7?", "7")];
    let line = |k1: &str, k2: &str, (p, c): &(&str, &str)| serde_json::json!({ k1: p, k2: c, "task": "x" }).to_string();
    std::fs::write(&plain, rows.iter().map(|r| line("prompt", "completion", r) + "\n").collect::<String>()).unwrap();
    std::fs::write(&named, rows.iter().map(|r| line("question", "solution", r) + "\n").collect::<String>()).unwrap();
    let tmpl = "User: {prompt} Assistant:";
    let want = trainer::stages::sft::sft_examples(&plain, tmpl, &FieldsCfg::default(), "completion", &tk, Some(1)).unwrap();
    let fields = FieldsCfg { prompt_field: "question".into(), ..Default::default() };
    let got = trainer::stages::sft::sft_examples(&named, tmpl, &fields, "solution", &tk, Some(1)).unwrap();
    assert_eq!(
        got.iter().map(|e| (&e.ids, e.loss_from)).collect::<Vec<_>>(),
        want.iter().map(|e| (&e.ids, e.loss_from)).collect::<Vec<_>>()
    );
    // Hand check of the first: the prompt's tokens, then the completion's and EOS, loss from there.
    let p = tk.encode(&tmpl.replace("{prompt}", rows[0].0), true).unwrap();
    assert_eq!(want[0].loss_from, p.len());
    assert_eq!(want[0].ids[..p.len()], p[..]);
    assert_eq!(*want[0].ids.last().unwrap(), 1);
    // The completion under the answer field's name works too; a missing one is named.
    let as_answer = FieldsCfg { prompt_field: "question".into(), answer_field: "solution".into(), ..Default::default() };
    let again = trainer::stages::sft::sft_examples(&named, tmpl, &as_answer, "solution", &tk, Some(1)).unwrap();
    assert_eq!(again.len(), 2);
    let e = format!("{:#}", trainer::stages::sft::sft_examples(&named, tmpl, &fields, "completion", &tk, Some(1)).unwrap_err());
    assert!(e.contains("named.jsonl:1: needs a string completion field `completion`") && e.contains("2 row(s)"), "{e}");
}
