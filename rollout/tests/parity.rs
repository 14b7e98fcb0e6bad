//! Parity with Hugging Face transformers on tiny random models, plus generation behaviour.
//!
//! Fixtures (`tests/fixtures/<model>/`) come from `scripts/make_fixtures.py`; regenerate with
//!     python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-fixtures.txt
//!     .venv/bin/python scripts/make_fixtures.py

use rollout::folder::{parse_device, parse_kind, Policy};
use rollout::generate::{generate, FinishReason, SamplingParams};
use rollout::tokenizer::Tokenizer;
use rollout::RolloutError;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const MODELS: [&str; 4] = ["qwen2-tied", "qwen2-untied", "llama3-sharded", "llama-bias"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Reference {
    prompts: Vec<Vec<i64>>,
    logits: Vec<Vec<Vec<f32>>>,
    greedy: Vec<Vec<i64>>,
    greedy_logprobs: Vec<Vec<f32>>,
}

fn reference(name: &str) -> Reference {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap()).unwrap();
    let ints = |v: &Value| -> Vec<Vec<i64>> { serde_json::from_value(v.clone()).unwrap() };
    Reference {
        prompts: ints(&v["prompts"]),
        logits: serde_json::from_value(v["logits"].clone()).unwrap(),
        greedy: ints(&v["greedy"]),
        greedy_logprobs: serde_json::from_value(v["greedy_logprobs"].clone()).unwrap(),
    }
}

fn load(name: &str) -> Policy {
    Policy::load(&fixture(name), Kind::Float, Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The device of the transformers-parity tests: `PONDER_TEST_DEVICE` (`cuda`, `cuda:N`;
/// scripts/gpu_check.sh sets it), else the CPU. An unavailable device is an error, never a
/// silent fall back to the CPU.
fn parity_device() -> Device {
    match std::env::var("PONDER_TEST_DEVICE") {
        Ok(d) => parse_device(&d).unwrap_or_else(|e| panic!("PONDER_TEST_DEVICE={d}: {e}")),
        Err(_) => Device::Cpu,
    }
}

fn load_parity(name: &str, kind: Kind) -> Policy {
    Policy::load(&fixture(name), kind, parity_device()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a.to_device(Device::Cpu) - b.to_device(Device::Cpu)).abs().max()).unwrap()
}

#[test]
fn logits_match_transformers_fp32() {
    for name in MODELS {
        let p = load_parity(name, Kind::Float);
        let r = reference(name);
        for (ids, want) in r.prompts.iter().zip(&r.logits) {
            let input = Tensor::from_slice(ids).unsqueeze(0).to_device(parity_device());
            let mask = Tensor::ones_like(&input);
            let got = tch::no_grad(|| p.model.forward(&input, &mask)).squeeze_dim(0);
            let want = Tensor::from_slice2(want);
            assert_eq!(got.size(), want.size(), "{name}");
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "{name}: logits differ from transformers by {d}");
        }
    }
}

#[test]
fn left_padded_batch_forward_matches_reference() {
    for name in MODELS {
        let p = load_parity(name, Kind::Float);
        let r = reference(name);
        let t = r.prompts.iter().map(Vec::len).max().unwrap();
        let mut ids = vec![];
        let mut mask = vec![];
        for pr in &r.prompts {
            ids.extend(std::iter::repeat(0).take(t - pr.len()).chain(pr.iter().copied()));
            mask.extend(std::iter::repeat(0i64).take(t - pr.len()).chain(std::iter::repeat(1).take(pr.len())));
        }
        let n = r.prompts.len() as i64;
        let input = Tensor::from_slice(&ids).view([n, t as i64]).to_device(parity_device());
        let mask = Tensor::from_slice(&mask).view([n, t as i64]).to_device(parity_device());
        let logits = tch::no_grad(|| p.model.forward(&input, &mask));
        for (i, (pr, want)) in r.prompts.iter().zip(&r.logits).enumerate() {
            let got = logits.get(i as i64).narrow(0, (t - pr.len()) as i64, pr.len() as i64);
            let d = max_abs_diff(&got, &Tensor::from_slice2(want));
            assert!(d < 1e-4, "{name} row {i}: padded logits differ by {d}");
        }
    }
}

fn greedy_params(n: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_new_tokens: n, min_new_tokens: n, ..Default::default() }
}

/// Greedy continuations of every reference prompt: transformers' tokens, log-probs within 1e-4.
fn assert_greedy_matches(p: &Policy, r: &Reference, what: &str) {
    let eos = p.eos_token_ids();
    for (i, pr) in r.prompts.iter().enumerate() {
        let out = generate(&p.model, None, &[pr.clone()], &[0], &eos, &greedy_params(r.greedy[i].len())).unwrap();
        assert_eq!(out[0].token_ids, r.greedy[i], "{what} prompt {i}: greedy tokens differ");
        for (a, b) in out[0].logprobs.iter().zip(&r.greedy_logprobs[i]) {
            assert!((a - b).abs() < 1e-4, "{what} prompt {i}: logprob {a} vs transformers {b}");
        }
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for name in MODELS {
        assert_greedy_matches(&load_parity(name, Kind::Float), &reference(name), name);
    }
}

#[test]
fn batched_generation_equals_one_by_one() {
    for name in MODELS {
        let p = load(name);
        let r = reference(name);
        let eos = p.eos_token_ids();
        let params = greedy_params(12);
        let seeds = vec![0; r.prompts.len()];
        let batch = generate(&p.model, None, &r.prompts, &seeds, &eos, &params).unwrap();
        for (i, pr) in r.prompts.iter().enumerate() {
            let one = generate(&p.model, None, &[pr.clone()], &[0], &eos, &params).unwrap();
            assert_eq!(batch[i].token_ids, one[0].token_ids, "{name} row {i}");
            for (a, b) in batch[i].logprobs.iter().zip(&one[0].logprobs) {
                assert!((a - b).abs() < 1e-5, "{name} row {i}: batched logprob {a} vs alone {b}");
            }
        }
        // Sampling too: a row's sample depends on its seed, not on its batch.
        let sp = SamplingParams { temperature: 1.0, top_p: 0.9, max_new_tokens: 10, ..Default::default() };
        let seeds: Vec<u64> = (0..r.prompts.len() as u64).map(|s| s + 100).collect();
        let batch = generate(&p.model, None, &r.prompts, &seeds, &eos, &sp).unwrap();
        for (i, pr) in r.prompts.iter().enumerate() {
            let one = generate(&p.model, None, &[pr.clone()], &[seeds[i]], &eos, &sp).unwrap();
            assert_eq!(batch[i].token_ids, one[0].token_ids, "{name} sampled row {i}");
        }
    }
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let p = load("qwen2-tied");
    let r = reference("qwen2-tied");
    let eos = p.eos_token_ids();
    let sp = SamplingParams { temperature: 1.0, max_new_tokens: 16, ..Default::default() };
    let prompts = vec![r.prompts[0].clone(); 4];
    let a = generate(&p.model, None, &prompts, &[1, 2, 3, 4], &eos, &sp).unwrap();
    let b = generate(&p.model, None, &prompts, &[1, 2, 3, 4], &eos, &sp).unwrap();
    let c = generate(&p.model, None, &prompts, &[5, 6, 7, 8], &eos, &sp).unwrap();
    for i in 0..4 {
        assert_eq!(a[i].token_ids, b[i].token_ids);
    }
    assert!((0..4).any(|i| a[i].token_ids != c[i].token_ids), "other seeds should give other samples");
    assert!((1..4).any(|i| a[i].token_ids != a[0].token_ids), "rows with different seeds should differ");
}

#[test]
fn sampling_follows_the_filtered_distribution() {
    // Empirical frequencies of the first sampled token match softmax(logits / T) after top-k.
    let p = load("qwen2-tied");
    let r = reference("qwen2-tied");
    let eos = p.eos_token_ids();
    let sp = SamplingParams { temperature: 0.7, top_k: 5, max_new_tokens: 1, ..Default::default() };
    let n = 4000;
    let prompts = vec![r.prompts[1].clone(); n];
    let seeds: Vec<u64> = (0..n as u64).collect();
    let out = generate(&p.model, None, &prompts, &seeds, &eos, &sp).unwrap();
    let last = r.logits[1].last().unwrap().clone();
    let mut idx: Vec<usize> = (0..last.len()).collect();
    idx.sort_by(|&a, &b| last[b].partial_cmp(&last[a]).unwrap());
    let top: Vec<usize> = idx[..5].to_vec();
    let w: Vec<f64> = top.iter().map(|&i| (last[i] as f64 / 0.7).exp()).collect();
    let z: f64 = w.iter().sum();
    for (k, &tok) in top.iter().enumerate() {
        let freq = out.iter().filter(|c| c.token_ids[0] == tok as i64).count() as f64 / n as f64;
        let prob = w[k] / z;
        assert!((freq - prob).abs() < 0.03, "token {tok}: sampled {freq:.3} vs expected {prob:.3}");
    }
    assert!(out.iter().all(|c| top.contains(&(c.token_ids[0] as usize))), "top-k let a token outside the top 5 through");
    // Reported log-probs are under softmax(logits / T) without the top-k filter.
    let lse = last.iter().map(|&l| (l as f64 / 0.7).exp()).sum::<f64>().ln();
    for c in out.iter().take(50) {
        let want = last[c.token_ids[0] as usize] as f64 / 0.7 - lse;
        assert!((c.logprobs[0] as f64 - want).abs() < 1e-4);
    }
}

#[test]
fn stop_strings_and_eos() {
    let dir = fixture("qwen2-tied");
    let p = load("qwen2-tied");
    let tk = Tokenizer::from_dir(&dir).unwrap();
    let r = reference("qwen2-tied");
    let eos = p.eos_token_ids();
    // Greedy continuation text; stop on a piece of it.
    let full = generate(&p.model, Some(&tk), &[r.prompts[2].clone()], &[0], &eos, &greedy_params(12)).unwrap();
    let text = full[0].text.clone();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 4, "greedy text too short to test stop strings: {text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let sp = SamplingParams { temperature: 0.0, max_new_tokens: 12, stop: vec![stop.clone()], ..Default::default() };
    let out = generate(&p.model, Some(&tk), &[r.prompts[2].clone()], &[0], &eos, &sp).unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Stop);
    assert!(!out[0].text.contains(&stop));
    assert!(text.starts_with(&out[0].text), "{:?} is not a prefix of {text:?}", out[0].text);
    assert!(out[0].token_ids.len() < 12);
    // Forcing EOS to be the greedy choice: declare the first greedy token an EOS id.
    let first = r.greedy[2][0];
    let out = generate(
        &p.model,
        Some(&tk),
        &[r.prompts[2].clone()],
        &[0],
        &[first],
        &SamplingParams { temperature: 0.0, max_new_tokens: 12, ..Default::default() },
    )
    .unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Eos);
    assert_eq!(out[0].token_ids, vec![first]);
    // min_new_tokens suppresses it.
    let out = generate(&p.model, Some(&tk), &[r.prompts[2].clone()], &[0], &[first], &greedy_params(5)).unwrap();
    assert_eq!(out[0].token_ids.len(), 5);
    assert!(!out[0].token_ids.contains(&first));
    assert_eq!(out[0].finish_reason, FinishReason::Length);
}

#[test]
fn bf16_and_f16_run_and_stay_close() {
    let r = reference("qwen2-untied");
    for kind in [Kind::BFloat16, Kind::Half] {
        let p = load_parity("qwen2-untied", kind);
        let input = Tensor::from_slice(&r.prompts[1]).unsqueeze(0).to_device(parity_device());
        let got = tch::no_grad(|| p.model.forward(&input, &Tensor::ones_like(&input))).squeeze_dim(0).to_kind(Kind::Float);
        let want = Tensor::from_slice2(&r.logits[1]);
        let scale = f64::try_from(want.abs().max()).unwrap();
        let d = max_abs_diff(&got, &want);
        // bf16 keeps ~3 significant digits; errors grow through the layers.
        assert!(d < 0.05 * scale, "{kind:?} logits too far from fp32: {d} (max |logit| {scale})");
    }
}

#[test]
fn error_paths_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    // Not a folder.
    let e = Policy::load(&tmp.path().join("nope"), Kind::Float, Device::Cpu).err().unwrap();
    assert!(matches!(e, RolloutError::MissingFile { .. }), "{e}");
    // No config.json.
    let e = Policy::load(tmp.path(), Kind::Float, Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("config.json"), "{e}");
    // Unsupported architecture lists the supported ones.
    let src = fixture("qwen2-tied");
    let d = tmp.path().join("m");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut bad = cfg.clone();
    bad["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    std::fs::write(d.join("config.json"), bad.to_string()).unwrap();
    let e = Policy::load(&d, Kind::Float, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("MistralForCausalLM") && e.contains("Qwen2ForCausalLM") && e.contains("LlamaForCausalLM"), "{e}");
    // Wrong shape: config claims a bigger intermediate size than the tensors have.
    let mut bad = cfg.clone();
    bad["intermediate_size"] = serde_json::json!(cfg["intermediate_size"].as_i64().unwrap() * 2);
    std::fs::write(d.join("config.json"), bad.to_string()).unwrap();
    let e = Policy::load(&d, Kind::Float, Device::Cpu).err().unwrap();
    assert!(matches!(e, RolloutError::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("mlp"), "{e}");
    // Missing tensor: one more layer in the config than in the checkpoint.
    let mut bad = cfg.clone();
    bad["num_hidden_layers"] = serde_json::json!(cfg["num_hidden_layers"].as_i64().unwrap() + 1);
    std::fs::write(d.join("config.json"), bad.to_string()).unwrap();
    let e = Policy::load(&d, Kind::Float, Device::Cpu).err().unwrap();
    assert!(matches!(e, RolloutError::MissingTensor { .. }), "{e}");
    assert!(e.to_string().contains("model.layers."), "{e}");
    // Truncated safetensors file.
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = Policy::load(&d, Kind::Float, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("truncated") && e.contains("model.safetensors"), "{e}");
    // No weights at all.
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = Policy::load(&d, Kind::Float, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("model.safetensors") && e.contains("index"), "{e}");
    // Missing shard of a sharded checkpoint.
    let s = tmp.path().join("sharded");
    std::fs::create_dir_all(&s).unwrap();
    for entry in std::fs::read_dir(fixture("llama3-sharded")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), s.join(entry.file_name())).unwrap();
    }
    let shard =
        std::fs::read_dir(&s).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().ends_with("-of-00002.safetensors")).unwrap();
    std::fs::remove_file(&shard).unwrap();
    let e = Policy::load(&s, Kind::Float, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("shard"), "{e}");
    // dtype / device strings.
    assert!(parse_kind("fp8").err().unwrap().to_string().contains("bf16"));
    assert!(parse_device("tpu").is_err());
    if !tch::Cuda::is_available() {
        let e = parse_device("cuda").err().unwrap().to_string();
        assert!(e.contains("CUDA is not available") && e.contains("--device cpu"), "{e}");
    }
}

#[test]
fn saved_checkpoint_round_trips() {
    let p = load("llama3-sharded");
    let tmp = tempfile::tempdir().unwrap();
    // Shard small to exercise the index writer too.
    p.save_weights(tmp.path(), Kind::Float, Some(20_000)).unwrap();
    assert!(tmp.path().join("model.safetensors.index.json").exists());
    let q = Policy::load(tmp.path(), Kind::Float, Device::Cpu).unwrap();
    for (k, t) in p.named_tensors() {
        assert!(t.equal(&q.named_tensors()[&k]), "{k} changed in the round trip");
    }
}

/// Rollout copies fuse q/k/v and gate/up for inference: the fused path must give the same
/// logits as transformers and the same greedy tokens, and a weight sync (which copies into
/// the named variables, now views into the fused tensors) must reach the fused path.
#[test]
fn fused_inference_matches_transformers_and_follows_weight_syncs() {
    for name in MODELS {
        let mut p = load(name);
        p.fuse_for_inference();
        let r = reference(name);
        for (ids, want) in r.prompts.iter().zip(&r.logits) {
            let input = Tensor::from_slice(ids).unsqueeze(0);
            let got = tch::no_grad(|| p.model.forward(&input, &Tensor::ones_like(&input))).squeeze_dim(0);
            let d = max_abs_diff(&got, &Tensor::from_slice2(want));
            assert!(d < 1e-4, "{name}: fused logits differ from transformers by {d}");
        }
        assert_greedy_matches(&p, &r, &format!("{name} (fused)"));
        let eos = p.eos_token_ids();
        // A left-padded batch decodes each row as it decodes alone (the decode path's mask).
        // 16+ rows, so the large-batch decode path runs.
        let batch: Vec<Vec<i64>> = r.prompts.iter().cycle().take(16.max(r.prompts.len())).cloned().collect();
        let all = generate(&p.model, None, &batch, &vec![0; batch.len()], &eos, &greedy_params(6)).unwrap();
        for (i, pr) in batch.iter().enumerate() {
            let one = generate(&p.model, None, &[pr.clone()], &[0], &eos, &greedy_params(6)).unwrap();
            assert_eq!(all[i].token_ids, one[0].token_ids, "{name} row {i}: batched fused decode differs");
            for (a, b) in all[i].logprobs.iter().zip(&one[0].logprobs) {
                assert!((a - b).abs() < 1e-5, "{name} row {i}: batched logprob {a} vs alone {b}");
            }
        }
        // Sync other weights in (scaled copies) and compare with an unfused model holding them.
        let other = load(name);
        let scaled: std::collections::BTreeMap<String, Tensor> =
            other.named_tensors().into_iter().map(|(k, t)| (k, tch::no_grad(|| &t * 0.9))).collect();
        p.copy_from(&scaled).unwrap();
        other.copy_from(&scaled).unwrap();
        let input = Tensor::from_slice(&r.prompts[0]).unsqueeze(0);
        let mask = Tensor::ones_like(&input);
        let (a, b) = tch::no_grad(|| (p.model.forward(&input, &mask), other.model.forward(&input, &mask)));
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-5, "{name}: after a weight sync the fused model differs by {d}");
        assert!(max_abs_diff(&a, &Tensor::from_slice2(&r.logits[0])) > 1e-3, "{name}: the sync changed nothing");
        // Saving still writes the separate, named tensors.
        let names = p.named_tensors();
        assert!(names.contains_key("model.layers.0.self_attn.q_proj.weight") && names.contains_key("model.layers.0.mlp.up_proj.weight"));
        assert_eq!(
            names["model.layers.0.self_attn.k_proj.weight"].size(),
            other.named_tensors()["model.layers.0.self_attn.k_proj.weight"].size()
        );
    }
}

/// Rows that finish leave the batch (the cache is compacted once an eighth of the rows are
/// done). The other rows must decode exactly as they decode alone, through compactions that
/// also move the batch across the large-batch decode threshold (18 rows -> fewer than 16).
#[test]
fn finished_rows_leave_the_batch_without_changing_the_others() {
    for name in MODELS {
        for fused in [false, true] {
            let mut p = load(name);
            if fused {
                p.fuse_for_inference();
            }
            let r = reference(name);
            let batch: Vec<Vec<i64>> = r.prompts.iter().cycle().take(18).cloned().collect();
            let what = format!("{name}{}", if fused { " (fused)" } else { "" });
            // Greedy: stop tokens taken from two prompts' own continuations, so those rows
            // end early (at different steps) while the third prompt's rows run on.
            let eos = vec![r.greedy[0][2], r.greedy[1][6]];
            let greedy = SamplingParams { temperature: 0.0, max_new_tokens: 12, ..Default::default() };
            // Sampling: stop tokens drawn by four rows at step 2 of a run without stops.
            let sp = SamplingParams { temperature: 1.0, max_new_tokens: 12, ..Default::default() };
            let seeds: Vec<u64> = (0..18).map(|s| s + 7).collect();
            let free = generate(&p.model, None, &batch, &seeds, &[], &sp).unwrap();
            let stops: Vec<i64> = free.iter().take(4).map(|c| c.token_ids[2]).collect();
            for (params, eos, seeds) in [(&greedy, &eos, vec![0; 18]), (&sp, &stops, seeds.clone())] {
                let sampled = params.temperature > 0.0;
                let all = generate(&p.model, None, &batch, &seeds, eos, params).unwrap();
                let lens: Vec<usize> = all.iter().map(|c| c.token_ids.len()).collect();
                let early = lens.iter().filter(|&&l| l < 12).count();
                assert!(early * 8 >= 18 && lens.contains(&12), "{what}: lengths {lens:?} do not exercise compaction");
                let mut differ = 0;
                for (i, pr) in batch.iter().enumerate() {
                    let one = generate(&p.model, None, &[pr.clone()], &[seeds[i]], eos, params).unwrap();
                    let (a, b) = (&all[i], &one[0]);
                    // Batch shape moves logits by ~1e-6, which can tip an inverse-CDF draw
                    // that lands on a boundary to the neighbouring token. So sampled rows must
                    // agree up to their first difference (same RNG stream, same positions),
                    // and such tipped draws must stay rare; greedy rows agree exactly.
                    let same = a.token_ids.iter().zip(&b.token_ids).take_while(|(x, y)| x == y).count();
                    if a.token_ids != b.token_ids {
                        assert!(sampled, "{what} greedy row {i}: {:?} vs alone {:?}", a.token_ids, b.token_ids);
                        differ += 1;
                    } else {
                        assert_eq!(a.finish_reason, b.finish_reason, "{what} row {i}");
                    }
                    for (x, y) in a.logprobs.iter().zip(&b.logprobs).take(same) {
                        assert!((x - y).abs() < 1e-5, "{what} row {i}: batched logprob {x} vs alone {y}");
                    }
                }
                assert!(differ <= 1, "{what}: {differ} of 18 sampled rows differ from their runs alone");
            }
        }
    }
}

/// Rows of token ids padded to width `w` (on the left or the right): ids [rows, w] (0 where
/// padded) and real-token flags.
fn pad_rows(rows: &[Vec<i64>], w: usize, left: bool) -> (Tensor, Tensor) {
    let mut ids: Vec<i64> = vec![];
    let mut valid: Vec<bool> = vec![];
    for x in rows {
        let (fill, off) = (vec![0i64; w - x.len()], vec![false; w - x.len()]);
        let on = vec![true; x.len()];
        if left {
            ids.extend(fill.iter().chain(x));
            valid.extend(off.iter().chain(&on));
        } else {
            ids.extend(x.iter().chain(&fill));
            valid.extend(on.iter().chain(&off));
        }
    }
    (Tensor::from_slice(&ids).view([rows.len() as i64, w as i64]), Tensor::from_slice(&valid).view([rows.len() as i64, w as i64]))
}

/// Every variable's gradient after `run` (zeros where a variable got none), gradients
/// cleared before.
fn gradients_after(p: &Policy, run: impl FnOnce()) -> Vec<Tensor> {
    let vars: Vec<Tensor> = p.named_tensors().into_values().collect();
    for v in &vars {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    run();
    vars.iter()
        .map(|v| {
            let g = v.grad();
            if g.defined() {
                g.copy()
            } else {
                v.zeros_like()
            }
        })
        .collect()
}

/// Activation checkpointing (`forward_prefixed_checkpointed`, the layers recomputed one at a
/// time in the backward) gives the gradients of the ordinary backward through
/// `forward_prefixed`: every weight, tied and untied embeddings, a loss through the LM head
/// on the rows and through a projection on the prefixes (so both streams carry gradient);
/// and `forward_hidden_checkpointed` (one stream) those of `forward_hidden`.
#[test]
fn checkpointed_layers_give_the_plain_backwards_gradients() {
    for name in MODELS {
        let p = load(name);
        let r = reference(name);
        let conts: Vec<Vec<i64>> = vec![vec![5, 9, 11], vec![7], vec![3, 4, 5, 6, 8]];
        let (pids, pvalid) = pad_rows(&r.prompts[..2], r.prompts[..2].iter().map(Vec::len).max().unwrap(), true);
        let (cids, cvalid) = pad_rows(&conts, 5, false);
        let rp = Tensor::from_slice(&[1i64, 0, 1]);
        let proj = Tensor::randn([p.model.cfg.hidden_size], (Kind::Float, Device::Cpu));
        let loss = |hp: &Tensor, hs: &Tensor| {
            let lp = p.model.logits(hs).log_softmax(-1, Kind::Float).gather(-1, &cids.unsqueeze(-1), false).squeeze_dim(-1);
            (lp * cvalid.to_kind(Kind::Float)).sum(Kind::Float)
                + (hp * pvalid.to_kind(Kind::Float).unsqueeze(-1)).matmul(&proj).sum(Kind::Float)
        };
        let plain = gradients_after(&p, || {
            let (hp, hs) = p.model.forward_prefixed(&pids, &pvalid, &rp, &cids, &cvalid);
            loss(&hp, &hs).backward();
        });
        let checkpointed = gradients_after(&p, || {
            let (hp, hs, ck) = p.model.forward_prefixed_checkpointed(&pids, &pvalid, &rp, &cids, &cvalid);
            loss(&hp, &hs).backward();
            ck.backward(&p.model, &[]);
        });
        // The one-stream layout (forward_hidden) on the rows alone.
        let positions = rollout::model::positions_from_mask(&cvalid.to_kind(Kind::Int64));
        let row_loss = |hs: &Tensor| {
            let lp = p.model.logits(hs).log_softmax(-1, Kind::Float).gather(-1, &cids.unsqueeze(-1), false).squeeze_dim(-1);
            (lp * cvalid.to_kind(Kind::Float)).sum(Kind::Float)
        };
        let plain_rows = gradients_after(&p, || row_loss(&p.model.forward_hidden(&cids, &positions, &cvalid, None)).backward());
        let checkpointed_rows = gradients_after(&p, || {
            let (hs, ck) = p.model.forward_hidden_checkpointed(&cids, &positions, &cvalid);
            row_loss(&hs).backward();
            ck.backward(&p.model, &[]);
        });
        let names: Vec<String> = p.named_tensors().into_keys().collect();
        for (got, want, what) in [(&checkpointed, &plain, "prefixed"), (&checkpointed_rows, &plain_rows, "one stream")] {
            for ((a, b), n) in got.iter().zip(want).zip(&names) {
                let scale = f64::try_from(b.abs().max()).unwrap();
                assert!(scale > 0.0, "{name} {what}: {n} got no gradient");
                let d = max_abs_diff(a, b);
                assert!(d <= 1e-6 * scale.max(1e-3), "{name} {what}: {n}'s gradient differs by {d} (scale {scale})");
            }
        }
    }
}

/// `forward_prefixed` (each shared prompt computed once, rows attending to it) equals the
/// plain forward over every row's prompt + continuation: hidden states and the gradients of
/// every weight, for prompts of different lengths and continuations of different lengths.
#[test]
fn shared_prefix_forward_matches_the_plain_forward_with_gradients() {
    for name in MODELS {
        let p = load(name);
        let r = reference(name);
        let prefixes = &r.prompts[..2];
        let row_prefix = [0usize, 1, 0, 1, 1];
        let conts: Vec<Vec<i64>> = vec![vec![5, 9, 11], vec![7], vec![3, 4, 5, 6, 8], vec![12, 2], vec![9, 9, 9, 1]];
        let (tp, tc) = (prefixes.iter().map(Vec::len).max().unwrap(), conts.iter().map(Vec::len).max().unwrap());
        let pad = pad_rows;
        let (pids, pvalid) = pad(prefixes, tp, true);
        let (cids, cvalid) = pad(&conts, tc, false);
        let rp = Tensor::from_slice(&row_prefix.map(|x| x as i64));
        // The plain layout the learner used: prompt left-padded to tp, continuation after it.
        let full_ids = Tensor::cat(&[pids.index_select(0, &rp), cids.shallow_clone()], 1);
        let full_valid = Tensor::cat(&[pvalid.index_select(0, &rp), cvalid.shallow_clone()], 1);
        // A fixed random projection of the hidden states as the "loss".
        let h = p.model.cfg.hidden_size;
        let proj = Tensor::randn([h], (Kind::Float, Device::Cpu));
        // lm_head gets none when untied: the loss reads hidden states only.
        let grads = |loss: Tensor| gradients_after(&p, || loss.backward());
        let (hp, hs) = p.model.forward_prefixed(&pids, &pvalid, &rp, &cids, &cvalid);
        let plain =
            p.model.forward_hidden(&full_ids, &rollout::model::positions_from_mask(&full_valid.to_kind(Kind::Int64)), &full_valid, None);
        let cmask = cvalid.to_kind(Kind::Float).unsqueeze(-1);
        let pmask = pvalid.to_kind(Kind::Float).unsqueeze(-1);
        // Continuations: every valid position; prompts: every valid position of each prefix
        // (rows 0 and 1 carry prefixes 0 and 1 in the plain layout).
        let d_s = max_abs_diff(&(&hs * &cmask), &(plain.narrow(1, tp as i64, tc as i64) * &cmask));
        let d_p = max_abs_diff(&(&hp * &pmask), &(plain.narrow(1, 0, tp as i64).narrow(0, 0, 2) * &pmask));
        assert!(d_s < 1e-5 && d_p < 1e-5, "{name}: shared-prefix hidden states differ by {d_s} (rows) / {d_p} (prefixes)");
        // Gradients: each row's loss counts its prefix once per row in the plain layout,
        // so the prefixed loss weights each prefix position by its number of rows.
        let uses = Tensor::from_slice(&[2.0f32, 3.0]).view([2, 1, 1]);
        let loss_shared = ((&hs * &cmask).matmul(&proj)).sum(Kind::Float) + ((&hp * &pmask * &uses).matmul(&proj)).sum(Kind::Float);
        let full_mask = full_valid.to_kind(Kind::Float).unsqueeze(-1);
        let loss_plain = ((&plain * &full_mask).matmul(&proj)).sum(Kind::Float);
        let (gs, gp) = (grads(loss_shared), grads(loss_plain));
        for (a, b) in gs.iter().zip(&gp) {
            let scale = f64::try_from(b.abs().max()).unwrap().max(1e-3);
            let d = max_abs_diff(a, b);
            assert!(d < 1e-4 * scale, "{name}: a weight gradient differs by {d} (scale {scale})");
        }
    }
}

/// Opt-in, a real pretrained model: SmolLM2-135M-Instruct (30 Llama layers, GQA 9/3, tied
/// embeddings, 49,152 tokens) prepared from a PyPI package by `scripts/prepare_smollm2.py`,
/// against transformers' own outputs written beside it: the chat template's text and token
/// ids, the last prompt position's logits, and 32 greedy tokens with their log-probs. Runs
/// when `PONDER_REAL_MODEL` names that folder (it is 540 MB and made by a script, so the
/// default test run does not have it):
///     PONDER_REAL_MODEL=runs/smollm2-135m-instruct cargo test --release -p rollout --test parity real_model -- --nocapture
#[test]
fn real_model_matches_transformers() {
    let Ok(dir) = std::env::var("PONDER_REAL_MODEL") else {
        eprintln!("real_model_matches_transformers: skipped (set PONDER_REAL_MODEL to the folder scripts/prepare_smollm2.py writes)");
        return;
    };
    // cargo runs tests in the crate's folder: a relative path is taken from the workspace's.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let text = std::fs::read_to_string(dir.join("reference.json"))
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/prepare_smollm2.py first", dir.join("reference.json").display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    let tk = Tokenizer::from_dir(&dir).unwrap();
    let p = Policy::load(&dir, Kind::Float, parity_device()).unwrap();
    let eos = p.eos_token_ids();
    let (mut worst_logit, mut worst_lp) = (0f64, 0f64);
    for (i, c) in v["chats"].as_array().unwrap().iter().enumerate() {
        let messages: Vec<rollout::tokenizer::ChatMessage> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| rollout::tokenizer::ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let text = tk.apply_chat_template(&messages, true).unwrap();
        assert_eq!(text, c["text"].as_str().unwrap(), "chat {i}: template text");
        let ids = tk.encode(&text, false).unwrap();
        let want_ids: Vec<i64> = serde_json::from_value(c["ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "chat {i}: token ids");
        let input = Tensor::from_slice(&ids).unsqueeze(0).to_device(parity_device());
        let logits = tch::no_grad(|| p.model.forward(&input, &Tensor::ones_like(&input))).squeeze_dim(0);
        let last = logits.get(ids.len() as i64 - 1);
        let want: Vec<f32> = serde_json::from_value(c["last_logits"].clone()).unwrap();
        let d = max_abs_diff(&last, &Tensor::from_slice(&want));
        worst_logit = worst_logit.max(d);
        assert!(d < 2e-3, "chat {i}: last-position logits differ from transformers by {d}");
        let greedy: Vec<i64> = serde_json::from_value(c["greedy"].clone()).unwrap();
        let out = generate(&p.model, None, &[ids.clone()], &[0], &eos, &greedy_params(greedy.len())).unwrap();
        assert_eq!(out[0].token_ids, greedy, "chat {i}: greedy tokens differ from transformers'");
        let lps: Vec<f32> = serde_json::from_value(c["greedy_logprobs"].clone()).unwrap();
        for (a, b) in out[0].logprobs.iter().zip(&lps) {
            worst_lp = worst_lp.max((a - b).abs() as f64);
        }
        assert!(worst_lp < 1e-3, "chat {i}: greedy log-probs differ from transformers' by {worst_lp}");
        eprintln!("chat {i}: {:?}", tk.decode(&out[0].token_ids, true).unwrap());
    }
    eprintln!("real model parity: max |logit diff| {worst_logit:.2e}, max |log-prob diff| {worst_lp:.2e}");
}
