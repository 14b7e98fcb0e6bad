//! A shortened tiny R1-Zero pipeline (a couple of minutes on 2 CPU cores): build a base model
//! from nothing, evaluate it on a fixed held-out split, run GRPO with accuracy + format
//! rewards, evaluate again. Accuracy must rise by far more than sampling noise. To fit the
//! time, the task is `increment` and the prompt is the short end of the R1-Zero template
//! ("User: {prompt}. Assistant:"); the full recipe uses the whole template.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use trainer::eval::EvalReport;
use trainer::pipeline::{self, Pipeline};

const RECIPE: &str = r#"
[run]
name = "small"
seed = 1

# Every GRPO stage becomes a W&B run grouped under the pipeline (offline: nothing is sent).
[wandb]
project = "tiny"
mode = "offline"

[[stages]]
name = "data"
kind = "tasks"
task = "increment"
digits = 3
train_size = 2000
heldout_size = 150

[[stages]]
name = "base"
kind = "pretrain"
task = "increment"
digits = 3
corpus_size = 4000
slip_rate = 0.3
format_rate = 0.3
template_rate = 0.0
[stages.model]
hidden = 96
layers = 3
heads = 4
kv_heads = 2
intermediate = 256
vocab = 512
[stages.train]
steps = 500
batch_size = 32
lr = 3e-3
warmup_steps = 20
log_every = 50

[[stages]]
name = "eval-base"
kind = "eval"
data = "{run}/data/heldout.jsonl"
template = "User: {prompt}. Assistant:"
samples = 2
[stages.sampling]
temperature = 1.0
max_new_tokens = 48

[[stages]]
name = "grpo"
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
[stages.grpo]
beta = 0.001
[stages.optim]
lr = 1e-4
[stages.train]
steps = 40
save_every = 0
log_samples_every = 0

[[stages]]
name = "eval-final"
kind = "eval"
data = "{run}/data/heldout.jsonl"
template = "User: {prompt}. Assistant:"
samples = 2
[stages.sampling]
temperature = 1.0
max_new_tokens = 48
"#;

fn report(run: &std::path::Path, name: &str) -> EvalReport {
    serde_json::from_str(&std::fs::read_to_string(run.join("eval").join(format!("{name}.json"))).unwrap()).unwrap()
}

#[test]
fn grpo_raises_heldout_accuracy_of_a_tiny_base_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mut table: toml::Table = RECIPE.parse().unwrap();
    trainer::config::apply_sets(&mut table, &[format!("run.output_dir=\"{}\"", tmp.path().display())]).unwrap();
    let p: Pipeline = trainer::config::from_table(table.clone(), "test recipe").unwrap();
    pipeline::run(p, &table, false, true, Arc::new(AtomicBool::new(false))).unwrap();
    let run = tmp.path().join("small");
    let (base, fin) = (report(&run, "eval-base"), report(&run, "eval-final"));
    let n = (base.num_prompts * base.samples_per_prompt) as f64;
    assert_eq!(base.num_prompts, 150);
    // Sampling noise of an accuracy estimate over n samples is at most 0.5 / sqrt(n) ~ 0.03;
    // require a rise of at least 0.15 (5 sigma).
    let noise = 0.5 / n.sqrt();
    assert!(
        fin.accuracy - base.accuracy > (5.0 * noise).max(0.15),
        "held-out accuracy {:.3} -> {:.3} (format {:?} -> {:?}): not a clear rise",
        base.accuracy,
        fin.accuracy,
        base.format_rate,
        fin.format_rate
    );
    assert!(base.accuracy > 0.0, "the base model should solve some problems");
    // Every stage is recorded and the final model is a loadable HF folder.
    let state = std::fs::read_to_string(run.join("pipeline.json")).unwrap();
    for s in ["data", "base", "eval-base", "grpo", "eval-final"] {
        assert!(state.contains(&format!("\"{s}\"")), "{s} missing from pipeline.json");
    }
    assert!(run.join("plots/grpo/reward.png").exists());
    let stage_cfg: toml::Table = std::fs::read_to_string(run.join("stages/grpo/config.toml")).unwrap().parse().unwrap();
    assert_eq!(stage_cfg["wandb"]["group"].as_str(), Some("small"));
    assert_eq!(stage_cfg["wandb"]["name"].as_str(), Some("small/grpo"));
    for stage in ["base", "grpo"] {
        assert!(run.join(format!("stages/{stage}/wandb.json")).exists(), "the offline W&B run of {stage} is recorded for wandb-sync");
    }
    // `ponder wandb-sync` on the pipeline folder uploads both offline stage runs, named and
    // grouped as the pipeline's [wandb] says. (This file holds one test, so setting the
    // process environment here races with nothing.)
    let server = ponder_wandb::testing::MockServer::start();
    std::env::set_var("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567");
    std::env::set_var("WANDB_BASE_URL", &server.url);
    std::env::remove_var("WANDB_MODE");
    trainer::wandb_sink::sync_dir(&run).unwrap();
    for stage in ["base", "grpo"] {
        let st: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join(format!("stages/{stage}/wandb.json"))).unwrap()).unwrap();
        let id = st["run_id"].as_str().unwrap();
        let upsert = server
            .requests()
            .into_iter()
            .find(|r| r.operation().as_deref() == Some("UpsertBucket") && r.json()["variables"]["name"] == id)
            .unwrap()
            .json();
        assert_eq!(upsert["variables"]["displayName"], format!("small/{stage}"));
        assert_eq!(upsert["variables"]["groupName"], "small");
        assert_eq!(upsert["variables"]["project"], "tiny");
        let metrics = std::fs::read_to_string(run.join(format!("stages/{stage}/metrics.jsonl"))).unwrap();
        let mut steps: Vec<u64> =
            metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
        steps.dedup();
        let uploaded: Vec<u64> = server.history(id).iter().map(|r| r["_step"].as_u64().unwrap()).collect();
        assert_eq!(uploaded, steps, "{stage}: every step once");
        assert_eq!(server.exit_code(id), Some(0));
    }
    let ck = run.join("stages/grpo/checkpoints/step-40");
    rollout::folder::Policy::load(&ck, tch::Kind::Float, tch::Device::Cpu).unwrap();
}
