//! A loopback stand-in for the Hugging Face Hub, for tests (this crate's and the CLI's). It
//! answers what the Hub answers to a downloader: the revision API (`sha`, `siblings`), HEAD and
//! GET of `resolve` URLs (small files inline with `ETag`; `.safetensors` files as LFS, a 302 to
//! a CDN path with `X-Linked-Etag` / `X-Linked-Size`), Range requests, `X-Error-Code` for
//! missing repos, revisions and files and for gated models, and it can cut a download
//! mid-body. Every request is recorded. Standard library only; one thread per connection;
//! every answer closes its connection.

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Repo {
    /// Commit hash -> file name -> contents.
    commits: HashMap<String, BTreeMap<String, Vec<u8>>>,
    /// Branch or tag -> commit hash.
    refs: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, Repo>,
    /// Repo -> the token that may read it.
    gated: HashMap<String, String>,
    /// LFS contents by sha256, for the CDN path.
    blobs: HashMap<String, (String, Vec<u8>)>,
    /// File name -> bytes to send before cutting the connection, once.
    cut: HashMap<String, usize>,
    requests: Vec<Request>,
    commits_made: u64,
}

pub struct MockHub {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub url: String,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stopped: Arc<AtomicBool>,
}

impl MockHub {
    pub fn start() -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let state = Arc::new(Mutex::new(State::default()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (st, stop, base) = (state.clone(), stopped.clone(), url.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, base) = (st.clone(), base.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &st, &base);
                });
            }
        });
        MockHub { url, addr, state, stopped }
    }

    /// Adds a commit holding `files` to `repo` (`org/name` for a model, `datasets/org/name`
    /// for a dataset) and points branch or tag `revision` at it; returns the commit hash.
    pub fn commit(&self, repo: &str, revision: &str, files: &[(&str, &[u8])]) -> String {
        let mut st = self.state.lock().unwrap();
        st.commits_made += 1;
        let mut h = Sha256::new();
        h.update(format!("{repo}\n{revision}\n{}\n", st.commits_made));
        for (name, bytes) in files {
            h.update(name.as_bytes());
            h.update(bytes);
        }
        let sha = hex(&h.finalize())[..40].to_string();
        for (name, bytes) in files {
            if is_lfs(name) {
                st.blobs.insert(lfs_etag(bytes), (name.to_string(), bytes.to_vec()));
            }
        }
        let r = st.repos.entry(repo.to_string()).or_default();
        r.commits.insert(sha.clone(), files.iter().map(|(n, b)| (n.to_string(), b.to_vec())).collect());
        r.refs.insert(revision.to_string(), sha.clone());
        sha
    }

    /// Only requests with `Authorization: Bearer <token>` may download `repo`'s files (the API
    /// still describes it, as the Hub does for gated models).
    pub fn gate(&self, repo: &str, token: &str) {
        self.state.lock().unwrap().gated.insert(repo.to_string(), token.to_string());
    }

    /// The next GET of `file` sends its headers and `after` bytes of the body, then closes.
    pub fn cut_once(&self, file: &str, after: usize) {
        self.state.lock().unwrap().cut.insert(file.to_string(), after);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Closes the port: connections are refused from now on (the Hub is unreachable).
    pub fn stop(&self) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            // Wakes the accept loop, which then drops the listener.
            let _ = TcpStream::connect(self.addr);
            // Wait until the port refuses, so the caller's next request fails for sure.
            for _ in 0..200 {
                if TcpStream::connect(self.addr).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which files the mock serves as LFS (redirect + X-Linked-Etag), as the Hub does weights
/// and Parquet files.
pub fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".parquet")
}

/// The blob name of an LFS file: its sha256.
pub fn lfs_etag(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The blob name of a small file (the Hub uses the git blob hash; any 40 hex digits do here).
pub fn git_etag(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(format!("blob {}\0", bytes.len()));
    h.update(bytes);
    hex(&h.finalize())[..40].to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send this many body bytes, then close.
    cut: Option<usize>,
}

impl Answer {
    fn new(status: u16) -> Answer {
        Answer { status, headers: vec![], body: vec![], cut: None }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Answer {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn error(status: u16, code: &str, msg: &str) -> Answer {
        Answer::new(status).header("X-Error-Code", code).header("X-Error-Message", msg).json(&serde_json::json!({ "error": msg }))
    }
    fn json(mut self, v: &serde_json::Value) -> Answer {
        self.body = v.to_string().into_bytes();
        self.header("Content-Type", "application/json")
    }
}

fn serve(conn: TcpStream, st: &Mutex<State>, base: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = vec![];
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let req = Request { method, path, headers };
    let answer = {
        let mut s = st.lock().unwrap();
        s.requests.push(req.clone());
        route(&mut s, &req, base)
    };
    write_answer(conn, &req, answer)
}

fn route(st: &mut State, req: &Request, base: &str) -> Answer {
    let path = req.path.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["cdn", sha] = segs.as_slice() {
        return match st.blobs.get(*sha) {
            Some((name, bytes)) => {
                let cut = st.cut.remove(name);
                ranged(req, bytes.clone(), cut)
            }
            None => Answer::new(404),
        };
    }
    let (repo_id, rest) = match segs.as_slice() {
        ["api", "models", org, name, "revision", rev] => (format!("{org}/{name}"), Err(decode(rev))),
        ["api", "datasets", org, name, "revision", rev] => (format!("datasets/{org}/{name}"), Err(decode(rev))),
        ["datasets", org, name, "resolve", rev, file @ ..] if !file.is_empty() => {
            (format!("datasets/{org}/{name}"), Ok((decode(rev), decode(&file.join("/")))))
        }
        [org, name, "resolve", rev, file @ ..] if !file.is_empty() => (format!("{org}/{name}"), Ok((decode(rev), decode(&file.join("/"))))),
        _ => return Answer::new(404),
    };
    let Some(repo) = st.repos.get(&repo_id) else {
        // The Hub answers 401 for a repository it does not show this caller.
        return Answer::error(401, "RepoNotFound", "Repository not found");
    };
    let rev = match &rest {
        Err(rev) | Ok((rev, _)) => rev.clone(),
    };
    let commit = repo.refs.get(&rev).cloned().or_else(|| {
        let hits: Vec<&String> = repo.commits.keys().filter(|c| rev.len() >= 7 && c.starts_with(&rev)).collect();
        (hits.len() == 1).then(|| hits[0].clone())
    });
    let Some(commit) = commit else {
        return Answer::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    };
    let files = &repo.commits[&commit];
    let (_, file) = match rest {
        Err(_) => {
            let siblings: Vec<serde_json::Value> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
            return Answer::new(200).json(&serde_json::json!({ "id": repo_id, "modelId": repo_id, "sha": commit, "siblings": siblings }));
        }
        Ok(x) => x,
    };
    if let Some(token) = st.gated.get(&repo_id) {
        let auth = req.header("authorization");
        if auth != Some(&format!("Bearer {token}")) {
            let (status, msg) = match auth {
                None => (401, format!("Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.")),
                Some(_) => (403, format!("Access to model {repo_id} is restricted and you are not in the authorized list.")),
            };
            return Answer::error(status, "GatedRepo", &msg);
        }
    }
    let Some(bytes) = files.get(&file) else {
        return Answer::error(404, "EntryNotFound", &format!("{file} does not exist on \"{rev}\""));
    };
    if is_lfs(&file) {
        let sha = lfs_etag(bytes);
        // As the Hub: the first hop names the blob; the bytes are elsewhere.
        Answer::new(302)
            .header("Location", format!("{base}/cdn/{sha}"))
            .header("X-Repo-Commit", commit)
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", bytes.len().to_string())
            .header("ETag", "W/\"pointer-etag\"")
    } else {
        let cut = st.cut.remove(&file);
        ranged(req, bytes.clone(), cut).header("X-Repo-Commit", commit).header("ETag", format!("\"{}\"", git_etag(bytes)))
    }
}

/// The bytes, or the part a `Range: bytes=N-` asks for.
fn ranged(req: &Request, bytes: Vec<u8>, cut: Option<usize>) -> Answer {
    let len = bytes.len();
    let from =
        req.header("range").and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<usize>().ok());
    let mut a = match from {
        Some(n) if n >= len => return Answer::new(416).header("Content-Range", format!("bytes */{len}")),
        Some(n) => {
            let mut a = Answer::new(206).header("Content-Range", format!("bytes {n}-{}/{len}", len - 1));
            a.body = bytes[n..].to_vec();
            a
        }
        None => {
            let mut a = Answer::new(200);
            a.body = bytes;
            a
        }
    };
    a.cut = cut;
    a.header("Accept-Ranges", "bytes")
}

fn write_answer(mut conn: TcpStream, req: &Request, a: Answer) -> std::io::Result<()> {
    let reason = match a.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n", a.status, a.body.len());
    for (k, v) in &a.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        let n = a.cut.unwrap_or(a.body.len()).min(a.body.len());
        conn.write_all(&a.body[..n])?;
    }
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}
