//! Rollouts on inference servers that are already running: SGLang (first) and vLLM.
//!
//! ponder sends one request per sample, from token ids, with the sample's own seed (so a
//! sample does not depend on which server drew it or with what else), and reads back the
//! sampled token ids with their log-probs. New weights reach the servers through a folder
//! in the Hugging Face layout and each engine's reload route, wrapped in its pause / reload /
//! continue cycle; every SGLang answer names the weight version it was drawn with and is
//! checked against the version ponder last published. Every call has a timeout: a sync or
//! a generation that stalls is an error naming the server and the route, never a hang.
//!
//! The wire formats live in [`sglang`] and [`vllm`]; [`testing`] is a loopback stand-in for
//! both servers, for this crate's tests and the trainer's.

pub mod sglang;
pub mod testing;
pub mod vllm;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Which server speaks at `urls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Sglang,
    Vllm,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Sglang => "SGLang",
            EngineKind::Vllm => "vLLM",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub kind: EngineKind,
    /// Base URLs, e.g. `http://10.0.0.2:30000`; samples are spread over them.
    pub urls: Vec<String>,
    /// Opening a connection.
    pub connect_timeout: Duration,
    /// One generation request, from sending it to the last byte of the answer.
    pub request_timeout: Duration,
    /// One call of the reload cycle (pause, reload, continue, version check).
    pub reload_timeout: Duration,
    /// Requests one server has in flight at once.
    pub max_in_flight: usize,
}

impl EngineConfig {
    pub fn new(kind: EngineKind, urls: Vec<String>) -> EngineConfig {
        EngineConfig {
            kind,
            urls,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(600),
            reload_timeout: Duration::from_secs(600),
            max_in_flight: 64,
        }
    }
}

/// What every request of one call samples with. Training needs `top_p = 1`, `top_k = 0`
/// and `min_p = 0`: the learner's ratios assume the full distribution (the trainer checks).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    /// 0 = off.
    pub top_k: i64,
    pub min_p: f64,
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    /// Token ids that end a sample (the model's EOS ids); they are kept in the output.
    pub stop_token_ids: Vec<i64>,
    /// Strings that end a sample; the server keeps them in the output (ponder cuts the text).
    pub stop: Vec<String>,
}

/// One sample to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub prompt: Vec<i64>,
    pub seed: u64,
    /// Requests with the same key go to the same server (the samples of one prompt share
    /// its prefix cache there).
    pub key: usize,
}

/// Why a sample ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// One of `stop_token_ids` was sampled (it is the last token).
    StopToken,
    /// One of the stop strings appeared.
    StopString,
    /// `max_new_tokens` reached.
    Length,
}

/// One drawn sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub token_ids: Vec<i64>,
    /// The engine's log-prob of each sampled token (after temperature, before any filter).
    pub logprobs: Vec<f32>,
    pub finish: Finish,
    /// Index into `urls` of the server that drew it.
    pub server: usize,
    /// The weight version the server reported with the answer (SGLang), if any.
    pub weight_version: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "cannot reach the {kind} server at {url} ({route}): {cause}\n  \
         is it running and reachable from here? Start it as the README's \"Rollouts on an inference engine\" shows, \
         and list its address in [rollout] urls"
    )]
    Unreachable { kind: &'static str, url: String, route: String, cause: String },
    #[error(
        "the {kind} server at {url} did not answer {route} within {secs} s\n  \
         check the server's log; if its answers are simply slow (long generations, a large reload), \
         raise [rollout] engine_timeout_s"
    )]
    Timeout { kind: &'static str, url: String, route: String, secs: u64 },
    #[error("the {kind} server at {url} answered {route} with HTTP {status}: {body}{hint}")]
    Status { kind: &'static str, url: String, route: String, status: u16, body: String, hint: String },
    #[error("the {kind} server at {url} answered {route} with something ponder cannot read: {what}")]
    BadAnswer { kind: &'static str, url: String, route: String, what: String },
    #[error(
        "the {kind} server at {url} drew a sample with weight version {got:?} where ponder published {expected:?}\n  \
         another process may have reloaded it, or a reload did not take; give each training run its own servers"
    )]
    VersionMismatch { kind: &'static str, url: String, expected: String, got: String },
    #[error("the {kind} server at {url} could not load the weights in {folder}: {message}")]
    ReloadFailed { kind: &'static str, url: String, folder: String, message: String },
    #[error("[rollout] urls is empty: name at least one {0} server")]
    NoServers(&'static str),
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// A client for a fleet of servers of one kind.
pub struct EngineClient {
    cfg: EngineConfig,
    generate_agent: ureq::Agent,
    control_agent: ureq::Agent,
    /// The version last published by [`reload`](Self::reload); answers must carry it.
    version: RwLock<Option<String>>,
}

fn agent(connect: Duration, total: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("ponder/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(connect))
        .timeout_global(Some(total))
        .build()
        .into()
}

impl EngineClient {
    /// A client for `cfg.urls`; asks each server's health route first, so a wrong address
    /// fails here and not in the middle of a step.
    pub fn connect(cfg: EngineConfig) -> Result<EngineClient> {
        if cfg.urls.is_empty() {
            return Err(EngineError::NoServers(cfg.kind.name()));
        }
        let mut cfg = cfg;
        cfg.urls = cfg.urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        cfg.max_in_flight = cfg.max_in_flight.max(1);
        let client = EngineClient {
            generate_agent: agent(cfg.connect_timeout, cfg.request_timeout),
            control_agent: agent(cfg.connect_timeout, cfg.reload_timeout),
            cfg,
            version: RwLock::new(None),
        };
        for s in 0..client.cfg.urls.len() {
            client.call(s, "GET", "/health", None, true)?;
        }
        Ok(client)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The weight version answers must carry (None before the first reload).
    pub fn version(&self) -> Option<String> {
        self.version.read().unwrap().clone()
    }

    /// Draws every request, spread over the servers by key, each server with at most
    /// `max_in_flight` requests at once; answers come back in request order. The first
    /// failure stops the call (requests still queued are not sent).
    pub fn generate(&self, reqs: &[Request], s: &Sampling) -> Result<Vec<Generated>> {
        let servers = self.cfg.urls.len();
        let queues: Vec<Mutex<VecDeque<usize>>> =
            (0..servers).map(|k| Mutex::new((0..reqs.len()).filter(|&i| reqs[i].key % servers == k).collect())).collect();
        let results: Vec<Mutex<Option<Result<Generated>>>> = reqs.iter().map(|_| Mutex::new(None)).collect();
        let failed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for (server, queue) in queues.iter().enumerate() {
                let threads = self.cfg.max_in_flight.min(queue.lock().unwrap().len());
                for _ in 0..threads {
                    let (results, failed) = (&results, &failed);
                    scope.spawn(move || loop {
                        if failed.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        let Some(i) = queue.lock().unwrap().pop_front() else { break };
                        let r = self.generate_one(server, &reqs[i], s);
                        if r.is_err() {
                            failed.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        *results[i].lock().unwrap() = Some(r);
                    });
                }
            }
        });
        let mut out = Vec::with_capacity(reqs.len());
        let mut first_err = None;
        for r in results {
            match r.into_inner().unwrap() {
                Some(Ok(g)) => out.push(g),
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                None => {}
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    fn generate_one(&self, server: usize, req: &Request, s: &Sampling) -> Result<Generated> {
        let (route, body) = match self.cfg.kind {
            EngineKind::Sglang => ("/generate", sglang::generate_body(req, s)),
            EngineKind::Vllm => ("/inference/v1/generate", vllm::generate_body(req, s)),
        };
        let answer = self.call(server, "POST", route, Some(&body), false)?;
        let bad = |what: String| EngineError::BadAnswer {
            kind: self.cfg.kind.name(),
            url: self.cfg.urls[server].clone(),
            route: route.into(),
            what,
        };
        let mut g = match self.cfg.kind {
            EngineKind::Sglang => sglang::parse_generate(&answer, s).map_err(bad)?,
            EngineKind::Vllm => vllm::parse_generate(&answer, s).map_err(bad)?,
        };
        g.server = server;
        if let (Some(expected), Some(got)) = (self.version(), g.weight_version.as_ref()) {
            if &expected != got {
                return Err(EngineError::VersionMismatch {
                    kind: self.cfg.kind.name(),
                    url: self.cfg.urls[server].clone(),
                    expected,
                    got: got.clone(),
                });
            }
        }
        Ok(g)
    }

    /// Points every server at the weights in `folder` (a model folder in the Hugging Face
    /// layout, readable by the servers at that path) as `version`: pause, reload, continue,
    /// then (SGLang) read the version back. ponder calls this between steps, with nothing in
    /// flight, so pausing aborts nothing.
    pub fn reload(&self, folder: &Path, version: &str) -> Result<()> {
        let path = folder.to_string_lossy().into_owned();
        for server in 0..self.cfg.urls.len() {
            match self.cfg.kind {
                EngineKind::Sglang => self.reload_sglang(server, &path, version)?,
                EngineKind::Vllm => self.reload_vllm(server, &path)?,
            }
        }
        *self.version.write().unwrap() = Some(version.to_string());
        Ok(())
    }

    fn reload_sglang(&self, server: usize, path: &str, version: &str) -> Result<()> {
        let kind = self.cfg.kind.name();
        let url = self.cfg.urls[server].clone();
        self.call(server, "POST", "/pause_generation", Some(&serde_json::json!({ "mode": "abort" })), true)?;
        let answer = self.call(server, "POST", "/update_weights_from_disk", Some(&sglang::reload_body(path, version)), true);
        // Generation continues whatever the reload did, so a failed reload leaves a server that
        // still answers (with the old version, which the next answers' check reports).
        let resumed = self.call(server, "POST", "/continue_generation", Some(&serde_json::json!({})), true);
        // SGLang answers a failed load with HTTP 400 and `success: false` and its reason.
        let failed = |message| EngineError::ReloadFailed { kind, url: url.clone(), folder: path.into(), message };
        match answer {
            Ok(a) => sglang::parse_reload(&a).map_err(failed)?,
            Err(EngineError::Status { status: 400, body, .. }) => {
                let reason = serde_json::from_str(&body).ok().and_then(|v: serde_json::Value| sglang::parse_reload(&v).err());
                return Err(failed(reason.unwrap_or(body)));
            }
            Err(e) => return Err(e),
        }
        resumed?;
        let got = self.call(server, "GET", "/get_weight_version", None, true)?;
        let got = got.get("weight_version").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        if got != version {
            return Err(EngineError::VersionMismatch { kind, url, expected: version.into(), got });
        }
        Ok(())
    }

    fn reload_vllm(&self, server: usize, path: &str) -> Result<()> {
        let kind = self.cfg.kind.name();
        let url = self.cfg.urls[server].clone();
        self.call(server, "POST", "/pause?mode=abort&clear_cache=true", None, true)?;
        let answer = self.call(server, "POST", "/collective_rpc", Some(&vllm::reload_body(path)), true);
        let reset = answer.is_ok().then(|| self.call(server, "POST", "/reset_prefix_cache", None, true));
        let resumed = self.call(server, "POST", "/resume", None, true);
        answer.map_err(|e| match e {
            EngineError::Status { status, body, .. } if status != 404 => {
                EngineError::ReloadFailed { kind, url: url.clone(), folder: path.into(), message: body }
            }
            e => e,
        })?;
        if let Some(r) = reset {
            r?;
        }
        resumed?;
        Ok(())
    }

    /// One HTTP call; the JSON answer (or `null` for an empty or non-JSON 2xx body).
    fn call(&self, server: usize, method: &str, route: &str, body: Option<&serde_json::Value>, control: bool) -> Result<serde_json::Value> {
        let kind = self.cfg.kind.name();
        let url = &self.cfg.urls[server];
        let (agent, limit) =
            if control { (&self.control_agent, self.cfg.reload_timeout) } else { (&self.generate_agent, self.cfg.request_timeout) };
        let full = format!("{url}{route}");
        let sent = match (method, body) {
            ("GET", _) => agent.get(&full).call(),
            (_, Some(b)) => agent.post(&full).header("Content-Type", "application/json").send(b.to_string()),
            (_, None) => agent.post(&full).send_empty(),
        };
        let route_name = route.split('?').next().unwrap_or(route).to_string();
        let mut resp = sent.map_err(|e| self.transport_error(server, &route_name, e, limit))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| self.transport_error(server, &route_name, e, limit))?;
        if !(200..300).contains(&status) {
            let hint = match (self.cfg.kind, status, route_name.as_str()) {
                (EngineKind::Vllm, 404, "/collective_rpc" | "/pause" | "/resume" | "/inference/v1/generate") => {
                    "\n  vLLM serves this route only with VLLM_SERVER_DEV_MODE=1 set for the server (and a vLLM recent enough to have it)"
                }
                (EngineKind::Sglang, 404, _) => "\n  this SGLang is older than ponder needs; use the version the README names",
                _ => "",
            };
            return Err(EngineError::Status { kind, url: url.clone(), route: route_name, status, body: clip(&text), hint: hint.into() });
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    fn transport_error(&self, server: usize, route: &str, e: ureq::Error, limit: Duration) -> EngineError {
        let (kind, url) = (self.cfg.kind.name(), self.cfg.urls[server].clone());
        match e {
            ureq::Error::Timeout(t) => {
                let secs = if format!("{t:?}").contains("Connect") { self.cfg.connect_timeout } else { limit }.as_secs();
                EngineError::Timeout { kind, url, route: route.into(), secs }
            }
            e => EngineError::Unreachable { kind, url, route: route.into(), cause: e.to_string() },
        }
    }
}

/// The first 500 characters of a server's message.
fn clip(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(500) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Seeds go out as non-negative 63-bit integers: both servers hand them to code that takes
/// a signed 64-bit seed.
pub fn wire_seed(seed: u64) -> u64 {
    seed & (i64::MAX as u64)
}
