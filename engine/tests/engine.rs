//! The engine client against loopback mocks of SGLang and vLLM: generation in each dialect,
//! requests spread over servers, the reload cycle, the weight-version check, timeouts, a dead
//! server and servers answering errors. Nothing here leaves 127.0.0.1.

use ponder_engine::testing::{toy, MockEngine, MockGen};
use ponder_engine::{wire_seed, EngineClient, EngineConfig, EngineError, EngineKind, Finish, Request, Sampling};
use std::time::{Duration, Instant};

fn sampling() -> Sampling {
    Sampling {
        temperature: 0.8,
        top_p: 1.0,
        top_k: 0,
        min_p: 0.0,
        max_new_tokens: 12,
        min_new_tokens: 0,
        stop_token_ids: vec![2],
        stop: vec![],
    }
}

fn requests(n: usize) -> Vec<Request> {
    (0..n).map(|i| Request { prompt: vec![10 + (i / 4) as i64, 11], seed: u64::MAX - i as u64 * 977, key: i / 4 }).collect()
}

fn client(kind: EngineKind, urls: Vec<String>) -> EngineClient {
    EngineClient::connect(EngineConfig::new(kind, urls)).unwrap()
}

/// A model folder the mock accepts (it checks for config.json).
fn folder(tmp: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let d = tmp.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), "{}").unwrap();
    d
}

#[test]
fn generation_in_both_dialects_spread_by_key() {
    for kind in [EngineKind::Sglang, EngineKind::Vllm] {
        let (a, b) = (MockEngine::start(kind), MockEngine::start(kind));
        let c = client(kind, vec![a.url.clone(), format!("{}/", b.url)]);
        let reqs = requests(16);
        let got = c.generate(&reqs, &sampling()).unwrap();
        assert_eq!(got.len(), 16);
        for (r, g) in reqs.iter().zip(&got) {
            // What the toy generator draws for this request, computed here independently of
            // the wire: the answer must be that sample, in request order.
            let want = toy(&MockGen {
                prompt: r.prompt.clone(),
                seed: wire_seed(r.seed),
                temperature: 0.8,
                max_new_tokens: 12,
                stop_token_ids: vec![2],
                weights: None,
            })
            .unwrap();
            assert_eq!(g.token_ids, want.token_ids, "{kind:?}");
            assert_eq!(g.logprobs, want.logprobs);
            assert_eq!(g.finish, want.finish);
            assert_eq!(g.server, r.key % 2, "a prompt's samples go to one server");
        }
        assert!(got.iter().any(|g| g.finish == Finish::StopToken) && got.iter().any(|g| g.finish == Finish::Length));
        for (m, server) in [(&a, 0), (&b, 1)] {
            let gens: Vec<_> = m.requests().into_iter().filter(|r| r.route.contains("generate")).collect();
            assert_eq!(gens.len(), 8, "{kind:?}: half the samples each");
            for r in gens {
                let sp = &r.body["sampling_params"];
                assert_eq!(sp["temperature"], 0.8);
                assert_eq!(sp["top_p"], 1.0);
                let prompt = if kind == EngineKind::Sglang { &r.body["input_ids"] } else { &r.body["token_ids"] };
                let key = (prompt[0].as_i64().unwrap() - 10) as usize;
                assert_eq!(key % 2, server);
            }
        }
    }
}

#[test]
fn sglang_reload_cycle_and_version_check() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (MockEngine::start(EngineKind::Sglang), MockEngine::start(EngineKind::Sglang));
    let c = client(EngineKind::Sglang, vec![a.url.clone(), b.url.clone()]);
    let v1 = folder(&tmp, "v1");
    c.reload(&v1, "step-1").unwrap();
    for m in [&a, &b] {
        assert_eq!(
            m.routes(),
            ["/health", "/pause_generation", "/update_weights_from_disk", "/continue_generation", "/get_weight_version"],
            "pause, reload, continue, then read the version back"
        );
        let rel = m.requests().into_iter().find(|r| r.route == "/update_weights_from_disk").unwrap();
        assert_eq!(rel.body["model_path"], v1.to_string_lossy().as_ref());
        assert_eq!(rel.body["weight_version"], "step-1");
        assert_eq!(m.version(), "step-1");
    }
    assert_eq!(c.version().as_deref(), Some("step-1"));
    let got = c.generate(&requests(8), &sampling()).unwrap();
    assert!(got.iter().all(|g| g.weight_version.as_deref() == Some("step-1")));
    assert_eq!(a.generated_while_paused() + b.generated_while_paused(), 0);

    // Another process reloads server b behind ponder's back: the next answer from b is refused.
    b.pin_version("someone-else");
    match c.generate(&requests(8), &sampling()) {
        Err(EngineError::VersionMismatch { url, expected, got, .. }) => {
            assert_eq!((url, expected.as_str(), got.as_str()), (b.url.clone(), "step-1", "someone-else"));
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    // ... and so is a reload that does not take.
    let err = c.reload(&folder(&tmp, "v2"), "step-2").unwrap_err();
    assert!(matches!(err, EngineError::VersionMismatch { .. }), "{err}");
}

#[test]
fn a_failed_reload_names_the_server_and_leaves_it_generating() {
    let tmp = tempfile::tempdir().unwrap();
    let m = MockEngine::start(EngineKind::Sglang);
    let c = client(EngineKind::Sglang, vec![m.url.clone()]);
    m.fail_reloads("Failed to load model: size mismatch for lm_head.weight");
    let err = c.reload(&folder(&tmp, "v1"), "step-1").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&m.url) && msg.contains("size mismatch") && msg.contains("v1"), "{msg}");
    assert_eq!(m.routes().last().unwrap(), "/continue_generation", "never left paused");
    assert_eq!(c.version(), None, "the published version did not change");
    // A folder the server cannot read is its error too.
    let m2 = MockEngine::start(EngineKind::Sglang);
    let c2 = client(EngineKind::Sglang, vec![m2.url.clone()]);
    let err = c2.reload(&tmp.path().join("missing"), "step-1").unwrap_err().to_string();
    assert!(err.contains("no config.json"), "{err}");
}

#[test]
fn vllm_reload_cycle_and_dev_mode_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let m = MockEngine::start(EngineKind::Vllm);
    let c = client(EngineKind::Vllm, vec![m.url.clone()]);
    let v1 = folder(&tmp, "v1");
    c.reload(&v1, "step-1").unwrap();
    assert_eq!(m.routes(), ["/health", "/pause", "/collective_rpc", "/reset_prefix_cache", "/resume"]);
    let rpc = m.requests().into_iter().find(|r| r.route == "/collective_rpc").unwrap();
    assert_eq!(rpc.body["method"], "reload_weights");
    assert_eq!(rpc.body["kwargs"]["weights_path"], v1.to_string_lossy().as_ref());
    assert_eq!(m.weights().as_deref(), Some(v1.to_string_lossy().as_ref()));
    // A server started without VLLM_SERVER_DEV_MODE has no /collective_rpc.
    m.fail("/collective_rpc", 404, 1);
    let err = c.reload(&v1, "step-2").unwrap_err().to_string();
    assert!(err.contains("VLLM_SERVER_DEV_MODE=1"), "{err}");
    assert_eq!(m.routes().last().unwrap(), "/resume");
}

#[test]
fn a_slow_server_times_out_instead_of_hanging() {
    let m = MockEngine::start(EngineKind::Sglang);
    m.delay_generation(Duration::from_secs(5));
    let mut cfg = EngineConfig::new(EngineKind::Sglang, vec![m.url.clone()]);
    cfg.request_timeout = Duration::from_millis(300);
    let c = EngineClient::connect(cfg).unwrap();
    let t = Instant::now();
    let err = c.generate(&requests(2), &sampling()).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
    assert!(matches!(err, EngineError::Timeout { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("/generate") && msg.contains(&m.url) && msg.contains("engine_timeout_s"), "{msg}");
}

#[test]
fn a_dead_server_is_a_clear_error() {
    let m = MockEngine::start(EngineKind::Sglang);
    let url = m.url.clone();
    m.stop();
    let err = EngineClient::connect(EngineConfig::new(EngineKind::Sglang, vec![url.clone()])).err().expect("no server");
    assert!(matches!(err, EngineError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&url) && err.to_string().contains("/health"), "{err}");

    // One that dies after the start: the generation call fails, naming it.
    let (a, b) = (MockEngine::start(EngineKind::Sglang), MockEngine::start(EngineKind::Sglang));
    let c = client(EngineKind::Sglang, vec![a.url.clone(), b.url.clone()]);
    b.stop();
    let err = c.generate(&requests(8), &sampling()).unwrap_err().to_string();
    assert!(err.contains(&b.url) && err.contains("cannot reach"), "{err}");
    assert!(EngineClient::connect(EngineConfig::new(EngineKind::Sglang, vec![])).is_err());
}

#[test]
fn server_errors_and_unreadable_answers() {
    let m = MockEngine::start(EngineKind::Sglang);
    let c = client(EngineKind::Sglang, vec![m.url.clone()]);
    m.fail("/generate", 503, 1);
    let err = c.generate(&requests(4), &sampling()).unwrap_err();
    match &err {
        EngineError::Status { status, body, .. } => assert!(*status == 503 && body.contains("mock failure"), "{err}"),
        other => panic!("{other:?}"),
    }
    // The failure stopped the call; the next call works.
    assert_eq!(c.generate(&requests(4), &sampling()).unwrap().len(), 4);
    // A generator that fails is the server's 500.
    let broken = MockEngine::with_generator(EngineKind::Vllm, std::sync::Arc::new(|_: &MockGen| Err("CUDA error".to_string())), None);
    let c = client(EngineKind::Vllm, vec![broken.url.clone()]);
    let err = c.generate(&requests(1), &sampling()).unwrap_err().to_string();
    assert!(err.contains("HTTP 500") && err.contains("CUDA error"), "{err}");
}
