//! Rule-based rewards for ponder's GRPO trainer.
//!
//! The crate turns `(prompt, completion, reference)` into scores. It has no torch
//! dependency: it builds and tests on its own.
//!
//! * [`RewardSet`] is a weighted set of reward modules declared as `[[rewards]]` TOML
//!   tables ([`RewardSpec`]); [`RewardSet::score_batch`] scores a batch in parallel with
//!   rayon, isolating panics and time-outs per sample and per module.
//! * The modules live in [`modules`]: `accuracy` (math answers, see [`math`]), `format`,
//!   `language_consistency`, `countdown`, `cosine_length`, `overlong_penalty`,
//!   `repetition`. Each documents its parameters and defaults, and which fields of
//!   [`Sample`] it reads.
//! * [`score_cli::run`] implements the `ponder score` command.
//!
//! ```
//! let set = rewards::RewardSet::from_toml_str(r#"
//! [[rewards]]
//! kind = "accuracy"
//! [[rewards]]
//! kind = "format"
//! weight = 0.5
//! "#).unwrap();
//! let s = rewards::Sample::new("What is 6*7?", "<think>6*7=42</think> <answer>42</answer>", Some("42"));
//! let out = set.score_batch(&[s]);
//! assert_eq!(out.scores[0].total, 1.5);
//! ```

pub mod bench_data;
mod config;
pub mod math;
pub mod modules;
pub mod score_cli;
mod set;
pub mod text;

pub use config::{RewardSpec, KINDS};
pub use set::{sample_task, BatchCounts, BatchScores, Failure, FailureKind, Note, RewardSet, Scores};

use serde::{Deserialize, Serialize};

/// One sample to score.
///
/// `extra` carries the fields some modules need (see each module's documentation):
///
/// | key | type | read by |
/// |---|---|---|
/// | `numbers` | array of integers | `countdown` |
/// | `target` | number | `countdown` |
/// | `language` | string (`en`, `zh`, ...) | `language_consistency` (overrides its `language`) |
/// | `completion_tokens` | integer | `cosine_length`, `overlong_penalty` (length in tokens) |
/// | `max_tokens` | integer | `cosine_length`, `overlong_penalty` (when `max_length` is unset) |
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: String,
    pub completion: String,
    pub answer: Option<String>,
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Sample {
    /// A sample without extra fields.
    pub fn new(prompt: &str, completion: &str, answer: Option<&str>) -> Sample {
        Sample {
            prompt: prompt.to_string(),
            completion: completion.to_string(),
            answer: answer.map(str::to_string),
            extra: serde_json::Map::new(),
        }
    }

    /// Adds an extra field (builder style).
    pub fn with(mut self, key: &str, value: serde_json::Value) -> Sample {
        self.extra.insert(key.to_string(), value);
        self
    }
}

/// Errors of the rewards crate.
#[derive(Debug, thiserror::Error)]
pub enum RewardsError {
    #[error("rewards config: {0}")]
    Toml(String),
    #[error("reward #{index} (kind `{kind}`): unknown key `{key}`{hint}; valid keys: {valid}")]
    UnknownKey { index: usize, kind: String, key: String, hint: String, valid: String },
    #[error("reward #{index}: unknown kind `{kind}`{hint}; valid kinds: {valid}")]
    UnknownKind { index: usize, kind: String, hint: String, valid: String },
    #[error("reward #{index} (kind `{kind}`): {message}")]
    InvalidParam { index: usize, kind: String, message: String },
    #[error("rewards config: {0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}
