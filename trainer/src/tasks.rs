//! Synthetic verifiable tasks with seeded generators and disjoint train / held-out splits.
//!
//! Each problem is identified by its operands; a problem belongs to the held-out split when a
//! hash of its identity falls in the held-out fraction, so the two splits never share a
//! problem however many examples are drawn.

use rand::{Rng, SeedableRng};
use rollout::SeededRng;
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
    /// "Which is larger, a or b?": a non-reasoning task, answered directly (an empty
    /// `<think>` block), the miniature of R1's non-reasoning (writing, QA) data.
    Compare,
    /// "What number comes after n?": a non-reasoning question answered directly; easier
    /// for a tiny model than `compare` (copy the number, add one to its last digit).
    Successor,
}

impl TaskKind {
    /// The name rows carry in their `task` field (reward routing reads it).
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Addition => "addition",
            TaskKind::Multiplication => "multiplication",
            TaskKind::Increment => "increment",
            TaskKind::Countdown => "countdown",
            TaskKind::Compare => "compare",
            TaskKind::Successor => "successor",
        }
    }

    /// Operand digits a task accepts (`digits` of a tasks / pretrain stage): bounded so
    /// that every value fits in 64 bits.
    pub fn digit_range(self) -> std::ops::RangeInclusive<u32> {
        match self {
            TaskKind::Addition | TaskKind::Increment | TaskKind::Compare | TaskKind::Successor => 1..=18,
            TaskKind::Multiplication => 1..=9,
            TaskKind::Countdown => 3..=6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Heldout,
}

/// The language a reasoning step's words are written in. The tiny world's target
/// language is English; the sloppy solver sometimes writes a step's words in Chinese
/// (the language mixing DeepSeek-R1-Zero showed), with the same digits and symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

/// One step of a worked solution: the arithmetic, and for column steps the digit place
/// it works on (written as a word: "tens 4 + 3 + 1 = 8", "十位 4 + 3 + 1 = 8").
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub place: Option<u32>,
    pub text: String,
}

/// The word for digit place `p` (0 = ones).
pub fn place_word(p: u32, lang: Lang) -> String {
    const EN: [&str; 4] = ["ones", "tens", "hundreds", "thousands"];
    const ZH: [&str; 9] = ["个位", "十位", "百位", "千位", "万位", "十万位", "百万位", "千万位", "亿位"];
    match lang {
        Lang::En => EN.get(p as usize).map_or_else(|| format!("digit {}", p + 1), |w| w.to_string()),
        Lang::Zh => ZH.get(p as usize).map_or_else(|| format!("第{}位", p + 1), |w| w.to_string()),
    }
}

impl Step {
    pub fn render(&self, lang: Lang) -> String {
        match self.place {
            Some(p) => format!("{} {}", place_word(p, lang), self.text),
            None => self.text.clone(),
        }
    }
}

/// Steps joined as solutions write them, each step's words in the language `lang` picks
/// (called once per step, in order).
pub fn render_steps(steps: &[Step], mut lang: impl FnMut() -> Lang) -> String {
    steps.iter().map(|s| s.render(lang())).collect::<Vec<_>>().join(" , ")
}

/// One generated problem, with worked solutions for corpora.
#[derive(Debug, Clone)]
pub struct Problem {
    pub task: TaskKind,
    pub prompt: String,
    pub answer: String,
    /// Fields the rewards need (`numbers`, `target` for Countdown).
    pub extra: Map<String, Value>,
    /// The careful solver's steps (the text inside <think>); empty for tasks answered directly.
    pub steps: Vec<Step>,
    /// A plausible wrong solution (steps, answer): the slip a sloppy solver makes.
    pub slip: Option<(Vec<Step>, String)>,
}

impl Problem {
    pub fn to_json(&self) -> Value {
        let mut o = self.extra.clone();
        o.insert("prompt".into(), self.prompt.clone().into());
        o.insert("answer".into(), self.answer.clone().into());
        o.insert("task".into(), self.task.name().into());
        Value::Object(o)
    }

    /// The careful solver's steps in English (the pretraining corpus's
    /// correct solutions).
    pub fn reasoning(&self) -> String {
        render_steps(&self.steps, || Lang::En)
    }

    /// The completion a careful annotator writes (R1's cold-start data): every step right
    /// and in the target language, in the R1 format, the answer block restating the result;
    /// tasks without steps are answered directly with an empty `<think>` block, as
    /// DeepSeek-R1 answers simple queries. (A separate summary line before `</think>`, as R1
    /// writes, cost the tiny model most of its accuracy in cold-start SFT: 0.18 -> 0.03-0.26,
    /// against 0.78-0.82 without it; see the README.)
    pub fn readable_completion(&self) -> String {
        if self.steps.is_empty() {
            return format!(" <think> </think> <answer> {} </answer>", self.answer);
        }
        format!(" <think> {} </think> <answer> {} </answer>", self.reasoning(), self.answer)
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

fn addition(a: u64, b: u64, task: TaskKind) -> Problem {
    // Column addition from the ones up, each step naming its place and carrying
    // explicitly; the slip forgets the carries.
    let (mut x, mut y, mut carry) = (a, b, 0);
    let (mut steps, mut slip_steps) = (vec![], vec![]);
    let mut slip_digits = vec![];
    let mut forgot = false;
    let mut place = 0;
    while x > 0 || y > 0 || carry > 0 {
        let (dx, dy) = (x % 10, y % 10);
        let s = dx + dy + carry;
        let text = if carry > 0 { format!("{dx} + {dy} + {carry} = {}", spaced(s)) } else { format!("{dx} + {dy} = {}", spaced(s)) };
        steps.push(Step { place: Some(place), text });
        if x > 0 || y > 0 {
            let ss = dx + dy;
            slip_steps.push(Step { place: Some(place), text: format!("{dx} + {dy} = {}", spaced(ss)) });
            slip_digits.push(ss % 10);
            forgot |= carry > 0;
        }
        carry = s / 10;
        x /= 10;
        y /= 10;
        place += 1;
    }
    if steps.is_empty() {
        // 0 + 0: one step, so every solution shows its work.
        steps.push(Step { place: Some(0), text: "0 + 0 = 0".into() });
    }
    let sum = a + b;
    let slip_val: u64 = slip_digits.iter().rev().fold(0, |acc, d| acc * 10 + d);
    let slip = (forgot || slip_val != sum).then(|| (slip_steps, spaced(slip_val)));
    Problem { task, prompt: format!("What is {a} + {b}?"), answer: sum.to_string(), extra: Map::new(), steps, slip }
}

fn successor(a: u64) -> Problem {
    Problem {
        task: TaskKind::Successor,
        prompt: format!("What number comes after {a}?"),
        answer: (a + 1).to_string(),
        extra: Map::new(),
        steps: vec![],
        slip: None,
    }
}

fn compare(a: u64, b: u64) -> Problem {
    Problem {
        task: TaskKind::Compare,
        prompt: format!("Which is larger, {a} or {b}?"),
        answer: a.max(b).to_string(),
        extra: Map::new(),
        steps: vec![],
        slip: None,
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
    let mut steps: Vec<Step> = partials.iter().map(|(d, p)| Step { place: None, text: format!("{a} * {d} -> {}", spaced(*p)) }).collect();
    let prod = a * b;
    let kept = steps.len().saturating_sub(1).max(1);
    let slip_val: u64 = partials[..kept].iter().map(|p| p.1).sum();
    let mut slip_steps = steps[..kept].to_vec();
    slip_steps.push(Step { place: None, text: format!("total {}", spaced(slip_val)) });
    let slip = (slip_val != prod).then(|| (slip_steps, spaced(slip_val)));
    steps.push(Step { place: None, text: format!("total {}", spaced(prod)) });
    Problem {
        task: TaskKind::Multiplication,
        prompt: format!("What is {a} * {b}?"),
        answer: prod.to_string(),
        extra: Map::new(),
        steps,
        slip,
    }
}

/// A Countdown instance built backwards from a random expression, so it is solvable.
fn countdown(rng: &mut SeededRng, n_numbers: usize) -> Problem {
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
            task: TaskKind::Countdown,
            prompt: format!("Using the numbers [{list}], create an equation that equals {val}. Use each number once, with + - * /."),
            answer: expr.clone(),
            extra,
            steps: vec![Step { place: None, text: format!("try {expr} = {val}") }],
            slip: None,
        };
    }
}

/// Why a task generator cannot produce what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("`digits = {digits}` is out of range for task `{task}`: use {lo}..={hi}")]
    Digits { task: &'static str, digits: u32, lo: u32, hi: u32 },
    #[error("`heldout_fraction = {0}` must be in (0, 1)")]
    Fraction(f64),
    #[error("cannot draw {n} {task} problems from the {split:?} split with digits = {digits} and heldout_fraction = {fraction}: that split holds (almost) no problems; raise `digits` or change `heldout_fraction`")]
    TooFew { n: usize, task: &'static str, split: Split, digits: u32, fraction: f64 },
}

/// Checks a task's `digits` and `heldout_fraction` before any work.
pub fn check(kind: TaskKind, digits: u32, heldout_fraction: f64) -> Result<(), TaskError> {
    let r = kind.digit_range();
    if !r.contains(&digits) {
        return Err(TaskError::Digits { task: kind.name(), digits, lo: *r.start(), hi: *r.end() });
    }
    if !(heldout_fraction > 0.0 && heldout_fraction < 1.0) {
        return Err(TaskError::Fraction(heldout_fraction));
    }
    Ok(())
}

/// Draws `n` problems of `kind` from `split`, seeded. `digits` bounds operand size.
pub fn generate(kind: TaskKind, split: Split, n: usize, digits: u32, seed: u64, heldout_fraction: f64) -> Result<Vec<Problem>, TaskError> {
    check(kind, digits, heldout_fraction)?;
    let mut rng = SeededRng::seed_from_u64(seed ^ 0x7a5c_0000 ^ (kind as u64) << 8);
    let hi = 10u64.pow(digits);
    let mut out = Vec::with_capacity(n);
    let mut tries = 0usize;
    while out.len() < n {
        tries += 1;
        if tries >= n * 1000 + 100_000 {
            return Err(TaskError::TooFew { n, task: kind.name(), split, digits, fraction: heldout_fraction });
        }
        let p = match kind {
            TaskKind::Addition => {
                let (a, b) = (rng.random_range(0..hi), rng.random_range(0..hi));
                (format!("add:{a}:{b}"), addition(a, b, kind))
            }
            TaskKind::Increment => {
                let a = rng.random_range(hi / 10..hi);
                (format!("inc:{a}"), addition(a, 1, kind))
            }
            TaskKind::Multiplication => {
                let (a, b) = (rng.random_range(0..hi), rng.random_range(0..10u64.pow(digits.saturating_sub(1).max(1))));
                (format!("mul:{a}:{b}"), multiplication(a, b))
            }
            TaskKind::Countdown => {
                let p = countdown(&mut rng, digits as usize);
                (format!("cd:{}", p.prompt), p)
            }
            TaskKind::Successor => {
                let a = rng.random_range(0..hi);
                (format!("succ:{a}"), successor(a))
            }
            TaskKind::Compare => {
                let (a, b) = (rng.random_range(0..hi), rng.random_range(0..hi));
                if a == b {
                    continue;
                }
                (format!("cmp:{a}:{b}"), compare(a, b))
            }
        };
        if split_of(&p.0, heldout_fraction) == split {
            out.push(p.1);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_disjoint_and_answers_right() {
        let tr = generate(TaskKind::Addition, Split::Train, 2000, 2, 1, 0.2).unwrap();
        let ho = generate(TaskKind::Addition, Split::Heldout, 300, 2, 1, 0.2).unwrap();
        let train: std::collections::HashSet<&str> = tr.iter().map(|p| p.prompt.as_str()).collect();
        assert!(ho.iter().all(|p| !train.contains(p.prompt.as_str())));
        for p in tr.iter().chain(&ho) {
            let nums: Vec<u64> =
                p.prompt.trim_start_matches("What is ").trim_end_matches('?').split(" + ").map(|x| x.parse().unwrap()).collect();
            assert_eq!(p.answer, (nums[0] + nums[1]).to_string());
            // The reasoning ends with the answer's digits.
            if let Some((_, wrong)) = &p.slip {
                assert_ne!(wrong.replace(' ', ""), p.answer);
            }
        }
        let m = generate(TaskKind::Multiplication, Split::Train, 100, 2, 1, 0.2).unwrap();
        for p in &m {
            let nums: Vec<u64> =
                p.prompt.trim_start_matches("What is ").trim_end_matches('?').split(" * ").map(|x| x.parse().unwrap()).collect();
            assert_eq!(p.answer, (nums[0] * nums[1]).to_string());
            assert!(p.reasoning().ends_with(&spaced(nums[0] * nums[1])));
        }
        let c = generate(TaskKind::Compare, Split::Train, 200, 2, 1, 0.2).unwrap();
        for p in &c {
            let nums: Vec<u64> =
                p.prompt.trim_start_matches("Which is larger, ").trim_end_matches('?').split(" or ").map(|x| x.parse().unwrap()).collect();
            assert_ne!(nums[0], nums[1]);
            assert_eq!(p.answer, nums[0].max(nums[1]).to_string());
            assert_eq!(p.to_json()["task"], "compare");
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
        let p = addition(47, 38, TaskKind::Addition);
        assert_eq!(p.reasoning(), "ones 7 + 8 = 15 , tens 4 + 3 + 1 = 8");
        assert_eq!(p.readable_completion(), " <think> ones 7 + 8 = 15 , tens 4 + 3 + 1 = 8 </think> <answer> 85 </answer>");
        assert_eq!(render_steps(&p.steps, || Lang::Zh), "个位 7 + 8 = 15 , 十位 4 + 3 + 1 = 8");
        assert_eq!(p.answer, "85");
        let (slip, wrong) = p.slip.unwrap();
        assert_eq!((render_steps(&slip, || Lang::En).as_str(), wrong.as_str()), ("ones 7 + 8 = 15 , tens 4 + 3 = 7", "75"));
        assert!(addition(12, 30, TaskKind::Addition).slip.is_none());
        assert_eq!(addition(95, 7, TaskKind::Addition).reasoning(), "ones 5 + 7 = 12 , tens 9 + 0 + 1 = 10 , hundreds 0 + 0 + 1 = 1");
        assert_eq!(compare(3, 9).readable_completion(), " <think> </think> <answer> 9 </answer>");
    }

    #[test]
    fn bad_task_settings_are_errors_not_panics() {
        let e = generate(TaskKind::Addition, Split::Train, 10, 20, 0, 0.2).unwrap_err().to_string();
        assert!(e.contains("digits = 20") && e.contains("1..=18"), "{e}");
        assert!(generate(TaskKind::Addition, Split::Heldout, 10, 2, 0, 0.0).unwrap_err().to_string().contains("heldout_fraction"));
        // 1-digit additions: 100 problems in all, none of them in a 1e-9 held-out share.
        let e = generate(TaskKind::Addition, Split::Heldout, 5, 1, 0, 1e-9).unwrap_err().to_string();
        assert!(e.contains("holds (almost) no problems"), "{e}");
    }

    #[test]
    fn countdown_is_solvable() {
        let ps = generate(TaskKind::Countdown, Split::Train, 50, 3, 2, 0.2).unwrap();
        for p in ps {
            let nums = p.extra["numbers"].as_array().unwrap().len();
            assert_eq!(nums, 3);
            assert!(p.extra["target"].as_i64().unwrap() > 0);
        }
    }
}
