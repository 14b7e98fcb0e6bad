//! One file per pipeline stage kind: its config struct (strict TOML) and its `run`.
//! `pipeline.rs` sequences them; everything a stage needs comes in a [`Ctx`].

pub mod distill;
pub mod eval;
pub mod grpo;
pub mod pretrain;
pub mod rejection_sample;
pub mod sft;
pub mod tasks;

use crate::config::from_table;
use crate::lm;
use crate::metrics::{JsonlSink, Sink};
use crate::pipeline::Pipeline;
use anyhow::{anyhow, bail, Result};
use rollout::folder::Policy;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The stage kinds, in the order a pipeline usually runs them.
pub const KINDS: [&str; 7] = ["tasks", "pretrain", "sft", "grpo", "rejection_sample", "distill", "eval"];

/// What a stage gets: the pipeline, its folders, the model to start from, and its table
/// with `{run}` and `{stages.<name>.*}` already resolved.
pub struct Ctx<'a> {
    pub pipeline: &'a Pipeline,
    pub run_dir: &'a Path,
    /// `<run>/stages/<name>/`.
    pub dir: PathBuf,
    pub name: &'a str,
    /// "stages[i] (name)", for error messages.
    pub origin: String,
    /// The latest model an earlier stage produced.
    pub previous: Option<PathBuf>,
    pub quiet: bool,
    pub stop: &'a Arc<AtomicBool>,
    pub table: &'a toml::Table,
    /// The process group of a data-parallel launch, lent to the stage kinds that train on
    /// every rank ([`DATA_PARALLEL`]); empty in one process and for the other kinds, which
    /// rank 0 runs alone.
    pub dist: &'a std::cell::RefCell<Option<ponder_dist::ProcessGroup>>,
}

/// Stage kinds that run on every rank of a data-parallel launch, each rank training on (or
/// sampling) its share of every batch; the others run on rank 0 while the other ranks wait.
pub const DATA_PARALLEL: [&str; 6] = ["pretrain", "grpo", "sft", "rejection_sample", "eval", "distill"];

impl Ctx<'_> {
    /// Whether this process writes the stage's files (rank 0, or the only process).
    pub fn rank0(&self) -> bool {
        self.dist.borrow().as_ref().is_none_or(|d| d.rank == 0)
    }

    /// Parses the stage's table into its config struct.
    pub fn config<T: for<'de> Deserialize<'de>>(&self) -> Result<T> {
        from_table(self.table.clone(), &self.origin)
    }

    /// The folder of `model` if the stage names one (a folder or a Hub id), else of the
    /// previous stage's model.
    pub fn model_or_previous(&self, model: &Option<PathBuf>) -> Result<PathBuf> {
        let m = model.clone().or_else(|| self.previous.clone()).ok_or_else(|| {
            anyhow!(
                "{}: no model: give `model` (a folder, a Hub id or \"{{stages.<name>.model}}\") or put a model-producing stage before",
                self.origin
            )
        })?;
        crate::model_path::resolve(&m).map_err(|e| anyhow!("{}: {e}", self.origin))
    }

    /// Sinks of a pretrain / SFT stage: its `metrics.jsonl` (rows after the checkpoint
    /// being resumed from dropped) and, with a pipeline `[wandb]`, a W&B run `<pipeline>/<stage>`.
    pub fn lm_sinks(&self, ckpt: &Path, steps: usize) -> Result<Vec<Box<dyn Sink>>> {
        let from = lm::checkpoint_step(ckpt);
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(JsonlSink::open(&self.dir, Some(from.unwrap_or(0) as u64))?)];
        if let Some(w) = &self.pipeline.wandb {
            let w = crate::wandb_sink::stage_wandb(w, &self.pipeline.run.name, self.name);
            let config = serde_json::to_value(self.table)?;
            if let Some(sink) =
                crate::wandb_sink::WandbSink::open(Some(&w), self.name, &self.dir, config, from.is_some(), None, steps as u64)?
            {
                sinks.push(Box::new(sink));
            }
        }
        Ok(sinks)
    }
}

/// What a finished stage produced (referred to as `{stages.<name>.model}` / `.data`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Output {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
}

// Serde defaults shared by the stage configs.
pub(crate) fn r1() -> String {
    "r1_zero".into()
}
pub(crate) fn cpu() -> String {
    "cpu".into()
}
pub(crate) fn f32s() -> String {
    "f32".into()
}
pub(crate) fn one_usize() -> usize {
    1
}

pub enum StageOutcome {
    Done(Output),
    /// Stopped by Ctrl-C; the stage's own checkpoint lets it resume.
    Interrupted,
}

/// Checks a stage's table against its kind's config, before anything runs.
pub fn validate(kind: &str, t: &toml::Table, origin: &str) -> Result<()> {
    match kind {
        "tasks" => from_table::<tasks::TasksStage>(t.clone(), origin)?.check(origin),
        "pretrain" => from_table::<pretrain::PretrainStage>(t.clone(), origin)?.check(origin),
        "sft" => from_table::<sft::SftStage>(t.clone(), origin)?.check(origin),
        "eval" => from_table::<eval::EvalStage>(t.clone(), origin)?.check(origin),
        "rejection_sample" => from_table::<rejection_sample::RejectionSampleStage>(t.clone(), origin)?.check(origin),
        "grpo" => grpo::validate(t, origin),
        "distill" => from_table::<distill::DistillStage>(t.clone(), origin)?.check(origin),
        other => bail!("{origin}: unknown stage kind `{other}` ({})", KINDS.join(" | ")),
    }
}

pub fn run(kind: &str, ctx: &Ctx) -> Result<StageOutcome> {
    match kind {
        "tasks" => tasks::run(ctx),
        "pretrain" => pretrain::run(ctx),
        "sft" => sft::run(ctx),
        "grpo" => grpo::run(ctx),
        "eval" => eval::run(ctx),
        "rejection_sample" => rejection_sample::run(ctx),
        "distill" => distill::run(ctx),
        other => bail!("{}: unknown stage kind `{other}`", ctx.origin),
    }
}

pub fn param_count(p: &Policy) -> usize {
    p.named_tensors().values().map(|t| t.numel()).sum()
}
