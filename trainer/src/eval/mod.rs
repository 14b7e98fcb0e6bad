//! Evaluation: sample a model N times on held-out prompts and score with the reward set.
//! Reports accuracy (avg@n: mean correctness over all samples, with its standard error over
//! problems), format rate, language consistency, lengths, and the test-time-compute curve:
//! for k = 1, 2, 4, ..., N, unbiased pass@k, maj@k (votes over extracted answers, equivalent
//! answers counted as one) and best-of-k by chosen scorers, each with the generated tokens
//! and inference FLOPs per problem that k samples cost ([`compute`]). A thinking budget
//! ([`ThinkParams`]) forces or extends the `<think>` part (budget forcing, s1);
//! [`sweep_budgets`] runs one evaluation per budget. [`charts`] draws the curves.

pub mod charts;
pub mod compute;
pub mod estimators;

pub use estimators::pass_at_k;

use crate::data::{self, Example};
use anyhow::{anyhow, bail, Result};
use compute::ComputeModel;
use estimators::{best_of_k, cluster_answers, k_ladder, maj_at_k, mean_stderr, MajMethod};
use rewards::math::{self, EquivOptions, Verdict};
use rewards::modules::accuracy::AccuracyParams;
use rewards::{RewardSet, RewardSpec, Sample};
use rollout::generate::{Completion, FinishReason, SamplingParams, ThinkParams};
use rollout::pool::{mix_seed, RolloutPool};
use rollout::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub model: String,
    pub data: String,
    pub num_prompts: usize,
    pub samples_per_prompt: usize,
    /// Mean correctness over all samples (pass@1 estimated with every sample).
    pub accuracy: f64,
    /// Share of samples with a format score of 1 (when a format module is in the set).
    pub format_rate: Option<f64>,
    /// Unbiased pass@k for k = samples_per_prompt (when > 1).
    pub pass_at_k: Option<f64>,
    /// maj@N: majority vote over the extracted answers of all samples (when > 1 sample).
    pub majority_accuracy: Option<f64>,
    pub mean_reward: f64,
    pub rewards: HashMap<String, f64>,
    pub mean_completion_tokens: f64,
    pub truncated_fraction: f64,
    pub temperature: f64,
    /// Share of samples whose reasoning is entirely in the target language (a
    /// `language_consistency` score of 1), over the samples that reward applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_consistency_rate: Option<f64>,
    /// Mean `language_consistency` score (target-language words / words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_consistency_mean: Option<f64>,
    /// The same figures per task (the rows' `task` field), when the data has tasks.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tasks: std::collections::BTreeMap<String, TaskReport>,
    /// A name for the model in charts and sample lines (default: the folder).
    #[serde(default)]
    pub label: String,
    /// Standard error of `accuracy` (avg@n) over problems: the standard deviation of the
    /// problems' mean correctness / sqrt(problems); absent with one problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_stderr: Option<f64>,
    /// pass@k, maj@k and best-of-k for k = 1, 2, 4, ..., N, with their cost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<KPoint>,
    /// Share of problems that no sample solved: pass@k stays at or below 1 - this for every
    /// k <= N, so more samples stop helping there.
    #[serde(default)]
    pub never_solved: f64,
    /// Share of problems that every sample solved.
    #[serde(default)]
    pub always_solved: f64,
    /// Mean prompt length in tokens.
    #[serde(default)]
    pub mean_prompt_tokens: f64,
    /// Parameters that count for inference compute (matmul weights, LM head included).
    #[serde(default)]
    pub params: f64,
    /// Inference FLOPs per sample (its decode passes) and per problem at N samples (prompt
    /// once + N samples), see [`compute`].
    #[serde(default)]
    pub flops_per_sample: f64,
    #[serde(default)]
    pub flops_per_problem: f64,
    /// The thinking part: budget, lengths, how often forcing fired.
    #[serde(default)]
    pub think: ThinkReport,
    /// Prompts computed in prefill (each distinct prompt once per batch it appears in).
    #[serde(default)]
    pub prompts_prefilled: usize,
    /// Wall time of sampling and scoring, seconds.
    #[serde(default)]
    pub seconds: f64,
}

/// One point of the test-time-compute curve.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KPoint {
    pub k: usize,
    /// Unbiased pass@k, mean over problems.
    pub pass: f64,
    /// maj@k, mean over problems.
    pub maj: f64,
    /// best-of-k per scorer label (an oracle scorer is labelled `... (oracle)`).
    pub best: BTreeMap<String, f64>,
    /// Generated tokens per problem with k samples.
    pub tokens_per_problem: f64,
    /// Inference FLOPs per problem with k samples (the prompt once).
    pub flops_per_problem: f64,
}

/// The thinking part of the samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ThinkReport {
    /// `--think-budget` (None = unlimited) and `--min-think`.
    pub budget: Option<usize>,
    pub min: usize,
    /// Share of samples with a thinking part.
    pub opened_rate: f64,
    /// Mean thinking and answer tokens per sample (see [`rollout::generate::ThinkStats`]).
    pub mean_think_tokens: f64,
    pub mean_answer_tokens: f64,
    /// Share of samples whose thinking the budget ended.
    pub forced_rate: f64,
    /// Mean continuation words inserted per sample.
    pub mean_continuations: f64,
}

/// Evaluation figures of one task's samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskReport {
    pub samples: usize,
    pub accuracy: f64,
    pub format_rate: Option<f64>,
    pub language_consistency_rate: Option<f64>,
    pub language_consistency_mean: Option<f64>,
    pub mean_completion_tokens: f64,
}

/// What evaluation reads off one scored sample.
struct Graded {
    correct: bool,
    /// Format and language scores, where those rewards apply to the sample.
    format: Option<f64>,
    language: Option<f64>,
    tokens: usize,
    task: Option<String>,
}

fn rate(v: impl Iterator<Item = Option<f64>>, f: impl Fn(f64) -> f64) -> Option<f64> {
    let xs: Vec<f64> = v.flatten().map(f).collect();
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn full(x: f64) -> f64 {
    (x >= 1.0 - 1e-9) as u8 as f64
}

fn task_report(gs: &[&Graded]) -> TaskReport {
    let n = gs.len().max(1) as f64;
    TaskReport {
        samples: gs.len(),
        accuracy: gs.iter().filter(|g| g.correct).count() as f64 / n,
        format_rate: rate(gs.iter().map(|g| g.format), full),
        language_consistency_rate: rate(gs.iter().map(|g| g.language), full),
        language_consistency_mean: rate(gs.iter().map(|g| g.language), |x| x),
        mean_completion_tokens: gs.iter().map(|g| g.tokens as f64).sum::<f64>() / n,
    }
}

/// Grades scored samples: correct when a module of kind `accuracy` / `countdown` that
/// applies to the sample gives full marks (without one, when the total is positive).
fn grade(set: &RewardSet, scores: &rewards::BatchScores, tokens: impl Iterator<Item = usize>) -> Vec<Graded> {
    let kinds: Vec<String> = set.specs().iter().map(|s| s.kind.clone()).collect();
    let of_kind =
        |k: &[&str]| -> Vec<usize> { kinds.iter().enumerate().filter(|(_, x)| k.contains(&x.as_str())).map(|(i, _)| i).collect() };
    let (acc, fmt, lang) = (of_kind(&["accuracy", "countdown"]), of_kind(&["format"]), of_kind(&["language_consistency"]));
    scores
        .scores
        .iter()
        .zip(tokens)
        .map(|(s, tokens)| {
            let first = |idx: &[usize]| idx.iter().find(|&&i| s.applied[i]).map(|&i| s.per_module[i].1);
            let acc_applied: Vec<f64> = acc.iter().filter(|&&i| s.applied[i]).map(|&i| s.per_module[i].1).collect();
            Graded {
                correct: if acc_applied.is_empty() { s.total > 0.0 } else { acc_applied.iter().any(|&x| x >= 1.0 - 1e-9) },
                format: first(&fmt),
                language: first(&lang),
                tokens,
                task: s.task.clone(),
            }
        })
        .collect()
}

/// Whether each scored sample is correct (as [`EvalReport::accuracy`] counts it: a module of
/// kind `accuracy` / `countdown` that applies gives full marks; without one, a positive
/// total).
pub fn correctness(set: &RewardSet, scores: &rewards::BatchScores) -> Vec<bool> {
    grade(set, scores, std::iter::repeat(0)).into_iter().map(|g| g.correct).collect()
}

/// Default reward set for evaluation: accuracy + R1-Zero format.
pub fn default_rewards() -> Vec<RewardSpec> {
    vec![RewardSpec::new("accuracy"), RewardSpec::new("format")]
}

/// What to evaluate and how.
#[derive(Clone)]
pub struct EvalSpec<'a> {
    pub template: &'a str,
    pub params: SamplingParams,
    /// N: samples per prompt.
    pub samples: usize,
    pub seed: u64,
    pub rewards: Vec<RewardSpec>,
    /// The thinking control: its tags are always tracked (thinking / answer lengths); a
    /// `budget` forces the end of thinking, a `min` extends it.
    pub think: ThinkParams,
    /// best-of-k scorers: `logprob` (mean token log-prob of the sample under the policy) or
    /// the name of a reward module of the set (the grading module is an oracle).
    pub best_of: Vec<String>,
    /// A data-parallel launch's process group: each rank samples a contiguous share of the
    /// prompts (each sample seeded as in one process) and every rank gets all the samples.
    pub dist: Option<&'a ponder_dist::ProcessGroup>,
}

impl EvalSpec<'_> {
    /// Checks what can be checked before loading a model.
    pub fn check(&self) -> Result<()> {
        if self.samples == 0 {
            bail!("samples must be >= 1");
        }
        self.params.validate().map_err(|e| anyhow!("sampling: {e}"))?;
        if let Some(t) = self.think.budget {
            if t >= self.params.max_new_tokens {
                bail!(
                    "the thinking budget ({t}) must be below max_new_tokens ({}) to leave room for the answer; raise max_new_tokens or lower the budget",
                    self.params.max_new_tokens
                );
            }
            if self.think.min > t {
                bail!("the minimum thinking length ({}) exceeds the thinking budget ({t})", self.think.min);
            }
        }
        let set = RewardSet::from_specs(self.rewards.clone()).map_err(|e| anyhow!("eval rewards: {e}"))?;
        let names = set.names();
        for b in &self.best_of {
            if b != "logprob" && !names.contains(b) {
                bail!("best-of scorer `{b}` is neither `logprob` nor a reward of the set (rewards: {})", names.join(", "));
            }
        }
        Ok(())
    }
}

/// Whether a reward kind grades correctness (selecting by it is an oracle).
fn grades(kind: &str) -> bool {
    matches!(kind, "accuracy" | "countdown")
}

/// What the reward modules see of one completion: prompt, text, reference answer, the
/// example's extra fields, and the length facts the length rewards need.
pub fn reward_sample(ex: &Example, c: &rollout::generate::Completion, max_new_tokens: usize) -> Sample {
    let mut s = Sample::new(&ex.prompt, &c.text, ex.answer.as_deref());
    s.extra = ex.extra.clone();
    s.extra.insert("completion_tokens".into(), c.token_ids.len().into());
    s.extra.insert("max_tokens".into(), max_new_tokens.into());
    s.extra.insert("truncated".into(), (c.finish_reason == rollout::generate::FinishReason::Length).into());
    s
}

/// One sample as `--samples-output` writes it (one JSON line): enough to recompute every
/// aggregate of the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleLine {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think_budget: Option<usize>,
    pub prompt_index: usize,
    pub sample_index: usize,
    pub prompt_tokens: usize,
    /// The extracted final answer (None: no answer found).
    pub answer: Option<String>,
    /// The answer's equivalence class within its problem, numbered in order of first
    /// appearance; a class's answer (and correctness) is that of its first sample.
    pub answer_group: Option<usize>,
    pub correct: bool,
    /// Unweighted score of each reward module that applies to the sample.
    pub rewards: BTreeMap<String, f64>,
    /// Mean log-prob of the sample's tokens under the policy (the `logprob` scorer).
    pub logprob_mean: f64,
    pub completion_tokens: usize,
    pub think_tokens: usize,
    pub answer_tokens: usize,
    pub budget_forced: bool,
    pub continuations: usize,
    pub finish_reason: String,
    /// The completion's text (for reading).
    pub text: String,
}

/// A report and its per-sample lines.
pub struct EvalRun {
    pub report: EvalReport,
    pub samples: Vec<SampleLine>,
}

/// Evaluates with an existing pool (the trainer's) or a fresh one on `model_dir`.
pub fn evaluate(
    model_dir: &Path,
    examples: &[Example],
    spec: &EvalSpec,
    pool: Option<&RolloutPool>,
    device: Device,
    kind: Kind,
) -> Result<EvalReport> {
    evaluate_full(model_dir, examples, spec, pool, device, kind).map(|r| r.report)
}

/// A pool on `model_dir` for several evaluations of the same model: `workers` copies of
/// the model, each with `threads` intra-op threads. Defaults on CPU: one worker per core,
/// and cores / workers threads each (so one thread each by default: small models decode
/// faster as single-threaded workers than as one worker splitting tiny ops across
/// threads, and far faster on a loaded machine); on a GPU one worker, libtorch's threads.
pub fn open_pool(model_dir: &Path, device: Device, kind: Kind, workers: Option<usize>, threads: Option<usize>) -> Result<RolloutPool> {
    let tk = Arc::new(Tokenizer::from_dir(model_dir)?);
    let cpu = device == Device::Cpu;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = workers.unwrap_or(if cpu { cores } else { 1 }).max(1);
    let threads = threads.or(cpu.then_some((cores / workers).max(1)));
    Ok(RolloutPool::from_dir_threads(model_dir, &vec![device; workers], kind, tk, threads)?)
}

/// The answer a sample votes for, and whether answers of its problem are compared with the
/// grader's equivalence (`Some(options)`) or as exact strings (no `accuracy` module
/// applies: e.g. countdown equations).
fn answer_of(text: &str, set: &RewardSet, applied: &[bool]) -> (Option<String>, Option<EquivOptions>) {
    let acc = set.specs().iter().zip(applied).find(|(s, &a)| a && s.kind == "accuracy").map(|(s, _)| s);
    match acc {
        Some(spec) => {
            let p: AccuracyParams = serde_json::from_value(serde_json::Value::Object(spec.params.clone())).unwrap_or_default();
            let a = math::extract_answer(text, p.last_number_fallback).ok().map(|(a, _)| a.to_string());
            (a, Some(EquivOptions { rel_tol: p.rel_tol }))
        }
        None => (math::extract_answer(text, false).ok().map(|(a, _)| a.trim().to_string()), None),
    }
}

/// Whether two extracted answers are the same answer: the grader's equivalence (either
/// way round, since either may be read as the reference), else exact text.
fn same_answer(a: &str, b: &str, o: Option<&EquivOptions>) -> bool {
    a == b
        || o.is_some_and(|o| matches!(math::equivalent(a, b, o), Verdict::Correct) || matches!(math::equivalent(b, a, o), Verdict::Correct))
}

/// One problem's samples, as the estimators need them.
pub struct Problem {
    pub answers: Vec<Option<String>>,
    pub correct: Vec<bool>,
    pub clusters: Vec<Option<usize>>,
    pub cluster_correct: Vec<bool>,
    /// Per scorer, one score per sample.
    pub scores: Vec<Vec<f64>>,
    pub prompt_tokens: usize,
    pub tokens: Vec<usize>,
}

/// Groups of samples (one group per prompt, scored in order in `scores`, graded in
/// `correct`) as [`Problem`]s: answers extracted and grouped by the grader's equivalence,
/// each cluster as correct as its first sample, `best_of` scorer values.
pub fn problems(
    set: &RewardSet,
    scores: &rewards::BatchScores,
    groups: &[Vec<Completion>],
    correct: &[bool],
    best_of: &[String],
    prompt_tokens: &[usize],
) -> Vec<Problem> {
    let names = set.names();
    let mut row = 0;
    let mut out = Vec::with_capacity(groups.len());
    for (pi, g) in groups.iter().enumerate() {
        let rows = row..row + g.len();
        row += g.len();
        let sc = &scores.scores[rows.clone()];
        let mut answers = Vec::with_capacity(g.len());
        let mut opts = None;
        for (c, s) in g.iter().zip(sc) {
            let (a, o) = answer_of(&c.text, set, &s.applied);
            opts = opts.or(o);
            answers.push(a);
        }
        let clusters = cluster_answers(&answers, |a, b| same_answer(a, b, opts.as_ref()));
        let correct = correct[rows].to_vec();
        let mut cluster_correct = vec![];
        for (j, c) in clusters.iter().enumerate() {
            if *c == Some(cluster_correct.len()) {
                cluster_correct.push(correct[j]);
            }
        }
        let scores: Vec<Vec<f64>> = best_of
            .iter()
            .map(|b| {
                let idx = names.iter().position(|x| x == b);
                g.iter()
                    .zip(sc)
                    .map(|(c, s)| match idx {
                        None => mean_logprob(c),
                        Some(i) if s.applied[i] => s.per_module[i].1,
                        Some(_) => f64::NAN,
                    })
                    .collect()
            })
            .collect();
        out.push(Problem {
            answers,
            correct,
            clusters,
            cluster_correct,
            scores,
            prompt_tokens: prompt_tokens[pi],
            tokens: g.iter().map(|c| c.token_ids.len()).collect(),
        });
    }
    out
}

/// (k, pass@k, maj@k) for k = 1, 2, 4, ..., n over problems of n samples each, means over
/// problems; maj@k subsets seeded from `seed` and the problem index.
pub fn pass_maj_curve(problems: &[Problem], n: usize, seed: u64) -> Vec<(usize, f64, f64)> {
    let np = problems.len().max(1) as f64;
    k_ladder(n)
        .into_iter()
        .map(|k| {
            let pass = problems.iter().map(|p| pass_at_k(n, p.correct.iter().filter(|&&c| c).count(), k)).sum::<f64>() / np;
            let maj = problems
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    maj_at_k(&p.clusters, &p.cluster_correct, k, &MajMethod { seed: mix_seed(seed, i as u64), ..Default::default() })
                })
                .sum::<f64>()
                / np;
            (k, pass, maj)
        })
        .collect()
}

/// The scorer's label in reports: an oracle (the grading module) says so.
fn scorer_label(name: &str, set: &RewardSet) -> String {
    match set.specs().iter().zip(set.names()).find(|(_, n)| n == name) {
        Some((spec, _)) if grades(&spec.kind) => format!("{name} (oracle)"),
        _ => name.to_string(),
    }
}

fn mean_logprob(c: &Completion) -> f64 {
    if c.logprobs.is_empty() {
        return f64::NEG_INFINITY;
    }
    c.logprobs.iter().map(|&x| x as f64).sum::<f64>() / c.logprobs.len() as f64
}

/// Evaluates and keeps the per-sample lines.
pub fn evaluate_full(
    model_dir: &Path,
    examples: &[Example],
    spec: &EvalSpec,
    pool: Option<&RolloutPool>,
    device: Device,
    kind: Kind,
) -> Result<EvalRun> {
    spec.check()?;
    if examples.is_empty() {
        bail!("no prompts to evaluate");
    }
    let t0 = std::time::Instant::now();
    let own;
    let pool = match pool {
        Some(p) => p,
        None => {
            own = open_pool(model_dir, device, kind, None, None)?;
            &own
        }
    };
    let cfg = rollout::ModelConfig::from_file(&model_dir.join("config.json"))?;
    let cm = ComputeModel::from_config(&cfg);
    let tk = pool.tokenizer().clone();
    let prompts: Vec<Vec<i64>> = examples
        .iter()
        .map(|e| {
            let (text, special) = data::render_prompt(spec.template, &e.prompt, &tk)?;
            Ok(tk.encode(&text, special)?)
        })
        .collect::<Result<_>>()?;
    let think = spec.think.resolve(&tk)?;
    let (groups, gstats) = match spec.dist {
        None => pool.generate_groups_with(&prompts, spec.samples, &spec.params, spec.seed, Some(&think))?,
        Some(pg) => {
            let (from, to) = crate::train::share(Some(pg), prompts.len());
            let (mine, st) = pool.generate_groups_from(&prompts[from..to], from, spec.samples, &spec.params, spec.seed, Some(&think))?;
            let groups = crate::train::gather(Some(pg), mine, "samples")?;
            let mut v = [st.prompts_prefilled as f64, st.prefill_tokens as f64, st.rows as f64];
            pg.all_reduce_f64(&mut v)?;
            (groups, rollout::generate::GenStats { prompts_prefilled: v[0] as usize, prefill_tokens: v[1] as usize, rows: v[2] as usize })
        }
    };
    let set = RewardSet::from_specs(spec.rewards.clone()).map_err(|e| anyhow!("eval rewards: {e}"))?;
    let samples: Vec<Sample> =
        examples.iter().zip(&groups).flat_map(|(e, g)| g.iter().map(move |c| reward_sample(e, c, spec.params.max_new_tokens))).collect();
    set.check_tasks(samples.iter().map(rewards::sample_task)).map_err(|e| anyhow!("eval rewards: {e}"))?;
    let scores = set.score_batch(&samples);
    let names = set.names();
    let n = samples.len().max(1) as f64;
    let comps: Vec<&Completion> = groups.iter().flatten().collect();
    let graded = grade(&set, &scores, comps.iter().map(|c| c.token_ids.len()));
    let all = task_report(&graded.iter().collect::<Vec<_>>());
    let mut tasks: BTreeMap<String, Vec<&Graded>> = Default::default();
    for g in &graded {
        if let Some(t) = &g.task {
            tasks.entry(t.clone()).or_default().push(g);
        }
    }

    // Per problem: correctness, answers grouped by equivalence, scorer values.
    let k = spec.samples;
    let label = model_dir.display().to_string();
    let correct: Vec<bool> = graded.iter().map(|g| g.correct).collect();
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let problems = problems(&set, &scores, &groups, &correct, &spec.best_of, &lens);
    let mut lines = Vec::with_capacity(comps.len());
    for (pi, (g, p)) in groups.iter().zip(&problems).enumerate() {
        for (j, c) in g.iter().enumerate() {
            let s = &scores.scores[pi * k + j];
            lines.push(SampleLine {
                model: label.clone(),
                think_budget: spec.think.budget,
                prompt_index: pi,
                sample_index: j,
                prompt_tokens: p.prompt_tokens,
                answer: p.answers[j].clone(),
                answer_group: p.clusters[j],
                correct: p.correct[j],
                rewards: s.per_module.iter().zip(&s.applied).filter(|(_, &a)| a).map(|((n, v), _)| (n.clone(), *v)).collect(),
                logprob_mean: mean_logprob(c),
                completion_tokens: c.token_ids.len(),
                think_tokens: c.think.think_tokens,
                answer_tokens: c.think.answer_tokens,
                budget_forced: c.think.budget_forced,
                continuations: c.think.continuations,
                finish_reason: c.finish_reason.as_str().to_string(),
                text: c.text.clone(),
            });
        }
    }

    let np = problems.len() as f64;
    let mean_over = |f: &dyn Fn(&Problem) -> f64| problems.iter().map(f).sum::<f64>() / np;
    let labels: Vec<String> = spec.best_of.iter().map(|b| scorer_label(b, &set)).collect();
    let mean_tokens = comps.iter().map(|c| c.token_ids.len() as f64).sum::<f64>() / n;
    let sample_flops = |p: &Problem| p.tokens.iter().map(|&t| cm.sample_flops(p.prompt_tokens, t)).sum::<f64>() / p.tokens.len() as f64;
    let curve: Vec<KPoint> = pass_maj_curve(&problems, k, spec.seed)
        .into_iter()
        .map(|(kk, pass, maj)| KPoint {
            k: kk,
            pass,
            maj,
            best: labels.iter().enumerate().map(|(s, l)| (l.clone(), mean_over(&|p| best_of_k(&p.scores[s], &p.correct, kk)))).collect(),
            tokens_per_problem: kk as f64 * mean_tokens,
            flops_per_problem: mean_over(&|p| cm.prompt_flops(p.prompt_tokens) + kk as f64 * sample_flops(p)),
        })
        .collect();
    let rates: Vec<f64> = problems.iter().map(|p| p.correct.iter().filter(|&&c| c).count() as f64 / k as f64).collect();
    let (_, accuracy_stderr) = mean_stderr(&rates);
    let last = curve.last().cloned().unwrap_or_default();
    let think_report = ThinkReport {
        budget: spec.think.budget,
        min: spec.think.min,
        opened_rate: comps.iter().filter(|c| c.think.opened).count() as f64 / n,
        mean_think_tokens: comps.iter().map(|c| c.think.think_tokens as f64).sum::<f64>() / n,
        mean_answer_tokens: comps.iter().map(|c| c.think.answer_tokens as f64).sum::<f64>() / n,
        forced_rate: comps.iter().filter(|c| c.think.budget_forced).count() as f64 / n,
        mean_continuations: comps.iter().map(|c| c.think.continuations as f64).sum::<f64>() / n,
    };
    let report = EvalReport {
        model: label.clone(),
        data: String::new(),
        num_prompts: groups.len(),
        samples_per_prompt: k,
        accuracy: all.accuracy,
        format_rate: all.format_rate,
        pass_at_k: (k > 1).then_some(last.pass),
        majority_accuracy: (k > 1).then_some(last.maj),
        mean_reward: scores.totals().iter().sum::<f64>() / n,
        rewards: names.iter().cloned().zip(scores.means().into_iter().map(|(_, m)| m)).collect(),
        mean_completion_tokens: mean_tokens,
        truncated_fraction: comps.iter().filter(|c| c.finish_reason == FinishReason::Length).count() as f64 / n,
        temperature: spec.params.temperature,
        language_consistency_rate: all.language_consistency_rate,
        language_consistency_mean: all.language_consistency_mean,
        tasks: tasks.into_iter().map(|(t, gs)| (t, task_report(&gs))).collect(),
        label,
        accuracy_stderr,
        never_solved: rates.iter().filter(|&&r| r == 0.0).count() as f64 / np,
        always_solved: rates.iter().filter(|&&r| r == 1.0).count() as f64 / np,
        mean_prompt_tokens: prompts.iter().map(|p| p.len() as f64).sum::<f64>() / np,
        params: cm.params(),
        flops_per_sample: mean_over(&|p| sample_flops(p)),
        flops_per_problem: last.flops_per_problem,
        curve,
        think: think_report,
        prompts_prefilled: gstats.prompts_prefilled,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok(EvalRun { report, samples: lines })
}

/// One evaluation per thinking budget (the spec's own budget is replaced), on one pool.
pub fn sweep_budgets(
    model_dir: &Path,
    examples: &[Example],
    spec: &EvalSpec,
    budgets: &[usize],
    pool: &RolloutPool,
) -> Result<Vec<EvalRun>> {
    budgets
        .iter()
        .map(|&b| {
            let think = ThinkParams { budget: Some(b), ..spec.think.clone() };
            let s = EvalSpec { think, ..spec.clone() };
            evaluate_full(model_dir, examples, &s, Some(pool), Device::Cpu, Kind::Float).map_err(|e| anyhow!("thinking budget {b}: {e:#}"))
        })
        .collect()
}

/// A few lines for the console: the headline figures and the k table.
pub fn summary(r: &EvalReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let se = r.accuracy_stderr.map_or(String::new(), |e| format!(" ± {e:.3}"));
    let budget = match (r.think.budget, r.think.min) {
        (None, 0) => String::new(),
        (b, m) => format!(", think budget {} min {m}", b.map_or("-".into(), |b| b.to_string())),
    };
    let _ = writeln!(
        s,
        "{}: {} prompts x {} samples in {:.1} s{budget}: accuracy (avg@n) {:.3}{se}, format {}, {:.1} tokens/sample ({:.1} thinking, forced {:.0} %), never solved {:.3}",
        r.label,
        r.num_prompts,
        r.samples_per_prompt,
        r.seconds,
        r.accuracy,
        r.format_rate.map_or("-".into(), |f| format!("{f:.3}")),
        r.mean_completion_tokens,
        r.think.mean_think_tokens,
        100.0 * r.think.forced_rate,
        r.never_solved
    );
    let scorers: Vec<&String> = r.curve.first().map(|p| p.best.keys().collect()).unwrap_or_default();
    let _ = write!(s, "  {:>5} {:>7} {:>7}", "k", "pass@k", "maj@k");
    for b in &scorers {
        let _ = write!(s, " {:>w$}", format!("best({b})"), w = b.len() + 6);
    }
    let _ = writeln!(s, " {:>12} {:>12}", "tokens/prob", "FLOPs/prob");
    for p in &r.curve {
        let _ = write!(s, "  {:>5} {:>7.3} {:>7.3}", p.k, p.pass, p.maj);
        for b in &scorers {
            let _ = write!(s, " {:>w$.3}", p.best[*b], w = b.len() + 6);
        }
        let _ = writeln!(s, " {:>12.1} {:>12.3e}", p.tokens_per_problem, p.flops_per_problem);
    }
    s.trim_end().to_string()
}
