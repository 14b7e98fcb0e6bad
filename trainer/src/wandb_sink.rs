//! The W&B metrics sink: the trainer's [`Sink`] over `ponder_wandb::Run`. The run's upload
//! state lives in `RUN_DIR/wandb.json`, so `--resume` continues the same W&B run and
//! `ponder wandb-sync RUN_DIR` uploads what the live stream did not.

use crate::metrics::{Row, Sink};
use anyhow::{anyhow, Result};
use ponder_wandb::{process_env, samples_table, Run, RunOptions, Settings, WandbConfig, STATE_FILE};
use serde_json::Value;
use std::path::Path;

/// A pipeline stage's W&B settings: the pipeline's `[wandb]`, with the run named
/// `<pipeline>/<stage>` and grouped under the pipeline unless it says otherwise.
pub fn stage_wandb(w: &WandbConfig, pipeline: &str, stage: &str) -> WandbConfig {
    let mut w = w.clone();
    w.group.get_or_insert_with(|| pipeline.to_string());
    w.name.get_or_insert_with(|| format!("{pipeline}/{stage}"));
    w
}

pub struct WandbSink {
    run: Option<Run>,
    run_dir: std::path::PathBuf,
    total_steps: u64,
}

impl WandbSink {
    /// Starts (or, with `resume`, continues) the W&B run for `run_dir`; `None` when W&B is
    /// disabled. `config` is the resolved recipe, logged as the run config. Only
    /// configuration mistakes are errors; the network never is.
    pub fn open(
        cfg: Option<&WandbConfig>,
        display_name: &str,
        run_dir: &Path,
        config: Value,
        resume: bool,
        run_id: Option<String>,
        total_steps: u64,
    ) -> Result<Option<WandbSink>> {
        let settings = Settings::resolve(cfg, display_name, &process_env).map_err(|e| anyhow!("[wandb]: {e}"))?;
        let state_path = run_dir.join(STATE_FILE);
        if !resume && state_path.exists() {
            // A fresh run in a folder that held an aborted one: a new W&B run too.
            std::fs::remove_file(&state_path)?;
        }
        let opts = RunOptions { state_path: Some(state_path), config: Some(config), run_id, verbose: true, program: Some("ponder".into()) };
        let run = Run::start(settings, opts).map_err(|e| anyhow!("[wandb]: {e}"))?;
        Ok(run.map(|run| WandbSink { run: Some(run), run_dir: run_dir.to_path_buf(), total_steps }))
    }

    pub fn run_id(&self) -> Option<&str> {
        self.run.as_ref().map(Run::run_id)
    }
}

impl Sink for WandbSink {
    fn log(&mut self, step: u64, row: &Row) -> Result<()> {
        if let Some(r) = &self.run {
            r.log(step, row);
            // The Logs tab shows what the console shows, one line per step.
            if let Some(crate::metrics::Line::Step(l) | crate::metrics::Line::Eval(l)) =
                crate::metrics::console_line(step, self.total_steps, row)
            {
                r.console(&l);
            }
        }
        Ok(())
    }

    fn log_samples(&mut self, step: u64, samples: &[Value]) -> Result<()> {
        if let Some(r) = &self.run {
            let (columns, data) = samples_table(samples);
            r.log_table(step, "samples", columns, data);
        }
        Ok(())
    }

    fn finish(&mut self, exit_code: i32) -> Result<()> {
        let Some(run) = self.run.take() else { return Ok(()) };
        let report = run.finish(exit_code);
        let sync_hint = format!("metrics.jsonl has every row; upload them with `ponder wandb-sync {}`", self.run_dir.display());
        if let Some(step) = report.dropped_from_step {
            eprintln!("wandb: live upload stopped at step {step} (queue full); {sync_hint}");
        } else if report.complete {
            if let Some(url) = &report.url {
                eprintln!("wandb: {} rows uploaded; run at {url}", report.rows_uploaded);
            }
        } else if let Some(e) = &report.error {
            eprintln!("wandb: upload incomplete ({e}); {sync_hint}");
        }
        Ok(())
    }
}

/// `ponder wandb-sync DIR`: uploads a run folder (or every GRPO stage of a pipeline folder)
/// from its `metrics.jsonl`; rows the server already has are not sent again.
pub fn sync_dir(dir: &Path) -> Result<()> {
    if dir.join("metrics.jsonl").exists() {
        return sync_one(dir, None);
    }
    // A pipeline: its [wandb] names the stages that carry no recipe of their own
    // (pretrain, SFT) the way training did: `<pipeline>/<stage>`, grouped by pipeline.
    let pipeline: Option<(WandbConfig, String)> =
        std::fs::read_to_string(dir.join("config.toml")).ok().and_then(|t| t.parse::<toml::Table>().ok()).and_then(|t| {
            let name = t.get("run")?.get("name")?.as_str()?.to_string();
            let w: WandbConfig = t.get("wandb")?.clone().try_into().ok()?;
            Some((w, name))
        });
    let stages = dir.join("stages");
    let mut any = false;
    if let Ok(rd) = std::fs::read_dir(&stages) {
        let mut dirs: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("metrics.jsonl").exists() && (p.join("config.toml").exists() || p.join(STATE_FILE).exists()))
            .collect();
        dirs.sort();
        for d in dirs {
            let stage = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let over = pipeline.as_ref().map(|(w, name)| stage_wandb(w, name, &stage));
            sync_one(&d, over)?;
            any = true;
        }
    }
    if !any {
        anyhow::bail!("{} has no metrics.jsonl (nor pipeline stages with one): give a run folder such as runs/NAME", dir.display());
    }
    Ok(())
}

fn sync_one(dir: &Path, fallback: Option<WandbConfig>) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    // The resolved recipe gives the [wandb] section and the run config; a folder without one
    // (or with a recipe this version cannot read) still uploads its metrics.
    let recipe = std::fs::read_to_string(dir.join("config.toml"))
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| crate::config::from_table::<crate::config::Recipe>(t, "config.toml").ok());
    let (cfg, display, config) = match &recipe {
        Some(r) => (r.wandb.clone(), r.run.name.clone(), serde_json::to_value(r).ok()),
        None => (fallback, name, None),
    };
    let mut settings = Settings::resolve(cfg.as_ref(), &display, &process_env).map_err(|e| anyhow!("[wandb]: {e}"))?;
    settings.finish_timeout = settings.finish_timeout.max(std::time::Duration::from_secs(120));
    let r = ponder_wandb::sync(settings, dir, config).map_err(|e| anyhow!("wandb-sync {}: {e}", dir.display()))?;
    for l in &r.bad_lines {
        eprintln!("wandb-sync: {}/metrics.jsonl line {l} is not a metrics row (cut off by a kill?); skipped", dir.display());
    }
    let u = &r.upload;
    let url = u.url.as_deref().unwrap_or("(no URL)");
    if u.rows_uploaded == 0 && u.complete {
        eprintln!("wandb-sync: {}: up to date (run {}, {url})", dir.display(), u.run_id);
    } else {
        eprintln!(
            "wandb-sync: {}: uploaded {} rows ({} already there); run {} at {url}",
            dir.display(),
            u.rows_uploaded,
            u.rows_skipped,
            u.run_id
        );
    }
    Ok(())
}
