//! `kind = "eval"`: held-out evaluation of a model to `<run>/eval/<stage>.json`: accuracy,
//! format rate, language consistency, lengths, pass@k and majority vote, overall and per
//! task (the rows' `task` field) when the data mixes tasks.

use super::sft::r1;
use super::{Ctx, Output, StageOutcome};
use crate::config::Paths;
use crate::data;
use crate::eval::{self, EvalSpec};
use anyhow::{bail, Result};
use rewards::RewardSpec;
use rollout::folder::{parse_device, parse_kind};
use rollout::generate::SamplingParams;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalStage {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Held-out JSONL: one file or a list.
    pub data: Paths,
    #[serde(default = "r1")]
    pub template: String,
    #[serde(default = "one_usize")]
    pub samples: usize,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Reward set (default: the pipeline's `[[eval_rewards]]`, else accuracy + format).
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
    /// Prompts per data file (0 = all).
    #[serde(default)]
    pub limit: usize,
}

fn one_usize() -> usize {
    1
}

impl EvalStage {
    pub fn check(&self, origin: &str) -> Result<()> {
        if self.samples == 0 {
            bail!("{origin}: `samples` must be >= 1");
        }
        self.sampling.validate().map_err(|e| anyhow::anyhow!("{origin}: sampling: {e}"))?;
        if !self.rewards.is_empty() {
            rewards::RewardSet::from_specs(self.rewards.clone()).map_err(|e| anyhow::anyhow!("{origin}: rewards: {e}"))?;
        }
        Ok(())
    }
}

/// Rows of every file in `paths`, at most `limit` (> 0) from each.
pub fn load_limited(paths: &Paths, template: &str, limit: usize) -> Result<Vec<data::Example>> {
    let cfg = data::plain_cfg(paths, template);
    let mut out = vec![];
    for p in paths.list() {
        let mut ex = data::load_jsonl(p, &cfg)?;
        if limit > 0 {
            ex.truncate(limit);
        }
        out.extend(ex);
    }
    Ok(out)
}

pub fn run(ctx: &Ctx) -> Result<StageOutcome> {
    let st: EvalStage = ctx.config()?;
    let model = ctx.model_or_previous(&st.model)?;
    let examples = load_limited(&st.data, &st.template, st.limit)?;
    let rewards = [&st.rewards, &ctx.pipeline.eval_rewards].into_iter().find(|r| !r.is_empty()).cloned().unwrap_or_else(eval::default_rewards);
    let spec = EvalSpec { template: &st.template, params: st.sampling.clone(), samples: st.samples, seed: ctx.pipeline.run.seed, rewards };
    let mut rep = eval::evaluate(&model, &examples, &spec, None, parse_device("cpu")?, parse_kind("f32")?)?;
    rep.data = st.data.to_string();
    let out = ctx.run_dir.join("eval");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join(format!("{}.json", ctx.name)), serde_json::to_string_pretty(&rep)?)?;
    let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    eprintln!(
        "  accuracy {:.3}, format {}, language consistency {} (mean {}), mean length {:.1} tokens over {} prompts",
        rep.accuracy,
        opt(rep.format_rate),
        opt(rep.language_consistency_rate),
        opt(rep.language_consistency_mean),
        rep.mean_completion_tokens,
        rep.num_prompts
    );
    if rep.tasks.len() > 1 {
        for (t, r) in &rep.tasks {
            eprintln!("    {t}: accuracy {:.3}, format {}, language consistency {}, length {:.1} ({} samples)", r.accuracy, opt(r.format_rate), opt(r.language_consistency_rate), r.mean_completion_tokens, r.samples);
        }
    }
    Ok(StageOutcome::Done(Output::default()))
}
