//! `kind = "rejection_sample"`: R1's rejection sampling. Samples `samples` completions per
//! prompt from a model, scores them with a reward set, keeps those that pass the filters,
//! and writes an SFT dataset (`data.jsonl`: prompt, completion, each kept sample's scores
//! and provenance) plus `summary.json` (acceptance per filter). It is also best-of-n data
//! generation for distillation.
//!
//! Prompts are processed in shards of `shard_size`; each shard is sampled with its own seed
//! and written whole (temporary file, then rename) to `shards/`, with every sample and its
//! verdict, so a stopped stage resumes at the first missing shard and ends with the same
//! files as an uninterrupted run.
//!
//! Filters, applied in this order (a sample is rejected by the first it fails):
//! `truncated` (no EOS within max_new_tokens, with `drop_truncated`), `length`
//! (`min_tokens` / `max_tokens`), `min_scores` (each named reward at or above its
//! threshold; a reward routed away from the sample's task does not filter it), `duplicate`
//! (the same completion text, whitespace-normalised, as an earlier kept sample of the same
//! prompt, with `dedup`), `per_prompt` (beyond the first `max_per_prompt` kept samples of
//! a prompt, in sample order).

use super::{cpu, f32s, r1, Ctx, Output, StageOutcome};
use crate::checkpoint::write_atomic;
use crate::config::Paths;
use crate::data::{self, Example};
use crate::eval::{self, reward_sample};
use anyhow::{anyhow, bail, Context, Result};
use rewards::{RewardSet, RewardSpec};
use rollout::generate::{FinishReason, SamplingParams};
use rollout::pool::{mix_seed, RolloutPool};
use rollout::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectionSampleStage {
    pub name: String,
    pub kind: String,
    /// The model to sample, a folder or Hub id (default: the previous stage's output).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Prompts: one dataset or a list (JSONL, Parquet, `hf://datasets/...`, each with an
    /// optional `[start:end]` row range).
    pub data: Paths,
    #[serde(default = "r1")]
    pub template: String,
    /// `[stages.fields]`: `prompt_field`, `answer_field`, `instruction`, `prompt_format`,
    /// `rename`, as in `[data]`.
    #[serde(default)]
    pub fields: crate::config::FieldsCfg,
    /// Completions sampled per prompt (k).
    #[serde(default = "eight")]
    pub samples: usize,
    /// Prompts used from each data file (0 = all).
    #[serde(default)]
    pub limit: usize,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Reward set scoring the samples (default: accuracy + format).
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
    #[serde(default)]
    pub filters: Filters,
    /// Prompts per shard (the unit of resumption).
    #[serde(default = "shard")]
    pub shard_size: usize,
    #[serde(default = "cpu")]
    pub device: String,
    #[serde(default = "f32s")]
    pub dtype: String,
    /// Share of rows the rewards cannot score that is skipped with a warning (default 0:
    /// any such row stops the stage with a report).
    #[serde(default)]
    pub max_bad_fraction: f64,
}

fn eight() -> usize {
    8
}
fn shard() -> usize {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filters {
    /// Minimum score per reward name, e.g. `{ accuracy = 1.0, format = 1.0,
    /// language_consistency = 1.0 }` (R1: correct, readable, not language-mixed).
    pub min_scores: BTreeMap<String, f64>,
    /// Reject completions with fewer tokens than this (0 = off).
    pub min_tokens: usize,
    /// Reject completions with more tokens than this (0 = off; R1 drops very long ones).
    pub max_tokens: usize,
    /// Reject completions that hit max_new_tokens without ending.
    pub drop_truncated: bool,
    /// Keep one copy of identical completions of a prompt.
    pub dedup: bool,
    /// Keep at most this many samples per prompt (0 = all that pass).
    pub max_per_prompt: usize,
}

impl Default for Filters {
    fn default() -> Self {
        Filters { min_scores: BTreeMap::new(), min_tokens: 0, max_tokens: 0, drop_truncated: true, dedup: true, max_per_prompt: 0 }
    }
}

/// The filters' names, in the order they are applied (also the summary's keys).
pub const FILTERS: [&str; 5] = ["truncated", "length", "min_scores", "duplicate", "per_prompt"];

impl RejectionSampleStage {
    fn reward_specs(&self) -> Vec<RewardSpec> {
        if self.rewards.is_empty() {
            eval::default_rewards()
        } else {
            self.rewards.clone()
        }
    }

    pub fn check(&self, origin: &str) -> Result<()> {
        if self.samples == 0 || self.shard_size == 0 {
            bail!("{origin}: `samples` and `shard_size` must be >= 1");
        }
        self.sampling.validate().map_err(|e| anyhow!("{origin}: sampling: {e}"))?;
        self.fields.check(origin)?;
        crate::config::check_device_dtype(origin, &self.device, &self.dtype)?;
        let set = RewardSet::from_specs(self.reward_specs()).map_err(|e| anyhow!("{origin}: rewards: {e}"))?;
        let names = set.names();
        for k in self.filters.min_scores.keys() {
            if !names.contains(k) {
                bail!("{origin}: filters.min_scores names `{k}`, which is not a reward of this stage (rewards: {})", names.join(", "));
            }
        }
        if self.filters.max_tokens > 0 && self.filters.min_tokens > self.filters.max_tokens {
            bail!("{origin}: filters.min_tokens ({}) exceeds filters.max_tokens ({})", self.filters.min_tokens, self.filters.max_tokens);
        }
        Ok(())
    }
}

/// One sample as a shard stores it: scores, verdict and provenance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub prompt_index: usize,
    pub sample_index: usize,
    pub prompt: String,
    pub completion: String,
    pub answer: Option<String>,
    /// The prompt row's other fields (`task`, ...).
    pub extra: Map<String, Value>,
    /// Scores of the rewards that apply to the sample, by name.
    pub rewards: BTreeMap<String, f64>,
    pub reward: f64,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// The first filter that rejected it (`None`: kept).
    pub rejected_by: Option<String>,
}

/// The verdict of every sample of one prompt, samples in order: `None` = kept, else the
/// first filter that rejected it.
pub fn verdicts(f: &Filters, recs: &[Record]) -> Vec<Option<&'static str>> {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut seen = HashSet::new();
    let mut kept = 0;
    recs.iter()
        .map(|r| {
            if f.drop_truncated && r.finish_reason == FinishReason::Length {
                return Some("truncated");
            }
            if r.completion_tokens < f.min_tokens || (f.max_tokens > 0 && r.completion_tokens > f.max_tokens) {
                return Some("length");
            }
            if f.min_scores.iter().any(|(k, &min)| r.rewards.get(k).is_some_and(|&v| v < min)) {
                return Some("min_scores");
            }
            if f.dedup && !seen.insert(norm(&r.completion)) {
                return Some("duplicate");
            }
            if f.max_per_prompt > 0 && kept >= f.max_per_prompt {
                return Some("per_prompt");
            }
            kept += 1;
            None
        })
        .collect()
}

/// Acceptance counts over all samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub model: String,
    pub prompts: usize,
    pub samples: usize,
    pub kept: usize,
    pub acceptance_rate: f64,
    /// Prompts with at least one kept sample.
    pub prompts_with_kept: usize,
    /// Samples rejected by each filter (the first one they failed).
    pub rejected_by: BTreeMap<String, usize>,
    /// Samples that pass each filter on its own (for `duplicate` / `per_prompt`: of those
    /// that reach it), as a share of all samples: what each filter alone would accept.
    pub pass_rate: BTreeMap<String, f64>,
    /// Mean score of each reward over all samples it applies to, and over kept samples.
    pub mean_scores: BTreeMap<String, f64>,
    pub kept_mean_scores: BTreeMap<String, f64>,
    pub kept_mean_tokens: f64,
}

fn summarize(model: &str, prompts: usize, recs: &[Record], f: &Filters) -> Summary {
    let n = recs.len();
    let kept: Vec<&Record> = recs.iter().filter(|r| r.rejected_by.is_none()).collect();
    let mut rejected_by: BTreeMap<String, usize> = FILTERS.iter().map(|f| (f.to_string(), 0)).collect();
    for r in recs {
        if let Some(k) = &r.rejected_by {
            *rejected_by.entry(k.clone()).or_default() += 1;
        }
    }
    let share = |c: usize| c as f64 / n.max(1) as f64;
    let alone = |pass: &dyn Fn(&Record) -> bool| share(recs.iter().filter(|r| pass(r)).count());
    let mut pass_rate = BTreeMap::new();
    pass_rate.insert("truncated".into(), alone(&|r| !(f.drop_truncated && r.finish_reason == FinishReason::Length)));
    pass_rate.insert(
        "length".into(),
        alone(&|r| r.completion_tokens >= f.min_tokens && (f.max_tokens == 0 || r.completion_tokens <= f.max_tokens)),
    );
    pass_rate.insert("min_scores".into(), alone(&|r| f.min_scores.iter().all(|(k, &m)| r.rewards.get(k).is_none_or(|&v| v >= m))));
    for k in f.min_scores.keys() {
        pass_rate.insert(format!("min_scores.{k}"), alone(&|r| r.rewards.get(k).is_none_or(|&v| v >= f.min_scores[k])));
    }
    let reached = |stage: &str| n - FILTERS.iter().take_while(|&&x| x != stage).map(|x| rejected_by[*x]).sum::<usize>();
    for stage in ["duplicate", "per_prompt"] {
        let r = reached(stage);
        pass_rate.insert(stage.into(), (r - rejected_by[stage]) as f64 / r.max(1) as f64);
    }
    let means = |rs: &[&Record]| {
        let mut acc: BTreeMap<String, (f64, usize)> = BTreeMap::new();
        for r in rs {
            for (k, v) in &r.rewards {
                let e = acc.entry(k.clone()).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
        acc.into_iter().map(|(k, (s, c))| (k, s / c.max(1) as f64)).collect()
    };
    let all: Vec<&Record> = recs.iter().collect();
    let mut with_kept = HashSet::new();
    for r in &kept {
        with_kept.insert(r.prompt_index);
    }
    Summary {
        model: model.to_string(),
        prompts,
        samples: n,
        kept: kept.len(),
        acceptance_rate: share(kept.len()),
        prompts_with_kept: with_kept.len(),
        rejected_by,
        pass_rate,
        mean_scores: means(&all),
        kept_mean_scores: means(&kept),
        kept_mean_tokens: kept.iter().map(|r| r.completion_tokens as f64).sum::<f64>() / kept.len().max(1) as f64,
    }
}

fn shard_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("shards").join(format!("shard-{i:05}.jsonl"))
}

fn read_shard(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: corrupt shard line; delete the shard to sample it again", path.display(), i + 1))
        })
        .collect()
}

/// Samples, scores and filters one shard of prompts (`first` is the global index of
/// `examples[0]`).
fn sample_shard(
    pool: &RolloutPool,
    tk: &Tokenizer,
    set: &RewardSet,
    st: &RejectionSampleStage,
    examples: &[Example],
    first: usize,
    seed: u64,
) -> Result<Vec<Record>> {
    let prompts: Vec<Vec<i64>> = examples
        .iter()
        .map(|e| {
            let (text, special) = data::render_prompt(&st.template, &e.prompt, tk)?;
            Ok(tk.encode(&text, special)?)
        })
        .collect::<Result<_>>()?;
    let groups = pool.generate_groups(&prompts, st.samples, &st.sampling, seed)?;
    let samples: Vec<rewards::Sample> =
        examples.iter().zip(&groups).flat_map(|(e, g)| g.iter().map(move |c| reward_sample(e, c, st.sampling.max_new_tokens))).collect();
    let scores = set.score_batch(&samples);
    let names = set.names();
    let mut out = vec![];
    for (pi, (e, g)) in examples.iter().zip(&groups).enumerate() {
        let mut recs: Vec<Record> = g
            .iter()
            .enumerate()
            .map(|(j, c)| {
                let s = &scores.scores[pi * st.samples + j];
                Record {
                    prompt_index: first + pi,
                    sample_index: j,
                    prompt: e.prompt.clone(),
                    completion: c.text.clone(),
                    answer: e.answer.clone(),
                    extra: e.extra.clone(),
                    rewards: names.iter().enumerate().filter(|(k, _)| s.applied[*k]).map(|(k, n)| (n.clone(), s.per_module[k].1)).collect(),
                    reward: s.total,
                    completion_tokens: c.token_ids.len(),
                    finish_reason: c.finish_reason,
                    rejected_by: None,
                }
            })
            .collect();
        let v: Vec<Option<String>> = verdicts(&st.filters, &recs).into_iter().map(|x| x.map(str::to_string)).collect();
        for (r, v) in recs.iter_mut().zip(v) {
            r.rejected_by = v;
        }
        out.extend(recs);
    }
    Ok(out)
}

pub fn run(ctx: &Ctx) -> Result<StageOutcome> {
    let st: RejectionSampleStage = ctx.config()?;
    let model = ctx.model_or_previous(&st.model)?;
    let cfg = st.fields.data_cfg(&st.data, &st.template);
    let examples =
        super::eval::load_screened(&st.data, &cfg, st.limit, &st.reward_specs(), st.max_bad_fraction, &ctx.origin, "max_bad_fraction")?;
    let set = RewardSet::from_specs(st.reward_specs()).map_err(|e| anyhow!("{}: rewards: {e}", ctx.origin))?;
    set.check_tasks(examples.iter().map(|e| e.extra.get("task").and_then(|v| v.as_str())))
        .map_err(|e| anyhow!("{}: rewards: {e}", ctx.origin))?;
    std::fs::create_dir_all(ctx.dir.join("shards"))?;
    let n_shards = examples.len().div_ceil(st.shard_size);
    let todo: Vec<usize> = (0..n_shards).filter(|&i| !shard_path(&ctx.dir, i).exists()).collect();
    if todo.len() < n_shards && ctx.rank0() {
        eprintln!("  resuming: {} of {n_shards} shards already sampled", n_shards - todo.len());
    }
    // In a data-parallel launch the missing shards are dealt out in turn (every rank listed
    // them before any was written); a shard's samples depend on its seed only, so the files
    // are those one process writes.
    let dist = ctx.dist.borrow();
    let (rank, world) = dist.as_ref().map_or((0, 1), |d| (d.rank, d.world));
    if let Some(pg) = dist.as_ref() {
        pg.barrier()?;
    }
    if !todo.is_empty() {
        let tk = Arc::new(Tokenizer::from_dir(&model)?);
        let pool = RolloutPool::from_dir(
            &model,
            &[rollout::folder::parse_device(&st.device)?],
            rollout::folder::parse_kind(&st.dtype)?,
            tk.clone(),
        )?;
        for round in todo.chunks(world) {
            if crate::train::stop_agreed(ctx.stop, dist.as_ref())? {
                return Ok(StageOutcome::Interrupted);
            }
            let Some(&i) = round.get(rank) else { continue };
            let first = i * st.shard_size;
            let part = &examples[first..(first + st.shard_size).min(examples.len())];
            let recs = sample_shard(&pool, &tk, &set, &st, part, first, mix_seed(ctx.pipeline.run.seed, 0x125 + i as u64))?;
            let body: String = recs.iter().map(|r| serde_json::to_string(r).map(|l| l + "\n")).collect::<Result<_, _>>()?;
            write_atomic(&shard_path(&ctx.dir, i), body.as_bytes())?;
            if !ctx.quiet {
                eprintln!(
                    "  shard {}/{n_shards}: kept {} of {}",
                    i + 1,
                    recs.iter().filter(|r| r.rejected_by.is_none()).count(),
                    recs.len()
                );
            }
        }
    }
    if let Some(pg) = dist.as_ref() {
        // Every shard is written; rank 0 alone writes what follows.
        pg.barrier()?;
        if rank != 0 {
            return Ok(StageOutcome::Done(Output { model: None, data: Some(ctx.dir.join("data.jsonl")) }));
        }
    }
    let mut all = vec![];
    for i in 0..n_shards {
        all.extend(read_shard(&shard_path(&ctx.dir, i))?);
    }
    let mut body = String::new();
    for r in all.iter().filter(|r| r.rejected_by.is_none()) {
        let mut o = r.extra.clone();
        o.insert("prompt".into(), r.prompt.clone().into());
        o.insert("completion".into(), r.completion.clone().into());
        o.insert("answer".into(), json!(r.answer));
        o.insert("rewards".into(), json!(r.rewards));
        o.insert("source".into(), json!({"stage": ctx.name, "model": model.display().to_string(), "prompt_index": r.prompt_index, "sample_index": r.sample_index}));
        body.push_str(&Value::Object(o).to_string());
        body.push('\n');
    }
    let data_path = ctx.dir.join("data.jsonl");
    write_atomic(&data_path, body.as_bytes())?;
    let sum = summarize(&model.display().to_string(), examples.len(), &all, &st.filters);
    write_atomic(&ctx.dir.join("summary.json"), serde_json::to_string_pretty(&sum)?.as_bytes())?;
    eprintln!(
        "  kept {} of {} samples ({:.1} %), {} of {} prompts have one; rejected by {}",
        sum.kept,
        sum.samples,
        100.0 * sum.acceptance_rate,
        sum.prompts_with_kept,
        sum.prompts,
        sum.rejected_by.iter().filter(|(_, &c)| c > 0).map(|(k, c)| format!("{k} {c}")).collect::<Vec<_>>().join(", ")
    );
    if sum.kept == 0 {
        bail!(
            "{}: no sample passed the filters ({}); loosen filters.min_scores or sample more (`samples`)",
            ctx.origin,
            data_path.display()
        );
    }
    Ok(StageOutcome::Done(Output { model: None, data: Some(data_path) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(completion: &str, tokens: usize, finish: FinishReason, acc: f64, lang: Option<f64>) -> Record {
        let mut rewards = BTreeMap::from([("accuracy".to_string(), acc)]);
        if let Some(l) = lang {
            rewards.insert("language".into(), l);
        }
        Record {
            prompt_index: 0,
            sample_index: 0,
            prompt: "p".into(),
            completion: completion.into(),
            answer: None,
            extra: Map::new(),
            rewards,
            reward: 0.0,
            completion_tokens: tokens,
            finish_reason: finish,
            rejected_by: None,
        }
    }

    #[test]
    fn filters_apply_in_order_with_dedup_and_a_cap() {
        use FinishReason::*;
        let f = Filters {
            min_scores: BTreeMap::from([("accuracy".into(), 1.0), ("language".into(), 0.9)]),
            min_tokens: 2,
            max_tokens: 10,
            drop_truncated: true,
            dedup: true,
            max_per_prompt: 2,
        };
        let recs = vec![
            rec("a b", 5, Length, 1.0, Some(1.0)),     // truncated, though correct
            rec("x", 1, Eos, 1.0, Some(1.0)),          // too short
            rec("long", 11, Eos, 1.0, Some(1.0)),      // too long
            rec("wrong", 5, Eos, 0.0, Some(1.0)),      // accuracy below 1
            rec("mixed", 5, Eos, 1.0, Some(0.5)),      // language below 0.9
            rec(" good  one", 5, Eos, 1.0, Some(1.0)), // kept
            rec("good one ", 5, Stop, 1.0, Some(1.0)), // the same text, whitespace aside
            rec("routed", 5, Eos, 1.0, None),          // language routed away: not filtered by it
            rec("third", 5, Eos, 1.0, Some(1.0)),      // passes everything but the cap of 2
        ];
        let v = verdicts(&f, &recs);
        assert_eq!(
            v,
            vec![
                Some("truncated"),
                Some("length"),
                Some("length"),
                Some("min_scores"),
                Some("min_scores"),
                None,
                Some("duplicate"),
                None,
                Some("per_prompt")
            ]
        );
        let mut recs = recs;
        for (r, v) in recs.iter_mut().zip(&v) {
            r.rejected_by = v.map(str::to_string);
        }
        let s = summarize("m", 1, &recs, &f);
        assert_eq!((s.samples, s.kept, s.prompts_with_kept), (9, 2, 1));
        assert_eq!(s.rejected_by["length"], 2);
        assert_eq!(s.rejected_by["min_scores"], 2);
        // Alone, the score filter passes 7 of 9 (the wrong and the mixed one fail); the
        // language threshold alone fails only the mixed one.
        assert!((s.pass_rate["min_scores"] - 7.0 / 9.0).abs() < 1e-12);
        assert!((s.pass_rate["min_scores.language"] - 8.0 / 9.0).abs() < 1e-12);
        // 4 samples reach the dedup filter and 1 of them is a duplicate.
        assert!((s.pass_rate["duplicate"] - 0.75).abs() < 1e-12);
        // Without dedup and cap, both "good one"s and "third" are kept.
        let loose = Filters { dedup: false, max_per_prompt: 0, ..f };
        assert_eq!(verdicts(&loose, &recs).iter().filter(|v| v.is_none()).count(), 4);
    }
}
