//! Synthetic verifiable tasks with seeded generators and disjoint train / held-out splits.
//!
//! Each problem is identified by its operands; a problem belongs to the held-out split when a
//! hash of its identity falls in the held-out fraction, so the two splits never share a
//! problem however many examples are drawn.

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// a + b with up to `digits` digits each.
    Addition,
    /// a x b with up to `digits` digits each.
    Multiplication,
    /// a + 1 with `digits`-digit a: copying plus a carry chain; quick for tiny models.
    Increment,
    /// TinyZero's Countdown: use each of the given numbers once to reach the target.
    Countdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Heldout,
}

/// One generated problem, with a worked solution for corpora.
#[derive(Debug, Clone)]
pub struct Problem {
    pub prompt: String,
    pub answer: String,
    /// Fields the rewards need (`numbers`, `target` for Countdown).
    pub extra: Map<String, Value>,
    /// A correct step-by-step solution (the text inside <think>).
    pub reasoning: String,
    /// A plausible wrong solution (reasoning, answer): the slip a sloppy solver makes.
    pub slip: Option<(String, String)>,
}

impl Problem {
    pub fn to_json(&self) -> Value {
        let mut o = self.extra.clone();
        o.insert("prompt".into(), self.prompt.clone().into());
        o.insert("answer".into(), self.answer.clone().into());
        Value::Object(o)
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The split a problem identity belongs to (`heldout_fraction` of all problems are held out).
pub fn split_of(identity: &str, heldout_fraction: f64) -> Split {
    // FNV's high bits are poorly mixed for short similar strings: mix before taking them.
    let u = (rollout::pool::mix_seed(fnv(identity.as_bytes()), 0) >> 11) as f64 / (1u64 << 53) as f64;
    if u < heldout_fraction {
        Split::Heldout
    } else {
        Split::Train
    }
}

/// A number as written in solutions (the tokenizers ponder trains split digits one by one).
fn spaced(n: u64) -> String {
    n.to_string()
}

fn addition(a: u64, b: u64) -> Problem {
    // Column addition from the units up, carrying explicitly; the slip forgets the carries.
    let (mut x, mut y, mut carry) = (a, b, 0);
    let (mut steps, mut slip_steps) = (vec![], vec![]);
    let mut slip_digits = vec![];
    let mut forgot = false;
    while x > 0 || y > 0 || carry > 0 {
        let (dx, dy) = (x % 10, y % 10);
        let s = dx + dy + carry;
        steps.push(if carry > 0 { format!("{dx} + {dy} + {carry} = {}", spaced(s)) } else { format!("{dx} + {dy} = {}", spaced(s)) });
        if x > 0 || y > 0 {
            let ss = dx + dy;
            slip_steps.push(format!("{dx} + {dy} = {}", spaced(ss)));
            slip_digits.push(ss % 10);
            forgot |= carry > 0;
        }
        carry = s / 10;
        x /= 10;
        y /= 10;
    }
    let sum = a + b;
    let slip_val: u64 = slip_digits.iter().rev().fold(0, |acc, d| acc * 10 + d);
    let slip = (forgot || slip_val != sum).then(|| (slip_steps.join(" , "), spaced(slip_val)));
    Problem {
        prompt: format!("What is {a} + {b}?"),
        answer: sum.to_string(),
        extra: Map::new(),
        reasoning: steps.join(" , "),
        slip,
    }
}

fn multiplication(a: u64, b: u64) -> Problem {
    // Long multiplication by the digits of b; the slip drops the last partial product.
    let mut partials = vec![];
    let mut bb = b;
    let mut place = 1;
    while bb > 0 || partials.is_empty() {
        let d = bb % 10;
        partials.push((d, a * d * place));
        bb /= 10;
        place *= 10;
    }
    let steps: Vec<String> = partials.iter().map(|(d, p)| format!("{a} * {d} -> {}", spaced(*p))).collect();
    let prod = a * b;
    let slip_val: u64 = partials[..partials.len().saturating_sub(1).max(1)].iter().map(|p| p.1).sum();
    let slip = (slip_val != prod).then(|| (steps[..steps.len().saturating_sub(1).max(1)].join(" , "), spaced(slip_val)));
    Problem {
        prompt: format!("What is {a} * {b}?"),
        answer: prod.to_string(),
        extra: Map::new(),
        reasoning: format!("{} , total {}", steps.join(" , "), spaced(prod)),
        slip,
    }
}

/// A Countdown instance built backwards from a random expression, so it is solvable.
fn countdown(rng: &mut StdRng, n_numbers: usize) -> Problem {
    loop {
        let nums: Vec<i64> = (0..n_numbers).map(|_| rng.random_range(1..=20)).collect();
        let mut expr = nums[0].to_string();
        let mut val = nums[0];
        let mut ok = true;
        for &n in &nums[1..] {
            match rng.random_range(0..3) {
                0 => {
                    val += n;
                    expr = format!("{expr} + {n}");
                }
                1 if val - n > 0 => {
                    val -= n;
                    expr = format!("{expr} - {n}");
                }
                _ => {
                    if val * n > 200 {
                        ok = false;
                        break;
                    }
                    val *= n;
                    expr = format!("({expr}) * {n}");
                }
            }
        }
        if !ok || val <= 0 {
            continue;
        }
        let mut shown = nums.clone();
        // Present the numbers in a shuffled order.
        for i in (1..shown.len()).rev() {
            let j = rng.random_range(0..=i);
            shown.swap(i, j);
        }
        let list = shown.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
        let mut extra = Map::new();
        extra.insert("numbers".into(), json!(shown));
        extra.insert("target".into(), json!(val));
        return Problem {
            prompt: format!("Using the numbers [{list}], create an equation that equals {val}. Use each number once, with + - * /."),
            answer: expr.clone(),
            extra,
            reasoning: format!("try {expr} = {val}"),
            slip: None,
        };
    }
}

/// Draws `n` problems of `kind` from `split`, seeded. `digits` bounds operand size.
pub fn generate(kind: TaskKind, split: Split, n: usize, digits: u32, seed: u64, heldout_fraction: f64) -> Vec<Problem> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7a5c_0000 ^ (kind as u64) << 8);
    let hi = 10u64.pow(digits);
    let mut out = Vec::with_capacity(n);
    let mut tries = 0usize;
    while out.len() < n {
        tries += 1;
        assert!(tries < n * 1000 + 100_000, "cannot draw {n} {kind:?} problems from the {split:?} split; widen `digits`");
        let p = match kind {
            TaskKind::Addition => {
                let (a, b) = (rng.random_range(0..hi), rng.random_range(0..hi));
                (format!("add:{a}:{b}"), addition(a, b))
            }
            TaskKind::Increment => {
                let a = rng.random_range(hi / 10..hi);
                (format!("inc:{a}"), addition(a, 1))
            }
            TaskKind::Multiplication => {
                let (a, b) = (rng.random_range(0..hi), rng.random_range(0..10u64.pow(digits.saturating_sub(1).max(1))));
                (format!("mul:{a}:{b}"), multiplication(a, b))
            }
            TaskKind::Countdown => {
                let p = countdown(&mut rng, digits.max(3) as usize);
                (format!("cd:{}", p.prompt), p)
            }
        };
        if split_of(&p.0, heldout_fraction) == split {
            out.push(p.1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_disjoint_and_answers_right() {
        let tr = generate(TaskKind::Addition, Split::Train, 2000, 2, 1, 0.2);
        let ho = generate(TaskKind::Addition, Split::Heldout, 300, 2, 1, 0.2);
        let train: std::collections::HashSet<&str> = tr.iter().map(|p| p.prompt.as_str()).collect();
        assert!(ho.iter().all(|p| !train.contains(p.prompt.as_str())));
        for p in tr.iter().chain(&ho) {
            let nums: Vec<u64> = p.prompt.trim_start_matches("What is ").trim_end_matches('?').split(" + ").map(|x| x.parse().unwrap()).collect();
            assert_eq!(p.answer, (nums[0] + nums[1]).to_string());
            // The reasoning ends with the answer's digits.
            if let Some((_, wrong)) = &p.slip {
                assert_ne!(wrong.replace(' ', ""), p.answer);
            }
        }
        let m = generate(TaskKind::Multiplication, Split::Train, 100, 2, 1, 0.2);
        for p in &m {
            let nums: Vec<u64> = p.prompt.trim_start_matches("What is ").trim_end_matches('?').split(" * ").map(|x| x.parse().unwrap()).collect();
            assert_eq!(p.answer, (nums[0] * nums[1]).to_string());
            assert!(p.reasoning.ends_with(&spaced(nums[0] * nums[1])));
        }
    }

    #[test]
    fn heldout_share_matches_the_fraction_for_every_task() {
        for prefix in ["inc", "add", "mul"] {
            let n = 5000;
            let held = (0..n).filter(|i| split_of(&format!("{prefix}:{i}:{}", i % 7), 0.2) == Split::Heldout).count();
            let share = held as f64 / n as f64;
            assert!((share - 0.2).abs() < 0.03, "{prefix}: held-out share {share}");
        }
    }

    #[test]
    fn addition_reasoning_carries() {
        let p = addition(47, 38);
        assert_eq!(p.reasoning, "7 + 8 = 15 , 4 + 3 + 1 = 8");
        assert_eq!(p.answer, "85");
        assert_eq!(p.slip.unwrap().1, "75");
        assert!(addition(12, 30).slip.is_none());
    }

    #[test]
    fn countdown_is_solvable() {
        let ps = generate(TaskKind::Countdown, Split::Train, 50, 3, 2, 0.2);
        for p in ps {
            let nums = p.extra["numbers"].as_array().unwrap().len();
            assert_eq!(nums, 3);
            assert!(p.extra["target"].as_i64().unwrap() > 0);
        }
    }
}
