//! Length rewards: `kind = "cosine_length"` and `kind = "overlong_penalty"`.
//!
//! Both measure the completion's length in the unit given by `unit`:
//! `"auto"` (default: the extra field `completion_tokens` when present, else characters),
//! `"tokens"` (requires `completion_tokens`) or `"chars"` (Unicode scalar values).
//! When `max_length` is unset they use the extra field `max_tokens`.

use super::{extra_u64, Ctx, Issue, Outcome, RewardModule};
use crate::math::{self, EquivOptions, Verdict};
use crate::Sample;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthUnit {
    Auto,
    Tokens,
    Chars,
}

fn length(s: &Sample, unit: LengthUnit) -> Result<f64, String> {
    match unit {
        LengthUnit::Chars => Ok(s.completion.chars().count() as f64),
        LengthUnit::Tokens => extra_u64(s, "completion_tokens")
            .map(|n| n as f64)
            .ok_or_else(|| "`unit = \"tokens\"` needs the extra field `completion_tokens`".to_string()),
        LengthUnit::Auto => Ok(extra_u64(s, "completion_tokens").map(|n| n as f64).unwrap_or(s.completion.chars().count() as f64)),
    }
}

/// Parameters of `cosine_length`.
///
/// Cosine-scaled reward (Yeo et al., "Demystifying Long Chain-of-Thought Reasoning";
/// open-r1's `get_cosine_scaled_reward`): with `t = min(len / max_length, 1)`,
/// `r = lo + (hi - lo) * (1 + cos(pi t)) / 2`, where for a correct answer
/// `lo = min_value_correct`, `hi = max_value_correct` (short is best) and for a wrong one
/// `lo = max_value_wrong`, `hi = min_value_wrong` (long is penalised less).
/// Correctness is decided like `accuracy` with default parameters (needs `answer`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CosineLengthParams {
    /// Reward of the shortest wrong answer. Default `-1.0`.
    pub min_value_wrong: f64,
    /// Reward of a wrong answer at `max_length`. Default `-0.5`.
    pub max_value_wrong: f64,
    /// Reward of a correct answer at `max_length`. Default `0.5`.
    pub min_value_correct: f64,
    /// Reward of the shortest correct answer. Default `1.0`.
    pub max_value_correct: f64,
    /// Length at which the cosine reaches its end. Default: the sample's `max_tokens`, else `1000`.
    pub max_length: Option<u64>,
    /// `"auto"`, `"tokens"` or `"chars"`. Default `"auto"`.
    pub unit: LengthUnit,
}

impl Default for CosineLengthParams {
    fn default() -> Self {
        CosineLengthParams {
            min_value_wrong: -1.0,
            max_value_wrong: -0.5,
            min_value_correct: 0.5,
            max_value_correct: 1.0,
            max_length: None,
            unit: LengthUnit::Auto,
        }
    }
}

pub struct CosineLength {
    p: CosineLengthParams,
}

impl CosineLength {
    pub fn new(p: CosineLengthParams) -> CosineLength {
        CosineLength { p }
    }

    /// The reward for a given correctness, length and maximum length.
    pub fn value(&self, correct: bool, len: f64, max_len: f64) -> f64 {
        let t = (len / max_len.max(1.0)).clamp(0.0, 1.0);
        let cos = (t * std::f64::consts::PI).cos();
        let (lo, hi) =
            if correct { (self.p.min_value_correct, self.p.max_value_correct) } else { (self.p.max_value_wrong, self.p.min_value_wrong) };
        lo + 0.5 * (hi - lo) * (1.0 + cos)
    }
}

impl RewardModule for CosineLength {
    fn check_row(&self, s: &Sample) -> Result<(), String> {
        match s.answer.as_deref() {
            None => Err("no reference `answer` (cosine_length grades the answer)".into()),
            Some(_) => Ok(()),
        }
    }

    fn score(&self, s: &Sample, _ctx: &Ctx) -> Outcome {
        let len = match length(s, self.p.unit) {
            Ok(l) => l,
            Err(m) => return Outcome::with(0.0, Issue::MissingInput(m)),
        };
        let max_len = self.p.max_length.or_else(|| extra_u64(s, "max_tokens")).unwrap_or(1000) as f64;
        let Some(reference) = s.answer.as_deref() else {
            return Outcome::with(0.0, Issue::MissingInput("no reference `answer`".into()));
        };
        let correct = matches!(math::grade(&s.completion, reference, false, &EquivOptions::default()), Ok(Verdict::Correct));
        Outcome::score(self.value(correct, len, max_len))
    }
}

/// Parameters of `overlong_penalty`.
///
/// DAPO's soft overlong punishment: 0 up to `max_length - cache_length`, then a linear
/// ramp to `-penalty` at `max_length`, and `-penalty` beyond.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlongParams {
    /// Maximum length. Default: the sample's `max_tokens` (required then).
    pub max_length: Option<u64>,
    /// Length of the soft-penalty zone. Default: `max_length / 5` (DAPO: 4096 of 20480).
    pub cache_length: Option<u64>,
    /// Penalty at and beyond `max_length`. Default `1.0`.
    pub penalty: f64,
    /// `"auto"`, `"tokens"` or `"chars"`. Default `"auto"`.
    pub unit: LengthUnit,
}

impl Default for OverlongParams {
    fn default() -> Self {
        OverlongParams { max_length: None, cache_length: None, penalty: 1.0, unit: LengthUnit::Auto }
    }
}

pub struct OverlongPenalty {
    p: OverlongParams,
}

impl OverlongPenalty {
    pub fn new(p: OverlongParams) -> OverlongPenalty {
        OverlongPenalty { p }
    }

    /// The penalty for a length, given the maximum and the soft zone.
    pub fn value(&self, len: f64, max_len: f64, cache: f64) -> f64 {
        let expected = max_len - cache;
        if len <= expected {
            0.0
        } else if len <= max_len && cache > 0.0 {
            self.p.penalty * (expected - len) / cache
        } else {
            -self.p.penalty
        }
    }
}

impl RewardModule for OverlongPenalty {
    fn score(&self, s: &Sample, _ctx: &Ctx) -> Outcome {
        let len = match length(s, self.p.unit) {
            Ok(l) => l,
            Err(m) => return Outcome::with(0.0, Issue::MissingInput(m)),
        };
        let Some(max_len) = self.p.max_length.or_else(|| extra_u64(s, "max_tokens")) else {
            return Outcome::with(0.0, Issue::MissingInput("overlong_penalty needs `max_length` or the extra field `max_tokens`".into()));
        };
        let cache = self.p.cache_length.unwrap_or(max_len / 5).min(max_len);
        Outcome::score(self.value(len, max_len as f64, cache as f64))
    }
    fn validate(&self) -> Result<(), String> {
        if let (Some(m), Some(c)) = (self.p.max_length, self.p.cache_length) {
            if c > m {
                return Err("`cache_length` must be <= `max_length`".into());
            }
        }
        if self.p.penalty < 0.0 {
            return Err("`penalty` must be >= 0".into());
        }
        Ok(())
    }
}
