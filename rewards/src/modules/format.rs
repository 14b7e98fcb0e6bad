//! `kind = "format"`: the R1-Zero template `<think> ... </think> <answer> ... </answer>`.
//!
//! Reads `prompt` (for the `<think>` prefill) and `completion`.
//!
//! * `mode = "strict"` (default): 1 when the whole completion (trimmed) is
//!   `<think>` reasoning `</think>` whitespace `<answer>` non-empty answer `</answer>`,
//!   with exactly one of each tag; else 0.
//! * `mode = "lenient"`: 1 when `<think>...</think>` is followed somewhere by a non-empty
//!   `<answer>...</answer>`; text around them and repeated tags are allowed.
//! * `mode = "tag_count"`: 0.25 for each of the four tags that occurs exactly once
//!   (partial credit, as in open-r1's `tag_count_reward`).

use super::{Ctx, Outcome, RewardModule};
use crate::text::count;
use crate::Sample;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatMode {
    Strict,
    Lenient,
    TagCount,
}

/// Parameters of `format`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FormatParams {
    /// `"strict"`, `"lenient"` or `"tag_count"`. Default `"strict"`.
    pub mode: FormatMode,
    /// When the prompt ends with `<think>` (TinyZero's prefill) and the completion does
    /// not start with it, score the completion as if it did. Default `true`.
    pub prompt_prefill: bool,
}

impl Default for FormatParams {
    fn default() -> Self {
        FormatParams { mode: FormatMode::Strict, prompt_prefill: true }
    }
}

pub struct Format {
    p: FormatParams,
}

const TAGS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];

/// Strict template check on a full completion (starting with `<think>`).
pub fn strict(c: &str) -> bool {
    let c = c.trim();
    if TAGS.iter().any(|t| count(c, t) != 1) {
        return false;
    }
    let Some(rest) = c.strip_prefix("<think>") else {
        return false;
    };
    let Some(rest) = rest.strip_suffix("</answer>") else {
        return false;
    };
    let Some((_think, after)) = rest.split_once("</think>") else {
        return false;
    };
    let Some(ans) = after.trim_start().strip_prefix("<answer>") else {
        return false;
    };
    !ans.trim().is_empty()
}

/// Lenient check: `<think>...</think>` then a non-empty `<answer>...</answer>`.
pub fn lenient(c: &str) -> bool {
    let Some(t0) = c.find("<think>") else {
        return false;
    };
    let Some(t1) = c[t0..].find("</think>").map(|p| p + t0) else {
        return false;
    };
    let Some(a0) = c[t1..].find("<answer>").map(|p| p + t1 + "<answer>".len()) else {
        return false;
    };
    let Some(a1) = c[a0..].find("</answer>").map(|p| p + a0) else {
        return false;
    };
    !c[a0..a1].trim().is_empty()
}

/// Partial credit: 0.25 per tag present exactly once.
pub fn tag_count(c: &str) -> f64 {
    TAGS.iter().filter(|t| count(c, t) == 1).count() as f64 * 0.25
}

impl Format {
    pub fn new(p: FormatParams) -> Format {
        Format { p }
    }
}

/// The completion with the prompt's `<think>` prefill restored.
pub(crate) fn with_prefill<'a>(s: &'a Sample, enabled: bool) -> std::borrow::Cow<'a, str> {
    if enabled && s.prompt.trim_end().ends_with("<think>") && !s.completion.trim_start().starts_with("<think>") {
        std::borrow::Cow::Owned(format!("<think>{}", s.completion))
    } else {
        std::borrow::Cow::Borrowed(&s.completion)
    }
}

impl RewardModule for Format {
    fn score(&self, s: &Sample, _ctx: &Ctx) -> Outcome {
        let c = with_prefill(s, self.p.prompt_prefill);
        Outcome::score(match self.p.mode {
            FormatMode::Strict => strict(&c) as u8 as f64,
            FormatMode::Lenient => lenient(&c) as u8 as f64,
            FormatMode::TagCount => tag_count(&c),
        })
    }
}
