//! Multi-stage recipes: `[[stages]]` run in order, each stage's model feeding the next, and
//! a run resumes at the stage (and step) where it stopped. This file only sequences stages
//! and resolves references; each stage kind lives in `stages/` (config struct + run).
//!
//! Strings in a stage may refer to the run folder, `{run}`, and to earlier stages' outputs:
//! `{stages.<name>.model}` (the model folder a stage produced), `{stages.<name>.data}` (the
//! dataset it wrote) and `{stages.<name>.dir}` (its folder). A stage without a `model` key
//! starts from the latest model an earlier stage produced.

use crate::config::RunCfg;
use crate::stages::{self, Ctx, Output, StageOutcome};
use anyhow::{anyhow, bail, Context, Result};
use rewards::RewardSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    #[serde(default)]
    pub run: RunCfg,
    /// `[wandb]` for every training stage (a GRPO stage's own `[stages.wandb]` wins): each
    /// stage is its own W&B run named `<pipeline>/<stage>`, grouped under the pipeline's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wandb: Option<ponder_wandb::WandbConfig>,
    /// `[[eval_rewards]]`: the reward set of every `eval` stage that has no `rewards` of its
    /// own (default: accuracy + format).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval_rewards: Vec<RewardSpec>,
    pub stages: Vec<toml::Table>,
}

/// Which stages are done, and what each produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipelineState {
    /// Finished stages in order, with the model each produced.
    pub completed: Vec<(String, Option<PathBuf>)>,
    /// Every output of each finished stage (model, dataset), for `{stages.<name>.*}`.
    #[serde(default)]
    pub outputs: BTreeMap<String, Output>,
    /// Wall time of each finished stage, in seconds (of the run that finished it).
    #[serde(default)]
    pub seconds: BTreeMap<String, f64>,
}

impl PipelineState {
    /// The model the latest finished stage that produced one produced.
    fn last_model(&self) -> Option<PathBuf> {
        self.completed.iter().rev().find_map(|(_, m)| m.clone())
    }
}

fn state_path(run_dir: &Path) -> PathBuf {
    run_dir.join("pipeline.json")
}

/// Writes `pipeline.json` through a temporary file, so a kill never leaves half of it.
fn save_state(run_dir: &Path, state: &PipelineState) -> Result<()> {
    crate::checkpoint::write_atomic(&state_path(run_dir), serde_json::to_string_pretty(state)?.as_bytes())
}

fn stage_kind(t: &toml::Table, i: usize) -> Result<(String, String)> {
    let name = t.get("name").and_then(|v| v.as_str()).ok_or_else(|| anyhow!("stages[{i}]: missing `name`"))?.to_string();
    let kind = t
        .get("kind")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("stages[{i}] ({name}): missing `kind` ({})", stages::KINDS.join(" | ")))?
        .to_string();
    Ok((name, kind))
}

/// Every `{stages.<name>.<what>}` in a string.
fn references(s: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = s;
    while let Some(i) = rest.find("{stages.") {
        let after = &rest[i + 8..];
        let Some(end) = after.find('}') else { break };
        let inner = &after[..end];
        if let Some((name, what)) = inner.rsplit_once('.') {
            out.push((name.to_string(), what.to_string()));
        }
        rest = &after[end..];
    }
    out
}

/// Applies `f` to every string in a TOML value.
fn map_strings(v: &mut toml::Value, f: &mut dyn FnMut(&str) -> Result<String>) -> Result<()> {
    match v {
        toml::Value::String(s) => *s = f(s)?,
        toml::Value::Array(a) => {
            for x in a {
                map_strings(x, f)?;
            }
        }
        toml::Value::Table(t) => {
            for (_, x) in t.iter_mut() {
                map_strings(x, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The stage table with `{run}` and `{stages.<name>.*}` replaced by what they point at.
fn resolve(t: &toml::Table, run_dir: &Path, state: &PipelineState, origin: &str) -> Result<toml::Table> {
    let mut v = toml::Value::Table(t.clone());
    map_strings(&mut v, &mut |s: &str| {
        let mut out = s.replace("{run}", &run_dir.to_string_lossy());
        for (name, what) in references(s) {
            let o = state.outputs.get(&name).ok_or_else(|| {
                anyhow!("{origin}: `{{stages.{name}.{what}}}`: stage `{name}` has not run (a stage can only refer to earlier ones)")
            })?;
            let path = match what.as_str() {
                "model" => {
                    o.model.clone().ok_or_else(|| anyhow!("{origin}: `{{stages.{name}.model}}`: stage `{name}` produced no model"))?
                }
                "data" => o.data.clone().ok_or_else(|| anyhow!("{origin}: `{{stages.{name}.data}}`: stage `{name}` wrote no dataset"))?,
                "dir" => run_dir.join("stages").join(&name),
                other => bail!("{origin}: `{{stages.{name}.{other}}}`: a stage's outputs are `model`, `data` and `dir`"),
            };
            out = out.replace(&format!("{{stages.{name}.{what}}}"), &path.to_string_lossy());
        }
        Ok(out)
    })?;
    match v {
        toml::Value::Table(t) => Ok(t),
        _ => unreachable!(),
    }
}

/// Checks every stage's table up front, so a typo in stage 4 fails before stage 1 runs,
/// and every `{stages.<name>.*}` names an earlier stage.
pub fn validate(p: &Pipeline) -> Result<()> {
    let mut names: Vec<String> = vec![];
    for (i, t) in p.stages.iter().enumerate() {
        let (name, kind) = stage_kind(t, i)?;
        if names.contains(&name) {
            bail!("stages[{i}]: duplicate stage name `{name}`");
        }
        let origin = format!("stages[{i}] ({name})");
        stages::validate(&kind, t, &origin)?;
        let mut v = toml::Value::Table(t.clone());
        map_strings(&mut v, &mut |s: &str| {
            for (r, what) in references(s) {
                if !names.contains(&r) {
                    bail!(
                        "{origin}: `{{stages.{r}.{what}}}` names no earlier stage (earlier: {})",
                        if names.is_empty() { "none".into() } else { names.join(", ") }
                    );
                }
                if !["model", "data", "dir"].contains(&what.as_str()) {
                    bail!("{origin}: `{{stages.{r}.{what}}}`: a stage's outputs are `model`, `data` and `dir`");
                }
            }
            Ok(s.to_string())
        })?;
        names.push(name);
    }
    if !p.eval_rewards.is_empty() {
        rewards::RewardSet::from_specs(p.eval_rewards.clone()).map_err(|e| anyhow!("[[eval_rewards]]: {e}"))?;
    }
    Ok(())
}

/// What rank 0 tells the other ranks when a stage it ran alone ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Signal {
    Running = 0,
    Done = 1,
    Interrupted = 2,
    Failed = 3,
}

/// Rank 0's side while it runs a stage alone: every half second one all-reduce of its status
/// with the waiting ranks, until the status leaves `Running`. Gives the group back, with an
/// error if a waiting rank left (rank 0 finishes its stage first: nothing is lost).
fn heartbeat(pg: ponder_dist::ProcessGroup, status: Arc<std::sync::atomic::AtomicU8>) -> (ponder_dist::ProcessGroup, Result<()>) {
    loop {
        let s = status.load(Ordering::SeqCst);
        let mut v = [s as f64];
        if let Err(e) = pg.all_reduce_f64(&mut v) {
            return (pg, Err(anyhow!("a rank stopped answering while rank 0 ran a stage alone: {e}")));
        }
        if s != Signal::Running as u8 {
            return (pg, Ok(()));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// A waiting rank's side of [`heartbeat`]: blocks until rank 0's stage ends. A rank 0 that
/// died makes the all-reduce fail (at the latest after the group's timeout).
fn wait_for_rank0(pg: &ponder_dist::ProcessGroup, stage: &str) -> Result<Signal> {
    loop {
        let mut v = [0.0];
        pg.all_reduce_f64(&mut v).map_err(|e| anyhow!("waiting for rank 0 to finish stage {stage}: {e}"))?;
        match v[0] as u8 {
            0 => continue,
            1 => return Ok(Signal::Done),
            2 => return Ok(Signal::Interrupted),
            _ => return Ok(Signal::Failed),
        }
    }
}

fn read_state(run_dir: &Path) -> Result<PipelineState> {
    let mut state: PipelineState = if state_path(run_dir).exists() {
        serde_json::from_str(&std::fs::read_to_string(state_path(run_dir))?).context("reading pipeline.json")?
    } else {
        PipelineState::default()
    };
    // Runs written before `outputs` existed recorded only models.
    for (n, m) in &state.completed {
        state.outputs.entry(n.clone()).or_insert_with(|| Output { model: m.clone(), data: None });
    }
    Ok(state)
}

/// Runs the pipeline's stages in order. In a data-parallel launch (torchrun / Slurm) every
/// rank runs this: `pretrain`, `sft`, `grpo` and `distill` stages train on every rank,
/// `rejection_sample` and `eval` sample on every rank (rank 0 writes), `tasks` runs on rank 0
/// while the others wait for it; the run folder must be shared.
pub fn run(p: Pipeline, resolved: &toml::Table, resume: bool, quiet: bool, stop: Arc<AtomicBool>) -> Result<()> {
    validate(&p)?;
    let dist = std::cell::RefCell::new(crate::train::join_launch()?);
    let (rank, world) = dist.borrow().as_ref().map_or((0, 1), |d| (d.rank, d.world));
    let rank0 = rank == 0;
    let run_dir = p.run.output_dir.join(&p.run.name);
    if !resume && state_path(&run_dir).exists() {
        bail!(
            "run folder {} already holds a run; continue it with `ponder train --resume {}`, or pick another run.name",
            run_dir.display(),
            run_dir.display()
        );
    }
    std::fs::create_dir_all(&run_dir)?;
    let _lock = if rank0 { Some(crate::checkpoint::RunLock::acquire(&run_dir)?) } else { None };
    if !resume && rank0 {
        crate::checkpoint::write_atomic(&run_dir.join("config.toml"), toml::to_string_pretty(resolved)?.as_bytes())?;
    }
    if world > 1 {
        eprintln!(
            "rank {rank} of {world}: data-parallel pipeline ({} stages on every rank, the others on rank 0)",
            stages::DATA_PARALLEL.join(", ")
        );
    }
    let mut state = read_state(&run_dir)?;
    let mut previous: Option<PathBuf> = state.last_model();
    for (i, t) in p.stages.iter().enumerate() {
        let (name, kind) = stage_kind(t, i)?;
        if state.completed.iter().any(|(n, _)| n == &name) {
            if rank0 {
                eprintln!("stage {name} ({kind}): done earlier, skipped");
            }
            continue;
        }
        if crate::train::stop_agreed(&stop, dist.borrow().as_ref())? {
            if rank0 {
                eprintln!("interrupted before stage {name}; resume with: ponder train --resume {}", run_dir.display());
            }
            return Ok(());
        }
        let origin = format!("stages[{i}] ({name})");
        let table = resolve(t, &run_dir, &state, &origin)?;
        let dir = run_dir.join("stages").join(&name);
        std::fs::create_dir_all(&dir)?;
        let alone = world > 1 && !stages::DATA_PARALLEL.contains(&kind.as_str());
        if alone && !rank0 {
            // Rank 0 runs this stage; then its outputs are in pipeline.json.
            let signal = wait_for_rank0(dist.borrow().as_ref().expect("world > 1"), &name)?;
            match signal {
                Signal::Done => {}
                Signal::Interrupted => return Ok(()),
                _ => bail!("rank 0 failed in stage {name} ({kind}); its log has the cause"),
            }
            state = read_state(&run_dir)?;
            if !state.completed.iter().any(|(n, _)| n == &name) {
                bail!(
                    "rank 0 finished stage {name}, but {} does not list it: is the run folder shared by every rank?",
                    state_path(&run_dir).display()
                );
            }
            previous = state.last_model();
            continue;
        }
        if rank0 {
            eprintln!("stage {name} ({kind})");
        }
        let t0 = std::time::Instant::now();
        // A stage rank 0 runs alone sees no process group; the waiting ranks hear from it.
        let status = Arc::new(std::sync::atomic::AtomicU8::new(Signal::Running as u8));
        let beat = match alone {
            true => {
                let pg = dist.borrow_mut().take().expect("world > 1");
                let status = status.clone();
                Some(std::thread::spawn(move || heartbeat(pg, status)))
            }
            false => None,
        };
        let ctx = Ctx {
            pipeline: &p,
            run_dir: &run_dir,
            dir,
            name: &name,
            origin,
            previous: previous.clone(),
            quiet: quiet || !rank0,
            stop: &stop,
            table: &table,
            dist: &dist,
        };
        let ran = stages::run(&kind, &ctx);
        // Tells the waiting ranks (through the heartbeat) how the stage ended.
        let finish = |signal: Signal| status.store(signal as u8, Ordering::SeqCst);
        let mut outcome = match ran {
            Ok(StageOutcome::Done(o)) => {
                let took = t0.elapsed().as_secs_f64();
                if rank0 {
                    eprintln!("  stage {name} took {took:.1}s");
                }
                state.seconds.insert(name.clone(), took);
                previous = o.model.clone().or(previous);
                state.completed.push((name.clone(), o.model.clone()));
                state.outputs.insert(name.clone(), o);
                // Saved before the waiting ranks are told, so they read the new state.
                let saved = if rank0 { save_state(&run_dir, &state) } else { Ok(()) };
                finish(if saved.is_ok() { Signal::Done } else { Signal::Failed });
                // After a stage every rank ran, no rank reads its files before rank 0 wrote them.
                match (saved, dist.borrow().as_ref().filter(|_| !alone)) {
                    (Ok(()), Some(pg)) => pg.barrier().map(|_| true).map_err(anyhow::Error::from),
                    (saved, _) => saved.map(|_| true),
                }
            }
            Ok(StageOutcome::Interrupted) => {
                finish(Signal::Interrupted);
                if rank0 {
                    eprintln!("interrupted in stage {name}; resume with: ponder train --resume {}", run_dir.display());
                }
                Ok(false)
            }
            Err(e) => {
                finish(Signal::Failed);
                Err(e)
            }
        };
        if let Some(h) = beat {
            let (pg, beat_result) = h.join().map_err(|_| anyhow!("the heartbeat thread of stage {name} panicked"))?;
            *dist.borrow_mut() = Some(pg);
            if let (Ok(_), Err(e)) = (&outcome, beat_result) {
                outcome = Err(e.context(format!("stage {name} finished and was saved")));
            }
        }
        if !outcome? {
            return Ok(());
        }
    }
    if let (Some(m), true) = (&previous, rank0) {
        eprintln!("pipeline done; final model: {}", m.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_to_earlier_outputs() {
        assert_eq!(references("{stages.a-b.model}/x {stages.c.data}"), vec![("a-b".into(), "model".into()), ("c".into(), "data".into())]);
        let mut state = PipelineState::default();
        state.outputs.insert("rs".into(), Output { model: None, data: Some("/r/rs.jsonl".into()) });
        state.outputs.insert("base".into(), Output { model: Some("/r/base".into()), data: None });
        let t: toml::Table = r#"
            model = "{stages.base.model}"
            data = ["{stages.rs.data}", "{run}/data/x.jsonl"]
            [inner]
            dir = "{stages.rs.dir}"
        "#
        .parse()
        .unwrap();
        let r = resolve(&t, Path::new("/r"), &state, "s").unwrap();
        assert_eq!(r["model"].as_str(), Some("/r/base"));
        assert_eq!(r["data"].as_array().unwrap()[0].as_str(), Some("/r/rs.jsonl"));
        assert_eq!(r["data"].as_array().unwrap()[1].as_str(), Some("/r/data/x.jsonl"));
        assert_eq!(r["inner"]["dir"].as_str(), Some("/r/stages/rs"));
        let bad: toml::Table = "model = \"{stages.rs.model}\"".parse().unwrap();
        assert!(resolve(&bad, Path::new("/r"), &state, "s").unwrap_err().to_string().contains("produced no model"));
    }

    #[test]
    fn set_reaches_a_stage_by_name() {
        let mut t: toml::Table = r#"
            [run]
            name = "p"
            [[stages]]
            name = "base"
            slip_rate = 0.7
            [stages.model]
            hidden = 64
            [[stages]]
            name = "rl"
        "#
        .parse()
        .unwrap();
        let sets = ["stages.base.slip_rate=1.0", "stages.base.model.hidden=32", "stages.rl.train.steps=5", "run.seed=3"];
        crate::config::apply_sets(&mut t, &sets.map(String::from)).unwrap();
        let st = t["stages"].as_array().unwrap();
        assert_eq!(st[0]["slip_rate"].as_float(), Some(1.0));
        assert_eq!(st[0]["model"]["hidden"].as_integer(), Some(32));
        assert_eq!(st[1]["train"]["steps"].as_integer(), Some(5));
        assert_eq!(t["run"]["seed"].as_integer(), Some(3));
        let e = crate::config::apply_sets(&mut t, &["stages.bse.slip_rate=1".into()]).unwrap_err().to_string();
        assert!(e.contains("no `stages` entry is named \"bse\"") && e.contains("base, rl"), "{e}");
    }
}
