//! `ponder train` with a `[wandb]` section against a loopback mock W&B server, driven as a
//! user would (the binary, with the W&B environment variables): every metrics row reaches
//! W&B at its step, the recipe is the run config, resume continues the same W&B run, an
//! unreachable server leaves training and `metrics.jsonl` whole, and `ponder wandb-sync`
//! uploads offline or failed runs with each row exactly once.

use ponder_wandb::testing::MockServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use trainer::tiny::{self, TinyShape};

const SHAPE: TinyShape = TinyShape { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64, vocab: 320 };
const KEY: &str = "0123456789abcdef0123456789abcdef01234567";

fn setup(dir: &Path, wandb: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    tiny::create_random_model(&dir.join("model"), SHAPE, &tiny::default_corpus(1, 300), 5).unwrap();
    let data: String = (0..16).map(|i| format!("{{\"prompt\": \"{i} + 1\", \"answer\": \"{}\"}}\n", i + 1)).collect();
    std::fs::write(dir.join("train.jsonl"), &data).unwrap();
    let eval: String = data.lines().take(8).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("eval.jsonl"), eval).unwrap();
    let text = format!(
        r#"
[run]
name = "w"
output_dir = "{dir}/runs"

[model]
path = "{dir}/model"

[data]
train = "{dir}/train.jsonl"
eval = "{dir}/eval.jsonl"
template = "{{prompt}} ="

[rollout]
group_size = 2
prompts_per_step = 2
max_new_tokens = 4

[[rewards]]
kind = "char_fraction"
chars = "0123456789"

[grpo]
beta = 0.04

[train]
steps = 3
save_every = 2
log_samples_every = 2
eval_every = 3
eval_limit = 4

[wandb]
project = "p"
entity = "e"
tags = ["tiny"]
{wandb}
"#,
        dir = dir.display()
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn ponder(url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ponder"));
    for k in ["WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT", "NETRC"] {
        c.env_remove(k);
    }
    c.env("WANDB_API_KEY", KEY).env("WANDB_BASE_URL", url).env("HOME", "/nonexistent");
    c
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "ponder failed: {err}");
    eprintln!("{err}");
    err
}

fn metrics(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn run_id(run: &Path) -> String {
    let st: Value = serde_json::from_str(&std::fs::read_to_string(run.join("wandb.json")).unwrap()).unwrap();
    st["run_id"].as_str().unwrap().to_string()
}

fn steps(h: &[Value]) -> Vec<u64> {
    h.iter().map(|r| r["_step"].as_u64().unwrap()).collect()
}

/// Every value of every metrics.jsonl row is in the W&B history row of its step.
fn assert_history_matches_metrics(history: &[Value], run: &Path) {
    for m in metrics(run) {
        let step = m["step"].as_u64().unwrap();
        let h = history.iter().find(|r| r["_step"].as_u64() == Some(step)).unwrap_or_else(|| panic!("step {step} missing from W&B"));
        for (k, v) in m.as_object().unwrap() {
            if k != "step" && k != "timestamp" {
                assert_eq!(&h[k], v, "step {step} metric {k}");
            }
        }
    }
}

#[test]
fn training_streams_every_row_and_resume_continues_the_same_run() {
    let server = MockServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), "");
    let run = tmp.path().join("runs/w");
    let err = ok(&ponder(&server.url).args(["train", "--quiet"]).arg(&recipe).output().unwrap());
    let id = run_id(&run);
    assert!(err.contains(&format!("{}/e/p/runs/{id}", server.url)), "the run URL is printed: {err}");
    let history = server.history(&id);
    assert_eq!(steps(&history), [0, 1, 2, 3], "eval at 0, steps 1..3; the step-3 eval merged into its row");
    assert_history_matches_metrics(&history, &run);
    assert_eq!(history[2]["samples"]["_type"], json!("table-file"), "samples logged at step 2 as a table");
    let upsert = server.requests().into_iter().find(|r| r.operation().as_deref() == Some("UpsertBucket")).unwrap().json();
    let config: Value = serde_json::from_str(upsert["variables"]["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["grpo"]["value"]["beta"], json!(0.04), "the resolved recipe is the run config");
    assert_eq!(config["train"]["value"]["steps"], json!(3));
    assert_eq!(upsert["variables"]["displayName"], json!("w"));
    assert_eq!(server.exit_code(&id), Some(0));
    let logs = server.output(&id);
    assert!(
        logs.iter().any(|l| l.ends_with(&format!(
            "step 3/3: reward {:.3} kl {:.4} len {:.0} {:.1}s/step",
            history[3]["reward"].as_f64().unwrap(),
            history[3]["kl"].as_f64().unwrap(),
            history[3]["completions/mean_length"].as_f64().unwrap(),
            history[3]["time/step_s"].as_f64().unwrap()
        ))),
        "console lines in the Logs tab: {logs:?}"
    );
    let ck: Value = serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/step-3/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(ck["wandb_run_id"], json!(id), "the checkpoint remembers the W&B run");

    // Resume for two more steps: same W&B run, history continues, no step twice.
    ok(&ponder(&server.url).args(["train", "--quiet", "--resume"]).arg(&run).args(["--set", "train.steps=5"]).output().unwrap());
    assert_eq!(run_id(&run), id);
    let upserts: Vec<Value> =
        server.requests().into_iter().filter(|r| r.operation().as_deref() == Some("UpsertBucket")).map(|r| r.json()).collect();
    assert!(upserts.len() >= 2 && upserts.iter().all(|u| u["variables"]["name"] == json!(id)));
    let history = server.history(&id);
    assert_eq!(steps(&history), [0, 1, 2, 3, 4, 5]);
    assert_history_matches_metrics(&history, &run);
    assert_eq!(server.exit_code(&id), Some(0));
}

#[test]
fn an_unreachable_server_never_stops_training_and_wandb_sync_uploads_later() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), "finish_timeout_s = 1");
    let run = tmp.path().join("runs/w");
    let err = ok(&ponder(&MockServer::dead_url()).args(["train", "--quiet"]).arg(&recipe).output().unwrap());
    assert!(err.contains("ponder wandb-sync"), "says how to upload later: {err}");
    let rows = metrics(&run);
    let train_steps: Vec<u64> = rows.iter().filter(|r| r.get("reward").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(train_steps, [1, 2, 3], "metrics.jsonl is complete");

    let server = MockServer::start();
    let err = ok(&ponder(&server.url).arg("wandb-sync").arg(&run).output().unwrap());
    let id = run_id(&run);
    assert!(err.contains("uploaded 4 rows"), "{err}");
    assert_eq!(steps(&server.history(&id)), [0, 1, 2, 3]);
    assert_history_matches_metrics(&server.history(&id), &run);
    assert_eq!(server.exit_code(&id), Some(0));
    // Idempotent: a second sync sends nothing.
    let n = server.requests().len();
    let err = ok(&ponder(&server.url).arg("wandb-sync").arg(&run).output().unwrap());
    assert!(err.contains("up to date"), "{err}");
    assert_eq!(server.requests().len(), n);
}

#[test]
fn offline_runs_send_nothing_until_synced() {
    let server = MockServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path(), "mode = \"offline\"");
    let run = tmp.path().join("runs/w");
    let err = ok(&ponder(&server.url).args(["train", "--quiet"]).arg(&recipe).output().unwrap());
    assert!(err.contains("wandb-sync"), "{err}");
    assert!(server.requests().is_empty(), "offline: no traffic");
    ok(&ponder(&server.url).arg("wandb-sync").arg(&run).output().unwrap());
    let id = run_id(&run);
    assert_eq!(steps(&server.history(&id)), [0, 1, 2, 3]);
    // WANDB_MODE=disabled turns a recipe's W&B off: no state file, no traffic.
    let recipe2 = setup(&tmp.path().join("b"), "");
    let out = ponder(&server.url).env("WANDB_MODE", "disabled").args(["train", "--quiet"]).arg(&recipe2).output().unwrap();
    ok(&out);
    assert!(!tmp.path().join("b/runs/w/wandb.json").exists());
    // A typo in [wandb] is caught like any other recipe key.
    let bad = setup(&tmp.path().join("c"), "projekt = \"x\"");
    let out = ponder(&server.url).args(["train", "--quiet"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("wandb.projekt") && err.contains("project"), "{err}");
}
