//! Deterministic benchmark samples: ~2,000-character completions whose final answers are
//! taken from the labelled equivalence table (`data/accuracy_cases.tsv`), written in
//! several styles (boxed inside `<answer>`, bare inside `<answer>`, boxed without tags,
//! "the answer is ...", phrase inside `<answer>`; a prediction with its own delimiters,
//! such as `Answer $ 9 $` or `\boxed{1}\boxed{2}`, always bare inside `<answer>`). The
//! label is the table's verdict.

use crate::Sample;
use serde_json::{json, Value};

const CASES: &str = include_str!("../data/accuracy_cases.tsv");

/// The labelled table: `(equivalent, reference, predicted answer)`.
pub fn accuracy_cases() -> Vec<(bool, &'static str, &'static str)> {
    CASES
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.splitn(3, '\t');
            let e = it.next()?;
            Some((e == "1", it.next()?, it.next()?))
        })
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "first",
    "we",
    "note",
    "that",
    "the",
    "sum",
    "of",
    "both",
    "sides",
    "is",
    "equal",
    "so",
    "let",
    "us",
    "consider",
    "each",
    "case",
    "separately",
    "then",
    "value",
    "must",
    "be",
    "positive",
    "because",
    "term",
    "grows",
    "and",
    "therefore",
    "substituting",
    "back",
    "gives",
    "which",
    "checks",
    "out",
    "wait",
    "verify",
    "again",
    "carefully",
];

fn filler(rng: &mut Rng, target_len: usize) -> String {
    let mut s = String::with_capacity(target_len + 64);
    while s.len() < target_len {
        match rng.below(4) {
            0 => {
                let (a, b) = (rng.below(100), rng.below(100));
                s.push_str(&format!("We compute ${a} + {b} = {}$. ", a + b));
            }
            1 => {
                let (a, b) = (rng.below(20) + 1, rng.below(20) + 1);
                s.push_str(&format!("Then \\frac{{{a}}}{{{b}}} \\cdot {b} = {a}. "));
            }
            _ => {
                let n = 6 + rng.below(10) as usize;
                for k in 0..n {
                    let w = WORDS[rng.below(WORDS.len() as u64) as usize];
                    if k == 0 {
                        let mut c = w.chars();
                        let f = c.next().unwrap().to_ascii_uppercase();
                        s.push(f);
                        s.push_str(c.as_str());
                    } else {
                        s.push_str(w);
                    }
                    s.push(if k + 1 == n { '.' } else { ' ' });
                }
                s.push(if rng.below(3) == 0 { '\n' } else { ' ' });
            }
        }
    }
    s
}

/// Answer styles.
pub const STYLES: usize = 5;

fn completion(rng: &mut Rng, answer: &str, style: usize) -> String {
    let think = filler(rng, 1850);
    match style {
        0 => format!("<think>\n{think}\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"),
        1 => format!("<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"),
        2 => format!("{think}\nThe final answer is $\\boxed{{{answer}}}$."),
        3 => format!("{think}\nTherefore, the answer is ${answer}$."),
        _ => format!("<think>\n{think}\n</think>\n<answer>The answer is ${answer}$</answer>"),
    }
}

/// `n` labelled samples `(sample, truth)`, deterministic in `seed`.
pub fn labelled_samples(n: usize, seed: u64) -> Vec<(Sample, bool)> {
    let cases = accuracy_cases();
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let (eq, r, p) = cases[i % cases.len()];
            // a prediction that is itself a sentence or carries its own delimiters
            // (`Answer $ 9 $`, `\boxed{1}\boxed{2}`) is written as is inside `<answer>`
            let own_delims =
                ["\\(", "\\[", "\\boxed"].iter().any(|d| p.contains(d)) || (p.replace("\\$", "").contains('$') && p.contains(' '));
            let style = if own_delims { 1 } else { (i / cases.len() + i) % STYLES };
            let c = completion(&mut rng, p, style);
            (Sample::new("Solve the problem.", &c, Some(r)), eq)
        })
        .collect()
}

/// `n` samples, deterministic in `seed`.
pub fn samples(n: usize, seed: u64) -> Vec<Sample> {
    labelled_samples(n, seed).into_iter().map(|(s, _)| s).collect()
}

/// One JSONL line: `prompt`, `completion`, `answer`, `label`.
pub fn to_json(s: &Sample, label: bool) -> Value {
    json!({"prompt": s.prompt, "completion": s.completion, "answer": s.answer, "label": label})
}
