//! Evaluation: sample a model on held-out prompts and score with the reward set. Reports
//! accuracy (the `accuracy`-kind module's mean, or the total reward), format rate, pass@k
//! and majority-vote accuracy when several samples are drawn, and completion lengths.

use crate::data::{self, Example};
use anyhow::{anyhow, Result};
use rewards::{RewardSet, RewardSpec, Sample};
use rollout::generate::{FinishReason, SamplingParams};
use rollout::pool::RolloutPool;
use rollout::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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
    /// Majority vote over the extracted answers (when > 1 sample).
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
    let of_kind = |k: &[&str]| -> Vec<usize> { kinds.iter().enumerate().filter(|(_, x)| k.contains(&x.as_str())).map(|(i, _)| i).collect() };
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

/// Default reward set for evaluation: accuracy + R1-Zero format.
pub fn default_rewards() -> Vec<RewardSpec> {
    vec![RewardSpec::new("accuracy"), RewardSpec::new("format")]
}

/// Unbiased pass@k = 1 - C(n - c, k) / C(n, k), as a stable product.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n - c < k {
        return 1.0;
    }
    let mut p = 1.0;
    for i in (n - c + 1)..=n {
        p *= 1.0 - k as f64 / i as f64;
    }
    1.0 - p
}

fn answer_key(text: &str) -> Option<String> {
    let a = text.rfind("<answer>").map(|i| &text[i + 8..])?;
    let a = a.split("</answer>").next()?.trim();
    (!a.is_empty()).then(|| a.to_string())
}

pub struct EvalSpec<'a> {
    pub template: &'a str,
    pub params: SamplingParams,
    pub samples: usize,
    pub seed: u64,
    pub rewards: Vec<RewardSpec>,
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

/// Evaluates with an existing pool (the trainer's) or a fresh one on `model_dir`.
pub fn evaluate(model_dir: &Path, examples: &[Example], spec: &EvalSpec, pool: Option<&RolloutPool>, device: Device, kind: Kind) -> Result<EvalReport> {
    let own;
    let pool = match pool {
        Some(p) => p,
        None => {
            let tk = Arc::new(Tokenizer::from_dir(model_dir)?);
            own = RolloutPool::from_dir(model_dir, &[device], kind, tk)?;
            &own
        }
    };
    let tk = pool.tokenizer().clone();
    let prompts: Vec<Vec<i64>> = examples
        .iter()
        .map(|e| {
            let (text, special) = data::render_prompt(spec.template, &e.prompt, &tk)?;
            Ok(tk.encode(&text, special)?)
        })
        .collect::<Result<_>>()?;
    let groups = pool.generate_groups(&prompts, spec.samples, &spec.params, spec.seed)?;
    let set = RewardSet::from_specs(spec.rewards.clone()).map_err(|e| anyhow!("eval rewards: {e}"))?;
    let samples: Vec<Sample> = examples
        .iter()
        .zip(&groups)
        .flat_map(|(e, g)| {
            g.iter().map(move |c| reward_sample(e, c, spec.params.max_new_tokens))
        })
        .collect();
    set.check_tasks(samples.iter().map(rewards::sample_task)).map_err(|e| anyhow!("eval rewards: {e}"))?;
    let scores = set.score_batch(&samples);
    let names = set.names();
    let n = samples.len().max(1) as f64;
    let graded = grade(&set, &scores, groups.iter().flatten().map(|c| c.token_ids.len()));
    let correct: Vec<bool> = graded.iter().map(|g| g.correct).collect();
    let all = task_report(&graded.iter().collect::<Vec<_>>());
    let mut tasks: std::collections::BTreeMap<String, Vec<&Graded>> = Default::default();
    for g in &graded {
        if let Some(t) = &g.task {
            tasks.entry(t.clone()).or_default().push(g);
        }
    }
    let k = spec.samples;
    let mut pass = 0.0;
    let mut maj = 0.0;
    for (pi, g) in groups.iter().enumerate() {
        let c = (0..k).filter(|j| correct[pi * k + j]).count();
        pass += pass_at_k(k, c, k);
        // Majority vote over extracted answers; the vote is right if the winning answer's
        // samples are correct.
        let mut votes: HashMap<String, (usize, bool)> = HashMap::new();
        for (j, comp) in g.iter().enumerate() {
            if let Some(a) = answer_key(&comp.text) {
                let e = votes.entry(a).or_insert((0, false));
                e.0 += 1;
                e.1 |= correct[pi * k + j];
            }
        }
        if let Some((_, (_, ok))) = votes.into_iter().max_by(|a, b| a.1 .0.cmp(&b.1 .0).then_with(|| b.0.cmp(&a.0))) {
            maj += ok as u8 as f64;
        }
    }
    let np = groups.len().max(1) as f64;
    let comps: Vec<_> = groups.iter().flatten().collect();
    Ok(EvalReport {
        model: model_dir.display().to_string(),
        data: String::new(),
        num_prompts: groups.len(),
        samples_per_prompt: k,
        accuracy: all.accuracy,
        format_rate: all.format_rate,
        pass_at_k: (k > 1).then_some(pass / np),
        majority_accuracy: (k > 1).then_some(maj / np),
        mean_reward: scores.totals().iter().sum::<f64>() / n,
        rewards: names.iter().cloned().zip(scores.means().into_iter().map(|(_, m)| m)).collect(),
        mean_completion_tokens: comps.iter().map(|c| c.token_ids.len() as f64).sum::<f64>() / n,
        truncated_fraction: comps.iter().filter(|c| c.finish_reason == FinishReason::Length).count() as f64 / n,
        temperature: spec.params.temperature,
        language_consistency_rate: all.language_consistency_rate,
        language_consistency_mean: all.language_consistency_mean,
        tasks: tasks.into_iter().map(|(t, gs)| (t, task_report(&gs))).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::pass_at_k;

    #[test]
    fn pass_at_k_matches_the_combinatorial_formula() {
        // 1 - C(n-c, k)/C(n, k) by direct binomials.
        fn binom(n: u64, k: u64) -> f64 {
            (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
        }
        for (n, c, k) in [(10, 3, 1), (10, 3, 5), (16, 0, 4), (16, 16, 4), (20, 1, 10), (5, 2, 4)] {
            let want = if n - c < k { 1.0 } else { 1.0 - binom((n - c) as u64, k as u64) / binom(n as u64, k as u64) };
            assert!((pass_at_k(n, c, k) - want).abs() < 1e-12, "n={n} c={c} k={k}");
        }
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
    }
}
