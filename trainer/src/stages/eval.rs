//! `kind = "eval"`: held-out evaluation of a model to `<run>/eval/<stage>.json`: accuracy,
//! format rate, language consistency, lengths, overall and per task (the rows' `task`
//! field) when the data mixes tasks, and the test-time-compute curve (pass@k, maj@k,
//! best-of-k for k = 1, 2, 4, ..., `samples`, with tokens and FLOPs per problem). A
//! `[stages.think]` table sets a thinking budget; `think_budgets` sweeps budgets
//! (`<run>/eval/<stage>-budgets.json`). Charts go to `<run>/plots/<stage>/`.

use super::{cpu, f32s, one_usize, r1, Ctx, Output, StageOutcome};
use crate::config::Paths;
use crate::data;
use crate::eval::{self, EvalSpec};
use anyhow::{bail, Result};
use rewards::RewardSpec;
use rollout::folder::{parse_device, parse_kind};
use rollout::generate::{SamplingParams, ThinkParams};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalStage {
    pub name: String,
    pub kind: String,
    /// Model folder or Hub id (default: the previous stage's output).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Held-out prompts: one dataset or a list (JSONL, Parquet, `hf://datasets/...`, each
    /// with an optional `[start:end]` row range).
    pub data: Paths,
    #[serde(default = "r1")]
    pub template: String,
    /// `[stages.fields]`: `prompt_field`, `answer_field`, `instruction`, `prompt_format`,
    /// `rename`, as in `[data]`.
    #[serde(default)]
    pub fields: crate::config::FieldsCfg,
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
    /// Thinking control: `budget`, `min`, and the `open` / `close` / `end` /
    /// `continuation` strings (defaults `<think>`, `</think>`, `</think> <answer>`, `Wait`).
    #[serde(default)]
    pub think: ThinkParams,
    /// A budget sweep: one more evaluation per thinking budget.
    #[serde(default)]
    pub think_budgets: Vec<usize>,
    /// best-of-k scorers: `logprob` or reward names (default `["logprob"]`).
    #[serde(default = "logprob")]
    pub best_of: Vec<String>,
    /// Also write `<run>/eval/<stage>.samples.jsonl` (one line per sample).
    #[serde(default)]
    pub samples_output: bool,
    /// Share of rows the rewards cannot score that is skipped with a warning (default 0:
    /// any such row stops the stage with a report).
    #[serde(default)]
    pub max_bad_fraction: f64,
    /// Where the model samples: cpu | cuda | cuda:N.
    #[serde(default = "cpu")]
    pub device: String,
    /// f32 | bf16 | f16.
    #[serde(default = "f32s")]
    pub dtype: String,
}

fn logprob() -> Vec<String> {
    vec!["logprob".into()]
}

impl EvalStage {
    pub fn check(&self, origin: &str) -> Result<()> {
        if self.samples == 0 {
            bail!("{origin}: `samples` must be >= 1");
        }
        self.sampling.validate().map_err(|e| anyhow::anyhow!("{origin}: sampling: {e}"))?;
        self.fields.check(origin)?;
        crate::config::check_device_dtype(origin, &self.device, &self.dtype)?;
        if !self.rewards.is_empty() {
            rewards::RewardSet::from_specs(self.rewards.clone()).map_err(|e| anyhow::anyhow!("{origin}: rewards: {e}"))?;
        }
        // Budgets and scorers against the stage's own rewards (or the default set; the
        // pipeline's [[eval_rewards]] are checked again when the stage runs).
        let rewards = if self.rewards.is_empty() { eval::default_rewards() } else { self.rewards.clone() };
        let check_names = self.rewards.is_empty() && self.best_of.iter().any(|b| b != "logprob");
        for budget in std::iter::once(self.think.budget).chain(self.think_budgets.iter().map(|&b| Some(b))) {
            let spec = self.spec(rewards.clone(), 0, ThinkParams { budget, ..self.think.clone() });
            let spec = if check_names { EvalSpec { best_of: vec![], ..spec } } else { spec };
            spec.check().map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        }
        Ok(())
    }

    fn spec(&self, rewards: Vec<RewardSpec>, seed: u64, think: ThinkParams) -> EvalSpec<'_> {
        EvalSpec {
            template: &self.template,
            params: self.sampling.clone(),
            samples: self.samples,
            seed,
            rewards,
            think,
            best_of: self.best_of.clone(),
            dist: None,
        }
    }
}

/// Rows of every file in `paths`, at most `limit` (> 0) from each.
pub fn load_limited(paths: &Paths, template: &str, limit: usize) -> Result<Vec<data::Example>> {
    let cfg = data::plain_cfg(paths, template);
    let mut out = vec![];
    for p in paths.list() {
        let mut ex = data::load_rows(p, &cfg)?;
        if limit > 0 {
            ex.truncate(limit);
        }
        out.extend(ex);
    }
    Ok(out)
}

/// Rows of every file in `paths` that `specs` can score, at most `limit` (> 0) from each.
/// Each file's unusable rows (malformed, no prompt, a reference the rewards cannot read)
/// are reported with their lines before any sampling (see [`data::screen`]), or skipped
/// with a warning while they are at most `max_bad_fraction` of the file: a stage never
/// spends minutes on data it would score 0 for a typo. `key` names that allowance.
pub fn load_screened(
    paths: &Paths,
    cfg: &crate::config::DataCfg,
    limit: usize,
    specs: &[RewardSpec],
    max_bad_fraction: f64,
    origin: &str,
    key: &str,
) -> Result<Vec<data::Example>> {
    if !(0.0..1.0).contains(&max_bad_fraction) {
        anyhow::bail!("{origin}: {key} must be in [0, 1) (the share of unusable rows to skip), got {max_bad_fraction}");
    }
    let set = rewards::RewardSet::from_specs(specs.to_vec()).map_err(|e| anyhow::anyhow!("{origin}: rewards: {e}"))?;
    let mut out = vec![];
    for p in paths.list() {
        let (rows, bad) = data::read_rows(p, cfg)?;
        let mut ok = data::screen(rows, bad, Some(&set), max_bad_fraction, &format!("{origin}: {}", p.display()), key)?;
        if ok.is_empty() {
            anyhow::bail!("{origin}: dataset {} has no examples", p.display());
        }
        if limit > 0 {
            ok.truncate(limit);
        }
        out.extend(ok);
    }
    Ok(out)
}

pub fn run(ctx: &Ctx) -> Result<StageOutcome> {
    let st: EvalStage = ctx.config()?;
    let model = ctx.model_or_previous(&st.model)?;
    let rewards =
        [&st.rewards, &ctx.pipeline.eval_rewards].into_iter().find(|r| !r.is_empty()).cloned().unwrap_or_else(eval::default_rewards);
    let cfg = st.fields.data_cfg(&st.data, &st.template);
    let examples = load_screened(&st.data, &cfg, st.limit, &rewards, st.max_bad_fraction, &ctx.origin, "max_bad_fraction")?;
    // In a data-parallel launch every rank samples its share of the prompts; rank 0 writes.
    let dist = ctx.dist.borrow();
    let spec = EvalSpec { dist: dist.as_ref(), ..st.spec(rewards, ctx.pipeline.run.seed, st.think.clone()) };
    spec.check().map_err(|e| anyhow::anyhow!("{}: {e}", ctx.origin))?;
    let (device, kind) = (parse_device(&st.device)?, parse_kind(&st.dtype)?);
    let pool = eval::open_pool(&model, device, kind, None, None)?;
    let mut runs = vec![eval::evaluate_full(&model, &examples, &spec, Some(&pool), device, kind)?];
    runs.extend(eval::sweep_budgets(&model, &examples, &spec, &st.think_budgets, &pool)?);
    if !ctx.rank0() {
        return Ok(StageOutcome::Done(Output::default()));
    }
    let out = ctx.run_dir.join("eval");
    std::fs::create_dir_all(&out)?;
    if st.samples_output {
        let mut text = String::new();
        for r in &runs {
            for line in &r.samples {
                text.push_str(&serde_json::to_string(line)?);
                text.push('\n');
            }
        }
        std::fs::write(out.join(format!("{}.samples.jsonl", ctx.name)), text)?;
    }
    let mut reports: Vec<eval::EvalReport> = runs.into_iter().map(|r| r.report).collect();
    for r in &mut reports {
        r.data = st.data.to_string();
        r.label = ctx.name.to_string();
    }
    let rep = reports.remove(0);
    std::fs::write(out.join(format!("{}.json", ctx.name)), serde_json::to_string_pretty(&rep)?)?;
    if !reports.is_empty() {
        std::fs::write(out.join(format!("{}-budgets.json", ctx.name)), serde_json::to_string_pretty(&reports)?)?;
    }
    let plots = ctx.run_dir.join("plots").join(ctx.name);
    if rep.samples_per_prompt > 1 || !reports.is_empty() {
        std::fs::create_dir_all(&plots)?;
    }
    if rep.samples_per_prompt > 1 {
        eval::charts::k_chart(&plots.join("k.png"), &rep)?;
        eval::charts::flops_chart(&plots.join("flops.png"), &[&rep])?;
    }
    if !reports.is_empty() {
        let points = reports.iter().chain(rep.think.budget.is_none().then_some(&rep)).collect();
        eval::charts::budget_chart(&plots.join("think_budget.png"), &[(ctx.name.to_string(), points)])?;
    }
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
    if rep.samples_per_prompt > 1 {
        for p in &rep.curve {
            eprintln!("    k = {:>3}: pass@k {:.3}, maj@k {:.3}", p.k, p.pass, p.maj);
        }
    }
    for r in &reports {
        eprintln!(
            "    think budget {}: accuracy {:.3}, {:.1} thinking tokens, forced {:.0} %",
            r.think.budget.unwrap_or(0),
            r.accuracy,
            r.think.mean_think_tokens,
            100.0 * r.think.forced_rate
        );
    }
    if rep.tasks.len() > 1 {
        for (t, r) in &rep.tasks {
            eprintln!(
                "    {t}: accuracy {:.3}, format {}, language consistency {}, length {:.1} ({} samples)",
                r.accuracy,
                opt(r.format_rate),
                opt(r.language_consistency_rate),
                r.mean_completion_tokens,
                r.samples
            );
        }
    }
    Ok(StageOutcome::Done(Output::default()))
}
