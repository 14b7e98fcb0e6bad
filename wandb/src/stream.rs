//! A run streamed to W&B from a background thread.
//!
//! The trainer hands rows to [`Run::log`], which never blocks: rows go into a bounded queue
//! and a worker thread creates (or resumes) the run with `UpsertBucket` and sends history in
//! batches through `file_stream`, retrying with backoff. Rows logged for the same step are
//! merged into one history row, and a row is committed when a later step arrives (as the
//! official client does). What was uploaded is recorded in a small state file
//! (`wandb.json` in the run folder), so a resumed run keeps its id and never sends a step
//! twice, and `ponder wandb-sync` can upload whatever the live stream did not.

use crate::client::{Bucket, Client, RunFields};
use crate::settings::{Mode, Settings};
use crate::Error;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Digest;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub type Row = Map<String, Value>;

/// What was uploaded so far; lives next to `metrics.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub run_id: String,
    pub project: String,
    pub entity: Option<String>,
    pub base_url: String,
    /// Lines of `wandb-history.jsonl` the server acknowledged.
    pub history_lines: u64,
    /// The last step the server has; later uploads start after it.
    pub last_step: Option<u64>,
    /// Seconds of runtime already accounted for (resumed runs continue from here).
    pub runtime_s: f64,
    /// The server received `complete`.
    pub complete: bool,
    /// Exit code the trainer reported (`None` while running or when killed).
    pub exit_code: Option<i32>,
    /// Latest value of every metric (the run summary).
    #[serde(default)]
    pub summary: Row,
    /// Lines of `output.log` (console) the server acknowledged.
    #[serde(default)]
    pub output_lines: u64,
}

/// The state file's name in a run folder.
pub const STATE_FILE: &str = "wandb.json";

impl State {
    /// A run not yet seen by the server: `run_id`, or a new id.
    pub fn fresh(settings: &Settings, run_id: Option<String>) -> State {
        State {
            run_id: run_id.unwrap_or_else(crate::settings::new_run_id),
            project: settings.project.clone(),
            entity: settings.entity.clone(),
            base_url: settings.base_url.clone(),
            ..Default::default()
        }
    }

    pub fn load(path: &Path) -> Result<Option<State>, Error> {
        match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| {
                Error::Config(format!("{} is not a valid W&B state file ({e}); delete it to start a new W&B run", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io(format!("reading {}: {e}", path.display()))),
        }
    }

    /// Written to a temporary file and renamed, so a kill never leaves half a file.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| Error::Io(format!("writing {}: {e}", path.display())))
    }
}

/// How a run starts.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where the upload state is kept (`RUN_DIR/wandb.json`). Without one, nothing persists.
    pub state_path: Option<PathBuf>,
    /// The run config (the resolved recipe as JSON); each top-level key is wrapped as
    /// `{"value": ...}` the way W&B stores config.
    pub config: Option<Value>,
    /// Run id to use when there is no state file yet (else a new one is made).
    pub run_id: Option<String>,
    /// Print the run URL and warnings to stderr.
    pub verbose: bool,
    pub program: Option<String>,
}

/// What happened, for the closing message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub run_id: String,
    pub url: Option<String>,
    /// History rows the server acknowledged in this session.
    pub rows_uploaded: u64,
    /// Rows not sent because the server already had their step.
    pub rows_skipped: u64,
    /// Rows not sent because the queue was full (the first such step).
    pub dropped_from_step: Option<u64>,
    /// The run was marked complete on the server.
    pub complete: bool,
    /// Why uploads stopped, if they did.
    pub error: Option<String>,
}

enum Msg {
    Log { step: u64, row: Row, ts: f64 },
    Table { step: u64, key: String, columns: Vec<String>, data: Vec<Vec<Value>> },
    Console { line: String, ts: f64 },
    Finish { exit_code: i32 },
}

/// A live W&B run. Dropping it without [`Run::finish`] finishes it with exit code 1.
pub struct Run {
    tx: Option<SyncSender<Msg>>,
    done: Option<Receiver<Report>>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// The first step the full queue dropped (u64::MAX: none); from then on the live stream
    /// sends nothing, so W&B never gets a hole in its history.
    dropped_from: AtomicU64,
    run_id: String,
    finish_timeout: Duration,
    offline_state: Option<(PathBuf, State)>,
}

pub fn now_ts() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Wraps each top-level config key as `{"value": ...}`.
pub fn wrap_config(config: &Value) -> Value {
    match config {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), json!({"value": v}))).collect()),
        other => json!({"config": {"value": other}}),
    }
}

impl Run {
    /// Starts streaming (online), or only records the run id for a later `wandb-sync`
    /// (offline). Returns `None` when W&B is disabled. Only a broken state file is an
    /// error here; network trouble never is.
    pub fn start(settings: Settings, opts: RunOptions) -> Result<Option<Run>, Error> {
        if settings.mode == Mode::Disabled {
            return Ok(None);
        }
        let prior = match &opts.state_path {
            Some(p) => State::load(p)?,
            None => None,
        };
        let prior_existed = prior.is_some();
        let state = prior.unwrap_or_else(|| State::fresh(&settings, opts.run_id.clone()));
        let run_id = state.run_id.clone();
        let finish_timeout = settings.finish_timeout;
        if settings.mode == Mode::Offline {
            if let Some(p) = &opts.state_path {
                let mut st = state;
                st.complete = false;
                st.exit_code = None;
                st.save(p)?;
                if opts.verbose {
                    eprintln!(
                        "wandb: offline run {run_id}; upload it later with `ponder wandb-sync {}`",
                        p.parent().unwrap_or(Path::new(".")).display()
                    );
                }
                return Ok(Some(Run {
                    tx: None,
                    done: None,
                    handle: None,
                    dropped_from: AtomicU64::new(u64::MAX),
                    run_id,
                    finish_timeout,
                    offline_state: Some((p.clone(), st)),
                }));
            }
            return Ok(None);
        }
        if opts.verbose {
            match state.entity.as_deref().or(settings.entity.as_deref()) {
                Some(e) => eprintln!("wandb: run {run_id} at {}", settings.run_url(e, &run_id)),
                None => eprintln!("wandb: run {run_id} in project {} (URL once the server answers)", settings.project),
            }
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue_capacity.max(1));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let resuming = prior_existed || opts.run_id.is_some();
        let mut worker = Worker::new(settings, opts, state);
        worker.resuming = resuming;
        let handle = std::thread::Builder::new()
            .name("wandb".into())
            .spawn(move || {
                let report = worker.serve(rx);
                let _ = done_tx.send(report);
            })
            .map_err(|e| Error::Io(format!("starting the W&B thread: {e}")))?;
        Ok(Some(Run {
            tx: Some(tx),
            done: Some(done_rx),
            handle: Some(handle),
            dropped_from: AtomicU64::new(u64::MAX),
            run_id,
            finish_timeout,
            offline_state: None,
        }))
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    fn overflowed(&self) -> bool {
        self.dropped_from.load(Ordering::Relaxed) != u64::MAX
    }

    fn send(&self, step: u64, msg: Msg) {
        let Some(tx) = &self.tx else { return };
        if self.overflowed() {
            return;
        }
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // Stop the live stream here rather than leave a hole in the history;
                // `wandb-sync` continues from the last uploaded step.
                self.dropped_from.fetch_min(step, Ordering::Relaxed);
                eprintln!("wandb: upload queue full at step {step}; live logging stops (training goes on; metrics.jsonl has every row; `ponder wandb-sync` uploads the rest)");
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Queues one metrics row for `step`. Never blocks, never fails.
    pub fn log(&self, step: u64, row: &Row) {
        self.send(step, Msg::Log { step, row: row.clone(), ts: now_ts() });
    }

    /// Queues one console line for the run's `output.log` (the Logs tab). Never blocks.
    pub fn console(&self, line: &str) {
        let Some(tx) = &self.tx else { return };
        if !self.overflowed() {
            // Console lines are a courtesy: when the queue is full they are dropped, without
            // stopping the metrics stream.
            let _ = tx.try_send(Msg::Console { line: line.to_string(), ts: now_ts() });
        }
    }

    /// Queues a table (e.g. sample completions) logged under `key` at `step`.
    pub fn log_table(&self, step: u64, key: &str, columns: Vec<String>, data: Vec<Vec<Value>>) {
        self.send(step, Msg::Table { step, key: key.to_string(), columns, data });
    }

    /// Sends what is left and marks the run complete with `exit_code`; waits at most the
    /// finish timeout.
    pub fn finish(mut self, exit_code: i32) -> Report {
        self.finish_inner(exit_code)
    }

    fn finish_inner(&mut self, exit_code: i32) -> Report {
        if let Some((path, mut st)) = self.offline_state.take() {
            st.exit_code = Some(exit_code);
            let _ = st.save(&path);
            return Report { run_id: self.run_id.clone(), ..Default::default() };
        }
        let Some(tx) = self.tx.take() else { return Report { run_id: self.run_id.clone(), ..Default::default() } };
        // Blocking send: the queue drains as the worker works; bounded by the timeout below.
        let (ftx, frx) = std::sync::mpsc::channel();
        let deadline = Instant::now() + self.finish_timeout;
        std::thread::spawn(move || {
            let _ = ftx.send(tx.send(Msg::Finish { exit_code }).is_ok());
        });
        let _ = frx.recv_timeout(self.finish_timeout);
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(200);
        let mut report = match self.done.take().map(|d| d.recv_timeout(wait)) {
            Some(Ok(r)) => {
                if let Some(h) = self.handle.take() {
                    let _ = h.join();
                }
                r
            }
            _ => Report {
                run_id: self.run_id.clone(),
                error: Some(format!("gave up waiting for W&B after {:.0} s", self.finish_timeout.as_secs_f64())),
                ..Default::default()
            },
        };
        if self.overflowed() {
            report.dropped_from_step = Some(self.dropped_from.load(Ordering::Relaxed));
        }
        report
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.tx.is_some() || self.offline_state.is_some() {
            let _ = self.finish_inner(1);
        }
    }
}

/// The uploading side; also driven directly (no thread) by `wandb-sync`.
pub struct Worker {
    s: Settings,
    client: Client,
    opts: RunOptions,
    pub state: State,
    bucket: Option<Bucket>,
    pending: Option<(u64, Row, f64)>,
    /// Committed history lines not yet acknowledged, with their step.
    outbox: VecDeque<(u64, Row, f64)>,
    /// Console lines not yet acknowledged, formatted as `output.log` lines.
    console: VecDeque<String>,
    /// Files (path, bytes) to upload before the history that names them.
    uploads: Vec<(String, Vec<u8>)>,
    uploaded_names: Vec<String>,
    t0: f64,
    base_runtime: f64,
    /// When the run ended, for `wandb-sync` (live runs end now).
    pub end_ts: Option<f64>,
    /// The run may exist on the server already: ask what it holds before uploading.
    pub resuming: bool,
    failures: u32,
    next_try: Instant,
    warned: bool,
    report: Report,
    /// Highest step accepted in this session (rows at or below it are out of order).
    last_accepted: Option<u64>,
}

impl Worker {
    pub fn new(s: Settings, opts: RunOptions, state: State) -> Worker {
        let client = Client::new(&s);
        let report = Report { run_id: state.run_id.clone(), ..Default::default() };
        let last_accepted = state.last_step;
        let base_runtime = state.runtime_s;
        Worker {
            s,
            client,
            opts,
            state,
            bucket: None,
            pending: None,
            outbox: VecDeque::new(),
            console: VecDeque::new(),
            uploads: Vec::new(),
            uploaded_names: Vec::new(),
            t0: now_ts(),
            base_runtime,
            end_ts: None,
            resuming: false,
            failures: 0,
            next_try: Instant::now(),
            warned: false,
            report,
            last_accepted,
        }
    }

    fn serve(&mut self, rx: Receiver<Msg>) -> Report {
        let mut last_flush = Instant::now();
        loop {
            let wait = self.s.flush_interval.saturating_sub(last_flush.elapsed()).max(Duration::from_millis(10));
            match rx.recv_timeout(wait) {
                Ok(Msg::Log { step, row, ts }) => self.accept(step, row, ts),
                Ok(Msg::Table { step, key, columns, data }) => self.accept_table_at(step, &key, columns, data, now_ts()),
                Ok(Msg::Console { line, ts }) => self.accept_console(&line, ts),
                Ok(Msg::Finish { exit_code }) => return self.finish(exit_code, Instant::now() + self.s.finish_timeout),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.finish(1, Instant::now() + self.s.finish_timeout),
            }
            if last_flush.elapsed() >= self.s.flush_interval || self.outbox.len() >= self.s.rows_per_request {
                let _ = self.flush_once();
                last_flush = Instant::now();
            }
        }
    }

    /// Takes one row. Rows for a step the server already has are skipped; rows for the
    /// pending step are merged into it.
    pub fn accept(&mut self, step: u64, row: Row, ts: f64) {
        if let Some((p, r, t)) = &mut self.pending {
            if step == *p {
                r.extend(row);
                *t = t.max(ts);
                return;
            }
        }
        if self.last_accepted.is_some_and(|l| step <= l) {
            self.report.rows_skipped += 1;
            return;
        }
        self.commit();
        self.last_accepted = Some(step);
        self.pending = Some((step, row, ts));
    }

    /// Takes a table logged at `step`: its JSON file is uploaded before the history row
    /// that references it.
    pub fn accept_table_at(&mut self, step: u64, key: &str, columns: Vec<String>, data: Vec<Vec<Value>>, ts: f64) {
        let (ncols, nrows) = (columns.len(), data.len());
        let body = serde_json::to_vec(&json!({"columns": columns, "data": data})).expect("table serializes");
        let sha = hex(&sha2::Sha256::digest(&body));
        let path = format!("media/table/{key}_{step}_{}.table.json", &sha[..20]);
        // The fields wandb 0.31 writes, less the artifact paths (ponder logs no artifact).
        let reference = json!({"_type": "table-file", "sha256": sha, "size": body.len(), "path": path, "ncols": ncols, "nrows": nrows, "log_mode": "IMMUTABLE"});
        let mut row = Row::new();
        row.insert(key.to_string(), reference);
        let before = self.report.rows_skipped;
        self.accept(step, row, ts);
        if self.report.rows_skipped == before {
            self.uploads.push((path, body));
        }
    }

    /// Takes one console line (`ISO-8601-UTC text`, as the official client writes stdout).
    pub fn accept_console(&mut self, line: &str, ts: f64) {
        for l in line.lines() {
            if self.console.len() < 10_000 {
                self.console.push_back(format!("{} {l}", iso_utc(ts)));
            }
        }
    }

    /// Runtime at wall time `ts`: what earlier sessions ran plus this session's time.
    fn runtime(&self, ts: f64) -> f64 {
        self.base_runtime + (ts - self.t0).max(0.0)
    }

    /// Measures this session's runtime from `t0` (unix seconds); `wandb-sync` sets it to
    /// the first row's timestamp.
    pub fn set_start(&mut self, t0: f64) {
        self.t0 = t0;
    }

    fn commit(&mut self) {
        if let Some(p) = self.pending.take() {
            self.outbox.push_back(p);
        }
    }

    /// The history line of a committed row. `_runtime` is computed when the row is sent,
    /// as the official client does, so a resumed run's offset from the server applies.
    fn history_line(&self, step: u64, row: &Row, ts: f64) -> Row {
        let mut row = row.clone();
        row.insert("_step".into(), json!(step));
        row.insert("_timestamp".into(), json!(ts));
        row.insert("_runtime".into(), json!(self.runtime(ts)));
        row
    }

    fn summary_line(&self) -> String {
        let mut s = self.state.summary.clone();
        let runtime = s.get("_runtime").and_then(Value::as_f64).unwrap_or(self.state.runtime_s);
        s.insert("_wandb".into(), json!({"runtime": runtime.round() as i64}));
        Value::Object(s).to_string()
    }

    fn fail(&mut self, e: &Error) {
        self.failures += 1;
        let backoff = Duration::from_millis(500).saturating_mul(1 << self.failures.min(8)).min(self.s.max_backoff);
        self.next_try = Instant::now() + backoff;
        // A rejected key will not heal by retrying: say so at once, in words that point at
        // the fix (retries go on, in case the key is rotated server-side).
        let auth = matches!(e, Error::Http { status: 401 | 403, .. });
        self.report.error = Some(if auth {
            format!("W&B rejected the API key ({e}); check WANDB_API_KEY or ~/.netrc for {}", self.s.base_url)
        } else {
            e.to_string()
        });
        if (auth || self.failures >= self.s.warn_after_failures) && !self.warned {
            self.warned = true;
            if self.opts.verbose {
                eprintln!(
                    "wandb: uploads keep failing ({}); training goes on, retrying in the background. metrics.jsonl has every row; `ponder wandb-sync RUN_DIR` uploads later",
                    self.report.error.as_deref().unwrap_or("")
                );
            }
        }
    }

    fn ok(&mut self) {
        if self.warned && self.opts.verbose {
            eprintln!("wandb: uploads work again");
        }
        self.failures = 0;
        self.warned = false;
        self.report.error = None;
    }

    fn save_state(&self) {
        if let Some(p) = &self.opts.state_path {
            if let Err(e) = self.state.save(p) {
                eprintln!("wandb: {e}");
            }
        }
    }

    /// Creates or resumes the run on the server.
    fn ensure_bucket(&mut self) -> Result<(), Error> {
        if self.bucket.is_some() {
            return Ok(());
        }
        let fields = RunFields {
            display_name: self.s.display_name.clone(),
            group: self.s.group.clone(),
            notes: self.s.notes.clone(),
            tags: self.s.tags.clone(),
            job_type: self.s.job_type.clone(),
            program: self.opts.program.clone(),
            host: std::env::var("HOSTNAME").ok(),
            config: self.opts.config.as_ref().map(wrap_config),
        };
        let entity = self.state.entity.clone().or_else(|| self.s.entity.clone());
        if self.resuming {
            // The server's word over the state file (which a crash may have left behind):
            // where history and console continue, and which steps it has already.
            if let Some(rs) = self.client.resume_status(entity.as_deref(), &self.state.project, &self.state.run_id)? {
                self.state.history_lines = rs.history_line_count;
                self.state.output_lines = rs.log_line_count;
                if let Some(rt) = rs.runtime {
                    self.base_runtime = self.base_runtime.max(rt);
                }
                if let Some(last) = rs.last_step {
                    self.state.last_step = Some(self.state.last_step.map_or(last, |l| l.max(last)));
                    self.last_accepted = Some(self.last_accepted.map_or(last, |l| l.max(last)));
                    let before = self.outbox.len();
                    self.outbox.retain(|(s, _, _)| *s > last);
                    self.report.rows_skipped += (before - self.outbox.len()) as u64;
                    if self.pending.as_ref().is_some_and(|(s, _, _)| *s <= last) {
                        self.pending = None;
                        self.report.rows_skipped += 1;
                    }
                }
            }
            self.resuming = false;
        }
        let b = self.client.upsert_bucket(entity.as_deref(), &self.state.project, &self.state.run_id, &fields)?;
        // The server's count is the truth for the next history offset.
        if let Some(n) = b.history_line_count {
            self.state.history_lines = n;
        }
        self.state.entity = Some(b.entity.clone());
        let url = self.s.run_url(&b.entity, &self.state.run_id);
        // Run::start printed the URL already when the entity was known.
        if self.opts.verbose && self.s.entity.is_none() {
            eprintln!("wandb: run {} at {url}", self.state.run_id);
        }
        self.report.url = Some(url);
        self.bucket = Some(b);
        self.save_state();
        Ok(())
    }

    /// One attempt at progress: the bucket, pending uploads, then one history chunk.
    fn flush_once(&mut self) -> Result<bool, Error> {
        if Instant::now() < self.next_try {
            return Ok(false);
        }
        let r = self.try_flush(None);
        match &r {
            Ok(_) => self.ok(),
            Err(e) => self.fail(e),
        }
        r
    }

    /// Returns whether everything queued is now on the server.
    fn try_flush(&mut self, complete: Option<i32>) -> Result<bool, Error> {
        self.ensure_bucket()?;
        let (entity, project, run_id) = {
            let b = self.bucket.as_ref().expect("bucket");
            (b.entity.clone(), b.project.clone(), b.run_id.clone())
        };
        if !self.uploads.is_empty() {
            self.client.upload_files(&entity, &project, &run_id, &self.uploads)?;
            self.uploaded_names.extend(self.uploads.drain(..).map(|(n, _)| n));
        }
        if self.outbox.is_empty() && self.console.is_empty() && complete.is_none() {
            return Ok(true);
        }
        let n = self.outbox.len().min(self.s.rows_per_request);
        let rows: Vec<Row> = self.outbox.iter().take(n).map(|(s, r, t)| self.history_line(*s, r, *t)).collect();
        for r in &rows {
            for (k, v) in r {
                self.state.summary.insert(k.clone(), v.clone());
            }
        }
        let lines: Vec<String> = rows.iter().map(|r| Value::Object(r.clone()).to_string()).collect();
        let last = n == self.outbox.len();
        let mut files = Map::new();
        if n > 0 {
            files.insert("wandb-history.jsonl".into(), json!({"offset": self.state.history_lines, "content": lines}));
        }
        if !self.state.summary.is_empty() {
            files.insert("wandb-summary.json".into(), json!({"offset": 0, "content": [self.summary_line()]}));
        }
        let nc = self.console.len().min(self.s.rows_per_request);
        if nc > 0 {
            let lines: Vec<&String> = self.console.iter().take(nc).collect();
            files.insert("output.log".into(), json!({"offset": self.state.output_lines, "content": lines}));
        }
        let last = last && nc == self.console.len();
        let mut body = json!({"files": files});
        if let (Some(code), true) = (complete, last) {
            body["complete"] = json!(true);
            body["exitcode"] = json!(code);
            body["uploaded"] = json!(self.uploaded_names);
        }
        self.client.file_stream(&entity, &project, &run_id, &body)?;
        self.console.drain(..nc);
        self.state.output_lines += nc as u64;
        let sent: Vec<(u64, Row, f64)> = self.outbox.drain(..n).collect();
        if let (Some((step, _, _)), Some(r)) = (sent.last(), rows.last()) {
            self.state.last_step = Some(*step);
            if let Some(rt) = r["_runtime"].as_f64() {
                self.state.runtime_s = self.state.runtime_s.max(rt);
            }
        }
        self.state.history_lines += n as u64;
        self.report.rows_uploaded += n as u64;
        if complete.is_some() && last {
            self.state.complete = true;
        }
        self.save_state();
        Ok(self.outbox.is_empty() && self.console.is_empty())
    }

    /// Commits the pending row, sends everything, then `complete` + `exitcode`; retries
    /// until `deadline`.
    pub fn finish(&mut self, exit_code: i32, deadline: Instant) -> Report {
        // A server that has been failing for a while gets a short last chance, not the
        // whole timeout: the run folder has everything and `wandb-sync` goes on later.
        let deadline = if self.warned { deadline.min(Instant::now() + Duration::from_secs(5)) } else { deadline };
        self.commit();
        self.state.exit_code = Some(exit_code);
        let end = self.end_ts.unwrap_or_else(now_ts);
        self.state.runtime_s = self.state.runtime_s.max(self.runtime(end));
        loop {
            if Instant::now() >= self.next_try {
                match self.try_flush(Some(exit_code)) {
                    Ok(_) if self.state.complete => {
                        self.ok();
                        break;
                    }
                    Ok(_) => self.ok(),
                    Err(e) => self.fail(&e),
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(
                self.next_try
                    .saturating_duration_since(Instant::now())
                    .min(deadline.saturating_duration_since(Instant::now()))
                    .min(Duration::from_millis(200)),
            );
        }
        self.save_state();
        self.report.complete = self.state.complete;
        self.report.clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `2026-11-25T05:57:33.967900` (UTC, microseconds), the official client's console stamp.
pub(crate) fn iso_utc(ts: f64) -> String {
    let secs = ts.floor() as i64;
    let micros = ((ts - secs as f64) * 1e6).round().min(999_999.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn console_stamps_are_iso_utc() {
        // Values from Python: datetime.fromtimestamp(ts, timezone.utc).isoformat()
        assert_eq!(super::iso_utc(0.0), "1970-01-01T00:00:00.000000");
        assert_eq!(super::iso_utc(1795586253.9679), "2026-11-25T05:57:33.967900");
        assert_eq!(super::iso_utc(951782400.5), "2000-02-29T00:00:00.500000");
    }
}
