//! The GRPO training loop: rollout -> rewards -> advantages -> clipped-surrogate updates ->
//! weight sync -> metrics -> checkpoints. Each step reads top to bottom in `step()`; the
//! learner's part (planning passes over the batch, the updates) is in `train/learner.rs`.

use crate::checkpoint::{self, TrainerState};
use crate::config::Recipe;
use crate::data::{self, Cursor, Example};
use crate::grpo;
use crate::metrics::{ConsoleSink, JsonlSink, Row, Sink};
use crate::optim::{lr_at, AdamW};
use crate::rollouts::Rollouts;
use crate::wandb_sink::WandbSink;
use anyhow::{anyhow, bail, Context, Result};
use rewards::{RewardSet, Sample};
use rollout::folder::{parse_device, parse_kind, Policy};
use rollout::generate::{Completion, FinishReason, SamplingParams};
use rollout::pool::{mix_seed, RolloutPool};
use rollout::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

mod learner;
use learner::{Batch, LearnStats};

/// What a finished (or interrupted) run reports.
#[derive(Debug)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub steps_done: u64,
    pub interrupted: bool,
    pub final_checkpoint: Option<PathBuf>,
}

#[derive(Default)]
pub struct Options {
    pub quiet: bool,
    /// Set by Ctrl-C: the current step finishes, a checkpoint is saved, the run exits cleanly.
    pub stop: Arc<AtomicBool>,
    /// Extra sinks (e.g. W&B).
    pub sinks: Vec<Box<dyn Sink>>,
    /// On resume: the checkpoint to continue from (`step-N`), instead of the newest valid one.
    pub resume_from: Option<String>,
    /// Fault injection for tests: at this step (1-based) the learner asks the allocator for
    /// an impossible tensor before its first update, a real out-of-memory error.
    #[doc(hidden)]
    pub fail_alloc_at_step: Option<u64>,
    /// The process group of a data-parallel launch that a pipeline already joined (the
    /// trainer joins one itself from the launcher's variables otherwise).
    pub dist: Option<ponder_dist::ProcessGroup>,
}

pub struct Trainer {
    pub recipe: Recipe,
    pub run_dir: PathBuf,
    /// The base model's folder: `model.path`, or the Hub cache snapshot it names.
    model_dir: PathBuf,
    tk: Arc<Tokenizer>,
    policy: Policy,
    reference: Option<Policy>,
    /// The in-process worker pool, or inference servers (shared with the thread that samples
    /// the next batch during an update, with `rollout.staleness = 1`).
    rollouts: Arc<Rollouts>,
    /// With `rollout.staleness = 1`: the next step's first round, sampled during the last
    /// update with the weights from before it; saved in checkpoints, so resume is exact.
    inflight: Option<Inflight>,
    opt: AdamW,
    rewards: RewardSet,
    train_set: Vec<Example>,
    eval_set: Vec<Example>,
    state: TrainerState,
    device: Device,
    kind: Kind,
    sinks: Vec<Box<dyn Sink>>,
    /// Held while the trainer lives: a second process on the same run folder is refused
    /// (by rank 0 of a data-parallel launch; the other ranks write nothing).
    _lock: Option<checkpoint::RunLock>,
    /// The process group of a data-parallel launch (torchrun / Slurm).
    dist: Option<ponder_dist::ProcessGroup>,
    /// Whether the current step has changed weights or optimizer state yet (after that, a
    /// failure cannot be rolled back to the last completed step).
    updated: bool,
    fail_alloc_at_step: Option<u64>,
}

/// A batch sampled ahead (one-step-off overlap): the prompts (indices into the training set)
/// and their groups, for the step whose 0-based index is `step`.
#[derive(Clone, Serialize, Deserialize)]
struct Inflight {
    step: u64,
    idx: Vec<usize>,
    groups: Vec<Vec<Completion>>,
}

/// Where a checkpoint keeps the batch in flight (next to the optimizer state).
const INFLIGHT: &str = "train-state/inflight.json";

/// Gives the samplers the learner's weights as of `step`. With inference servers in a
/// data-parallel launch, rank 0 alone publishes and reloads them (every rank holds the same
/// weights) and the others wait for its outcome; each rank's local workers sync themselves.
fn sync_ranks(rollouts: &Rollouts, policy: &Policy, dist: Option<&ponder_dist::ProcessGroup>, step: u64) -> Result<()> {
    let Some(pg) = dist.filter(|_| rollouts.is_engine()) else {
        return rollouts.sync(policy, step);
    };
    let res = if pg.rank == 0 { rollouts.sync(policy, step) } else { Ok(()) };
    let mut failed = [if res.is_err() { 1.0 } else { 0.0 }];
    pg.all_reduce_f64(&mut failed)?;
    res?;
    if failed[0] > 0.0 {
        bail!("rank 0 could not publish the weights of step {step} to the inference servers (rank 0's log has the cause)");
    }
    Ok(())
}

/// Joins the process group of a data-parallel launch (torchrun / Slurm variables); `None`
/// outside one. Every collective then waits at most `PONDER_DIST_TIMEOUT_S` [1800] seconds.
pub fn join_launch() -> Result<Option<ponder_dist::ProcessGroup>> {
    let Some(l) = ponder_dist::Launch::from_env(|k| std::env::var(k).ok())? else { return Ok(None) };
    let secs = std::env::var("PONDER_DIST_TIMEOUT_S").ok().and_then(|v| v.parse().ok()).unwrap_or(1800u64);
    Ok(Some(ponder_dist::ProcessGroup::join(&l, std::time::Duration::from_secs(secs))?))
}

/// Whether to stop (Ctrl-C): in a data-parallel launch, whether any rank was told to, so
/// that every rank stops at the same point (a collective: every rank calls it).
pub fn stop_agreed(stop: &AtomicBool, dist: Option<&ponder_dist::ProcessGroup>) -> Result<bool> {
    let stopping = stop.load(Ordering::SeqCst);
    let Some(pg) = dist else { return Ok(stopping) };
    let mut v = [stopping as u8 as f64];
    pg.all_reduce_f64(&mut v)?;
    Ok(v[0] > 0.0)
}

/// This rank's contiguous share `from..to` of `n` items in a data-parallel launch (all of
/// them in one process): how prompts, batch rows and sequences are split over the ranks.
pub fn share(dist: Option<&ponder_dist::ProcessGroup>, n: usize) -> (usize, usize) {
    dist.map_or((0, n), |d| (d.rank * n / d.world, (d.rank + 1) * n / d.world))
}

/// Every rank's `mine`, concatenated in rank order (a collective: every rank calls it; in one
/// process, `mine` itself). `what` names the items in an error.
pub fn gather<T: Serialize + serde::de::DeserializeOwned>(
    dist: Option<&ponder_dist::ProcessGroup>,
    mine: Vec<T>,
    what: &str,
) -> Result<Vec<T>> {
    let Some(pg) = dist else { return Ok(mine) };
    let mut all = Vec::with_capacity(mine.len() * pg.world);
    for part in pg.all_gather_bytes(&serde_json::to_vec(&mine)?)? {
        all.extend(serde_json::from_slice::<Vec<T>>(&part).with_context(|| format!("a rank's {what}"))?);
    }
    Ok(all)
}

fn sampling(recipe: &Recipe) -> SamplingParams {
    recipe.rollout.sampling()
}

impl Trainer {
    /// Starts a new run (`resume = false`) or continues one from its newest checkpoint.
    pub fn new(recipe: Recipe, resolved: &toml::Table, resume: bool, opts: &mut Options) -> Result<Trainer> {
        let run_dir = recipe.run_dir();
        // Under torchrun or Slurm: join the other ranks first. Rank 0 alone writes the run
        // folder (config, metrics, checkpoints); every rank trains the same weights.
        let dist = match opts.dist.take() {
            Some(pg) => Some(pg),
            None => join_launch()?,
        };
        let rank0 = dist.as_ref().is_none_or(|d| d.rank == 0);
        let world = dist.as_ref().map_or(1, |d| d.world);
        let lock = if rank0 { Some(checkpoint::RunLock::acquire(&run_dir)?) } else { None };
        let latest = match (&opts.resume_from, resume) {
            (Some(name), true) => {
                let dir = checkpoint::checkpoints_dir(&run_dir).join(name);
                checkpoint::validate(&dir, checkpoint::STATE)
                    .with_context(|| format!("--from {name}: not a usable checkpoint of {}", run_dir.display()))?;
                let step = checkpoint::read_state(&dir)?.step;
                eprintln!("resuming from {} (step {step}); later checkpoints will be overwritten as training passes them", dir.display());
                Some((step, dir))
            }
            (Some(_), false) => bail!("--from needs --resume"),
            (None, _) => checkpoint::latest_valid(&checkpoint::checkpoints_dir(&run_dir), checkpoint::STATE)?,
        };
        if rank0 && !resume && run_dir.join("metrics.jsonl").exists() {
            bail!(
                "run folder {} already holds a run; continue it with `ponder train --resume {}`, or pick another run.name (--set run.name=...)",
                run_dir.display(),
                run_dir.display()
            );
        }
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        if rank0 && !resume {
            let _ = resolved;
            checkpoint::write_atomic(&run_dir.join("config.toml"), toml::to_string_pretty(&recipe)?.as_bytes())?;
        }
        let device = parse_device(&recipe.model.device)?;
        let kind = parse_kind(&recipe.model.dtype)?;
        // config.toml keeps the id as written; the folder read is its cache snapshot.
        let model_dir = crate::model_path::resolve(&recipe.model.path)?;
        let (weights_dir, state) = match (&latest, resume) {
            (Some((_, dir)), true) => (dir.clone(), checkpoint::read_state(dir)?),
            _ => (
                model_dir.clone(),
                TrainerState {
                    step: 0,
                    cursor: Cursor::start(),
                    optimizer_step: 0,
                    bad_steps: 0,
                    reference_saved: false,
                    wandb_run_id: None,
                    world_size: 1,
                },
            ),
        };
        if state.world_size != world && latest.is_some() && resume {
            bail!(
                "{} was trained with {} data-parallel rank(s) and is resumed with {world}: resume it with the same number (torchrun --nproc-per-node {}), so the data order and the updates continue exactly",
                run_dir.display(),
                state.world_size,
                state.world_size
            );
        }
        let mut state = state;
        state.world_size = world;
        if resume && latest.is_none() {
            eprintln!("note: {} has no complete checkpoint yet; starting from step 0", run_dir.display());
        }
        let tk = Arc::new(Tokenizer::from_dir(&weights_dir).or_else(|_| Tokenizer::from_dir(&model_dir))?);
        let policy = Policy::load(&weights_dir, kind, device)?;
        let reference = if recipe.grpo.beta > 0.0 {
            let r = Policy::load(&model_dir, kind, device)?;
            if state.reference_saved {
                let saved = rollout::model::weights::load_file(&checkpoint::find(&weights_dir, checkpoint::REFERENCE))?;
                r.copy_from(&saved)?;
            }
            let mut r = r;
            r.vs.freeze();
            Some(r)
        } else {
            None
        };
        let devices: Vec<Device> = if recipe.rollout.devices.is_empty() {
            vec![device; recipe.rollout.workers]
        } else {
            let ds = recipe.rollout.devices.iter().map(|d| parse_device(d)).collect::<Result<Vec<_>, _>>()?;
            (0..recipe.rollout.workers).map(|i| ds[i % ds.len()]).collect()
        };
        let rollouts = if recipe.rollout.engine == crate::config::Engine::Local {
            let mut pool = RolloutPool::from_dir_threads(&weights_dir, &devices, kind, tk.clone(), recipe.rollout.threads)?;
            pool.max_batch = recipe.rollout.max_batch;
            Rollouts::Local(pool)
        } else {
            // The servers start from whatever they were launched with: publish the learner's
            // weights (the base model, or the resumed checkpoint's) before the first rollout.
            let r = Rollouts::connect(&recipe, &run_dir, &model_dir, &policy, tk.clone(), kind)?;
            sync_ranks(&r, &policy, dist.as_ref(), state.step)?;
            r
        };
        // A batch sampled ahead by the run that wrote the checkpoint: trained on first, as it
        // would have been, even if the overlap is now off.
        let inflight = match (&latest, resume) {
            (Some((_, dir)), true) if dir.join(INFLIGHT).exists() => {
                let f = dir.join(INFLIGHT);
                let b: Inflight = serde_json::from_slice(&std::fs::read(&f)?).with_context(|| {
                    format!(
                        "{}: the batch in flight is unreadable (a damaged checkpoint?); resume from an earlier one with --from",
                        f.display()
                    )
                })?;
                Some(b)
            }
            _ => None,
        };
        let mut opt = match (&dist, recipe.optim.zero_stage) {
            (Some(pg), 2) => AdamW::new_sharded(policy.named_tensors(), &recipe.optim, pg.rank, pg.world),
            (None, 2) => {
                eprintln!("note: optim.zero_stage = 2 shards the optimizer state over data-parallel ranks; this run is one process, so nothing is sharded");
                AdamW::new(policy.named_tensors(), &recipe.optim)
            }
            _ => AdamW::new(policy.named_tensors(), &recipe.optim),
        };
        if state.optimizer_step > 0 {
            opt.load(&checkpoint::find(&weights_dir, checkpoint::OPTIMIZER), state.optimizer_step)?;
        }
        let rewards = RewardSet::from_specs(recipe.rewards.clone()).map_err(|e| anyhow!("[[rewards]]: {e}"))?;
        let train_set = data::load_checked(&recipe.data.train, &recipe.data, &rewards, "training data")?;
        let eval_set = match &recipe.data.eval {
            Some(p) => data::load_checked(p, &recipe.data, &rewards, "eval data")?,
            None => vec![],
        };
        // Reward routing: every task in the data must be scored by some reward, checked
        // before the first rollout.
        rewards
            .check_tasks(train_set.iter().chain(&eval_set).map(|e| e.extra.get("task").and_then(|v| v.as_str())))
            .map_err(|e| anyhow!("[[rewards]] against data {}: {e}", recipe.data.train))?;
        let mut sinks: Vec<Box<dyn Sink>> = vec![];
        if rank0 {
            sinks.push(Box::new(JsonlSink::open(&run_dir, resume.then_some(state.step))?));
            sinks.push(Box::new(ConsoleSink::new(state.step, recipe.train.steps as u64, opts.quiet)));
            sinks.append(&mut opts.sinks);
        }
        let config = serde_json::to_value(&recipe)?;
        // Only rank 0 reports to W&B.
        let wandb = if rank0 {
            WandbSink::open(
                recipe.wandb.as_ref(),
                &recipe.run.name,
                &run_dir,
                config,
                resume,
                state.wandb_run_id.clone(),
                recipe.train.steps as u64,
            )?
        } else {
            None
        };
        if let Some(w) = wandb {
            state.wandb_run_id = w.run_id().map(str::to_string);
            sinks.push(Box::new(w));
        }
        Ok(Trainer {
            recipe,
            run_dir,
            model_dir,
            tk,
            policy,
            reference,
            rollouts: Arc::new(rollouts),
            inflight,
            opt,
            rewards,
            train_set,
            eval_set,
            state,
            device,
            kind,
            sinks,
            _lock: lock,
            dist,
            updated: false,
            fail_alloc_at_step: opts.fail_alloc_at_step,
        })
    }

    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Whether this process writes the run folder (always, unless it is a rank > 0).
    fn is_rank0(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.rank == 0)
    }

    /// [`Rollouts::generate_groups`]; in a data-parallel launch each rank draws a contiguous
    /// share of the prompts (each sample seeded as in one process) and the shares are
    /// gathered, so every rank holds the same groups as a single process would.
    fn generate_split(&self, prompts: &[Vec<i64>], g: usize, params: &SamplingParams, seed: u64) -> Result<Vec<Vec<Completion>>> {
        let (from, to) = share(self.dist.as_ref(), prompts.len());
        let mine = self.rollouts.generate_groups_from(&prompts[from..to], from, g, params, seed)?;
        gather(self.dist.as_ref(), mine, "rollouts")
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Hands the data-parallel process group back (to the pipeline that lent it).
    pub fn take_dist(&mut self) -> Option<ponder_dist::ProcessGroup> {
        self.dist.take()
    }

    fn encode_prompt(&self, ex: &Example) -> Result<Vec<i64>> {
        let (text, special) = data::render_prompt(&self.recipe.data.template, &ex.prompt, &self.tk)?;
        Ok(self.tk.encode(&text, special)?)
    }

    fn reward_sample(&self, ex: &Example, c: &Completion) -> Sample {
        crate::eval::reward_sample(ex, c, self.recipe.rollout.max_new_tokens)
    }

    /// Runs until `train.steps`, Ctrl-C, or too many bad steps.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<Outcome> {
        let total = self.recipe.train.steps as u64;
        let mut last_ckpt = None;
        let mut interrupted = false;
        if self.state.step == 0 && self.recipe.train.eval_every > 0 {
            // The starting point of the held-out curve.
            self.eval_and_log()?;
        }
        while self.state.step < total {
            // Under a launcher every rank stops at the same step, whichever got the Ctrl-C.
            if stop_agreed(stop, self.dist.as_ref())? {
                interrupted = true;
                break;
            }
            let row = self.guarded_step()?;
            let step = self.state.step;
            for s in &mut self.sinks {
                s.log(step, &row)?;
            }
            if self.state.bad_steps >= self.recipe.grpo.max_bad_steps as u64 {
                let ck = self.save()?;
                bail!(
                    "{} consecutive steps had a non-finite loss or gradient; stopped at step {step} (checkpoint {}). Lower optim.lr, raise grpo.max_bad_steps, or check the data",
                    self.state.bad_steps,
                    ck.display()
                );
            }
            let e = self.recipe.train.eval_every as u64;
            if e > 0 && step % e == 0 && step < total {
                self.eval_and_log()?;
            }
            let s = self.recipe.train.save_every as u64;
            if s > 0 && step % s == 0 && step < total {
                last_ckpt = Some(self.save()?);
            }
        }
        if self.state.step == total && !interrupted {
            if self.recipe.train.eval_every > 0 {
                self.eval_and_log()?;
            }
        }
        let already = last_ckpt.as_ref().is_some_and(|p: &PathBuf| p.ends_with(format!("step-{}", self.state.step)));
        if !already && self.state.step > 0 {
            last_ckpt = Some(self.save()?);
        }
        for s in &mut self.sinks {
            s.finish(0)?;
        }
        Ok(Outcome { run_dir: self.run_dir.clone(), steps_done: self.state.step, interrupted, final_checkpoint: last_ckpt })
    }

    /// [`Trainer::step`], with a failure (an error, or a panic such as libtorch's
    /// out-of-memory) turned into an error that loses nothing: when the step had not yet
    /// touched weights or optimizer state, the trainer rolls back to the last completed
    /// step and checkpoints it, so `--resume` continues exactly from there.
    fn guarded_step(&mut self) -> Result<Row> {
        let before = self.state.clone();
        let inflight_before = self.inflight.clone();
        self.updated = false;
        let err = match rollout::error::catch_quietly(|| self.step()) {
            Ok(Ok(row)) => return Ok(row),
            Ok(Err(e)) => e,
            Err(panic) => anyhow!("{}", rollout::error::panic_message(&*panic)),
        };
        let failed = before.step + 1;
        let cause = format!("{err:#}");
        let hint = oom_hint(
            &cause,
            "rollout.max_batch (rows per generation pass), grpo.max_tokens_per_micro_batch (learner tokens per pass), \
             rollout.prompts_per_step or rollout.group_size",
        );
        let resume = format!("resume with `ponder train --resume {}`", self.run_dir.display());
        let saved = if self.updated {
            // Some minibatch updates of this step were applied: no consistent state to save.
            let newest = checkpoint::latest(&self.run_dir).ok().flatten().map(|(s, _)| format!("step-{s}")).unwrap_or("none".into());
            format!("it failed after its first weight update, so the last completed step cannot be saved; newest checkpoint: {newest}; {resume}")
        } else {
            self.state = before;
            self.inflight = inflight_before;
            let have = checkpoint::latest(&self.run_dir).ok().flatten().is_some_and(|(s, _)| s == self.state.step);
            if self.state.step == 0 {
                "nothing was trained yet, so no checkpoint was written".to_string()
            } else if have {
                format!("checkpoint step-{} holds the last completed step; {resume}", self.state.step)
            } else {
                match self.save() {
                    Ok(_) => format!("saved checkpoint step-{}, the last completed step; {resume}", self.state.step),
                    Err(e) => format!("saving step {} failed too: {e:#}", self.state.step),
                }
            }
        };
        Err(anyhow!("step {failed} failed: {cause}\n{saved}{hint}"))
    }

    /// One GRPO step. Returns its metrics row.
    pub fn step(&mut self) -> Result<Row> {
        let t0 = Instant::now();
        let cfg = self.recipe.clone();
        let (g, seed) = (cfg.rollout.group_size, cfg.run.seed);
        let step = self.state.step;

        // 1. Prompts and rollouts. With DAPO's dynamic sampling, groups whose rewards are
        // all equal carry no signal; more prompts are drawn (in rounds, up to a cap) until
        // `prompts_per_step` informative groups are in hand.
        let want = cfg.rollout.prompts_per_step;
        let params = sampling(&cfg);
        let (mut examples, mut prompts, mut groups) = (Vec::<Example>::new(), Vec::<Vec<i64>>::new(), Vec::<Vec<Completion>>::new());
        let mut scores: Option<rewards::BatchScores> = None;
        let (mut rounds, mut informative) = (0usize, 0usize);
        let mut stale_groups = 0usize;
        let mut n = want;
        let mut ahead = self.inflight.take();
        loop {
            // Round 0 may have been sampled during the last update (one-step-off overlap).
            let sampled = if rounds == 0 { ahead.take() } else { None };
            if let Some(b) = &sampled {
                if b.step != step || b.idx.iter().any(|&i| i >= self.train_set.len()) {
                    bail!(
                        "the batch in flight was sampled for step {} of a {}-prompt training set, not step {} of this {}-row one; resume from the checkpoint it came with, unchanged",
                        b.step + 1,
                        b.idx.iter().max().map_or(0, |m| m + 1),
                        step + 1,
                        self.train_set.len()
                    );
                }
            }
            let idx = match &sampled {
                Some(b) => b.idx.clone(),
                None => self.state.cursor.take(seed, self.train_set.len(), n),
            };
            let ex: Vec<Example> = idx.iter().map(|&i| self.train_set[i].clone()).collect();
            let ps: Vec<Vec<i64>> = ex.iter().map(|e| self.encode_prompt(e)).collect::<Result<_>>()?;
            let gr = match sampled {
                Some(b) => {
                    stale_groups += b.groups.len();
                    b.groups
                }
                None => {
                    // Round 0 keeps the seed a run without refill has always used.
                    let round_seed = if rounds == 0 { mix_seed(seed, step + 1) } else { mix_seed(mix_seed(seed, step + 1), rounds as u64) };
                    self.generate_split(&ps, g, &params, round_seed)?
                }
            };
            let samples: Vec<Sample> =
                ex.iter().zip(&gr).flat_map(|(e, grp)| grp.iter().map(move |c| (e, c))).map(|(e, c)| self.reward_sample(e, c)).collect();
            let sc = self.rewards.score_batch(&samples);
            informative += grpo::zero_std_groups(&sc.totals(), g).iter().filter(|&&z| !z).count();
            match &mut scores {
                None => scores = Some(sc),
                Some(all) => all.extend(sc),
            }
            examples.extend(ex);
            prompts.extend(ps);
            groups.extend(gr);
            rounds += 1;
            let missing = want.saturating_sub(informative);
            let budget = (want + cfg.grpo.max_refill_prompts(want)).saturating_sub(prompts.len());
            if !cfg.grpo.dynamic_sampling || missing == 0 || budget == 0 {
                break;
            }
            // Ask for enough prompts to fill the gap at the rate seen so far (at least 1 in 4
            // informative assumed, so a step's rounds stay few), within the cap.
            let rate = (informative as f64 / prompts.len() as f64).max(0.25);
            n = ((missing as f64 / rate).ceil() as usize).clamp(1, budget);
        }
        let rollout_s = t0.elapsed().as_secs_f64();
        let scores = scores.expect("at least one round");

        // 2. Rewards and advantages (per group, so rounds do not mix).
        let totals = scores.totals();
        let adv = grpo::advantages(&totals, g, cfg.grpo.scale_rewards, 1e-4);
        let zero_std = grpo::zero_std_groups(&totals, g);
        let drop = cfg.grpo.drop_zero_std_groups || cfg.grpo.dynamic_sampling;
        // The groups that train: informative ones in sampling order, at most `want` of them
        // with refill (the batch keeps its configured size); every group without dropping.
        let mut kept_groups: Vec<usize> = (0..groups.len()).filter(|&k| !(drop && zero_std[k])).collect();
        if cfg.grpo.dynamic_sampling {
            kept_groups.truncate(want);
        }

        let comps: Vec<&Completion> = groups.iter().flatten().collect();
        let mut row = Row::new();
        self.rollout_metrics(&mut row, &comps, &totals, &scores, &zero_std, g);
        if cfg.grpo.dynamic_sampling {
            row.insert("dynamic_sampling/rounds".into(), json!(rounds));
            row.insert("dynamic_sampling/prompts_sampled".into(), json!(prompts.len()));
            row.insert("dynamic_sampling/informative_groups".into(), json!(informative));
            row.insert("dynamic_sampling/groups_trained".into(), json!(kept_groups.len()));
        }
        if cfg.rollout.staleness > 0 || stale_groups > 0 {
            // Steps by which the sampling weights lagged the learner's, over the step's groups.
            row.insert("rollout/staleness".into(), json!(stale_groups as f64 / groups.len() as f64));
        }

        // 3. Learner updates; with `rollout.staleness = 1`, the next step's prompts are
        // sampled meanwhile, with the weights from before this update.
        let t1 = Instant::now();
        let lr = lr_at(&cfg.optim, self.opt.step, self.total_updates());
        let mut learn = LearnStats::default();
        let next = if cfg.rollout.staleness > 0 && step + 1 < cfg.train.steps as u64 {
            let idx = self.state.cursor.take(seed, self.train_set.len(), want);
            let ps: Vec<Vec<i64>> = idx.iter().map(|&i| self.encode_prompt(&self.train_set[i])).collect::<Result<_>>()?;
            Some((idx, ps))
        } else {
            None
        };
        let (from, to) = share(self.dist.as_ref(), next.as_ref().map_or(0, |(_, ps)| ps.len()));
        let sampler = self.rollouts.clone();
        let next_seed = mix_seed(seed, step + 2);
        let mut ahead_s = 0.0;
        let ahead = std::thread::scope(|scope| -> Result<Option<Vec<Vec<Completion>>>> {
            let job = next.as_ref().map(|(_, ps)| {
                let (ps, params) = (&ps[from..to], &params);
                scope.spawn(move || {
                    let t = Instant::now();
                    let groups = sampler.generate_groups_from(ps, from, g, params, next_seed);
                    (groups, t.elapsed().as_secs_f64())
                })
            });
            let learned = match kept_groups.is_empty() {
                true => Ok(LearnStats::default()),
                false => self.build_batch(&kept_groups, &prompts, &comps, &adv).and_then(|mut batch| {
                    batch.rollout_old = stale_groups > 0;
                    self.learn(&batch)
                }),
            };
            let sampled = job.map(|h| {
                let (groups, secs) =
                    h.join().map_err(|p| anyhow!("sampling the next batch panicked: {}", rollout::error::panic_message(&*p)))?;
                ahead_s = secs;
                groups
            });
            learn = learned?;
            sampled.transpose()
        })?;
        if let (Some(mine), Some((idx, _))) = (ahead, next) {
            let tokens: usize = mine.iter().flatten().map(|c| c.token_ids.len()).sum();
            row.insert("time/rollout_ahead_s".into(), json!(ahead_s));
            row.insert("throughput/rollout_ahead_tokens_per_s".into(), json!(tokens as f64 / ahead_s.max(1e-9)));
            self.inflight = Some(Inflight { step: step + 1, idx, groups: gather(self.dist.as_ref(), mine, "rollouts")? });
        }
        if !kept_groups.is_empty() {
            sync_ranks(&self.rollouts, &self.policy, self.dist.as_ref(), step + 1)?;
        }
        if cfg.grpo.ref_sync_every > 0 && (step + 1) % cfg.grpo.ref_sync_every as u64 == 0 {
            if let Some(r) = &self.reference {
                r.copy_from(&self.policy.named_tensors())?;
                self.state.reference_saved = true;
            }
        }
        let learner_s = t1.elapsed().as_secs_f64();
        let completion_tokens: usize = comps.iter().map(|c| c.token_ids.len()).sum();
        let prompt_tokens: usize = prompts.iter().map(|p| p.len() * g).sum();
        row.insert("loss".into(), json!(learn.loss));
        row.insert("kl".into(), json!(learn.kl));
        row.insert("entropy".into(), json!(learn.entropy));
        row.insert("clip_ratio/low_mean".into(), json!(learn.clip_low));
        row.insert("clip_ratio/high_mean".into(), json!(learn.clip_high));
        row.insert("clip_ratio/region_mean".into(), json!(learn.clip_low + learn.clip_high));
        row.insert("grad_norm".into(), json!(learn.grad_norm));
        row.insert("learning_rate".into(), json!(lr));
        row.insert("skipped_updates".into(), json!(learn.skipped));
        row.insert("micro_batches".into(), json!(learn.micro_batches));
        if let (Some(mm), Some(capped)) = (learn.engine_mismatch, learn.engine_capped) {
            row.insert("engine/mismatch_kl".into(), json!(mm));
            row.insert("engine/is_capped_fraction".into(), json!(capped));
        }
        row.insert("learner/rollout_logprob_diff_max".into(), json!(learn.lp_diff_max));
        row.insert("learner/rollout_logprob_diff_mean".into(), json!(learn.lp_diff_sum / learn.lp_diff_n.max(1.0)));
        // Share of the learner's computed positions that were padding (0 = none wasted).
        row.insert("learner/padding_fraction".into(), json!(1.0 - learn.computed as f64 / (learn.positions as f64).max(1.0)));
        row.insert("num_tokens".into(), json!(completion_tokens + prompt_tokens));
        row.insert("time/rollout_s".into(), json!(rollout_s));
        row.insert("time/learner_s".into(), json!(learner_s));
        row.insert("time/step_s".into(), json!(t0.elapsed().as_secs_f64()));
        row.insert("throughput/rollout_tokens_per_s".into(), json!(completion_tokens as f64 / rollout_s.max(1e-9)));
        row.insert("throughput/learner_tokens_per_s".into(), json!((learn.tokens_processed as f64) / learner_s.max(1e-9)));
        row.insert("epoch".into(), json!(self.state.cursor.epoch as f64 + self.state.cursor.pos as f64 / self.train_set.len() as f64));

        let every = cfg.train.log_samples_every as u64;
        if every > 0 && (step + 1) % every == 0 {
            let n = cfg.train.samples_to_log.min(comps.len());
            let names = self.rewards.names();
            let logged: Vec<Value> = (0..n)
                .map(|k| {
                    let i = k * g % comps.len(); // one sample from each of the first groups
                    let ex = &examples[i / g];
                    json!({
                        "step": step + 1,
                        "prompt": ex.prompt,
                        "answer": ex.answer,
                        "completion": comps[i].text,
                        "finish_reason": comps[i].finish_reason.as_str(),
                        "reward": totals[i],
                        "rewards": names.iter().zip(&scores.scores[i].per_module).map(|(n, (_, v))| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    })
                })
                .collect();
            for s in &mut self.sinks {
                s.log_samples(step + 1, &logged)?;
            }
        }
        self.state.step += 1;
        Ok(row)
    }

    /// The LR schedule's horizon in optimizer updates: `train.steps` x the updates of a full
    /// batch (prompts_per_step x group_size rows). Fixed for the whole run, so dropping
    /// zero-variance groups (fewer rows, fewer minibatches) never moves it; a step with
    /// fewer updates just ends the schedule a little early.
    fn total_updates(&self) -> u64 {
        let r = &self.recipe;
        (r.train.steps * self.updates_per_step(r.rollout.prompts_per_step * r.rollout.group_size)) as u64
    }

    fn updates_per_step(&self, rows: usize) -> usize {
        let mb = if self.recipe.grpo.minibatch_size == 0 { rows.max(1) } else { self.recipe.grpo.minibatch_size };
        rows.max(1).div_ceil(mb) * self.recipe.grpo.num_iterations
    }

    fn rollout_metrics(
        &self,
        row: &mut Row,
        comps: &[&Completion],
        totals: &[f64],
        scores: &rewards::BatchScores,
        zero_std: &[bool],
        g: usize,
    ) {
        let lens: Vec<f64> = comps.iter().map(|c| c.token_ids.len() as f64).collect();
        let n = lens.len() as f64;
        let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let truncated = comps.iter().filter(|c| c.finish_reason == FinishReason::Length).count() as f64;
        let term: Vec<f64> = comps.iter().filter(|c| c.finish_reason != FinishReason::Length).map(|c| c.token_ids.len() as f64).collect();
        row.insert("reward".into(), json!(mean(totals)));
        let group_stds: Vec<f64> = totals.chunks(g).map(grpo::std_unbiased).collect();
        row.insert("reward_std".into(), json!(mean(&group_stds)));
        row.insert("frac_reward_zero_std".into(), json!(zero_std.iter().filter(|&&z| z).count() as f64 / zero_std.len() as f64));
        // Each reward's figures cover the samples it applies to (routing by task).
        let routed = self.rewards.routes().iter().any(|r| !r.is_empty());
        for (k, name) in self.rewards.names().iter().enumerate() {
            let vals = scores.values(k);
            row.insert(format!("rewards/{name}/mean"), json!(mean(&vals)));
            row.insert(format!("rewards/{name}/std"), json!(grpo::std_unbiased(&vals)));
            if routed {
                row.insert(format!("rewards/{name}/count"), json!(vals.len()));
            }
        }
        for (name, r) in full_rates(&self.rewards, scores) {
            row.insert(format!("rewards/{name}/full_rate"), json!(r));
        }
        if routed {
            let mut by_task: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
            for (s, t) in scores.scores.iter().zip(totals) {
                by_task.entry(s.task.as_deref().unwrap_or("(none)")).or_default().push(*t);
            }
            for (task, v) in by_task {
                row.insert(format!("tasks/{task}/reward"), json!(mean(&v)));
                row.insert(format!("tasks/{task}/count"), json!(v.len()));
            }
        }
        row.insert("rewards/failures".into(), json!(scores.counts.panics + scores.counts.timeouts + scores.counts.unrouted));
        row.insert("rewards/unparseable_reference".into(), json!(scores.counts.unparseable_references));
        // Typed grader outcomes: a grader that stops judging shows here, not as silent zeros.
        let c = &scores.counts;
        for (k, v) in [
            ("correct", c.correct),
            ("wrong", c.wrong),
            ("no_answer", c.no_answer),
            ("missing_input", c.missing_inputs),
            ("timeouts", c.timeouts),
            ("panics", c.panics),
            ("unrouted", c.unrouted),
        ] {
            row.insert(format!("rewards/outcomes/{k}"), json!(v));
        }
        row.insert("completions/mean_length".into(), json!(mean(&lens)));
        row.insert("completions/min_length".into(), json!(lens.iter().cloned().fold(f64::INFINITY, f64::min)));
        row.insert("completions/max_length".into(), json!(lens.iter().cloned().fold(0.0, f64::max)));
        row.insert("completions/clipped_ratio".into(), json!(truncated / n));
        row.insert("completions/mean_terminated_length".into(), json!(mean(&term)));
    }

    /// The learner's batch from the kept groups (indices into `prompts`; their samples are
    /// rows `k * g .. (k + 1) * g` of `comps` and `adv`). Only the kept prompts travel, so
    /// the learner never prefills a dropped group's prompt.
    fn build_batch(&self, kept_groups: &[usize], prompts: &[Vec<i64>], comps: &[&Completion], adv: &[f64]) -> Result<Batch> {
        let g = self.recipe.rollout.group_size;
        let keep: Vec<usize> = kept_groups.iter().flat_map(|&k| k * g..(k + 1) * g).collect();
        let c = keep.iter().map(|&i| comps[i].token_ids.len()).max().unwrap().max(1) as i64;
        let n = keep.len() as i64;
        let (mut tgt, mut valid, mut mask, mut old) =
            (vec![0i64; (n * c) as usize], vec![false; (n * c) as usize], vec![0f32; (n * c) as usize], vec![0f32; (n * c) as usize]);
        let mut a = vec![0f32; n as usize];
        for (r, &i) in keep.iter().enumerate() {
            let comp = comps[i];
            let masked_out = self.recipe.grpo.mask_truncated_completions && comp.finish_reason == FinishReason::Length;
            for (j, (&t, &lp)) in comp.token_ids.iter().zip(&comp.logprobs).enumerate() {
                let at = r * c as usize + j;
                (tgt[at], valid[at], old[at]) = (t, true, lp);
                mask[at] = if masked_out { 0.0 } else { 1.0 };
            }
            a[r] = adv[i] as f32;
        }
        let d = self.device;
        Ok(Batch {
            prompts: kept_groups.iter().map(|&k| prompts[k].clone()).collect(),
            row_prompt: (0..keep.len()).map(|r| r / g).collect(),
            targets: Tensor::from_slice(&tgt).view([n, c]).to_device(d),
            valid: Tensor::from_slice(&valid).view([n, c]).to_device(d),
            mask: Tensor::from_slice(&mask).view([n, c]).to_device(d),
            old: Tensor::from_slice(&old).view([n, c]).to_device(d),
            adv: Tensor::from_slice(&a).to_device(d),
            prompt_lens: keep.iter().map(|&i| prompts[i / g].len() as i64).collect(),
            comp_lens: keep.iter().map(|&i| comps[i].token_ids.len() as i64).collect(),
            rollout_old: false,
        })
    }

    /// Writes `checkpoints/step-N/` atomically.
    pub fn save(&mut self) -> Result<PathBuf> {
        // ZeRO-2: every rank sends its share of the optimizer state to the file's layout.
        let gathered = match self.dist.as_ref().filter(|_| self.opt.is_sharded()) {
            Some(pg) => Some(self.opt.gather_state(pg)?),
            None => None,
        };
        if !self.is_rank0() {
            // Rank 0 writes the checkpoint; every rank holds the same weights and state.
            return Ok(checkpoint::checkpoints_dir(&self.run_dir).join(format!("step-{}", self.state.step)));
        }
        let keep = self.recipe.train.keep_last;
        let src = self.model_dir.clone();
        let state = self.state.clone();
        let (policy, opt, reference, kind, inflight) = (&self.policy, &self.opt, &self.reference, self.kind, &self.inflight);
        checkpoint::write(&self.run_dir, &state, keep, |dir| {
            policy.save_weights(dir, kind, None)?;
            checkpoint::copy_side_files(&src, dir)?;
            match &gathered {
                Some(state) => rollout::model::weights::save_file(state, &checkpoint::place(dir, checkpoint::OPTIMIZER)?)?,
                None => opt.save(&checkpoint::place(dir, checkpoint::OPTIMIZER)?)?,
            }
            if let Some(b) = inflight {
                std::fs::write(checkpoint::place(dir, INFLIGHT)?, serde_json::to_vec(b)?)?;
            }
            if state.reference_saved {
                if let Some(r) = reference {
                    rollout::model::weights::save_file(&r.named_tensors(), &checkpoint::place(dir, checkpoint::REFERENCE)?)?;
                }
            }
            Ok(())
        })
    }

    /// Scores the policy on the held-out prompts with the recipe's sampling settings:
    /// `train.eval_samples` samples per prompt (reward means over all of them), and with
    /// more than one, `eval/pass@k` and `eval/maj@k` for k = 1, 2, 4, ..., N.
    pub fn evaluate(&self) -> Result<Option<Row>> {
        if self.eval_set.is_empty() || !self.is_rank0() {
            return Ok(None);
        }
        let lim = self.recipe.train.eval_limit;
        let set: Vec<&Example> = self.eval_set.iter().take(if lim == 0 { usize::MAX } else { lim }).collect();
        let prompts: Vec<Vec<i64>> = set.iter().map(|e| self.encode_prompt(e)).collect::<Result<_>>()?;
        let n_samples = self.recipe.train.eval_samples.max(1);
        let seed = mix_seed(self.recipe.run.seed, u64::MAX);
        let groups = self.rollouts.generate_groups(&prompts, n_samples, &sampling(&self.recipe), seed)?;
        let samples: Vec<Sample> =
            set.iter().zip(&groups).flat_map(|(e, g)| g.iter().map(move |c| (e, c))).map(|(e, c)| self.reward_sample(e, c)).collect();
        let scores = self.rewards.score_batch(&samples);
        let mut row = Row::new();
        let n = samples.len() as f64;
        row.insert("eval/reward".into(), json!(scores.totals().iter().sum::<f64>() / n));
        for (name, m) in scores.means() {
            row.insert(format!("eval/rewards/{name}/mean"), json!(m));
        }
        for (name, r) in full_rates(&self.rewards, &scores) {
            row.insert(format!("eval/rewards/{name}/full_rate"), json!(r));
        }
        let lens: f64 = groups.iter().flatten().map(|c| c.token_ids.len() as f64).sum();
        row.insert("eval/completion_length".into(), json!(lens / n));
        row.insert("eval/num_prompts".into(), json!(set.len() as f64));
        if n_samples > 1 {
            let correct = crate::eval::correctness(&self.rewards, &scores);
            let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
            let problems = crate::eval::problems(&self.rewards, &scores, &groups, &correct, &[], &lens);
            for (k, pass, maj) in crate::eval::pass_maj_curve(&problems, n_samples, seed) {
                row.insert(format!("eval/pass@{k}"), json!(pass));
                row.insert(format!("eval/maj@{k}"), json!(maj));
            }
        }
        Ok(Some(row))
    }

    fn eval_and_log(&mut self) -> Result<()> {
        if let Some(row) = self.evaluate()? {
            let step = self.state.step;
            for s in &mut self.sinks {
                s.log(step, &row)?;
            }
        }
        Ok(())
    }
}

/// For `language_consistency` rewards: the share of samples (that the reward applies to)
/// whose reasoning is entirely in the target language, i.e. scoring 1.
fn full_rates(set: &RewardSet, scores: &rewards::BatchScores) -> Vec<(String, f64)> {
    set.specs()
        .iter()
        .zip(set.names())
        .enumerate()
        .filter(|(_, (spec, _))| spec.kind == "language_consistency")
        .map(|(k, (_, name))| {
            let v = scores.values(k);
            (name, v.iter().filter(|&&x| x >= 1.0 - 1e-9).count() as f64 / v.len().max(1) as f64)
        })
        .collect()
}

/// `ponder train RECIPE` / `ponder train --resume RUN_DIR`.
pub fn train(recipe_path: Option<&Path>, resume: Option<&Path>, sets: &[String], mut opts: Options) -> Result<Outcome> {
    let (recipe, table) = match (recipe_path, resume) {
        (_, Some(run_dir)) => {
            let cfg = run_dir.join("config.toml");
            if !cfg.exists() {
                bail!(
                    "{} is not a run folder (no config.toml); give the folder `ponder train` created, e.g. runs/<name>",
                    run_dir.display()
                );
            }
            let (mut r, t) = crate::config::Recipe::load(&cfg, sets)?;
            // The run folder is where it is now, even if it was moved.
            r.run.output_dir = run_dir.parent().map(Path::to_path_buf).unwrap_or_default();
            r.run.name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (r, t)
        }
        (Some(p), None) => crate::config::Recipe::load(p, sets)?,
        (None, None) => bail!("give a recipe (ponder train RECIPE.toml) or --resume RUN_DIR"),
    };
    let stop = opts.stop.clone();
    let mut t = Trainer::new(recipe, &table, resume.is_some(), &mut opts)?;
    t.run(&stop)
}

/// Whether an error is an allocation failure: CUDA's caching allocator ("CUDA out of
/// memory"), a CUDA runtime error ("out of memory"), or libtorch's CPU allocator ("can't
/// allocate memory").
pub fn is_out_of_memory(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("can't allocate memory") || m.contains("cannot allocate memory")
}

/// The cause of a guarded step's failure: the error, or a caught panic's message.
pub(crate) fn failure_cause<T>(failed: std::thread::Result<Result<T>>) -> String {
    match failed {
        Ok(Ok(_)) => "no failure".into(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(p) => rollout::error::panic_message(&*p),
    }
}

/// For an allocation failure, a line naming the settings that bound memory; else nothing.
pub(crate) fn oom_hint(cause: &str, settings: &str) -> String {
    if is_out_of_memory(cause) {
        format!("\nOut of memory: lower {settings}, then resume.")
    } else {
        String::new()
    }
}
