//! Drives the `ponder` binary as a user would: generate on a fixture model, score with a
//! malformed line, a recipe typo, a missing model folder.

use std::path::{Path, PathBuf};
use std::process::Command;

fn ponder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ponder"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rollout/tests/fixtures").join(name)
}

#[test]
fn generate_json_lines() {
    let out = ponder()
        .args(["generate", "--model"])
        .arg(fixture("qwen2-tied"))
        .args(["--prompt", "What is 2 + 3?", "--prompt", "Hello", "--samples", "2", "--max-new-tokens", "5", "--json", "--seed", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    for (k, l) in lines.iter().enumerate() {
        assert_eq!(l["prompt_index"], k / 2);
        assert_eq!(l["sample_index"], k % 2);
        let ids = l["token_ids"].as_array().unwrap();
        assert_eq!(ids.len(), l["logprobs"].as_array().unwrap().len());
        assert!(ids.len() <= 5);
        assert!(["eos", "stop", "length"].contains(&l["finish_reason"].as_str().unwrap()));
        assert!(l["logprobs"].as_array().unwrap().iter().all(|p| p.as_f64().unwrap() <= 0.0));
    }
}

#[test]
fn generate_reports_a_missing_model_folder() {
    let out = ponder().args(["generate", "--model", "/nonexistent/model", "--prompt", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model"), "{err}");
}

#[test]
fn score_skips_malformed_lines_with_their_number() {
    let tmp = tempfile::tempdir().unwrap();
    let rewards = tmp.path().join("r.toml");
    std::fs::write(&rewards, "[[rewards]]\nkind = \"accuracy\"\n[[rewards]]\nkind = \"format\"\nweight = 0.5\n").unwrap();
    let input = tmp.path().join("s.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"p\", \"completion\": \"<think> a </think> <answer> 5 </answer>\", \"answer\": \"5\"}\n{broken\n{\"prompt\": \"p\", \"completion\": \"no\", \"answer\": \"5\"}\n",
    )
    .unwrap();
    let out = ponder().args(["score", "--rewards"]).arg(&rewards).arg("--input").arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a skipped line must show in the exit status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2") || err.contains("line 2"), "{err}");
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["reward"].as_f64().unwrap(), 1.5);
    assert_eq!(rows[1]["reward"].as_f64().unwrap(), 0.0);
}

#[test]
fn train_rejects_a_recipe_typo_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("r.toml");
    std::fs::write(&recipe, "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n[[rewards]]\nkind = \"format\"\n[grpo]\nbetta = 0.1\n").unwrap();
    let out = ponder().arg("train").arg(&recipe).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("grpo.betta") && err.contains("did you mean `beta`"), "{err}");
}
