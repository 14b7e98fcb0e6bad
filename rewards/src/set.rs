//! A weighted set of reward modules and batch scoring.

use crate::config::{self, RewardSpec};
use crate::modules::{Ctx, Issue, RewardModule};
use crate::{RewardsError, Sample};
use rayon::prelude::*;
use serde::Serialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// Default per-sample time limit of a module, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;

struct Entry {
    name: String,
    weight: f64,
    timeout: Duration,
    /// Routing: the tasks this module scores (empty = all).
    tasks: Vec<String>,
    module: Box<dyn RewardModule>,
}

impl Entry {
    fn applies(&self, task: Option<&str>) -> bool {
        self.tasks.is_empty() || task.is_some_and(|t| self.tasks.iter().any(|x| x == t))
    }
}

/// The task a sample belongs to, for reward routing: its `task` field.
pub fn sample_task(s: &Sample) -> Option<&str> {
    s.extra.get("task").and_then(|v| v.as_str())
}

/// A weighted set of reward modules, built from `[[rewards]]` tables.
pub struct RewardSet {
    entries: Vec<Entry>,
    specs: Vec<RewardSpec>,
}

impl std::fmt::Debug for RewardSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardSet").field("specs", &self.specs).finish()
    }
}

/// What went wrong for one module on one sample (counted in [`BatchCounts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The module panicked; it scored 0 for this sample.
    Panic,
    /// The module exceeded its `timeout_ms`; it scored 0 for this sample.
    Timeout,
    /// The reference answer could not be parsed (the sample scored 0 for the module,
    /// but this is a data problem, not a wrong answer).
    UnparseableReference,
    /// A field the module needs (reference, `numbers`, `target`, ...) is missing or malformed.
    MissingInput,
    /// No reward of the set applies to the sample's task (routing by `tasks`).
    Unrouted,
}

/// One failure, for logging.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    pub module: String,
    pub kind: FailureKind,
    pub message: String,
}

/// An informative note (e.g. why no answer was found), not counted as a failure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Note {
    pub module: String,
    pub message: String,
}

/// The scores of one sample.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scores {
    /// Grader verdicts of this sample (one per judging module that judged it).
    pub judged: Vec<bool>,
    /// `(module name, unweighted score)` in [`RewardSet::names`] order (0 where the module
    /// does not apply to the sample's task).
    pub per_module: Vec<(String, f64)>,
    /// Whether each module scored this sample (false: routed away by its `tasks`).
    pub applied: Vec<bool>,
    /// The sample's task (its `task` field), when it has one.
    pub task: Option<String>,
    /// Weighted sum of the module scores.
    pub total: f64,
    pub failures: Vec<Failure>,
    pub notes: Vec<Note>,
}

impl Scores {
    /// The score of the module with this name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.per_module.iter().find(|(n, _)| n == name).map(|(_, s)| *s)
    }
}

/// Counts over a batch, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchCounts {
    pub panics: usize,
    pub timeouts: usize,
    pub unparseable_references: usize,
    pub missing_inputs: usize,
    /// Samples no reward applies to (their task is not routed to any reward).
    pub unrouted: usize,
    /// Grader verdicts (modules that judge answers, e.g. `accuracy`): right and wrong.
    pub correct: usize,
    pub wrong: usize,
    /// Samples where a module found no answer in the completion (a normal 0).
    pub no_answer: usize,
}

impl BatchCounts {
    pub fn add(&mut self, o: &BatchCounts) {
        self.panics += o.panics;
        self.timeouts += o.timeouts;
        self.unparseable_references += o.unparseable_references;
        self.missing_inputs += o.missing_inputs;
        self.unrouted += o.unrouted;
        self.correct += o.correct;
        self.wrong += o.wrong;
        self.no_answer += o.no_answer;
    }
}

/// The scores of a batch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchScores {
    pub names: Vec<String>,
    pub scores: Vec<Scores>,
    pub counts: BatchCounts,
}

impl BatchScores {
    /// Appends another batch's scores (same reward set), e.g. a refill round's.
    pub fn extend(&mut self, other: BatchScores) {
        debug_assert_eq!(self.names, other.names);
        self.scores.extend(other.scores);
        self.counts.add(&other.counts);
    }

    /// The weighted totals, one per sample.
    pub fn totals(&self) -> Vec<f64> {
        self.scores.iter().map(|s| s.total).collect()
    }

    /// Mean unweighted score per module, in `names` order, over the samples each module
    /// applies to (0 when it applies to none).
    pub fn means(&self) -> Vec<(String, f64)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let v = self.values(i);
                let m = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
                (name.clone(), m)
            })
            .collect()
    }

    /// The scores of module `i` on the samples it applies to, in batch order.
    pub fn values(&self, i: usize) -> Vec<f64> {
        self.scores.iter().filter(|s| s.applied[i]).map(|s| s.per_module[i].1).collect()
    }
}

impl RewardSet {
    /// Parses the `[[rewards]]` tables of a TOML document (a rewards file or a whole
    /// recipe: other top-level keys are ignored).
    pub fn from_toml_str(src: &str) -> Result<RewardSet, RewardsError> {
        RewardSet::from_specs(config::parse_toml(src)?)
    }

    /// Builds a set from specs, checking every parameter.
    pub fn from_specs(specs: Vec<RewardSpec>) -> Result<RewardSet, RewardsError> {
        if specs.is_empty() {
            return Err(RewardsError::Invalid("a reward set needs at least one reward".into()));
        }
        let mut entries = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let name = spec.display_name();
            if entries.iter().any(|e: &Entry| e.name == name) {
                return Err(RewardsError::Invalid(format!(
                    "reward #{i}: duplicate reward name `{name}`; give one of them a distinct `name`"
                )));
            }
            let module = config::build(i, spec)?;
            entries.push(Entry {
                name,
                weight: spec.weight,
                timeout: Duration::from_millis(spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
                tasks: spec.tasks.clone(),
                module,
            });
        }
        Ok(RewardSet { entries, specs })
    }

    /// The specs this set was built from.
    pub fn specs(&self) -> &[RewardSpec] {
        &self.specs
    }

    /// Module names in scoring order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// Checks reward routing against the tasks of a dataset (each sample's `task`, `None`
    /// for samples without one): every task must be scored by at least one reward. The
    /// error names the first task that no reward covers.
    pub fn check_tasks<'a>(&self, tasks: impl IntoIterator<Item = Option<&'a str>>) -> Result<(), RewardsError> {
        let mut seen = std::collections::BTreeSet::new();
        for t in tasks {
            if !seen.insert(t) {
                continue;
            }
            if !self.entries.iter().any(|e| e.applies(t)) {
                let routed: std::collections::BTreeSet<&str> =
                    self.entries.iter().flat_map(|e| e.tasks.iter().map(String::as_str)).collect();
                let what = match t {
                    Some(t) => format!("task `{t}`"),
                    None => "samples without a `task` field".to_string(),
                };
                return Err(RewardsError::Invalid(format!(
                    "no reward scores {what}: every reward is routed to other tasks ({}); add it to a reward's `tasks`, or give a reward no `tasks` so it scores every sample",
                    routed.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(())
    }

    /// What a dataset row lacks for the rewards that will score it (its task's rewards
    /// only): one `(reward name, problem)` per failing module; empty when the row is fine.
    /// The sample's `completion` is ignored. A module that panics is reported, not raised.
    pub fn check_row(&self, sample: &Sample) -> Vec<(String, String)> {
        let task = sample_task(sample);
        let mut out = vec![];
        for e in self.entries.iter().filter(|e| e.applies(task)) {
            let r = catch_unwind(AssertUnwindSafe(|| e.module.check_row(sample)))
                .unwrap_or_else(|_| Err("the module panicked while checking the row".into()));
            if let Err(m) = r {
                out.push((e.name.clone(), m));
            }
        }
        out
    }

    /// The tasks each reward is routed to (empty = every sample), in [`names`](Self::names) order.
    pub fn routes(&self) -> Vec<Vec<String>> {
        self.entries.iter().map(|e| e.tasks.clone()).collect()
    }

    /// The weights, in [`names`](Self::names) order.
    pub fn weights(&self) -> Vec<f64> {
        self.entries.iter().map(|e| e.weight).collect()
    }

    /// Scores one sample on the current thread.
    pub fn score_one(&self, sample: &Sample) -> Scores {
        let mut per_module = Vec::with_capacity(self.entries.len());
        let mut applied = Vec::with_capacity(self.entries.len());
        let mut judged = Vec::new();
        let mut failures = Vec::new();
        let mut notes = Vec::new();
        let mut total = 0.0;
        let task = sample_task(sample);
        for e in &self.entries {
            if !e.applies(task) {
                per_module.push((e.name.clone(), 0.0));
                applied.push(false);
                continue;
            }
            applied.push(true);
            let start = Instant::now();
            let ctx = Ctx { deadline: start + e.timeout };
            let res = catch_unwind(AssertUnwindSafe(|| e.module.score(sample, &ctx)));
            let elapsed = start.elapsed();
            let score = match res {
                Err(payload) => {
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".to_string());
                    failures.push(Failure { module: e.name.clone(), kind: FailureKind::Panic, message: msg });
                    0.0
                }
                Ok(_) if elapsed > e.timeout || ctx.expired() => {
                    failures.push(Failure {
                        module: e.name.clone(),
                        kind: FailureKind::Timeout,
                        message: format!("took {:?} (limit {:?})", elapsed, e.timeout),
                    });
                    0.0
                }
                Ok(out) => {
                    judged.extend(out.correct);
                    match out.issue {
                        None => {}
                        Some(Issue::NoAnswer(m)) => notes.push(Note { module: e.name.clone(), message: m }),
                        Some(Issue::UnparseableReference(m)) => {
                            failures.push(Failure { module: e.name.clone(), kind: FailureKind::UnparseableReference, message: m })
                        }
                        Some(Issue::MissingInput(m)) => {
                            failures.push(Failure { module: e.name.clone(), kind: FailureKind::MissingInput, message: m })
                        }
                    }
                    if out.score.is_finite() {
                        out.score
                    } else {
                        0.0
                    }
                }
            };
            total += e.weight * score;
            per_module.push((e.name.clone(), score));
        }
        if !applied.iter().any(|&a| a) {
            failures.push(Failure {
                module: String::new(),
                kind: FailureKind::Unrouted,
                message: format!(
                    "no reward applies to task {}: add it to a reward's `tasks`",
                    task.map_or("(none)".to_string(), |t| format!("`{t}`"))
                ),
            });
        }
        Scores { judged, per_module, applied, task: task.map(str::to_string), total, failures, notes }
    }

    /// Scores a batch in parallel (rayon's global pool). A module that panics or runs
    /// past its time limit on one sample gives 0 for that sample; the batch goes on.
    pub fn score_batch(&self, samples: &[Sample]) -> BatchScores {
        let scores: Vec<Scores> = samples.par_iter().map(|s| self.score_one(s)).collect();
        self.finish(scores)
    }

    /// Scores a batch on the current thread only (for benchmarks and debugging).
    pub fn score_batch_sequential(&self, samples: &[Sample]) -> BatchScores {
        let scores: Vec<Scores> = samples.iter().map(|s| self.score_one(s)).collect();
        self.finish(scores)
    }

    fn finish(&self, scores: Vec<Scores>) -> BatchScores {
        let mut counts = BatchCounts::default();
        for s in &scores {
            for f in &s.failures {
                match f.kind {
                    FailureKind::Panic => counts.panics += 1,
                    FailureKind::Timeout => counts.timeouts += 1,
                    FailureKind::UnparseableReference => counts.unparseable_references += 1,
                    FailureKind::MissingInput => counts.missing_inputs += 1,
                    FailureKind::Unrouted => counts.unrouted += 1,
                }
            }
            counts.no_answer += s.notes.len();
            counts.correct += s.judged.iter().filter(|&&j| j).count();
            counts.wrong += s.judged.iter().filter(|&&j| !j).count();
        }
        BatchScores { names: self.names(), scores, counts }
    }

    #[cfg(test)]
    pub(crate) fn from_modules(mods: Vec<(&str, f64, u64, Box<dyn RewardModule>)>) -> RewardSet {
        RewardSet {
            entries: mods
                .into_iter()
                .map(|(n, w, t, m)| Entry {
                    name: n.to_string(),
                    weight: w,
                    timeout: Duration::from_millis(t),
                    tasks: Vec::new(),
                    module: m,
                })
                .collect(),
            specs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::Outcome;

    struct Panicky;
    impl RewardModule for Panicky {
        fn score(&self, s: &Sample, _: &Ctx) -> Outcome {
            if s.completion == "boom" {
                panic!("kaboom");
            }
            Outcome::score(1.0)
        }
    }
    struct Slow;
    impl RewardModule for Slow {
        fn score(&self, s: &Sample, _: &Ctx) -> Outcome {
            if s.completion == "slow" {
                std::thread::sleep(Duration::from_millis(30));
            }
            Outcome::score(0.5)
        }
    }

    #[test]
    fn panics_and_timeouts_are_isolated_and_counted() {
        let set = RewardSet::from_modules(vec![("p", 1.0, 1000, Box::new(Panicky)), ("s", 2.0, 10, Box::new(Slow))]);
        let samples: Vec<Sample> = ["ok", "boom", "slow", "ok"].iter().map(|c| Sample::new("", c, None)).collect();
        let out = set.score_batch(&samples);
        assert_eq!(out.names, vec!["p", "s"]);
        assert_eq!(out.totals(), vec![2.0, 1.0, 1.0, 2.0]);
        assert_eq!(out.counts.panics, 1);
        assert_eq!(out.counts.timeouts, 1);
        assert_eq!(out.scores[1].failures[0].kind, FailureKind::Panic);
        assert_eq!(out.scores[1].failures[0].message, "kaboom");
        assert_eq!(out.scores[2].failures[0].kind, FailureKind::Timeout);
        assert_eq!(out.scores[2].get("s"), Some(0.0));
        let seq = set.score_batch_sequential(&samples);
        assert_eq!(seq.totals(), out.totals());
    }
}
