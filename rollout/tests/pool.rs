//! The rollout pool on CPU with two workers, each holding its own copy of the policy.
//! Fixtures: see tests/parity.rs for how to regenerate them.

use rollout::folder::Policy;
use rollout::generate::{generate, SamplingParams};
use rollout::pool::{sample_seed, RolloutPool};
use rollout::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn two_workers_group_per_prompt_and_sync_weights() {
    let dir = fixture("qwen2-tied");
    let tk = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let pool2 = RolloutPool::from_dir(&dir, &[Device::Cpu, Device::Cpu], Kind::Float, tk.clone()).unwrap();
    let pool1 = RolloutPool::from_dir(&dir, &[Device::Cpu], Kind::Float, tk.clone()).unwrap();
    assert_eq!(pool2.num_workers(), 2);
    let prompts: Vec<Vec<i64>> = vec![vec![5, 6, 7], vec![8, 9], vec![10, 11, 12, 13, 14]];
    let sp = SamplingParams { temperature: 1.0, max_new_tokens: 8, ..Default::default() };
    let g2 = pool2.generate_groups(&prompts, 4, &sp, 42).unwrap();
    let g1 = pool1.generate_groups(&prompts, 4, &sp, 42).unwrap();
    assert_eq!(g2.len(), 3);
    assert!(g2.iter().all(|g| g.len() == 4));
    // Grouping and seeding do not depend on how rows were split across workers.
    for i in 0..3 {
        for j in 0..4 {
            assert_eq!(g2[i][j].token_ids, g1[i][j].token_ids, "prompt {i} sample {j}");
        }
    }
    // Each sample is what a direct call with its seed gives.
    let learner = Policy::load(&dir, Kind::Float, Device::Cpu).unwrap();
    let eos = learner.eos_token_ids();
    let direct = generate(&learner.model, Some(&tk), &[prompts[1].clone()], &[sample_seed(42, 1, 2)], &eos, &sp).unwrap();
    assert_eq!(direct[0].token_ids, g2[1][2].token_ids);

    // New learner weights: scale every tensor; both workers must pick them up.
    tch::no_grad(|| {
        for (_, t) in learner.named_tensors() {
            let _ = t.shallow_clone().g_mul_scalar_(1.5);
        }
    });
    let before0 = pool2.snapshot(0).unwrap();
    pool2.sync_weights(&learner.named_tensors()).unwrap();
    for w in 0..2 {
        let snap = pool2.snapshot(w).unwrap();
        for (k, t) in learner.named_tensors() {
            assert!(snap[&k].equal(&t), "worker {w}: {k} not synced");
            assert!(!before0[&k].equal(&t) || t.abs().max().double_value(&[]) == 0.0, "{k} was already equal before sync");
        }
    }
    let greedy = SamplingParams { temperature: 0.0, max_new_tokens: 8, min_new_tokens: 8, ..Default::default() };
    let after = pool2.generate_groups(&prompts, 2, &greedy, 0).unwrap();
    let want = generate(&learner.model, Some(&tk), &prompts, &[0, 0, 0], &eos, &greedy).unwrap();
    for i in 0..3 {
        for j in 0..2 {
            assert_eq!(after[i][j].token_ids, want[i].token_ids, "worker output after sync, prompt {i} sample {j}");
        }
    }
    // The 1-worker pool still has the old weights: copies are separate.
    let old = pool1.generate_groups(&prompts, 1, &greedy, 0).unwrap();
    assert!((0..3).any(|i| old[i][0].token_ids != want[i].token_ids), "pool1 should still hold the old weights");
}
