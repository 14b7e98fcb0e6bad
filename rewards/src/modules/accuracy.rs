//! `kind = "accuracy"`: math answer correctness (1 or 0).
//!
//! Reads `completion` and `answer` (the reference). Extraction and equivalence rules are
//! in [`crate::math`]. A missing reference is a `missing_input` failure; a reference that
//! cannot be parsed is an `unparseable_reference` failure (both score 0 and are counted);
//! a completion without an answer scores 0 with a note saying why.

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
        AccuracyParams {
            rel_tol: 1e-6,
            last_number_fallback: false,
            correct: 1.0,
            wrong: 0.0,
        }
    }
}

pub struct Accuracy {
    p: AccuracyParams,
}

impl Accuracy {
    pub fn new(p: AccuracyParams) -> Accuracy {
        Accuracy { p }
    }

    /// Whether the completion's answer is correct (`Err` with a reason when it cannot tell).
    pub fn verdict(&self, completion: &str, reference: &str) -> Result<Verdict, String> {
        math::grade(
            completion,
            reference,
            self.p.last_number_fallback,
            &EquivOptions {
                rel_tol: self.p.rel_tol,
            },
        )
    }
}

impl RewardModule for Accuracy {
    fn score(&self, s: &Sample, _ctx: &Ctx) -> Outcome {
        let Some(reference) = s.answer.as_deref() else {
            return Outcome::with(
                self.p.wrong,
                Issue::MissingInput("no reference `answer`".into()),
            );
        };
        match self.verdict(&s.completion, reference) {
            Ok(Verdict::Correct) => Outcome::score(self.p.correct),
            Ok(Verdict::Wrong) => Outcome::score(self.p.wrong),
            Ok(Verdict::UnparseableReference(m)) => {
                Outcome::with(self.p.wrong, Issue::UnparseableReference(m))
            }
            Err(reason) => Outcome::with(self.p.wrong, Issue::NoAnswer(reason)),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.p.rel_tol >= 0.0 && self.p.rel_tol < 1.0) {
            return Err("`rel_tol` must be in [0, 1)".into());
        }
        Ok(())
    }
}
