//! Shared-prompt sampling and thinking budgets (budget forcing) at the token level, on the
//! fixture models (see tests/parity.rs for how to regenerate them).

use rollout::folder::Policy;
use rollout::generate::{generate, generate_with, Completion, GenStats, SamplingParams, ThinkIds};
use rollout::pool::{sample_seed, RolloutPool};
use rollout::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind};

const MODELS: [&str; 4] = ["qwen2-tied", "qwen2-untied", "llama3-sharded", "llama-bias"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn load(name: &str) -> Policy {
    Policy::load(&fixture(name), Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn prompts(name: &str) -> Vec<Vec<i64>> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap()).unwrap();
    serde_json::from_value(v["prompts"].clone()).unwrap()
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_new_tokens: n, min_new_tokens: n, ..Default::default() }
}

fn assert_same(a: &Completion, b: &Completion, what: &str) {
    assert_eq!(a.token_ids, b.token_ids, "{what}: tokens differ");
    for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
        assert!((x - y).abs() < 1e-5, "{what}: logprob {x} vs {y}");
    }
}

#[test]
fn shared_prompt_sampling_equals_sampling_each_copy_separately() {
    for name in MODELS {
        let p = load(name);
        let eos = p.eos_token_ids();
        let ps = prompts(name);
        // N copies of one prompt, and a mix where each prompt repeats (as a GRPO batch).
        let copies = vec![ps[1].clone(); 6];
        let mixed: Vec<Vec<i64>> = (0..9).map(|i| ps[i % 3].clone()).collect();
        for (rows, what) in [(&copies, "copies"), (&mixed, "mixed")] {
            let seeds: Vec<u64> = (0..rows.len() as u64).map(|s| 1000 + s).collect();
            for (params, kind) in [
                (greedy(12), "greedy"),
                (SamplingParams { temperature: 1.0, top_p: 0.9, max_new_tokens: 12, ..Default::default() }, "sampled"),
            ] {
                let (shared, stats) = generate_with(&p.model, None, rows, &seeds, &eos, &params, None).unwrap();
                let distinct = if what == "copies" { 1 } else { 3 };
                assert_eq!(
                    stats,
                    GenStats { prompts_prefilled: distinct, prefill_tokens: rows[..distinct].iter().map(Vec::len).sum(), rows: rows.len() },
                    "{name} {what}"
                );
                for (i, pr) in rows.iter().enumerate() {
                    let alone = generate(&p.model, None, &[pr.clone()], &[seeds[i]], &eos, &params).unwrap();
                    assert_same(&shared[i], &alone[0], &format!("{name} {what} {kind} row {i}"));
                }
                if kind == "sampled" && what == "copies" {
                    assert!(
                        shared.iter().any(|c| c.token_ids != shared[0].token_ids),
                        "{name}: different seeds should give different samples"
                    );
                }
            }
        }
    }
}

#[test]
fn pool_groups_prefill_each_prompt_once() {
    let dir = fixture("qwen2-tied");
    let tk = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let pool = RolloutPool::from_dir(&dir, &[Device::Cpu], Kind::Float, tk.clone()).unwrap();
    let ps = prompts("qwen2-tied");
    let sp = SamplingParams { temperature: 1.0, max_new_tokens: 6, ..Default::default() };
    let (groups, stats) = pool.generate_groups_with(&ps, 8, &sp, 5, None).unwrap();
    assert_eq!(stats.prompts_prefilled, 3);
    assert_eq!(stats.prefill_tokens, ps.iter().map(Vec::len).sum::<usize>());
    assert_eq!(stats.rows, 24);
    let learner = Policy::load(&dir, Kind::Float, Device::Cpu).unwrap();
    for (i, g) in groups.iter().enumerate() {
        for (j, c) in g.iter().enumerate() {
            let alone =
                generate(&learner.model, Some(&tk), &[ps[i].clone()], &[sample_seed(5, i, j)], &learner.eos_token_ids(), &sp).unwrap();
            assert_eq!(c.token_ids, alone[0].token_ids, "prompt {i} sample {j}");
        }
    }
}

/// The first id that is not in `avoid` (nor an EOS id).
fn unused_id(avoid: &[i64], eos: &[i64]) -> i64 {
    (3..).find(|t| !avoid.contains(t) && !eos.contains(t)).unwrap()
}

fn think(open: i64, close: Vec<i64>, max: Option<usize>, min: usize) -> ThinkIds {
    ThinkIds { open: vec![open], close, force_end: vec![], continuation: vec![], max_think: max, min_think: min }
}

#[test]
fn budget_forcing_puts_the_end_string_exactly_after_t_thinking_tokens() {
    for name in ["qwen2-tied", "llama-bias"] {
        let p = load(name);
        let eos = p.eos_token_ids();
        let ps = prompts(name);
        // The prompt ends with the open token: thinking starts with the first generated token.
        let open = *ps[0].last().unwrap();
        let n = 24;
        let sp = SamplingParams { temperature: 1.0, max_new_tokens: n, min_new_tokens: n, ..Default::default() };
        let seeds: Vec<u64> = (0..8).collect();
        let rows = vec![ps[0].clone(); seeds.len()];
        let free = generate(&p.model, None, &rows, &seeds, &eos, &sp).unwrap();
        for t in [0usize, 1, 5, 11] {
            // A close token none of the free samples writes before the budget.
            let seen: Vec<i64> = free.iter().flat_map(|c| c.token_ids[..t + 1].to_vec()).collect();
            let close = unused_id(&seen, &eos);
            let end = vec![close, 5, 6];
            let ids = ThinkIds { force_end: end.clone(), ..think(open, vec![close], Some(t), 0) };
            let (out, _) = generate_with(&p.model, None, &rows, &seeds, &eos, &sp, Some(&ids)).unwrap();
            for (i, c) in out.iter().enumerate() {
                let what = format!("{name} T={t} seed {i}");
                // The first T tokens are the free sample's (same seed), then the end string.
                assert_eq!(&c.token_ids[..t], &free[i].token_ids[..t], "{what}");
                assert_eq!(&c.token_ids[t..t + 3], &end[..], "{what}: {:?}", c.token_ids);
                assert!(c.think.budget_forced && c.think.opened, "{what}");
                assert_eq!(c.think.think_tokens, t, "{what}");
                assert_eq!(c.think.answer_tokens, n - t - 1, "{what}: the answer starts after the close token");
                assert_eq!(c.token_ids.len(), n);
            }
        }
        // The forced tokens are in the cache like any others: greedy decoding after them
        // equals a fresh greedy run on prompt + thinking + end string.
        let t = 4;
        let free_g = generate(&p.model, None, &[ps[0].clone()], &[0], &eos, &greedy(n)).unwrap();
        let close = unused_id(&free_g[0].token_ids[..t + 1], &eos);
        let ids = ThinkIds { force_end: vec![close, 5, 6], ..think(open, vec![close], Some(t), 0) };
        let (out, _) = generate_with(&p.model, None, &[ps[0].clone()], &[0], &eos, &greedy(n), Some(&ids)).unwrap();
        let head = out[0].token_ids[..t + 3].to_vec();
        let fresh = generate(&p.model, None, &[[ps[0].clone(), head.clone()].concat()], &[0], &eos, &greedy(n - t - 3)).unwrap();
        assert_same(
            &Completion { token_ids: out[0].token_ids[t + 3..].to_vec(), logprobs: out[0].logprobs[t + 3..].to_vec(), ..out[0].clone() },
            &fresh[0],
            &format!("{name}: decoding after the forced end"),
        );
        // A close the model writes itself before the budget ends thinking; nothing is forced.
        let j = 3;
        let close = free_g[0].token_ids[j];
        let first = free_g[0].token_ids.iter().position(|&x| x == close).unwrap();
        let ids = ThinkIds { force_end: vec![close, 5], ..think(open, vec![close], Some(first + 5), 0) };
        let (out, _) = generate_with(&p.model, None, &[ps[0].clone()], &[0], &eos, &greedy(n), Some(&ids)).unwrap();
        assert_eq!(out[0].token_ids, free_g[0].token_ids, "{name}: nothing forced");
        assert!(!out[0].think.budget_forced);
        assert_eq!(out[0].think.think_tokens, first);
    }
}

#[test]
fn min_think_never_lets_thinking_end_before_t() {
    for name in ["qwen2-tied", "llama-bias"] {
        let p = load(name);
        let eos = p.eos_token_ids();
        let ps = prompts(name);
        let open = *ps[0].last().unwrap();
        let n = 30;
        let free_g = generate(&p.model, None, &[ps[0].clone()], &[0], &eos, &greedy(n)).unwrap();
        // Sampled rows: the close is the model's favourite first token, so early closes are
        // common; no row may close before T thinking tokens.
        let close = free_g[0].token_ids[0];
        let c0 = unused_id(&[close], &eos);
        let cont = vec![c0, unused_id(&[close, c0], &eos)];
        let t = 10;
        let sp = SamplingParams { temperature: 0.7, max_new_tokens: n, ..Default::default() };
        let seeds: Vec<u64> = (0..16).collect();
        let rows = vec![ps[0].clone(); seeds.len()];
        let ids = ThinkIds { continuation: cont.clone(), ..think(open, vec![close], None, t) };
        let (out, _) = generate_with(&p.model, None, &rows, &seeds, &eos, &sp, Some(&ids)).unwrap();
        let free = generate(&p.model, None, &rows, &seeds, &eos, &sp).unwrap();
        let mut replaced = 0;
        for (i, c) in out.iter().enumerate() {
            let what = format!("{name} seed {i}: {:?}", c.token_ids);
            let end = c.token_ids.iter().position(|x| *x == close || eos.contains(x));
            if let Some(e) = end {
                assert!(e >= t, "{what}: thinking ended after {e} < {t} tokens");
                assert_eq!(c.think.think_tokens, e, "{what}");
            } else {
                assert_eq!(c.think.think_tokens, c.token_ids.len(), "{what}");
            }
            replaced += c.think.continuations;
            // Up to the model's first early close, the sample is the free one; there the
            // continuation stands in.
            let f = &free[i].token_ids;
            match f.iter().position(|x| *x == close || eos.contains(x)) {
                Some(k) if k < t => {
                    assert_eq!(&c.token_ids[..k], &f[..k], "{what}");
                    assert_eq!(&c.token_ids[k..k + 2], &cont[..], "{what}");
                    assert!(c.think.continuations >= 1);
                }
                _ => assert_eq!(c.token_ids[..t.min(f.len())], f[..t.min(f.len())], "{what}"),
            }
        }
        assert!(replaced > 0, "{name}: no early close happened, the test checks nothing");

        // A two-token close written early is taken back whole: decoding after the
        // continuation equals a fresh greedy run without the taken-back token.
        let g = &free_g[0].token_ids;
        let j = 2;
        let close2 = vec![g[j], g[j + 1]];
        let first = (0..g.len() - 1).find(|&i| g[i..i + 2] == close2[..]).unwrap();
        let t2 = first + 6;
        let ids = ThinkIds { continuation: cont.clone(), ..think(open, close2.clone(), None, t2) };
        let (out, _) = generate_with(&p.model, None, &[ps[0].clone()], &[0], &eos, &greedy(n), Some(&ids)).unwrap();
        let c = &out[0];
        assert_eq!(&c.token_ids[..first], &g[..first], "{name}");
        assert_eq!(&c.token_ids[first..first + 2], &cont[..], "{name}: {:?}", c.token_ids);
        assert!(c.think.continuations >= 1);
        let prefix = [ps[0].clone(), c.token_ids[..first + 2].to_vec()].concat();
        let fresh = generate(&p.model, None, &[prefix], &[0], &eos, &greedy(n - first - 2)).unwrap();
        // Compare up to the next place the run could close again (the run is one token
        // shorter: the take-back used a step).
        let rest = &c.token_ids[first + 2..];
        assert_eq!(c.token_ids.len(), n - 1);
        let upto = (0..fresh[0].token_ids.len().saturating_sub(1))
            .find(|&i| fresh[0].token_ids[i..i + 2] == close2[..])
            .unwrap_or(rest.len())
            .min(rest.len());
        assert!(upto >= 3, "{name}: too short a stretch to compare ({upto})");
        assert_eq!(&rest[..upto], &fresh[0].token_ids[..upto], "{name}: the taken-back token still shows");
        for (a, b) in c.logprobs[first + 2..first + 2 + upto].iter().zip(&fresh[0].logprobs) {
            assert!((a - b).abs() < 1e-4, "{name}: logprob {a} vs {b}");
        }
    }
}
