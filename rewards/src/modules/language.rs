//! `kind = "language_consistency"`: DeepSeek-R1's language-consistency reward, the
//! proportion of words of the reasoning that are in the target language.
//!
//! Reads `prompt` (for the `<think>` prefill), `completion`, and the optional extra field
//! `language` (overrides the `language` parameter for that sample).
//!
//! Words: runs of letters of one script; every Han, Hiragana or Katakana character is a
//! word of its own. Neutral (not counted): digits, punctuation, single letters (math
//! variables), LaTeX commands (`\frac`) and, with `ignore_math`, anything inside `$...$`,
//! `\(...\)`, `\[...\]`. A word is in the target language when its script is the
//! language's script (`zh`: Han; `ja`: Han, Hiragana, Katakana; `ko`: Hangul; `ru`, `uk`,
//! `bg`: Cyrillic; `ar`, `fa`: Arabic; `hi`: Devanagari; `he`: Hebrew; `th`: Thai; `el`:
//! Greek; Latin-script languages: Latin). For Latin-script targets, with
//! `detect_latin_language`, each sentence is also checked with `whatlang`, and the Latin
//! words of a sentence detected (confidence >= `min_confidence`) as another language count as non-target.

use super::{Ctx, Outcome, RewardModule};
use crate::Sample;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The `<think>` block (the whole completion when there is none).
    Think,
    Completion,
}

/// Parameters of `language_consistency`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanguageParams {
    /// Target language, ISO 639-1 (`en`, `zh`, `ja`, `ko`, `ru`, `fr`, `de`, `es`, ...). Default `"en"`.
    pub language: String,
    /// `"think"` or `"completion"`. Default `"think"`.
    pub scope: Scope,
    /// Ignore `$...$`, `\(...\)`, `\[...\]` spans. Default `true`.
    pub ignore_math: bool,
    /// Check sentences of Latin-script targets with `whatlang`. Default `true`.
    pub detect_latin_language: bool,
    /// Minimum Latin words in a sentence before `whatlang` is asked. Default `6`.
    pub min_sentence_words: usize,
    /// Minimum `whatlang` confidence for a sentence to count as another language. Default `0.5`.
    pub min_confidence: f64,
    /// Score when the reasoning has no countable word. Default `0.0`.
    pub empty_score: f64,
    /// Restore a `<think>` prefilled in the prompt. Default `true`.
    pub prompt_prefill: bool,
}

impl Default for LanguageParams {
    fn default() -> Self {
        LanguageParams {
            language: "en".into(),
            scope: Scope::Think,
            ignore_math: true,
            detect_latin_language: true,
            min_sentence_words: 6,
            min_confidence: 0.5,
            empty_score: 0.0,
            prompt_prefill: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    Latin,
    Han,
    Hiragana,
    Katakana,
    Hangul,
    Cyrillic,
    Arabic,
    Devanagari,
    Hebrew,
    Thai,
    Greek,
    Other,
}

/// The script of a letter (`None` for non-letters).
pub fn script(c: char) -> Option<Script> {
    let u = c as u32;
    Some(match u {
        0x41..=0x5A | 0x61..=0x7A | 0xC0..=0x24F | 0x1E00..=0x1EFF => {
            if u == 0xD7 || u == 0xF7 {
                return None;
            }
            Script::Latin
        }
        0x370..=0x3FF | 0x1F00..=0x1FFF => Script::Greek,
        0x400..=0x52F => Script::Cyrillic,
        0x590..=0x5FF => Script::Hebrew,
        0x600..=0x6FF | 0x750..=0x77F => Script::Arabic,
        0x900..=0x97F => Script::Devanagari,
        0xE00..=0xE7F => Script::Thai,
        0x3040..=0x309F => Script::Hiragana,
        0x30A0..=0x30FF | 0x31F0..=0x31FF => Script::Katakana,
        0x1100..=0x11FF | 0x3130..=0x318F | 0xAC00..=0xD7AF => Script::Hangul,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F => Script::Han,
        _ if c.is_alphabetic() => Script::Other,
        _ => return None,
    })
}

fn target_scripts(lang: &str) -> &'static [Script] {
    match lang {
        "zh" | "zh-cn" | "zh-tw" | "cmn" => &[Script::Han],
        "ja" => &[Script::Han, Script::Hiragana, Script::Katakana],
        "ko" => &[Script::Hangul, Script::Han],
        "ru" | "uk" | "bg" | "sr" | "be" | "kk" => &[Script::Cyrillic],
        "ar" | "fa" | "ur" => &[Script::Arabic],
        "hi" | "mr" | "ne" => &[Script::Devanagari],
        "he" => &[Script::Hebrew],
        "th" => &[Script::Thai],
        "el" => &[Script::Greek],
        _ => &[Script::Latin],
    }
}

fn whatlang_code(lang: &str) -> Option<whatlang::Lang> {
    let code = match lang {
        "en" => "eng",
        "fr" => "fra",
        "de" => "deu",
        "es" => "spa",
        "it" => "ita",
        "pt" => "por",
        "nl" => "nld",
        "pl" => "pol",
        "tr" => "tur",
        "vi" => "vie",
        "id" => "ind",
        "sv" => "swe",
        "da" => "dan",
        "fi" => "fin",
        "cs" => "ces",
        "ro" => "ron",
        "hu" => "hun",
        other => other,
    };
    whatlang::Lang::from_code(code)
}

pub struct LanguageConsistency {
    p: LanguageParams,
}

impl LanguageConsistency {
    pub fn new(p: LanguageParams) -> LanguageConsistency {
        LanguageConsistency { p }
    }

    /// The proportion of target-language words in `text` (`None` when there are none to count).
    pub fn proportion(&self, text: &str, lang: &str) -> Option<f64> {
        let lang = lang.trim().to_ascii_lowercase();
        let targets = target_scripts(&lang);
        let latin_target = targets == [Script::Latin];
        let wl = if latin_target && self.p.detect_latin_language { whatlang_code(&lang) } else { None };
        let (mut total, mut good) = (0usize, 0usize);
        // per sentence: (latin words, latin target words counted as good)
        let mut sent_start = 0usize;
        let mut sent_latin = 0usize;
        let mut chars = text.char_indices().peekable();
        let mut run_script: Option<Script> = None;
        let mut run_len = 0usize;
        let mut after_backslash = false;
        let mut in_math: Option<&'static str> = None;
        let english = lang == "en";
        let flush_sentence = |st: usize, end: usize, latin: usize, good: &mut usize| {
            if let Some(l) = wl {
                // English sentences with common function words are English without asking whatlang
                if latin >= self.p.min_sentence_words && !(english && has_english_stopwords(&text[st..end])) {
                    if let Some(info) = whatlang::detect(&text[st..end]) {
                        if info.confidence() >= self.p.min_confidence && info.lang() != l && info.script() == whatlang::Script::Latin {
                            *good -= latin;
                        }
                    }
                }
            }
        };
        let end_run = |script: Option<Script>, len: usize, skip: bool, total: &mut usize, good: &mut usize, latin: &mut usize| {
            if let Some(s) = script {
                if len >= 2 && !skip {
                    *total += 1;
                    if targets.contains(&s) {
                        *good += 1;
                        if s == Script::Latin {
                            *latin += 1;
                        }
                    }
                }
            }
        };
        let mut run_skip = false;
        while let Some((i, c)) = chars.next() {
            if let Some(close) = in_math {
                if text[i..].starts_with(close) {
                    in_math = None;
                    for _ in 1..close.len() {
                        chars.next();
                    }
                }
                continue;
            }
            if c == '<' {
                if let Some(tag) = ["<think>", "</think>", "<answer>", "</answer>"].iter().find(|t| text[i..].starts_with(**t)) {
                    end_run(run_script.take(), run_len, run_skip, &mut total, &mut good, &mut sent_latin);
                    for _ in 1..tag.len() {
                        chars.next();
                    }
                    after_backslash = false;
                    continue;
                }
            }
            if self.p.ignore_math {
                let opener = if c == '$' {
                    Some(if text[i..].starts_with("$$") { "$$" } else { "$" })
                } else if c == '\\' && (text[i..].starts_with("\\(") || text[i..].starts_with("\\[")) {
                    Some(if text[i..].starts_with("\\(") { "\\)" } else { "\\]" })
                } else {
                    None
                };
                if let Some(close) = opener {
                    end_run(run_script.take(), run_len, run_skip, &mut total, &mut good, &mut sent_latin);
                    let open_len = if close == "$$" || close.starts_with('\\') { 2 } else { 1 };
                    for _ in 1..open_len {
                        chars.next();
                    }
                    in_math = Some(close);
                    continue;
                }
            }
            let sc = script(c);
            match sc {
                Some(s @ (Script::Han | Script::Hiragana | Script::Katakana)) => {
                    end_run(run_script.take(), run_len, run_skip, &mut total, &mut good, &mut sent_latin);
                    total += 1;
                    if targets.contains(&s) {
                        good += 1;
                    }
                }
                Some(s) => {
                    if run_script == Some(s) {
                        run_len += 1;
                    } else {
                        end_run(run_script.take(), run_len, run_skip, &mut total, &mut good, &mut sent_latin);
                        run_script = Some(s);
                        run_len = 1;
                        run_skip = after_backslash;
                    }
                }
                None => {
                    end_run(run_script.take(), run_len, run_skip, &mut total, &mut good, &mut sent_latin);
                    if matches!(c, '.' | '!' | '?' | '\n' | '。' | '！' | '？') {
                        flush_sentence(sent_start, i, sent_latin, &mut good);
                        sent_start = i + c.len_utf8();
                        sent_latin = 0;
                    }
                }
            }
            after_backslash = c == '\\';
        }
        end_run(run_script.take(), run_len, run_skip, &mut total, &mut good, &mut sent_latin);
        flush_sentence(sent_start, text.len(), sent_latin, &mut good);
        (total > 0).then(|| good as f64 / total as f64)
    }
}

const EN_STOP: &[&str] = &[
    "the",
    "is",
    "are",
    "we",
    "and",
    "of",
    "to",
    "that",
    "this",
    "it",
    "so",
    "then",
    "let",
    "us",
    "be",
    "in",
    "for",
    "with",
    "if",
    "not",
    "can",
    "have",
    "has",
    "which",
    "from",
    "by",
    "on",
    "as",
    "was",
    "must",
    "will",
    "would",
    "should",
    "there",
    "each",
    "both",
    "an",
    "at",
    "or",
    "but",
    "because",
    "therefore",
    "thus",
    "first",
    "now",
    "wait",
    "what",
    "how",
    "our",
    "they",
    "these",
    "its",
    "get",
    "gives",
    "need",
];

/// At least two distinct common English function words (ASCII case-insensitive).
fn has_english_stopwords(s: &str) -> bool {
    let mut found: Option<&str> = None;
    for w in s.split(|c: char| !c.is_ascii_alphabetic()) {
        if w.len() < 2 || w.len() > 9 {
            continue;
        }
        let mut buf = [0u8; 9];
        for (d, b) in buf.iter_mut().zip(w.bytes()) {
            *d = b.to_ascii_lowercase();
        }
        let lw = std::str::from_utf8(&buf[..w.len()]).unwrap_or("");
        if let Some(sw) = EN_STOP.iter().find(|x| **x == lw) {
            match found {
                Some(f) if f != *sw => return true,
                None => found = Some(sw),
                _ => {}
            }
        }
    }
    false
}

/// The reasoning part of a completion: the `<think>` block, or all of it.
pub(crate) fn reasoning(c: &str) -> &str {
    match c.find("<think>") {
        Some(p) => {
            let rest = &c[p + 7..];
            match rest.find("</think>") {
                Some(e) => &rest[..e],
                None => rest,
            }
        }
        None => match c.find("</think>") {
            Some(e) => &c[..e],
            None => c,
        },
    }
}

impl RewardModule for LanguageConsistency {
    fn score(&self, s: &Sample, _ctx: &Ctx) -> Outcome {
        let lang = s.extra.get("language").and_then(|v| v.as_str()).unwrap_or(&self.p.language);
        let c = super::format::with_prefill(s, self.p.prompt_prefill);
        let text = match self.p.scope {
            Scope::Think => reasoning(&c),
            Scope::Completion => &c,
        };
        Outcome::score(self.proportion(text, lang).unwrap_or(self.p.empty_score))
    }
}
