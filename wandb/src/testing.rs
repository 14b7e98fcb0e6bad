//! A loopback stand-in for the W&B server, for tests (this crate's and the trainer's): it
//! records every request, keeps each run's history like the real server does (lines written
//! at the offsets the client gives), and can be told to fail, stall or drop connections.
//! Standard library only; one thread per connection; every answer closes the connection.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    /// Answer like W&B.
    Normal,
    /// Answer every request with HTTP 500.
    Error500,
    /// Answer every request with this HTTP status (e.g. 401 for a bad key).
    Status(u16),
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Read the request, then close the connection without a word.
    Drop,
    /// Process the request, then close the connection before answering (the client cannot
    /// tell whether it arrived).
    Lost,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What the server did with it.
    pub answered: Behavior,
}

impl Request {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The GraphQL operation (`UpsertBucket`, `CreateRunFiles`) of a `/graphql` request.
    pub fn operation(&self) -> Option<String> {
        let q = self.json()["query"].as_str()?.to_string();
        let rest = q.split_once("mutation ").or_else(|| q.split_once("query "))?.1;
        Some(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
    }
}

#[derive(Default)]
struct Inner {
    requests: Vec<Request>,
    /// Run id -> history lines as stored (offset-addressed).
    history: BTreeMap<String, Vec<Value>>,
    summary: BTreeMap<String, Value>,
    /// Run id -> console lines (`output.log`).
    output: BTreeMap<String, Vec<String>>,
    complete: BTreeMap<String, i64>,
    uploads: BTreeMap<String, Vec<u8>>,
    behavior: Option<Behavior>,
    /// Answer the next N requests with this behaviour, then go back.
    next: Vec<Behavior>,
    answered: usize,
}

#[derive(Clone)]
pub struct MockServer {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl MockServer {
    pub fn start() -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let inner: Arc<Mutex<Inner>> = Default::default();
        let server = MockServer { url: url.clone(), inner };
        let s = server.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || s.handle(conn));
            }
        });
        server
    }

    /// A URL where nothing listens.
    pub fn dead_url() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        url
    }

    pub fn set_behavior(&self, b: Behavior) {
        self.inner.lock().unwrap().behavior = Some(b);
    }

    /// The next `n` requests get `b`; later ones the standing behaviour.
    pub fn fail_next(&self, n: usize, b: Behavior) {
        self.inner.lock().unwrap().next.extend(std::iter::repeat_n(b, n));
    }

    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }
    /// History rows the server holds for a run.
    pub fn history(&self, run_id: &str) -> Vec<Value> {
        self.inner.lock().unwrap().history.get(run_id).cloned().unwrap_or_default()
    }
    pub fn output(&self, run_id: &str) -> Vec<String> {
        self.inner.lock().unwrap().output.get(run_id).cloned().unwrap_or_default()
    }
    pub fn summary(&self, run_id: &str) -> Option<Value> {
        self.inner.lock().unwrap().summary.get(run_id).cloned()
    }
    /// The exit code sent with `complete`, once it was.
    pub fn exit_code(&self, run_id: &str) -> Option<i64> {
        self.inner.lock().unwrap().complete.get(run_id).copied()
    }
    pub fn uploads(&self) -> BTreeMap<String, Vec<u8>> {
        self.inner.lock().unwrap().uploads.clone()
    }

    fn handle(&self, mut conn: TcpStream) {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let Some((method, path, headers, body)) = read_request(&mut conn) else { return };
        let behavior = {
            let mut g = self.inner.lock().unwrap();
            if g.next.is_empty() {
                g.behavior.clone().unwrap_or(Behavior::Normal)
            } else {
                g.next.remove(0)
            }
        };
        let req = Request { method: method.clone(), path: path.clone(), headers, body, answered: behavior.clone() };
        self.inner.lock().unwrap().requests.push(req.clone());
        let (status, answer) = match behavior {
            Behavior::Drop => return,
            Behavior::Lost => {
                self.answer(&req);
                return;
            }
            Behavior::Error500 => (500, json!({"error": "internal server error"})),
            Behavior::Status(code) => (code, json!({"errors": [{"message": "rejected"}]})),
            Behavior::Slow(d) => {
                std::thread::sleep(d);
                (200, self.answer(&req))
            }
            Behavior::Normal => (200, self.answer(&req)),
        };
        let body = answer.to_string();
        let _ = write!(
            conn,
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            match status {
                200 => "OK",
                401 => "Unauthorized",
                403 => "Forbidden",
                _ => "Error",
            },
            body.len()
        );
        let _ = conn.flush();
        self.inner.lock().unwrap().answered += 1;
    }

    /// Requests answered so far (a stalled one is not).
    pub fn answered(&self) -> usize {
        self.inner.lock().unwrap().answered
    }

    fn answer(&self, req: &Request) -> Value {
        let mut g = self.inner.lock().unwrap();
        if req.method == "PUT" {
            g.uploads.insert(req.path.clone(), req.body.clone());
            return json!({});
        }
        if req.path == "/graphql" {
            let v = req.json();
            let vars = &v["variables"];
            return match req.operation().as_deref() {
                Some("UpsertBucket") => {
                    let name = vars["name"].as_str().unwrap_or("").to_string();
                    let inserted = !g.history.contains_key(&name);
                    let lines = g.history.entry(name.clone()).or_default().len();
                    json!({"data": {"upsertBucket": {"bucket": {
                        "id": "UnVuOjE=", "name": name, "displayName": vars["displayName"], "description": null,
                        "config": vars["config"], "sweepName": null, "historyLineCount": lines,
                        "project": {"id": "UHJvamVjdDox", "name": vars["project"], "entity": {"id": "RW50aXR5OjE=", "name": vars["entity"].as_str().unwrap_or("mock-user")}}
                    }, "inserted": inserted}}})
                }
                Some("RunResumeStatus") => {
                    let name = vars["name"].as_str().unwrap_or("");
                    let bucket = match g.history.get(name) {
                        None => Value::Null,
                        Some(h) => {
                            let tail: Vec<String> = h.iter().skip(h.len().saturating_sub(10)).map(Value::to_string).collect();
                            json!({
                                "id": "UnVuOjE=", "name": name, "displayName": name,
                                "historyLineCount": h.len(),
                                "logLineCount": g.output.get(name).map_or(0, Vec::len),
                                "eventsLineCount": 0,
                                "historyTail": serde_json::to_string(&tail).unwrap(),
                                "eventsTail": "[]",
                                "summaryMetrics": g.summary.get(name).map_or("{}".to_string(), Value::to_string),
                                "config": "{}", "tags": [], "notes": null, "wandbConfig": "{}"
                            })
                        }
                    };
                    json!({"data": {"model": {"id": "UHJvamVjdDox", "name": vars["project"], "entity": {"id": "RW50aXR5OjE=", "name": vars["entity"]}, "bucket": bucket}}})
                }
                Some("CreateRunFiles") => {
                    let run = vars["run"].as_str().unwrap_or("");
                    let files: Vec<Value> = vars["files"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|f| json!({"name": f, "uploadUrl": format!("{}/upload/{run}/{}", self.url, f.as_str().unwrap_or(""))}))
                        .collect();
                    json!({"data": {"createRunFiles": {"runID": run, "uploadHeaders": [], "files": files}}})
                }
                _ => json!({"data": {}}),
            };
        }
        if let Some(rest) = req.path.strip_prefix("/files/") {
            let run = rest.split('/').nth(2).unwrap_or("").to_string();
            let v = req.json();
            if let Some(h) = v["files"].get("wandb-history.jsonl") {
                let offset = h["offset"].as_u64().unwrap_or(0) as usize;
                let stored = g.history.entry(run.clone()).or_default();
                for (i, line) in h["content"].as_array().into_iter().flatten().enumerate() {
                    let row: Value = serde_json::from_str(line.as_str().unwrap_or("null")).unwrap_or(Value::Null);
                    if offset + i < stored.len() {
                        stored[offset + i] = row;
                    } else {
                        stored.resize(offset + i, Value::Null);
                        stored.push(row);
                    }
                }
            }
            if let Some(o) = v["files"].get("output.log") {
                let offset = o["offset"].as_u64().unwrap_or(0) as usize;
                let stored = g.output.entry(run.clone()).or_default();
                for (i, line) in o["content"].as_array().into_iter().flatten().enumerate() {
                    let line = line.as_str().unwrap_or("").to_string();
                    if offset + i < stored.len() {
                        stored[offset + i] = line;
                    } else {
                        stored.resize(offset + i, String::new());
                        stored.push(line);
                    }
                }
            }
            if let Some(s) = v["files"].get("wandb-summary.json") {
                if let Some(line) = s["content"].as_array().and_then(|c| c.last()).and_then(Value::as_str) {
                    g.summary.insert(run.clone(), serde_json::from_str(line).unwrap_or(Value::Null));
                }
            }
            if v["complete"] == json!(true) {
                g.complete.insert(run, v["exitcode"].as_i64().unwrap_or(-1));
            }
            return json!({"exitcode": null, "limits": {}});
        }
        json!({})
    }
}

type Parsed = (String, String, Vec<(String, String)>, Vec<u8>);

fn read_request(conn: &mut TcpStream) -> Option<Parsed> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, headers, body))
}
