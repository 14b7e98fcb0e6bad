//! Metrics sinks. `metrics.jsonl` in the run folder is always written (one JSON object per
//! step, flushed each time); the console shows progress; W&B plugs in as another sink.

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

pub type Row = Map<String, Value>;

pub trait Sink {
    fn log(&mut self, step: u64, row: &Row) -> Result<()>;
    /// A few completions (prompt, completion, rewards) for reading.
    fn log_samples(&mut self, _step: u64, _samples: &[Value]) -> Result<()> {
        Ok(())
    }
    fn finish(&mut self, _exit_code: i32) -> Result<()> {
        Ok(())
    }
}

/// Appends rows to `metrics.jsonl` and samples to `samples/step-N.jsonl`.
pub struct JsonlSink {
    file: std::fs::File,
    samples_dir: PathBuf,
}

impl JsonlSink {
    /// Opens `metrics.jsonl` for appending. On resume from step `keep_up_to`, rows after it
    /// (written after the checkpoint, then lost with the process) are dropped first, so steps
    /// stay monotonic with no duplicates.
    pub fn open(run_dir: &Path, keep_up_to: Option<u64>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        if let (Some(limit), true) = (keep_up_to, path.exists()) {
            let text = std::fs::read_to_string(&path)?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v.get("step")?.as_u64()).is_some_and(|s| s <= limit))
                .collect();
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            // Through a temporary file: a kill here leaves the old file or the new, whole.
            let tmp = run_dir.join(".metrics.jsonl.tmp");
            std::fs::write(&tmp, body)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
        }
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let samples_dir = run_dir.join("samples");
        std::fs::create_dir_all(&samples_dir)?;
        Ok(JsonlSink { file, samples_dir })
    }
}

impl Sink for JsonlSink {
    fn log(&mut self, step: u64, row: &Row) -> Result<()> {
        let mut r = Map::new();
        r.insert("step".into(), step.into());
        for (k, v) in row {
            r.insert(k.clone(), v.clone());
        }
        // Wall time (unix seconds), so `wandb-sync` can give rows their real timestamps.
        r.insert("timestamp".into(), ponder_wandb::now_ts().into());
        writeln!(self.file, "{}", Value::Object(r))?;
        self.file.flush()?;
        Ok(())
    }

    fn log_samples(&mut self, step: u64, samples: &[Value]) -> Result<()> {
        let path = self.samples_dir.join(format!("step-{step:06}.jsonl"));
        let mut f = std::fs::File::create(&path)?;
        for s in samples {
            writeln!(f, "{s}")?;
        }
        Ok(())
    }
}

/// One line per step (or an indicatif bar on a terminal).
pub struct ConsoleSink {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    quiet: bool,
}

impl ConsoleSink {
    pub fn new(start: u64, total: u64, quiet: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").unwrap(),
            );
            b.set_position(start);
            b
        });
        ConsoleSink { bar, total, quiet }
    }
}

fn f(row: &Row, k: &str) -> f64 {
    row.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The console's words for a row: a step line for training rows, a summary of the `eval/`
/// metrics for evaluation rows (shared by the console and W&B's Logs tab).
pub enum Line {
    Step(String),
    Eval(String),
}

pub fn console_line(step: u64, total: u64, row: &Row) -> Option<Line> {
    if row.get("reward").is_none() {
        let parts: Vec<String> = row
            .iter()
            .filter(|(k, _)| k.starts_with("eval/") && (k.ends_with("/mean") || k.as_str() == "eval/reward"))
            .filter_map(|(k, v)| Some(format!("{} {:.3}", k.trim_start_matches("eval/").trim_end_matches("/mean"), v.as_f64()?)))
            .collect();
        return (!parts.is_empty()).then(|| Line::Eval(format!("eval at step {step}: {}", parts.join(", "))));
    }
    Some(Line::Step(format!(
        "step {step}/{total}: reward {:.3} kl {:.4} len {:.0} {:.1}s/step",
        f(row, "reward"),
        f(row, "kl"),
        f(row, "completions/mean_length"),
        f(row, "time/step_s")
    )))
}

impl Sink for ConsoleSink {
    fn log(&mut self, step: u64, row: &Row) -> Result<()> {
        match console_line(step, self.total, row) {
            Some(Line::Eval(line)) => match &self.bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            },
            Some(Line::Step(line)) => match &self.bar {
                Some(b) => {
                    b.set_position(step);
                    b.set_message(line.split_once(": ").map_or(line.clone(), |(_, m)| m.to_string()));
                }
                None if !self.quiet || step == self.total || step % 10 == 0 => eprintln!("{line}"),
                None => {}
            },
            None => {}
        }
        Ok(())
    }

    fn finish(&mut self, _exit_code: i32) -> Result<()> {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        Ok(())
    }
}
