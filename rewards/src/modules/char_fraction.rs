//! `kind = "char_fraction"`: the share of the completion's characters that belong to
//! `chars`. A toy reward with a dense signal, for smoke tests of a training setup (does the
//! reward rise?) on models that cannot solve anything yet.
//!
//! Reads `completion`. Whitespace is not counted. An empty completion scores 0.

use super::{Ctx, Outcome, RewardModule};
use crate::Sample;
use serde::{Deserialize, Serialize};

/// Parameters of `char_fraction`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CharFractionParams {
    /// The characters that count. Default `"0123456789"`.
    pub chars: String,
}

impl Default for CharFractionParams {
    fn default() -> Self {
        CharFractionParams { chars: "0123456789".into() }
    }
}

pub struct CharFraction {
    p: CharFractionParams,
}

impl CharFraction {
    pub fn new(p: CharFractionParams) -> CharFraction {
        CharFraction { p }
    }
}

impl RewardModule for CharFraction {
    fn score(&self, sample: &Sample, _ctx: &Ctx) -> Outcome {
        let (mut hit, mut total) = (0usize, 0usize);
        for c in sample.completion.chars().filter(|c| !c.is_whitespace()) {
            total += 1;
            hit += self.p.chars.contains(c) as usize;
        }
        Outcome::score(if total == 0 { 0.0 } else { hit as f64 / total as f64 })
    }

    fn validate(&self) -> Result<(), String> {
        if self.p.chars.is_empty() {
            return Err("`chars` must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_share_of_listed_characters() {
        let m = CharFraction::new(CharFractionParams::default());
        let s = |c: &str| m.score(&Sample::new("p", c, None), &Ctx::unlimited()).score;
        assert_eq!(s("a1b2"), 0.5);
        assert_eq!(s("12 34"), 1.0);
        assert_eq!(s("   "), 0.0);
        assert_eq!(s("héllo"), 0.0);
        let m = CharFraction::new(CharFractionParams { chars: "é".into() });
        assert_eq!(m.score(&Sample::new("p", "héllo", None), &Ctx::unlimited()).score, 0.2);
        assert!(CharFraction::new(CharFractionParams { chars: String::new() }).validate().is_err());
    }
}
