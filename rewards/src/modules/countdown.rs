//! `kind = "countdown"`: TinyZero's Countdown task.
//!
//! Reads `completion` and the extra fields `numbers` (array of integers) and `target`
//! (number). The answer is the content of the last closed `<answer>...</answer>`
//! block: an arithmetic expression over `+ - * / ( )` (also `×`, `÷`, `\times`, `\div`;
//! an `= target` suffix is ignored) that uses each given number exactly once.
//!
//! Score: `score` (default 1.0) when it evaluates exactly (rational arithmetic) to the
//! target; `format_score` (default 0.1) when an answer is found but is invalid or wrong;
//! 0 when there is no answer block (as in TinyZero).

use super::{Ctx, Issue, Outcome, RewardModule};
use crate::math::num::Q;
use crate::Sample;
use serde::{Deserialize, Serialize};

/// Parameters of `countdown`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountdownParams {
    /// Score of a correct equation. Default `1.0`.
    pub score: f64,
    /// Score of a well-formed but wrong or invalid answer. Default `0.1`.
    pub format_score: f64,
}

impl Default for CountdownParams {
    fn default() -> Self {
        CountdownParams { score: 1.0, format_score: 0.1 }
    }
}

pub struct Countdown {
    p: CountdownParams,
}

impl Countdown {
    pub fn new(p: CountdownParams) -> Countdown {
        Countdown { p }
    }
}

struct E<'a> {
    b: &'a [u8],
    i: usize,
    nums: Vec<i128>,
    depth: usize,
}

impl E<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i] == b' ' {
            self.i += 1;
        }
    }
    fn expr(&mut self) -> Option<Q> {
        let mut v = self.term()?;
        loop {
            self.ws();
            match self.b.get(self.i) {
                Some(b'+') => {
                    self.i += 1;
                    v = v.add(self.term()?)?
                }
                Some(b'-') => {
                    self.i += 1;
                    v = v.sub(self.term()?)?
                }
                _ => return Some(v),
            }
        }
    }
    fn term(&mut self) -> Option<Q> {
        let mut v = self.factor()?;
        loop {
            self.ws();
            match self.b.get(self.i) {
                Some(b'*') => {
                    self.i += 1;
                    v = v.mul(self.factor()?)?
                }
                Some(b'/') => {
                    self.i += 1;
                    v = v.div(self.factor()?)?
                }
                _ => return Some(v),
            }
        }
    }
    fn factor(&mut self) -> Option<Q> {
        self.ws();
        self.depth += 1;
        if self.depth > 200 {
            return None;
        }
        let r = match *self.b.get(self.i)? {
            b'(' => {
                self.i += 1;
                let v = self.expr()?;
                self.ws();
                if self.b.get(self.i) != Some(&b')') {
                    return None;
                }
                self.i += 1;
                v
            }
            b'-' => {
                self.i += 1;
                self.factor()?.neg()?
            }
            c if c.is_ascii_digit() => {
                let st = self.i;
                while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let s = std::str::from_utf8(&self.b[st..self.i]).ok()?;
                if s.len() > 30 {
                    return None;
                }
                let n: i128 = s.parse().ok()?;
                self.nums.push(n);
                Q::int(n)
            }
            _ => return None,
        };
        self.depth -= 1;
        Some(r)
    }
}

/// Evaluates a Countdown expression exactly; returns the value and the numbers used.
pub fn evaluate(expr: &str) -> Option<(Q, Vec<i128>)> {
    let mut s = expr.replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/");
    s = s.replace(['×', '·'], "*").replace('÷', "/").replace(['$', '\n', '\t', '\r'], " ");
    s = s.replace("\\left", "").replace("\\right", "");
    let lhs = s.split('=').next().unwrap_or("");
    let mut e = E { b: lhs.as_bytes(), i: 0, nums: Vec::new(), depth: 0 };
    let v = e.expr()?;
    e.ws();
    if e.i != e.b.len() {
        return None;
    }
    Some((v, e.nums))
}

fn read_inputs(s: &Sample) -> Result<(Vec<i128>, f64), String> {
    let nums = s.extra.get("numbers").and_then(|v| v.as_array()).ok_or("countdown needs `numbers` (array of integers)")?;
    let nums: Option<Vec<i128>> = nums.iter().map(|v| v.as_i64().map(|x| x as i128)).collect();
    let nums = nums.ok_or("`numbers` must be integers")?;
    let target = s.extra.get("target").and_then(|v| v.as_f64()).ok_or("countdown needs a numeric `target`")?;
    Ok((nums, target))
}

impl RewardModule for Countdown {
    fn check_row(&self, s: &Sample) -> Result<(), String> {
        let (nums, target) = read_inputs(s)?;
        if nums.is_empty() {
            return Err("`numbers` is empty".into());
        }
        if !target.is_finite() {
            return Err("`target` is not a finite number".into());
        }
        Ok(())
    }

    fn score(&self, s: &Sample, _ctx: &Ctx) -> Outcome {
        let (mut numbers, target) = match read_inputs(s) {
            Ok(x) => x,
            Err(m) => return Outcome::with(0.0, Issue::MissingInput(m)),
        };
        let Some((block, true)) = crate::text::last_tag_block(&s.completion, "answer") else {
            return Outcome::with(0.0, Issue::NoAnswer("no closed <answer> block".into()));
        };
        let Some((value, mut used)) = evaluate(block.trim()) else {
            return Outcome::score(self.p.format_score);
        };
        used.sort_unstable();
        numbers.sort_unstable();
        if used != numbers {
            return Outcome::score(self.p.format_score);
        }
        if (value.to_f64() - target).abs() < 1e-5 {
            Outcome::score(self.p.score)
        } else {
            Outcome::score(self.p.format_score)
        }
    }
}
