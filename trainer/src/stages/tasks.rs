//! `kind = "tasks"`: writes a task family's train / held-out prompts (and, with
//! `sft_size`, a careful solver's worked solutions for SFT) as JSONL.

use super::{Ctx, Output, StageOutcome};
use crate::tasks::{self, Split, TaskKind};
use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksStage {
    pub name: String,
    pub kind: String,
    pub task: TaskKind,
    /// Operand digits (addition, multiplication, compare) or how many numbers (countdown).
    #[serde(default = "two")]
    pub digits: u32,
    #[serde(default = "n_train")]
    pub train_size: usize,
    #[serde(default = "n_heldout")]
    pub heldout_size: usize,
    /// Share of all problems reserved for the held-out split.
    #[serde(default = "heldout_fraction")]
    pub heldout_fraction: f64,
    /// Also write `sft.jsonl`: this many train-split problems with the careful solver's
    /// readable solution as `completion` (every step in the target language, a summary, the
    /// R1 format; tasks without reasoning answered directly). 0 = none.
    #[serde(default)]
    pub sft_size: usize,
    /// Output folder (default `{run}/data`): `train.jsonl`, `heldout.jsonl`, `sft.jsonl`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

pub(crate) fn two() -> u32 {
    2
}
fn n_train() -> usize {
    5000
}
fn n_heldout() -> usize {
    200
}
pub(crate) fn heldout_fraction() -> f64 {
    0.2
}

impl TasksStage {
    pub fn check(&self, origin: &str) -> Result<()> {
        tasks::check(self.task, self.digits, self.heldout_fraction).map_err(|e| anyhow!("{origin}: {e}"))
    }
}

pub fn run(ctx: &Ctx) -> Result<StageOutcome> {
    let st: TasksStage = ctx.config()?;
    let dir = st.dir.clone().unwrap_or_else(|| ctx.run_dir.join("data"));
    std::fs::create_dir_all(&dir)?;
    let seed = ctx.pipeline.run.seed;
    let write = |file: &str, lines: Vec<String>| -> Result<()> {
        let body: String = lines.into_iter().map(|l| l + "\n").collect();
        Ok(std::fs::write(dir.join(file), body)?)
    };
    let gen = |split, n, seed| {
        tasks::generate(st.task, split, n, st.digits, seed, st.heldout_fraction).map_err(|e| anyhow!("{}: {e}", ctx.origin))
    };
    write("train.jsonl", gen(Split::Train, st.train_size, seed)?.iter().map(|q| q.to_json().to_string()).collect())?;
    write("heldout.jsonl", gen(Split::Heldout, st.heldout_size, seed)?.iter().map(|q| q.to_json().to_string()).collect())?;
    if st.sft_size > 0 {
        // Another draw of the train split: the annotators' questions need not be the RL ones.
        let ps = gen(Split::Train, st.sft_size, rollout::pool::mix_seed(seed, 0x5f7))?;
        write(
            "sft.jsonl",
            ps.iter()
                .map(|q| {
                    let mut o = q.to_json();
                    o["completion"] = q.readable_completion().into();
                    o.to_string()
                })
                .collect(),
        )?;
    }
    eprintln!(
        "  wrote {} train, {} held-out{} {} problems to {}",
        st.train_size,
        st.heldout_size,
        if st.sft_size > 0 { format!(" and {} SFT", st.sft_size) } else { String::new() },
        st.task.name(),
        dir.display()
    );
    // `{stages.<name>.data}` is the folder: `.../train.jsonl`, `.../heldout.jsonl`, `.../sft.jsonl`.
    Ok(StageOutcome::Done(Output { model: None, data: Some(dir) }))
}
