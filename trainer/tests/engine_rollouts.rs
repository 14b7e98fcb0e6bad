//! GRPO with rollouts on an inference server: a loopback mock of SGLang (and of vLLM) that
//! samples with ponder's own model, loaded from the folders the trainer publishes. The mock's
//! model must be the learner's at every step, so the engine correction sees no mismatch; a
//! reload that did not deliver the new weights would show up as one.

#[path = "support/model_server.rs"]
mod model_server;

use model_server::model_server;
use ponder_engine::testing::{MockEngine, MockGen, MockOut};
use ponder_engine::EngineKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use trainer::tiny::{self, TinyShape};
use trainer::train::{self, Options};

const SHAPE: TinyShape = TinyShape { hidden: 64, layers: 2, heads: 4, kv_heads: 2, intermediate: 128, vocab: 384 };

fn setup(dir: &Path) {
    tiny::create_random_model(&dir.join("model"), SHAPE, &tiny::default_corpus(1, 600), 7).unwrap();
    let mut data = String::new();
    for i in 0..40 {
        data.push_str(&format!("{{\"prompt\": \"What is {i} + {}?\", \"answer\": \"{}\"}}\n", i + 3, 2 * i + 3));
    }
    std::fs::write(dir.join("train.jsonl"), &data).unwrap();
}

fn recipe(dir: &Path, rollout_extra: &str, grpo_extra: &str) -> PathBuf {
    let text = format!(
        r#"
[run]
name = "e"
seed = 5
output_dir = "{out}"

[model]
path = "{model}"

[data]
train = "{dir}/train.jsonl"
template = "{{prompt}} ="

[rollout]
group_size = 4
prompts_per_step = 3
max_new_tokens = 8
temperature = 0.9
{rollout_extra}

[[rewards]]
kind = "char_fraction"
chars = "0123456789"

[grpo]
beta = 0.0
loss_type = "grpo"
{grpo_extra}

[optim]
lr = 3e-3

[train]
steps = 3
save_every = 1
"#,
        out = dir.join("runs").display(),
        model = dir.join("model").display(),
        dir = dir.display(),
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn opts() -> Options {
    Options { quiet: true, ..Default::default() }
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn grpo_on_an_engine_publishes_every_step_and_sees_no_mismatch() {
    for kind in [EngineKind::Sglang, EngineKind::Vllm] {
        let tmp = tempfile::tempdir().unwrap();
        setup(tmp.path());
        let (a, b) = (model_server(kind), model_server(kind));
        let engine = if kind == EngineKind::Sglang { "sglang" } else { "vllm" };
        let r = recipe(tmp.path(), &format!("engine = \"{engine}\"\nurls = [\"{}\", \"{}\"]", a.url, b.url), "");
        let out = train::train(Some(&r), None, &[], opts()).unwrap();
        assert_eq!(out.steps_done, 3);
        let rows: Vec<_> = metrics(&out.run_dir).into_iter().filter(|r| r.get("reward").is_some()).collect();
        assert_eq!(rows.len(), 3);
        for row in &rows {
            // The servers sampled with exactly the learner's weights of that step: the learner's
            // log-probs of their tokens match theirs (float noise only), nothing is capped.
            let mm = row["engine/mismatch_kl"].as_f64().unwrap();
            assert!(mm.abs() < 1e-6, "{kind:?} step {}: mismatch {mm}", row["step"]);
            assert_eq!(row["engine/is_capped_fraction"].as_f64().unwrap(), 0.0);
            assert!(row["learner/rollout_logprob_diff_max"].as_f64().unwrap() < 1e-4, "{row}");
        }
        // Published once before the first rollout and after every step; the newest two kept.
        for m in [&a, &b] {
            let reloads = m.routes().iter().filter(|r| *r == "/update_weights_from_disk" || *r == "/collective_rpc").count();
            assert_eq!(reloads, 4, "{kind:?}");
            assert!(m.weights().unwrap().ends_with("engine-weights/step-3"), "{:?}", m.weights());
            assert_eq!(m.generated_while_paused(), 0);
            // Each server drew the samples of whole prompts (the prefix cache stays useful).
            assert!(m.routes().iter().any(|r| r.contains("generate")));
        }
        if kind == EngineKind::Sglang {
            assert_eq!(a.version(), "e/step-3");
        }
        let published = out.run_dir.join("engine-weights");
        let mut kept: Vec<String> =
            std::fs::read_dir(&published).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        kept.sort();
        assert_eq!(kept, ["step-2", "step-3"]);
        // A published folder is a model folder (weights, config, tokenizer) and nothing a
        // weight loader could mistake for weights.
        let files: Vec<String> =
            std::fs::read_dir(published.join("step-3")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(files.contains(&"model.safetensors".to_string()) && files.contains(&"config.json".to_string()), "{files:?}");
        assert_eq!(files.iter().filter(|f| f.ends_with(".safetensors")).count(), 1, "{files:?}");
        let loaded = rollout::model::weights::load_file(&published.join("step-3/model.safetensors")).unwrap();
        let ckpt = rollout::model::weights::load_file(&out.run_dir.join("checkpoints/step-3/model.safetensors")).unwrap();
        for (k, t) in &ckpt {
            assert!(t.equal(&loaded[k]), "{k}: the published weights are the learner's");
        }
    }
}

/// One-step-off overlap on a server: step t+1's samples are drawn while the learner updates
/// on step t, so the server still holds the weights published after step t-1. The lag shows
/// as engine mismatch whenever step t's update moved the weights, and the reload cycle still
/// runs once per step.
#[test]
fn overlap_on_an_engine_samples_a_step_behind() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let srv = model_server(EngineKind::Sglang);
    let r = recipe(tmp.path(), &format!("engine = \"sglang\"\nurls = [\"{}\"]\nstaleness = 1", srv.url), "");
    let out = train::train(Some(&r), None, &[], opts()).unwrap();
    let rows: Vec<_> = metrics(&out.run_dir).into_iter().filter(|r| r.get("reward").is_some()).collect();
    let f = |row: &serde_json::Value, k: &str| row[k].as_f64().unwrap();
    assert_eq!(rows.iter().map(|r| f(r, "rollout/staleness")).collect::<Vec<_>>(), [0.0, 1.0, 1.0]);
    assert!(f(&rows[0], "engine/mismatch_kl").abs() < 1e-6, "{}", rows[0]);
    // Step t+1's batch lags the learner by step t's update: a mismatch exactly when that
    // update moved the weights (a step whose groups all tie has a zero gradient).
    let mut lagged = 0;
    for w in rows.windows(2) {
        let (moved, mm) = (f(&w[0], "grad_norm") > 0.0, f(&w[1], "engine/mismatch_kl"));
        assert_eq!(mm > 1e-6, moved, "step {}: mismatch {mm} after an update that moved: {moved}", w[1]["step"]);
        lagged += moved as usize;
    }
    assert!(lagged > 0, "no step moved the weights: the test shows nothing");
    let reloads = srv.routes().iter().filter(|r| *r == "/update_weights_from_disk").count();
    assert_eq!(reloads, 4, "published before step 1 and after each step");
}

#[test]
fn engine_mismatch_is_measured_and_capped() {
    // A server whose log-probs are off by +ln 3 on every token (pi_engine three times too
    // high): r = pi_learner / pi_engine = 1/3 on every token, so mismatch = 1/3 + ln 3 - 1
    // and nothing exceeds a cap of 2. With the opposite error (r = 3) every token is capped.
    for (shift, want_capped) in [(3f32.ln(), 0.0), (-(3f32.ln()), 1.0)] {
        let tmp = tempfile::tempdir().unwrap();
        setup(tmp.path());
        let inner = model_server(EngineKind::Sglang);
        let inner_url = inner.url.clone();
        // A proxy generator: draw from the model server, then skew its log-probs.
        let client = ponder_engine::EngineClient::connect(ponder_engine::EngineConfig::new(EngineKind::Sglang, vec![inner_url])).unwrap();
        let client = Arc::new(client);
        let (gc, rc) = (client.clone(), client);
        let skewed = MockEngine::with_generator(
            EngineKind::Sglang,
            Arc::new(move |g: &MockGen| {
                let s = ponder_engine::Sampling {
                    temperature: g.temperature,
                    top_p: 1.0,
                    top_k: 0,
                    min_p: 0.0,
                    max_new_tokens: g.max_new_tokens,
                    min_new_tokens: 0,
                    stop_token_ids: g.stop_token_ids.clone(),
                    stop: vec![],
                };
                let mut x = gc
                    .generate(&[ponder_engine::Request { prompt: g.prompt.clone(), seed: g.seed, key: 0 }], &s)
                    .map_err(|e| e.to_string())?
                    .remove(0);
                x.logprobs.iter_mut().for_each(|l| *l += shift);
                Ok(MockOut { token_ids: x.token_ids, logprobs: x.logprobs, finish: x.finish })
            }),
            Some(Arc::new(move |folder: &str| rc.reload(Path::new(folder), "inner").map_err(|e| e.to_string()))),
        );
        let r = recipe(tmp.path(), &format!("engine = \"sglang\"\nurls = [\"{}\"]", skewed.url), "engine_is_cap = 2.0");
        let out = train::train(Some(&r), None, &[], opts()).unwrap();
        let rows: Vec<_> = metrics(&out.run_dir).into_iter().filter(|r| r.get("reward").is_some()).collect();
        let r0 = 1.0 / 3.0f64;
        let r_true = if want_capped == 0.0 { r0 } else { 3.0 };
        let want = r_true - r_true.ln() - 1.0;
        for row in &rows {
            let mm = row["engine/mismatch_kl"].as_f64().unwrap();
            assert!((mm - want).abs() < 1e-4, "mismatch {mm}, want {want}");
            assert_eq!(row["engine/is_capped_fraction"].as_f64().unwrap(), want_capped);
        }
    }
}

#[test]
fn engine_recipes_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let dead = MockEngine::start(EngineKind::Sglang);
    let url = dead.url.clone();
    dead.stop();
    for (rollout_extra, needle) in [
        ("engine = \"sglang\"".to_string(), "needs rollout.urls".to_string()),
        ("urls = [\"http://127.0.0.1:1\"]".to_string(), "rollout.engine is \"local\"".to_string()),
        ("engine = \"vllm\"\nurls = [\"localhost:8000\"]".to_string(), "not an http:// or https:// URL".to_string()),
        (
            "engine = \"sglang\"\nurls = [\"http://127.0.0.1:1\"]\ntop_p = 0.9".to_string(),
            "top_p / top_k / min_p must be 1 / 0 / 0".to_string(),
        ),
        (format!("engine = \"sglang\"\nurls = [\"{url}\"]"), format!("cannot reach the SGLang server at {url}")),
    ] {
        let _ = std::fs::remove_dir_all(tmp.path().join("runs"));
        let r = recipe(tmp.path(), &rollout_extra, "");
        let err = format!("{:#}", train::train(Some(&r), None, &[], opts()).unwrap_err());
        assert!(err.contains(&needle), "{rollout_extra}: {err}");
    }
}
