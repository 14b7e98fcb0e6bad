//! `kind = "repetition"`: n-gram repetition penalty (as in open-r1 / "Demystifying Long
//! Chain-of-Thought Reasoning").
//!
//! Reads `completion`. Words are whitespace-separated, lower-cased. With `n`-grams of
//! `ngram_size` words, the score is `max_penalty * (1 - distinct / total)`: 0 for no
//! repetition, towards `max_penalty` for a completion that repeats itself. Completions
//! shorter than `ngram_size` words score 0.

use super::{Ctx, Outcome, RewardModule};
use crate::Sample;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// Parameters of `repetition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepetitionParams {
    /// Words per n-gram. Default `3`.
    pub ngram_size: usize,
    /// Penalty for a fully repetitive completion (must be <= 0). Default `-1.0`.
    pub max_penalty: f64,
}

impl Default for RepetitionParams {
    fn default() -> Self {
        RepetitionParams { ngram_size: 3, max_penalty: -1.0 }
    }
}

pub struct Repetition {
    p: RepetitionParams,
}

impl Repetition {
    pub fn new(p: RepetitionParams) -> Repetition {
        Repetition { p }
    }
}

fn mix(h: u64) -> u64 {
    let mut z = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit hash of a word, lower-cased on the fly (no allocation).
fn word_hash(w: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in w.chars().flat_map(char::to_lowercase) {
        h = (h ^ c as u64).wrapping_mul(0x100_0000_01b3);
    }
    mix(h)
}

#[derive(Default)]
struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Fraction of repeated n-grams, `1 - distinct/total`, in [0, 1).
/// N-grams are compared by 64-bit hashes (collisions are negligible).
pub fn repeated_fraction(text: &str, n: usize) -> f64 {
    let words: Vec<u64> = text.split_whitespace().map(word_hash).collect();
    if n == 0 || words.len() < n {
        return 0.0;
    }
    let total = words.len() - n + 1;
    let mut seen: HashSet<u64, BuildHasherDefault<IdHasher>> = HashSet::with_capacity_and_hasher(total, Default::default());
    for w in words.windows(n) {
        let h = w.iter().fold(0u64, |acc, x| mix(acc.rotate_left(17) ^ x));
        seen.insert(h);
    }
    1.0 - seen.len() as f64 / total as f64
}

impl RewardModule for Repetition {
    fn score(&self, s: &Sample, _ctx: &Ctx) -> Outcome {
        Outcome::score(self.p.max_penalty * repeated_fraction(&s.completion, self.p.ngram_size))
    }
    fn validate(&self) -> Result<(), String> {
        if self.p.max_penalty > 0.0 {
            return Err("`max_penalty` must be <= 0".into());
        }
        if self.p.ngram_size == 0 {
            return Err("`ngram_size` must be >= 1".into());
        }
        Ok(())
    }
}
