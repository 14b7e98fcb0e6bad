//! `kind = "accuracy"`: math answer correctness (1 or 0).
//!
//! Reads `completion` and `answer` (the reference). Extraction and equivalence rules are
//! in [`crate::math`]. [`Accuracy::judge`] says what happened as a [`Judgement`]: correct,
//! wrong, no answer, unparseable reference, missing reference or time-out. As a reward
//! module it scores `correct` or `wrong`; a missing reference is a `missing_input`
//! failure and a reference that cannot be parsed an `unparseable_reference` failure (both
//! score `wrong` and are counted); a completion without an answer scores `wrong` with a
//! note saying why (counted as `no_answer`); past the deadline it scores `wrong` and the
//! reward set counts the time-out.

use super::{Ctx, Issue, Outcome, RewardModule};
use crate::math::{self, EquivOptions, Verdict};
use crate::Sample;
use serde::{Deserialize, Serialize};

/// Parameters of `accuracy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccuracyParams {
    /// Relative tolerance when either side is a decimal, and for symbolic evaluation. Default `1e-6`.
    pub rel_tol: f64,
    /// When no `\boxed{}`, `<answer>` or answer phrase is found, use the last number of
    /// the completion. Default `false`.
    pub last_number_fallback: bool,
    /// Score of a correct answer. Default `1.0`.
    pub correct: f64,
    /// Score of a wrong or missing answer. Default `0.0`.
    pub wrong: f64,
}

impl Default for AccuracyParams {
    fn default() -> Self {
        AccuracyParams { rel_tol: 1e-6, last_number_fallback: false, correct: 1.0, wrong: 0.0 }
    }
}

/// What `accuracy` concluded for one sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The extracted answer matches the reference.
    Correct,
    /// An answer was found and it does not match.
    Wrong,
    /// No answer in the completion (the reason is given).
    NoAnswer(String),
    /// The reference could not be parsed: a data problem, not a wrong answer.
    UnparseableReference(String),
    /// The sample has no reference `answer`.
    MissingReference,
    /// The per-sample deadline passed before a verdict.
    Timeout,
}

impl Judgement {
    pub fn is_correct(&self) -> bool {
        *self == Judgement::Correct
    }
}

pub struct Accuracy {
    p: AccuracyParams,
}

impl Accuracy {
    pub fn new(p: AccuracyParams) -> Accuracy {
        Accuracy { p }
    }

    fn options(&self) -> EquivOptions {
        EquivOptions { rel_tol: self.p.rel_tol }
    }

    /// Whether the completion's answer is correct (`Err` with a reason when it cannot tell).
    pub fn verdict(&self, completion: &str, reference: &str) -> Result<Verdict, String> {
        math::grade(completion, reference, self.p.last_number_fallback, &self.options())
    }

    /// Judges one sample: correct, wrong, no answer, unparseable or missing reference, or
    /// a time-out (the deadline is checked after extraction and after comparison).
    pub fn judge(&self, s: &Sample, ctx: &Ctx) -> Judgement {
        let Some(reference) = s.answer.as_deref() else {
            return Judgement::MissingReference;
        };
        let ans = match math::extract_answer(&s.completion, self.p.last_number_fallback) {
            Ok((a, _)) => a,
            Err(reason) => return Judgement::NoAnswer(reason),
        };
        if ctx.expired() {
            return Judgement::Timeout;
        }
        let v = math::equivalent(ans, math::extract_reference(reference), &self.options());
        if ctx.expired() {
            return Judgement::Timeout;
        }
        match v {
            Verdict::Correct => Judgement::Correct,
            Verdict::Wrong => Judgement::Wrong,
            Verdict::UnparseableReference(m) => Judgement::UnparseableReference(m),
        }
    }

    /// The module's [`Outcome`] for a judgement (a time-out scores `wrong`; the reward
    /// set sees the expired deadline and counts it).
    pub fn outcome(&self, j: Judgement) -> Outcome {
        match j {
            Judgement::Correct => Outcome::score(self.p.correct).judged(true),
            Judgement::Wrong => Outcome::score(self.p.wrong).judged(false),
            Judgement::Timeout => Outcome::score(self.p.wrong),
            Judgement::NoAnswer(reason) => Outcome::with(self.p.wrong, Issue::NoAnswer(reason)),
            Judgement::UnparseableReference(m) => Outcome::with(self.p.wrong, Issue::UnparseableReference(m)),
            Judgement::MissingReference => Outcome::with(self.p.wrong, Issue::MissingInput("no reference `answer`".into())),
        }
    }
}

impl RewardModule for Accuracy {
    fn score(&self, s: &Sample, ctx: &Ctx) -> Outcome {
        self.outcome(self.judge(s, ctx))
    }

    fn check_row(&self, s: &Sample) -> Result<(), String> {
        match s.answer.as_deref() {
            None => Err("no reference `answer`".into()),
            Some(r) => math::check_reference(r),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.p.rel_tol >= 0.0 && self.p.rel_tol < 1.0) {
            return Err("`rel_tol` must be in [0, 1)".into());
        }
        Ok(())
    }
}
