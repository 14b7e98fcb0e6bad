//! `ponder wandb-sync RUN_DIR`: uploads a run folder's `metrics.jsonl` (and its sample
//! tables) to W&B after the fact: for offline runs, and for runs whose live uploads failed.
//! Idempotent: `wandb.json` records the last step the server has, and only later rows go.

use crate::settings::{Mode, Settings};
use crate::stream::{Report, Row, RunOptions, State, Worker, STATE_FILE};
use crate::Error;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    /// What went up (`rows_skipped`: rows the server already had).
    pub upload: Report,
    /// `metrics.jsonl` lines that are not JSON objects with a `step` (e.g. a line cut off by
    /// a kill), by line number.
    pub bad_lines: Vec<usize>,
}

/// Flattens sample records (`{"prompt":..,"completion":..,"rewards":{"acc":1}}`) into table
/// columns and rows; nested objects become `parent/key` columns.
pub fn samples_table(samples: &[Value]) -> (Vec<String>, Vec<Vec<Value>>) {
    fn flat(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}/{k}") };
                    flat(&key, x, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let flats: Vec<Vec<(String, Value)>> = samples
        .iter()
        .map(|s| {
            let mut out = Vec::new();
            flat("", s, &mut out);
            out
        })
        .collect();
    // The columns people read first, then the rest (serde_json maps are sorted).
    let mut columns: Vec<String> = Vec::new();
    for first in ["step", "prompt", "completion", "answer", "reward"] {
        if flats.iter().any(|f| f.iter().any(|(k, _)| k == first)) {
            columns.push(first.to_string());
        }
    }
    for f in &flats {
        for (k, _) in f {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let data = flats
        .iter()
        .map(|f| columns.iter().map(|c| f.iter().find(|(k, _)| k == c).map(|(_, v)| v.clone()).unwrap_or(Value::Null)).collect())
        .collect();
    (columns, data)
}

/// The sample files of a run folder: `samples/step-N.jsonl`, by step.
fn sample_files(run_dir: &Path) -> Vec<(u64, Vec<Value>)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(run_dir.join("samples")) else { return out };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(step) = name.strip_prefix("step-").and_then(|s| s.strip_suffix(".jsonl")).and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let rows: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        if !rows.is_empty() {
            out.push((step, rows));
        }
    }
    out.sort_by_key(|(s, _)| *s);
    out
}

/// Uploads `run_dir`'s rows after the last step the server has, then marks the run
/// complete. `config` is the run config (the resolved recipe). Uploading keeps retrying
/// for `settings.finish_timeout`; on failure nothing is lost and running it again goes on
/// where it stopped.
pub fn sync(mut settings: Settings, run_dir: &Path, config: Option<Value>) -> Result<SyncReport, Error> {
    let metrics = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics)
        .map_err(|e| Error::Io(format!("reading {}: {e}; is {} a ponder run folder?", metrics.display(), run_dir.display())))?;
    if settings.mode == Mode::Disabled {
        settings.mode = Mode::Online;
    }
    if settings.api_key.is_none() {
        return Err(Error::Config(format!("no W&B API key for {}: set WANDB_API_KEY or run `wandb login`", settings.base_url)));
    }
    let state_path = run_dir.join(STATE_FILE);
    let prior = State::load(&state_path)?;
    let resuming = prior.is_some();
    let state = prior.unwrap_or_else(|| State::fresh(&settings, None));
    let mut report = SyncReport { upload: Report { run_id: state.run_id.clone(), ..Default::default() }, ..Default::default() };
    let mut rows: Vec<(u64, Row)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(mut m)) => match m.remove("step").and_then(|s| s.as_u64()) {
                Some(step) => rows.push((step, m)),
                None => report.bad_lines.push(i + 1),
            },
            _ => report.bad_lines.push(i + 1),
        }
    }
    // Steps are logged in order; a stable sort keeps same-step rows in their order.
    rows.sort_by_key(|(s, _)| *s);
    let last_local = rows.last().map(|(s, _)| *s);
    if state.complete && state.last_step >= last_local {
        report.upload.complete = true;
        report.upload.rows_skipped = rows.len() as u64;
        report.upload.url = state.entity.as_deref().map(|e| settings.run_url(e, &state.run_id));
        return Ok(report);
    }
    let exit_code = state.exit_code.unwrap_or(1);
    settings.rows_per_request = settings.rows_per_request.max(1);
    let timeout = settings.finish_timeout.max(Duration::from_secs(5));
    let opts = RunOptions { state_path: Some(state_path), config, run_id: None, verbose: false, program: Some("ponder".into()) };
    let mut w = Worker::new(settings, opts, state);
    w.resuming = resuming;
    let first_ts = rows.iter().find_map(|(_, r)| r.get("timestamp").and_then(Value::as_f64));
    if let Some(t) = first_ts {
        w.set_start(t);
    }
    let mut tables = sample_files(run_dir).into_iter().peekable();
    let mut last_ts = first_ts;
    for (step, mut row) in rows {
        while let Some((s, samples)) = tables.next_if(|(s, _)| *s <= step) {
            let (columns, data) = samples_table(&samples);
            w.accept_table_at(s, "samples", columns, data, last_ts.unwrap_or_else(crate::now_ts));
        }
        let ts = row.remove("timestamp").and_then(|t| t.as_f64()).or(last_ts).unwrap_or_else(crate::now_ts);
        last_ts = Some(ts);
        w.accept(step, row, ts);
    }
    w.end_ts = last_ts;
    let r = w.finish(exit_code, Instant::now() + timeout);
    if !r.complete {
        return Err(Error::Transport(format!(
            "uploaded {} rows, then stopped: {}; run `ponder wandb-sync {}` again to go on",
            r.rows_uploaded,
            r.error.unwrap_or_else(|| "timed out".into()),
            run_dir.display()
        )));
    }
    report.upload = r;
    Ok(report)
}
