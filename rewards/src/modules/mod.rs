//! Reward modules. Each has a parameter struct whose fields are the keys of its
//! `[[rewards]]` table (with the documented defaults).

pub mod accuracy;
pub mod char_fraction;
pub mod countdown;
pub mod format;
pub mod language;
pub mod length;
pub mod repetition;

use crate::Sample;
use std::time::Instant;

/// Per-call context: the deadline long-running modules check cooperatively.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub deadline: Instant,
}

impl Ctx {
    /// A context with a generous deadline (for direct calls and tests).
    pub fn unlimited() -> Ctx {
        Ctx { deadline: Instant::now() + std::time::Duration::from_secs(3600) }
    }

    pub fn expired(&self) -> bool {
        Instant::now() > self.deadline
    }
}

/// Why a score is what it is, beyond the number.
#[derive(Clone, Debug, PartialEq)]
pub enum Issue {
    /// No answer found in the completion (score 0, reason for logging).
    NoAnswer(String),
    /// The reference could not be parsed: counted in metrics, not a wrong answer.
    UnparseableReference(String),
    /// A field the module needs is missing or malformed.
    MissingInput(String),
}

/// A module's result on one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub score: f64,
    pub issue: Option<Issue>,
    /// For graders (`accuracy`): whether the answer was judged right or wrong (`None`: not
    /// judged, e.g. no answer found, or a module that does not grade). Counted per batch, so
    /// a grader that stops judging shows in the metrics instead of as silent zeros.
    pub correct: Option<bool>,
}

impl Outcome {
    pub fn score(score: f64) -> Outcome {
        Outcome { score, issue: None, correct: None }
    }
    pub fn with(score: f64, issue: Issue) -> Outcome {
        Outcome { score, issue: Some(issue), correct: None }
    }
    /// The same outcome, marked as a judged right (`true`) or wrong (`false`) answer.
    pub fn judged(mut self, correct: bool) -> Outcome {
        self.correct = Some(correct);
        self
    }
}

/// A reward module.
pub trait RewardModule: Send + Sync {
    /// Scores one sample. Must not block past `ctx.deadline` for long.
    fn score(&self, sample: &Sample, ctx: &Ctx) -> Outcome;
    /// Checks parameter values after parsing (ranges, consistency).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// Checks that a dataset row carries what the module needs (reference answer, extra
    /// fields), before any completion exists: `sample.completion` is empty. `Err` says
    /// what is missing or unreadable; the trainer reports such rows with their line.
    fn check_row(&self, _sample: &Sample) -> Result<(), String> {
        Ok(())
    }
}

pub(crate) fn extra_u64(s: &Sample, key: &str) -> Option<u64> {
    let v = s.extra.get(key)?;
    v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64))
}
