//! `kind = "grpo"`: the GRPO trainer with the usual recipe sections nested under the
//! stage (`[stages.rollout]`, `[[stages.rewards]]`, ...). Without `[stages.model]` it
//! starts from the previous stage's model. Resumes at its last checkpoint.

use super::{Ctx, Output, StageOutcome};
use crate::config::{from_table, Recipe, RunCfg};
use crate::train::{self, Options};
use anyhow::{anyhow, Result};
use std::path::Path;

/// The stage table as a GRPO recipe: name and kind removed, the model defaulted.
fn recipe_table(t: &toml::Table, model: &str) -> toml::Table {
    let mut t = t.clone();
    t.remove("name");
    t.remove("kind");
    let m = t.entry("model").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(mt) = m.as_table_mut() {
        mt.entry("path").or_insert_with(|| toml::Value::String(model.into()));
    }
    t
}

pub fn validate(t: &toml::Table, origin: &str) -> Result<()> {
    from_table::<Recipe>(recipe_table(t, "{previous}"), origin).map(drop)
}

pub fn run(ctx: &Ctx) -> Result<StageOutcome> {
    let has_model = ctx.table.get("model").and_then(|m| m.get("path")).is_some();
    let prev = match (has_model, &ctx.previous) {
        (true, _) => String::new(),
        (false, Some(p)) => p.to_string_lossy().into_owned(),
        (false, None) => return Err(anyhow!("{}: no model (give [stages.model] path or put a model-producing stage before)", ctx.origin)),
    };
    let mut t = recipe_table(ctx.table, &prev);
    let p = ctx.pipeline;
    let run_t: toml::Table = toml::from_str(&toml::to_string(&RunCfg {
        name: ctx.name.to_string(),
        seed: p.run.seed,
        output_dir: ctx.run_dir.join("stages"),
    })?)?;
    t.insert("run".into(), toml::Value::Table(run_t));
    if let (false, Some(w)) = (t.contains_key("wandb"), &p.wandb) {
        t.insert("wandb".into(), toml::Value::try_from(crate::wandb_sink::stage_wandb(w, &p.run.name, ctx.name))?);
    }
    let mut recipe: Recipe = from_table(t.clone(), &ctx.origin)?;
    recipe.validate()?;
    recipe.resolve_paths(Path::new("."));
    let resuming = ctx.dir.join("metrics.jsonl").exists();
    let dist = ctx.dist.borrow_mut().take();
    let mut opts = Options { quiet: ctx.quiet, stop: ctx.stop.clone(), sinks: vec![], resume_from: None, dist, ..Default::default() };
    let mut trainer = train::Trainer::new(recipe, &t, resuming, &mut opts)?;
    let out = trainer.run(ctx.stop);
    *ctx.dist.borrow_mut() = trainer.take_dist();
    let out = out?;
    if out.interrupted {
        return Ok(StageOutcome::Interrupted);
    }
    if ctx.rank0() {
        crate::plots::plot_run(&ctx.dir, &ctx.run_dir.join("plots").join(ctx.name))?;
    }
    Ok(StageOutcome::Done(Output { model: out.final_checkpoint, data: None }))
}
