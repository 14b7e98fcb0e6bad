//! Fetches the files of a model that ponder reads into the shared cache, as Python's
//! `snapshot_download` does for one revision: ask the revision API for the commit and the file
//! list, record `refs/<revision>`, then for each file missing from `snapshots/<commit>/`: HEAD
//! its `resolve` URL for the ETag (the blob's name) and size, download the blob (continuing a
//! `.incomplete` file with a Range request), check it, link it into the snapshot.
//!
//! Why not the `hf-hub` crate: its 0.4 blocking API is built on ureq 2 (a second HTTP stack
//! beside the ureq 3 of ponder-wandb) and reads neither HF_TOKEN, HF_HUB_CACHE nor
//! HF_HUB_OFFLINE; 1.0 is async (tokio, reqwest, hyper, hf-xet) with a blocking wrapper, has
//! no HF_HUB_OFFLINE, and restarts a partial blob from zero. What ponder needs (one
//! revision, a few named files, the Python cache layout) is small enough to own.

use crate::cache::RepoCache;
use crate::config::HubConfig;
use crate::dataset::{available_splits, DatasetSpec, PARQUET_CONVERSION};
use crate::error::HubError;
use crate::error::HubError::{Access, FileNotFound, Http, RepoNotFound, RevisionNotFound};
use crate::id::{is_commit_hash, ModelId};
use std::collections::BTreeSet;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Read when present; the weights and config.json / tokenizer.json are required.
pub const OPTIONAL_FILES: [&str; 4] = ["tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja"];
pub const SINGLE_WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Consecutive broken connections, with no byte gained between them, before a download gives up.
const MAX_BROKEN: usize = 5;

type Response = ureq::http::Response<ureq::Body>;

/// Why the revision API gave no answer.
enum Fail {
    /// No network, a timeout, or the Hub answering 5xx: the cache may still serve.
    Down(String),
    Hub(HubError),
}

/// What a file's `resolve` HEAD says.
struct FileMeta {
    etag: String,
    size: Option<u64>,
    /// Where the bytes are (the CDN after an LFS redirect).
    location: String,
}

/// Why one GET ended early.
enum GetError {
    /// The connection broke (or the server dropped the range): retry from what is on disk.
    Broken(String),
    Fatal(HubError),
}

pub struct Hub {
    cfg: HubConfig,
    agent: ureq::Agent,
}

impl Hub {
    pub fn new(cfg: HubConfig) -> Hub {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Redirects are followed here: the first hop carries the ETag and size, and the
            // token must not travel to another host.
            .max_redirects(0)
            .user_agent(concat!("ponder/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled body is a broken connection (continued with a Range request), not a hang.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build()
            .into();
        Hub { cfg, agent }
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// The snapshot folder of `id` holding the files ponder reads, downloaded into the cache
    /// unless they are there already. Offline (`HF_HUB_OFFLINE`), only the cache answers; when
    /// the Hub cannot be reached, the cache answers for the revision it last resolved to.
    pub fn model(&self, id: &ModelId) -> Result<PathBuf, HubError> {
        let cache = RepoCache::new(&self.cfg.cache_dir, id);
        if self.cfg.offline {
            let dir = cached_snapshot(&cache, &id.revision).map_err(|what| HubError::NotCached {
                id: id.to_string(),
                repo: id.repo.clone(),
                cache: self.cfg.cache_dir.clone(),
                what,
            })?;
            self.say(&format!("{id}: offline, from the cache: {}", dir.display()));
            return Ok(dir);
        }
        let (commit, files) = match self.revision_info(id) {
            Ok(info) => info,
            Err(Fail::Hub(e)) => return Err(e),
            Err(Fail::Down(cause)) => {
                return match cached_snapshot(&cache, &id.revision) {
                    Ok(dir) => {
                        eprintln!("note: cannot reach {} ({cause}); using {id} from the cache: {}", self.cfg.endpoint, dir.display());
                        Ok(dir)
                    }
                    Err(_) => Err(self.unreachable(id, cause)),
                };
            }
        };
        cache.write_ref(&id.revision, &commit)?;
        for f in ["config.json", "tokenizer.json"] {
            if !files.contains(f) {
                return Err(match f {
                    "tokenizer.json" => HubError::NoTokenizer { id: id.to_string() },
                    _ => HubError::FileNotFound {
                        id: id.to_string(),
                        file: f.into(),
                        endpoint: self.cfg.endpoint.clone(),
                        commit,
                        hint: Some("every transformers model has one; is this a model repository?".into()),
                    },
                });
            }
            self.fetch(id, &cache, &commit, f)?;
        }
        for f in OPTIONAL_FILES.iter().filter(|f| files.contains(**f)) {
            self.fetch(id, &cache, &commit, f)?;
        }
        if files.contains(SINGLE_WEIGHTS) {
            self.fetch(id, &cache, &commit, SINGLE_WEIGHTS)?;
        } else if files.contains(WEIGHTS_INDEX) {
            let index = self.fetch(id, &cache, &commit, WEIGHTS_INDEX)?;
            for shard in shards(&index).map_err(|msg| HubError::Protocol { id: id.to_string(), url: WEIGHTS_INDEX.into(), msg })? {
                self.fetch(id, &cache, &commit, &shard).map_err(|e| match e {
                    HubError::FileNotFound { id, file, endpoint, commit, .. } => HubError::FileNotFound {
                        id,
                        file,
                        endpoint,
                        commit,
                        hint: Some(format!("{WEIGHTS_INDEX} lists it as a shard; the repository is incomplete")),
                    },
                    e => e,
                })?;
            }
        } else {
            let others =
                files.iter().filter(|f| [".bin", ".pt", ".pth", ".h5", ".gguf", ".msgpack"].iter().any(|x| f.ends_with(x))).cloned();
            return Err(HubError::NoWeights { id: id.to_string(), others: others.collect() });
        }
        let dir = cache.snapshot(&commit);
        self.say(&format!("{id}: commit {commit}, {}", dir.display()));
        Ok(dir)
    }

    /// The data files (repository path, local file) of a dataset split or file, fetched into
    /// the cache unless there already (see [`crate::dataset`] for how files are matched).
    /// Offline, or when the Hub cannot be reached, the cache answers for the revision it last
    /// resolved to.
    pub fn dataset(&self, spec: &DatasetSpec) -> Result<Vec<(String, PathBuf)>, HubError> {
        let id = &spec.id;
        let cache = RepoCache::new(&self.cfg.cache_dir, id);
        let from_cache = || -> Result<Vec<(String, PathBuf)>, String> {
            let mut revisions = vec![id.revision.as_str()];
            if spec.may_use_conversion() {
                revisions.push(PARQUET_CONVERSION);
            }
            let mut tried = vec![];
            for rev in revisions {
                let Some(commit) = cache.commit_of(rev) else {
                    tried.push(format!("no refs/{rev}"));
                    continue;
                };
                let dir = cache.snapshot(&commit);
                let files = files_under(&dir);
                let picked = spec.pick(&files);
                if !picked.is_empty() {
                    return Ok(picked.into_iter().map(|f| (f.clone(), dir.join(&f))).collect());
                }
                tried.push(format!("no matching files in {}", dir.display()));
            }
            Err(format!("{} for {}", tried.join("; "), spec.describe()))
        };
        if self.cfg.offline {
            let files = from_cache().map_err(|what| HubError::NotCached {
                id: id.to_string(),
                repo: format!("{} --repo-type dataset", id.repo),
                cache: self.cfg.cache_dir.clone(),
                what,
            })?;
            self.say(&format!("{id}: offline, {} from the cache", spec.describe()));
            return Ok(files);
        }
        let mut seen = BTreeSet::new();
        let mut attempts = vec![id.clone()];
        if spec.may_use_conversion() {
            attempts.push(id.at(PARQUET_CONVERSION));
        }
        for (i, at) in attempts.iter().enumerate() {
            let (commit, files) = match self.revision_info(at) {
                Ok(info) => info,
                // No conversion branch: the dataset simply has not got one.
                Err(Fail::Hub(HubError::RevisionNotFound { .. })) if i > 0 => continue,
                Err(Fail::Hub(e)) => return Err(e),
                Err(Fail::Down(cause)) => {
                    return match from_cache() {
                        Ok(files) => {
                            eprintln!("note: cannot reach {} ({cause}); using {id} from the cache", self.cfg.endpoint);
                            Ok(files)
                        }
                        Err(_) => Err(self.unreachable(id, cause)),
                    };
                }
            };
            cache.write_ref(&at.revision, &commit)?;
            let picked = spec.pick(&files);
            if picked.is_empty() {
                seen.extend(files);
                continue;
            }
            let mut out = vec![];
            for f in picked {
                let path = self.fetch(at, &cache, &commit, &f)?;
                out.push((f, path));
            }
            self.say(&format!("{at}: {} at commit {commit}: {} file(s)", spec.describe(), out.len()));
            return Ok(out);
        }
        let looked = if spec.may_use_conversion() {
            format!("at {} and in the Hub's Parquet conversion {PARQUET_CONVERSION}", id.revision)
        } else {
            format!("at {}", id.revision)
        };
        Err(HubError::NoData { id: id.to_string(), what: spec.describe(), looked, available: available_splits(&seen) })
    }

    fn unreachable(&self, id: &ModelId, cause: String) -> HubError {
        HubError::Unreachable { id: id.to_string(), endpoint: self.cfg.endpoint.clone(), cause, cache: self.cfg.cache_dir.clone() }
    }

    fn say(&self, line: &str) {
        if self.cfg.progress {
            eprintln!("{line}");
        }
    }

    /// `GET /api/models/{repo}/revision/{revision}` (`/api/datasets/...`): the commit and the
    /// repository's files.
    fn revision_info(&self, id: &ModelId) -> Result<(String, BTreeSet<String>), Fail> {
        let url = format!("{}/api/{}/{}/revision/{}", self.cfg.endpoint, id.kind_plural(), id.repo, encode(&id.revision, false));
        let mut resp = self.call("GET", &url, None).map_err(Fail::Down)?;
        let status = resp.status().as_u16();
        if status >= 500 {
            return Err(Fail::Down(format!("HTTP {status}")));
        }
        let body = resp.body_mut().read_to_string().map_err(|e| Fail::Down(e.to_string()))?;
        if !(200..300).contains(&status) {
            let server =
                error_message(&resp).or_else(|| serde_json::from_str::<serde_json::Value>(&body).ok()?["error"].as_str().map(String::from));
            return Err(Fail::Hub(self.status_error(id, &url, status, error_code(&resp).as_deref(), server, None)));
        }
        let protocol = |msg: String| Fail::Hub(HubError::Protocol { id: id.to_string(), url: url.clone(), msg });
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| protocol(format!("not JSON ({e})")))?;
        let sha = v["sha"].as_str().filter(|s| is_commit_hash(s)).ok_or_else(|| protocol("no commit hash `sha`".into()))?;
        let files = v["siblings"]
            .as_array()
            .ok_or_else(|| protocol("no file list `siblings`".into()))?
            .iter()
            .filter_map(|s| s["rfilename"].as_str().map(String::from))
            .collect();
        Ok((sha.to_string(), files))
    }

    /// One file into `snapshots/<commit>/<file>`, downloading its blob unless the cache has it.
    fn fetch(&self, id: &ModelId, cache: &RepoCache, commit: &str, file: &str) -> Result<PathBuf, HubError> {
        let pointer = cache.pointer(commit, file);
        if pointer.is_file() {
            return Ok(pointer);
        }
        let url = format!("{}/{}/resolve/{commit}/{}", self.cfg.endpoint, id.url_path(), encode(file, true));
        let meta = self.head(id, &url, file, commit)?;
        let blob = cache.blob(&meta.etag);
        let _lock = cache.lock(&meta.etag)?;
        // Another commit (or Python) may have downloaded the same contents already.
        if !blob.is_file() {
            self.download(id, file, &meta, cache)?;
        }
        cache.link(&blob, &pointer)?;
        Ok(pointer)
    }

    /// HEAD of a `resolve` URL, following relative redirects (a renamed repository) but not
    /// the LFS redirect to the CDN, whose first hop carries X-Linked-Etag / X-Linked-Size.
    fn head(&self, id: &ModelId, url: &str, file: &str, commit: &str) -> Result<FileMeta, HubError> {
        let unreachable = |cause: String| self.unreachable(id, cause);
        let mut url = url.to_string();
        for _ in 0..10 {
            let resp = self.call("HEAD", &url, None).map_err(unreachable)?;
            let status = resp.status().as_u16();
            let location = header(&resp, "location");
            if (300..400).contains(&status) && location.as_deref().is_some_and(|l| l.starts_with('/')) {
                url = join_url(&url, &location.unwrap());
                continue;
            }
            if !(200..400).contains(&status) {
                return Err(self.status_error(id, &url, status, error_code(&resp).as_deref(), error_message(&resp), Some((file, commit))));
            }
            let redirect = (300..400).contains(&status);
            let etag = header(&resp, "x-linked-etag").or_else(|| header(&resp, "etag")).map(|e| normalize_etag(&e));
            let etag = etag.filter(|e| safe_name(e)).ok_or_else(|| HubError::Protocol {
                id: id.to_string(),
                url: url.clone(),
                msg: "no usable ETag / X-Linked-Etag header: the cache names files by it".into(),
            })?;
            let size = header(&resp, "x-linked-size")
                .or_else(|| if redirect { None } else { header(&resp, "content-length") })
                .and_then(|s| s.trim().parse().ok());
            let location = match location {
                Some(l) if redirect => join_url(&url, &l),
                _ => url.clone(),
            };
            return Ok(FileMeta { etag, size, location });
        }
        Err(HubError::Protocol { id: id.to_string(), url, msg: "too many redirects".into() })
    }

    /// Downloads a blob into `<etag>.incomplete` (continuing what is there), checks its size
    /// and, for LFS files, its sha256, then renames it into place.
    fn download(&self, id: &ModelId, file: &str, meta: &FileMeta, cache: &RepoCache) -> Result<(), HubError> {
        let part = cache.incomplete(&meta.etag);
        let blobs = part.parent().expect("blobs/ folder");
        std::fs::create_dir_all(blobs).map_err(|e| HubError::io(blobs, e))?;
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut progress = Progress::new(self.cfg.progress, format!("{} {file}", id.repo), meta.size, len(&part));
        let mut broken = 0;
        loop {
            let have = len(&part);
            match meta.size {
                Some(size) if have == size => break,
                Some(size) if have > size => {
                    std::fs::remove_file(&part).map_err(|e| HubError::io(&part, e))?;
                    continue;
                }
                _ => {}
            }
            let cause = match self.get_into(id, &meta.location, &part, have, &mut progress) {
                Ok(()) if meta.size.is_none_or(|s| len(&part) == s) => break,
                Ok(()) => format!("the server sent {} of {} bytes", len(&part), meta.size.unwrap_or(0)),
                Err(GetError::Broken(cause)) => cause,
                Err(GetError::Fatal(e)) => return Err(e),
            };
            let now = len(&part);
            broken = if now > have { 1 } else { broken + 1 };
            if broken >= MAX_BROKEN {
                return Err(HubError::Interrupted {
                    id: id.to_string(),
                    url: meta.location.clone(),
                    got: now,
                    expected: meta.size,
                    cause,
                    attempts: broken,
                });
            }
            progress.note(&format!("connection lost ({cause}); continuing from byte {now}"));
        }
        progress.finish();
        self.check(id, file, meta, &part)?;
        let blob = cache.blob(&meta.etag);
        std::fs::rename(&part, &blob).map_err(|e| HubError::io(&blob, e))
    }

    /// One GET of `url` into `part`, from byte `have` on (a Range request when `have` > 0).
    fn get_into(&self, id: &ModelId, url: &str, part: &Path, have: u64, progress: &mut Progress) -> Result<(), GetError> {
        let range = (have > 0).then_some(have);
        let mut url = url.to_string();
        let mut resp = None;
        for _ in 0..10 {
            let r = self.call("GET", &url, range).map_err(GetError::Broken)?;
            match (r.status().as_u16(), header(&r, "location")) {
                (300..=399, Some(l)) => url = join_url(&url, &l),
                _ => {
                    resp = Some(r);
                    break;
                }
            }
        }
        let mut resp = resp.ok_or_else(|| {
            GetError::Fatal(HubError::Protocol { id: id.to_string(), url: url.clone(), msg: "too many redirects".into() })
        })?;
        let io = |e: std::io::Error| GetError::Fatal(HubError::io(part, e));
        let mut out = match resp.status().as_u16() {
            206 => {
                // The bytes must start where the file ends, or they belong elsewhere.
                let cr = header(&resp, "content-range").unwrap_or_default();
                if !cr.starts_with(&format!("bytes {have}-")) {
                    std::fs::remove_file(part).map_err(io)?;
                    return Err(GetError::Broken(format!("the server sent range `{cr}` for bytes {have}-")));
                }
                std::fs::OpenOptions::new().append(true).open(part).map_err(io)?
            }
            // The whole file (a server that ignores Range included): start over.
            200 => {
                progress.restart();
                std::fs::File::create(part).map_err(io)?
            }
            416 => {
                std::fs::remove_file(part).map_err(io)?;
                return Err(GetError::Broken("the server refused the range; starting over".into()));
            }
            status => {
                let (code, server) = (error_code(&resp), error_message(&resp));
                return Err(GetError::Fatal(self.status_error(id, &url, status, code.as_deref(), server, None)));
            }
        };
        let mut reader = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                // What arrived stays on disk for the next Range request.
                Err(e) => return Err(GetError::Broken(e.to_string())),
            };
            out.write_all(&buf[..n]).map_err(io)?;
            progress.add(n as u64);
        }
    }

    /// Size, and sha256 where the ETag is one (LFS files): a damaged continuation is caught here.
    fn check(&self, id: &ModelId, file: &str, meta: &FileMeta, part: &Path) -> Result<(), HubError> {
        let corrupt = |what: String| {
            let _ = std::fs::remove_file(part);
            HubError::Corrupt { id: id.to_string(), file: file.into(), what }
        };
        let size = std::fs::metadata(part).map_err(|e| HubError::io(part, e))?.len();
        if meta.size.is_some_and(|s| s != size) {
            return Err(corrupt(format!("{size} bytes where the Hub says {}", meta.size.unwrap())));
        }
        if meta.etag.len() == 64 && meta.etag.bytes().all(|b| b.is_ascii_hexdigit()) {
            let got = sha256_file(part).map_err(|e| HubError::io(part, e))?;
            if !got.eq_ignore_ascii_case(&meta.etag) {
                return Err(corrupt(format!("sha256 {got} where the Hub says {}", meta.etag)));
            }
        }
        Ok(())
    }

    /// A request with the Hub's headers: no compression (sizes must be the file's), the token
    /// only to the endpoint's own host.
    fn call(&self, method: &str, url: &str, range: Option<u64>) -> Result<Response, String> {
        let mut req = if method == "HEAD" { self.agent.head(url) } else { self.agent.get(url) }.header("Accept-Encoding", "identity");
        if let Some(from) = range {
            req = req.header("Range", format!("bytes={from}-"));
        }
        if let Some(t) = self.cfg.token.as_deref().filter(|_| origin(url) == origin(&self.cfg.endpoint)) {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        req.call().map_err(|e| e.to_string())
    }

    /// An HTTP error as the error that says what to do. The Hub names the case in
    /// `X-Error-Code`; without it the status and whether a file was asked for decide.
    fn status_error(
        &self,
        id: &ModelId,
        url: &str,
        status: u16,
        code: Option<&str>,
        server: Option<String>,
        file: Option<(&str, &str)>,
    ) -> HubError {
        let endpoint = self.cfg.endpoint.clone();
        let token_sent = self.cfg.token.is_some();
        match (status, code, file) {
            (_, Some("RepoNotFound"), _) | (404, None, None) => RepoNotFound { id: id.to_string(), endpoint, token_sent },
            (_, Some("RevisionNotFound"), _) => RevisionNotFound { repo: id.url_path(), revision: id.revision.clone(), endpoint },
            (_, Some("EntryNotFound"), Some((f, c))) | (404, _, Some((f, c))) => {
                FileNotFound { id: id.to_string(), file: f.into(), endpoint, commit: c.into(), hint: None }
            }
            (401 | 403, _, _) | (_, Some("GatedRepo"), _) => {
                Access { id: id.to_string(), repo: id.url_path(), endpoint, status, gated: code == Some("GatedRepo"), token_sent, server }
            }
            _ => Http { id: id.to_string(), url: url.into(), status, server },
        }
    }
}

/// The snapshot a revision last resolved to, if it holds every file ponder needs; else what is
/// missing.
pub fn cached_snapshot(cache: &RepoCache, revision: &str) -> Result<PathBuf, String> {
    let commit = cache.commit_of(revision).ok_or_else(|| format!("no refs/{revision} in {}", cache.dir.display()))?;
    let dir = cache.snapshot(&commit);
    if !dir.is_dir() {
        return Err(format!("no snapshot {}", dir.display()));
    }
    let mut missing: Vec<String> =
        ["config.json", "tokenizer.json"].iter().filter(|f| !dir.join(f).is_file()).map(|f| f.to_string()).collect();
    if dir.join(WEIGHTS_INDEX).is_file() {
        let listed = shards(&dir.join(WEIGHTS_INDEX))?;
        missing.extend(listed.into_iter().filter(|s| !dir.join(s).is_file()));
    } else if !dir.join(SINGLE_WEIGHTS).is_file() {
        missing.push(format!("{SINGLE_WEIGHTS} (or {WEIGHTS_INDEX} with its shards)"));
    }
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(format!("snapshot {} lacks {}", dir.display(), missing.join(", ")))
    }
}

/// Every file below `dir`, as repository paths (`a/b.parquet`).
fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            // A snapshot's files are symlinks into blobs/: follow them (a dangling one is skipped).
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                if let Ok(rel) = p.strip_prefix(dir) {
                    out.insert(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
    }
    out
}

/// The shard files a `model.safetensors.index.json` lists, each once.
fn shards(index: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("{}: {e}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON ({e})", index.display()))?;
    let map = v["weight_map"].as_object().ok_or_else(|| format!("{}: no `weight_map`", index.display()))?;
    let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
    match files.iter().find(|f| !f.split('/').all(|c| !c.is_empty() && c != "..")) {
        Some(bad) => Err(format!("{}: shard name `{bad}` points outside the model", index.display())),
        None => Ok(files.into_iter().map(String::from).collect()),
    }
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn error_code(resp: &Response) -> Option<String> {
    header(resp, "x-error-code")
}

fn error_message(resp: &Response) -> Option<String> {
    header(resp, "x-error-message")
}

/// `W/"abc"` or `"abc"` -> `abc`, as huggingface_hub names blobs.
fn normalize_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

/// An ETag becomes a file name: nothing that could leave `blobs/`.
fn safe_name(e: &str) -> bool {
    !e.is_empty() && e != "." && e != ".." && e.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Percent-encoding of a path part: unreserved characters stay (and `/` when `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let start = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[start..].find('/') {
        Some(i) => &url[..start + i],
        None => url,
    }
}

/// A `Location` against the URL it answered.
fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let dir = base.rsplit_once('/').map(|(d, _)| d).unwrap_or(base);
        format!("{dir}/{location}")
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The download line on stderr: rewritten in place on a terminal; in a log, a line every 30 s
/// and one when the file is done.
struct Progress {
    on: bool,
    tty: bool,
    label: String,
    total: Option<u64>,
    done: u64,
    start: Instant,
    start_bytes: u64,
    last: Instant,
}

impl Progress {
    fn new(on: bool, label: String, total: Option<u64>, done: u64) -> Progress {
        let now = Instant::now();
        let p = Progress { on, tty: std::io::stderr().is_terminal(), label, total, done, start: now, start_bytes: done, last: now };
        if on && done > 0 {
            eprintln!("{}: continuing a partial download from {}", p.label, human(done));
        }
        p
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        let every = if self.tty { Duration::from_millis(200) } else { Duration::from_secs(30) };
        if self.on && self.last.elapsed() >= every {
            self.last = Instant::now();
            self.print(false);
        }
    }

    fn restart(&mut self) {
        self.done = 0;
        self.start_bytes = 0;
    }

    fn note(&mut self, msg: &str) {
        if self.on {
            if self.tty {
                eprintln!();
            }
            eprintln!("{}: {msg}", self.label);
        }
    }

    fn finish(&mut self) {
        if self.on {
            self.print(true);
        }
    }

    fn print(&self, end: bool) {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = (self.done - self.start_bytes.min(self.done)) as f64 / secs.max(1e-3);
        let line = match (end, self.total) {
            (true, _) => format!("downloaded {}: {} in {secs:.1} s", self.label, human(self.done)),
            (false, Some(t)) if t > 0 => {
                format!(
                    "downloading {}: {} / {} ({:.0}%), {}/s",
                    self.label,
                    human(self.done),
                    human(t),
                    100.0 * self.done as f64 / t as f64,
                    human(rate as u64)
                )
            }
            (false, _) => format!("downloading {}: {}, {}/s", self.label, human(self.done), human(rate as u64)),
        };
        match (self.tty, end) {
            (true, false) => eprint!("\r{line}\x1b[K"),
            (true, true) => eprintln!("\r{line}\x1b[K"),
            (false, _) => eprintln!("{line}"),
        }
    }
}

/// 1.2 GB, 45.0 MB, 3.1 kB, 12 B.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        _ => format!("{:.2} GB", b / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_etags_and_encoding() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"0123\""), "0123");
        assert!(safe_name("a1-b_c.d") && !safe_name("../x") && !safe_name("a/b") && !safe_name(""));
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode("sub dir/model.safetensors", true), "sub%20dir/model.safetensors");
        assert_eq!(origin("https://huggingface.co/a/b"), "https://huggingface.co");
        assert_eq!(origin("http://127.0.0.1:9/x"), "http://127.0.0.1:9");
        assert_eq!(join_url("https://h.co/a/resolve/x", "/b/resolve/x"), "https://h.co/b/resolve/x");
        assert_eq!(join_url("https://h.co/a", "https://cdn.h.co/z?sig=1"), "https://cdn.h.co/z?sig=1");
        assert_eq!([human(12), human(3_100), human(45_000_000), human(1_200_000_000)], ["12 B", "3.1 kB", "45.0 MB", "1.20 GB"]);
    }
}
