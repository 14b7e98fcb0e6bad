//! A loopback stand-in for an SGLang or a vLLM server, for tests (this crate's and the
//! trainer's): the generation route in each dialect, the reload cycle's routes, a weight
//! version, and faults on demand (HTTP errors, slow answers, a pinned wrong version, a
//! reload that fails, a closed port). What it samples comes from a generator function: a
//! deterministic toy by default, or a real model (the trainer's tests plug in ponder's own
//! policy, so training through the mock can be compared with training in process). Every
//! request is recorded. Standard library only; one thread per connection; every answer
//! closes its connection.

use crate::{EngineKind, Finish};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One sample to draw, as the mock read it from the request.
#[derive(Debug, Clone)]
pub struct MockGen {
    pub prompt: Vec<i64>,
    pub seed: u64,
    pub temperature: f64,
    pub max_new_tokens: usize,
    pub stop_token_ids: Vec<i64>,
    /// The folder of the last reload (None: the weights the server started with).
    pub weights: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MockOut {
    pub token_ids: Vec<i64>,
    pub logprobs: Vec<f32>,
    pub finish: Finish,
}

pub type Generator = Arc<dyn Fn(&MockGen) -> Result<MockOut, String> + Send + Sync>;
pub type ReloadHook = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A recorded request: method, route (with its query), JSON body (Null when none).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub route: String,
    pub body: Value,
}

struct State {
    version: String,
    weights: Option<String>,
    paused: bool,
    requests: Vec<Recorded>,
    /// (route prefix, status): the next matching requests fail with that status.
    failures: VecDeque<(String, u16)>,
    generate_delay: Option<Duration>,
    pinned_version: Option<String>,
    reload_error: Option<String>,
    generated_while_paused: usize,
}

pub struct MockEngine {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub kind: EngineKind,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stopped: Arc<AtomicBool>,
}

/// splitmix64, for the toy generator.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The toy generator: a completion that depends only on the prompt, the seed and the weight
/// folder, so tests can predict every answer. Tokens are 3..53; a sample shorter than the
/// budget ends with the first stop token (its length counts that token too).
pub fn toy(g: &MockGen) -> Result<MockOut, String> {
    let base = g.prompt.iter().fold(g.seed, |h, &t| mix(h ^ t as u64)) ^ g.weights.as_deref().map_or(0, |w| mix(w.len() as u64));
    // Half the samples run out of budget; the others stop early on the stop token.
    let len = (1 + (mix(base) % (2 * g.max_new_tokens.max(1) as u64)) as usize).min(g.max_new_tokens);
    let mut token_ids: Vec<i64> = (0..len).map(|k| 3 + (mix(base.wrapping_add(k as u64 + 1)) % 50) as i64).collect();
    let finish = if len < g.max_new_tokens && !g.stop_token_ids.is_empty() {
        token_ids.push(g.stop_token_ids[0]);
        Finish::StopToken
    } else {
        Finish::Length
    };
    let logprobs = token_ids.iter().map(|&t| -((t % 7) as f32 + 1.0) / 4.0).collect();
    Ok(MockOut { token_ids, logprobs, finish })
}

impl MockEngine {
    /// A server of `kind` sampling with the toy generator.
    pub fn start(kind: EngineKind) -> MockEngine {
        Self::with_generator(kind, Arc::new(toy), None)
    }

    /// A server of `kind` sampling with `generator`; `on_reload` sees each reload's folder
    /// (an error there is the reload's error).
    pub fn with_generator(kind: EngineKind, generator: Generator, on_reload: Option<ReloadHook>) -> MockEngine {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            version: "default".into(),
            weights: None,
            paused: false,
            requests: vec![],
            failures: VecDeque::new(),
            generate_delay: None,
            pinned_version: None,
            reload_error: None,
            generated_while_paused: 0,
        }));
        let stopped = Arc::new(AtomicBool::new(false));
        let (st, stop) = (state.clone(), stopped.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, generator, on_reload) = (st.clone(), generator.clone(), on_reload.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, kind, &st, &generator, on_reload.as_ref());
                });
            }
        });
        MockEngine { url: format!("http://{addr}"), kind, addr, state, stopped }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The routes called so far, in order, without queries.
    pub fn routes(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.route.split('?').next().unwrap().to_string()).collect()
    }

    /// The next `times` requests whose route starts with `route` answer `status`.
    pub fn fail(&self, route: &str, status: u16, times: usize) {
        let mut s = self.state.lock().unwrap();
        for _ in 0..times {
            s.failures.push_back((route.to_string(), status));
        }
    }

    /// Generation answers wait this long first.
    pub fn delay_generation(&self, d: Duration) {
        self.state.lock().unwrap().generate_delay = Some(d);
    }

    /// Answers report this version whatever was loaded (a server another process reloaded).
    pub fn pin_version(&self, v: &str) {
        self.state.lock().unwrap().pinned_version = Some(v.to_string());
    }

    /// Reloads answer `success: false` with this message.
    pub fn fail_reloads(&self, message: &str) {
        self.state.lock().unwrap().reload_error = Some(message.to_string());
    }

    pub fn version(&self) -> String {
        self.state.lock().unwrap().version.clone()
    }

    pub fn weights(&self) -> Option<String> {
        self.state.lock().unwrap().weights.clone()
    }

    /// Generation requests that arrived while the server was paused (a broken cycle).
    pub fn generated_while_paused(&self) -> usize {
        self.state.lock().unwrap().generated_while_paused
    }

    /// Closes the port: connections are refused from now on (a dead server).
    pub fn stop(&self) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            let _ = TcpStream::connect(self.addr);
            for _ in 0..200 {
                if TcpStream::connect(self.addr).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for MockEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    conn: TcpStream,
    kind: EngineKind,
    st: &Mutex<State>,
    generator: &Generator,
    on_reload: Option<&ReloadHook>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, route) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, answer) = route_request(kind, st, generator, on_reload, Recorded { method, route, body });
    let text = answer.to_string();
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    conn.flush()
}

fn route_request(
    kind: EngineKind,
    st: &Mutex<State>,
    generator: &Generator,
    on_reload: Option<&ReloadHook>,
    req: Recorded,
) -> (u16, Value) {
    let path = req.route.split('?').next().unwrap_or("").to_string();
    let delay = {
        let mut s = st.lock().unwrap();
        s.requests.push(req.clone());
        if let Some(k) = s.failures.iter().position(|(r, _)| path.starts_with(r.as_str())) {
            let (_, status) = s.failures.remove(k).unwrap();
            return (status, json!({"object": "error", "message": format!("mock failure on {path}"), "code": status}));
        }
        s.generate_delay
    };
    let generate_route = match kind {
        EngineKind::Sglang => "/generate",
        EngineKind::Vllm => "/inference/v1/generate",
    };
    match (req.method.as_str(), path.as_str()) {
        ("GET", "/health") => (200, Value::Null),
        ("POST", p) if p == generate_route => {
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            let (weights, version) = {
                let mut s = st.lock().unwrap();
                if s.paused {
                    s.generated_while_paused += 1;
                }
                (s.weights.clone(), s.pinned_version.clone().unwrap_or(s.version.clone()))
            };
            let sp = &req.body["sampling_params"];
            let prompt_key = if kind == EngineKind::Sglang { "input_ids" } else { "token_ids" };
            let g = MockGen {
                prompt: req.body[prompt_key].as_array().map(|a| a.iter().filter_map(|t| t.as_i64()).collect()).unwrap_or_default(),
                seed: sp["sampling_seed"].as_u64().or(sp["seed"].as_u64()).unwrap_or(0),
                temperature: sp["temperature"].as_f64().unwrap_or(1.0),
                max_new_tokens: sp["max_new_tokens"].as_u64().or(sp["max_tokens"].as_u64()).unwrap_or(16) as usize,
                stop_token_ids: sp["stop_token_ids"].as_array().map(|a| a.iter().filter_map(|t| t.as_i64()).collect()).unwrap_or_default(),
                weights,
            };
            match generator(&g) {
                Ok(out) => (200, answer(kind, &out, &version)),
                Err(e) => (500, json!({"object": "error", "message": e})),
            }
        }
        ("POST", "/pause_generation") | ("POST", "/pause") => {
            st.lock().unwrap().paused = true;
            (200, json!({"message": "Generation paused successfully.", "status": "ok"}))
        }
        ("POST", "/continue_generation") | ("POST", "/resume") => {
            st.lock().unwrap().paused = false;
            (200, json!({"message": "Generation continued successfully.", "status": "ok"}))
        }
        ("POST", "/reset_prefix_cache") => (200, Value::Null),
        ("GET", "/get_weight_version") if kind == EngineKind::Sglang => {
            let s = st.lock().unwrap();
            (200, json!({"weight_version": s.pinned_version.clone().unwrap_or(s.version.clone())}))
        }
        ("POST", "/update_weights_from_disk") if kind == EngineKind::Sglang => {
            let folder = req.body["model_path"].as_str().unwrap_or("").to_string();
            match reload(st, on_reload, &folder) {
                Ok(()) => {
                    let mut s = st.lock().unwrap();
                    if let Some(v) = req.body["weight_version"].as_str() {
                        s.version = v.to_string();
                    }
                    (200, json!({"success": true, "message": "Succeeded to update model weights.", "num_paused_requests": 0}))
                }
                Err(m) => (400, json!({"success": false, "message": m, "num_paused_requests": 0})),
            }
        }
        ("POST", "/collective_rpc") if kind == EngineKind::Vllm => {
            if req.body["method"] != "reload_weights" {
                return (400, json!({"error": "unknown method"}));
            }
            let folder = req.body["kwargs"]["weights_path"].as_str().unwrap_or("").to_string();
            match reload(st, on_reload, &folder) {
                Ok(()) => (200, json!({"results": [null]})),
                Err(m) => (500, json!({"error": m})),
            }
        }
        _ => (404, json!({"detail": "Not Found"})),
    }
}

fn reload(st: &Mutex<State>, on_reload: Option<&ReloadHook>, folder: &str) -> Result<(), String> {
    if let Some(m) = st.lock().unwrap().reload_error.clone() {
        return Err(m);
    }
    if !std::path::Path::new(folder).join("config.json").is_file() {
        return Err(format!("{folder}: no config.json"));
    }
    if let Some(hook) = on_reload {
        hook(folder)?;
    }
    st.lock().unwrap().weights = Some(folder.to_string());
    Ok(())
}

fn answer(kind: EngineKind, out: &MockOut, version: &str) -> Value {
    match kind {
        EngineKind::Sglang => {
            let finish = match out.finish {
                Finish::StopToken => json!({"type": "stop", "matched": out.token_ids.last()}),
                Finish::StopString => json!({"type": "stop", "matched": "stop"}),
                Finish::Length => json!({"type": "length", "length": out.token_ids.len()}),
            };
            let entries: Vec<Value> = out.token_ids.iter().zip(&out.logprobs).map(|(t, l)| json!([l, t, null])).collect();
            json!({
                "text": "", "output_ids": out.token_ids,
                "meta_info": {"id": "mock", "finish_reason": finish, "prompt_tokens": 0, "completion_tokens": out.token_ids.len(),
                              "weight_version": version, "output_token_logprobs": entries}
            })
        }
        EngineKind::Vllm => {
            let finish = if out.finish == Finish::Length { "length" } else { "stop" };
            let content: Vec<Value> = out
                .token_ids
                .iter()
                .zip(&out.logprobs)
                .map(|(t, l)| json!({"token": format!("token_id:{t}"), "logprob": l, "bytes": null, "top_logprobs": []}))
                .collect();
            json!({"request_id": "mock", "choices": [{"index": 0, "finish_reason": finish, "token_ids": out.token_ids, "logprobs": {"content": content}}]})
        }
    }
}
