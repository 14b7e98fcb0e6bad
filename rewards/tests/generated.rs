//! Generated tables (hundreds of cases per module) checked against independent oracles.

use rewards::modules::format::{lenient, strict, tag_count};
use rewards::{RewardSet, Sample};
use serde_json::json;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn set(body: &str) -> RewardSet {
    RewardSet::from_toml_str(&format!("[[rewards]]\n{body}\n")).unwrap()
}

#[test]
fn format_combinations() {
    let prefixes = ["", "  ", "\n", "x "];
    let thinks = ["<think>r</think>", "<think></think>", "<think>a\nb</think>", "<think>r", ""];
    let seps = ["", " ", "\n", " mid "];
    let answers = ["<answer>a</answer>", "<answer> </answer>", "<answer>\n42\n</answer>", "<answer>a", ""];
    let suffixes = ["", "\n", " tail"];
    let mut n = 0;
    for p in prefixes {
        for t in thinks {
            for s in seps {
                for a in answers {
                    for x in suffixes {
                        let c = format!("{p}{t}{s}{a}{x}");
                        let ws = |v: &str| v.trim().is_empty();
                        let think_ok = t.contains("</think>");
                        let ans_ok = a.contains("</answer>") && !a.contains("<answer> </answer>");
                        let want_strict = ws(p) && think_ok && ws(s) && ans_ok && ws(x);
                        let want_lenient = think_ok && ans_ok;
                        let tags = [t.contains("<think>"), t.contains("</think>"), a.contains("<answer>"), a.contains("</answer>")];
                        let want_count = tags.iter().filter(|b| **b).count() as f64 * 0.25;
                        assert_eq!(strict(&c), want_strict, "strict {c:?}");
                        assert_eq!(lenient(&c), want_lenient, "lenient {c:?}");
                        assert_eq!(tag_count(&c), want_count, "tag_count {c:?}");
                        n += 1;
                    }
                }
            }
        }
    }
    assert_eq!(n, 1200);
}

/// Random expression tree over the given numbers, rendered and evaluated independently.
enum T {
    N(i64),
    B(char, Box<T>, Box<T>),
}

fn val(t: &T) -> Option<(i128, i128)> {
    Some(match t {
        T::N(n) => (*n as i128, 1),
        T::B(op, a, b) => {
            let (an, ad) = val(a)?;
            let (bn, bd) = val(b)?;
            let (n, d) = match op {
                '+' => (an * bd + bn * ad, ad * bd),
                '-' => (an * bd - bn * ad, ad * bd),
                '*' => (an * bn, ad * bd),
                _ => {
                    if bn == 0 {
                        return None;
                    }
                    (an * bd, ad * bn)
                }
            };
            let g = gcd(n, d);
            let (n, d) = (n / g, d / g);
            if d < 0 {
                (-n, -d)
            } else {
                (n, d)
            }
        }
    })
}

fn gcd(a: i128, b: i128) -> i128 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

fn render(t: &T) -> String {
    match t {
        T::N(n) => n.to_string(),
        T::B(op, a, b) => format!("({} {op} {})", render(a), render(b)),
    }
}

fn build(rng: &mut Rng, nums: &[i64]) -> T {
    if nums.len() == 1 {
        return T::N(nums[0]);
    }
    let k = 1 + rng.below(nums.len() as u64 - 1) as usize;
    let op = ['+', '-', '*', '/'][rng.below(4) as usize];
    T::B(op, Box::new(build(rng, &nums[..k])), Box::new(build(rng, &nums[k..])))
}

#[test]
fn countdown_random_expressions() {
    let cd = set("kind = \"countdown\"");
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut checked = 0;
    while checked < 300 {
        let count = 3 + rng.below(2) as usize;
        let nums: Vec<i64> = (0..count).map(|_| 1 + rng.below(99) as i64).collect();
        let tree = build(&mut rng, &nums);
        let Some((n, d)) = val(&tree) else { continue };
        if d != 1 {
            continue; // Countdown targets are integers
        }
        let expr = render(&tree);
        let mut shuffled = nums.clone();
        shuffled.reverse();
        let s = |c: &str, target: i128, numbers: &[i64]| {
            Sample::new("", &format!("<think>...</think> <answer>{c}</answer>"), None)
                .with("numbers", json!(numbers))
                .with("target", json!(target as i64))
        };
        let out = cd.score_batch(&[
            s(&expr, n, &shuffled),              // correct, numbers in any order
            s(&expr, n + 1, &nums),              // wrong target
            s(&expr, n, &nums[1..]),             // a number not given
            s(&format!("{expr} + 0"), n, &nums), // 0 not given
        ]);
        let got: Vec<f64> = out.totals();
        assert_eq!(got, vec![1.0, 0.1, 0.1, 0.1], "{expr} = {n} with {nums:?}");
        checked += 1;
    }
}

#[test]
fn language_mixtures() {
    let en = set("kind = \"language_consistency\"\ndetect_latin_language = false"); // word salad: script counting only
    let zh = set("kind = \"language_consistency\"\nlanguage = \"zh\"");
    let en_words = ["add", "numbers", "total", "check", "result", "value"];
    let zh_chars = ['我', '们', '加', '数', '字', '结', '果'];
    let mut rng = Rng(99);
    for _ in 0..200 {
        let (ne, nz) = (rng.below(12) as usize, rng.below(12) as usize);
        if ne + nz == 0 {
            continue;
        }
        let mut parts: Vec<String> = (0..ne).map(|i| en_words[i % en_words.len()].to_string()).collect();
        parts.extend((0..nz).map(|i| zh_chars[i % zh_chars.len()].to_string()));
        // shuffle deterministically, sprinkle numbers and math (neutral)
        for i in (1..parts.len()).rev() {
            parts.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let text = format!("<think>{} 12 = 3 $x^2$</think><answer>4</answer>", parts.join(" "));
        let s = Sample::new("", &text, None);
        let want_en = ne as f64 / (ne + nz) as f64;
        let got_en = en.score_batch(std::slice::from_ref(&s)).totals()[0];
        let got_zh = zh.score_batch(&[s]).totals()[0];
        assert!((got_en - want_en).abs() < 1e-9, "{text}: en {got_en} want {want_en}");
        assert!((got_zh - (1.0 - want_en)).abs() < 1e-9, "{text}: zh {got_zh}");
    }
}

#[test]
fn repetition_patterns() {
    let rep = set("kind = \"repetition\"");
    for distinct in 3..23usize {
        for times in 1..11usize {
            // a cycle of `distinct` words repeated `times` times: L = d*t words,
            // L-2 trigrams of which min(d, L-2) are distinct
            let words: Vec<String> = (0..distinct * times).map(|i| format!("w{}", i % distinct)).collect();
            let l = words.len();
            let total = l - 2;
            let want = -(1.0 - distinct.min(total) as f64 / total as f64);
            let got = rep.score_batch(&[Sample::new("", &words.join(" "), None)]).totals()[0];
            assert!((got - want).abs() < 1e-9, "d={distinct} t={times}: {got} want {want}");
        }
    }
}

#[test]
fn length_curves() {
    let cos = set("kind = \"cosine_length\"\nmax_length = 1000\nunit = \"tokens\"");
    let over = set("kind = \"overlong_penalty\"\nmax_length = 1000\ncache_length = 200\nunit = \"tokens\"");
    for len in (0..=1200u64).step_by(5) {
        let t = (len as f64 / 1000.0).min(1.0);
        let c = (std::f64::consts::PI * t).cos();
        let right = Sample::new("", "\\boxed{2}", Some("2")).with("completion_tokens", json!(len));
        let wrong = Sample::new("", "\\boxed{3}", Some("2")).with("completion_tokens", json!(len));
        let r = cos.score_batch(&[right.clone(), wrong]).totals();
        assert!((r[0] - (0.5 + 0.25 * (1.0 + c))).abs() < 1e-9, "{len}");
        assert!((r[1] - (-0.5 - 0.25 * (1.0 + c))).abs() < 1e-9, "{len}");
        let o = over.score_batch(&[right]).totals()[0];
        let want = if len <= 800 {
            0.0
        } else if len <= 1000 {
            (800.0 - len as f64) / 200.0
        } else {
            -1.0
        };
        assert!((o - want).abs() < 1e-9, "{len}: {o}");
    }
}
