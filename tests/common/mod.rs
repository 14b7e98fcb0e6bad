//! Helpers shared by the CLI-driving tests (each test file includes this module).
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub fn ponder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ponder"))
}

/// A random tiny Qwen2 (`dir/model`) and 16 prompts "i + 1" (`dir/train.jsonl`), once.
pub fn tiny_model_and_prompts(dir: &Path) {
    use trainer::tiny::{self, TinyShape};
    if dir.join("model").exists() {
        return;
    }
    let shape = TinyShape { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64, vocab: 320 };
    tiny::create_random_model(&dir.join("model"), shape, &tiny::default_corpus(1, 300), 5).unwrap();
    let data: String = (0..16).map(|i| format!("{{\"prompt\": \"{i} + 1\", \"answer\": \"{}\"}}\n", i + 1)).collect();
    std::fs::write(dir.join("train.jsonl"), data).unwrap();
}

/// The steps of a run folder's metrics.jsonl rows, in file order.
pub fn steps_logged(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
        .collect()
}
