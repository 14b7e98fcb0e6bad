//! Table-driven tests of the non-accuracy modules.

use rewards::modules::countdown::evaluate;
use rewards::modules::format::{lenient, strict, tag_count};
use rewards::{RewardSet, Sample};
use serde_json::json;

fn score(toml_body: &str, s: Sample) -> f64 {
    let set = RewardSet::from_toml_str(&format!("[[rewards]]\n{toml_body}\n")).unwrap();
    set.score_batch(&[s]).scores[0].per_module[0].1
}

#[test]
fn format_table() {
    // (completion, strict, lenient, tag_count)
    let cases: &[(&str, bool, bool, f64)] = &[
        ("<think>r</think> <answer>a</answer>", true, true, 1.0),
        ("<think>\nr\n</think>\n<answer>\na\n</answer>", true, true, 1.0),
        ("  <think>r</think><answer>a</answer>\n", true, true, 1.0),
        ("<think></think> <answer>a</answer>", true, true, 1.0),
        ("<think>r</think> <answer> </answer>", false, false, 1.0),
        ("<think>r</think> text <answer>a</answer>", false, true, 1.0),
        ("pre <think>r</think> <answer>a</answer>", false, true, 1.0),
        ("<think>r</think> <answer>a</answer> post", false, true, 1.0),
        ("<think>r</think> <answer>a</answer><answer>b</answer>", false, true, 0.5),
        ("<think>r<think>r</think> <answer>a</answer>", false, true, 0.75),
        ("<answer>a</answer> <think>r</think>", false, false, 1.0),
        ("<think>r</think>", false, false, 0.5),
        ("<answer>a</answer>", false, false, 0.5),
        ("<think>r <answer>a</answer>", false, false, 0.75),
        ("", false, false, 0.0),
        ("just text 42", false, false, 0.0),
        ("<THINK>r</THINK> <ANSWER>a</ANSWER>", false, false, 0.0),
        ("<think>r</think> <answer>a", false, false, 0.75),
    ];
    for (c, s, l, t) in cases {
        assert_eq!(strict(c), *s, "strict {c:?}");
        assert_eq!(lenient(c), *l, "lenient {c:?}");
        assert_eq!(tag_count(c), *t, "tag_count {c:?}");
    }
}

#[test]
fn format_prefill_from_prompt() {
    let prompt = "User: solve. Assistant: Let me solve this step by step.\n<think>";
    let s = Sample::new(prompt, "r</think> <answer>a</answer>", None);
    assert_eq!(score("kind = \"format\"", s.clone()), 1.0);
    assert_eq!(score("kind = \"format\"\nprompt_prefill = false", s), 0.0);
    assert_eq!(score("kind = \"format\"\nmode = \"lenient\"", Sample::new("", "x <think>r</think><answer>a</answer>", None)), 1.0);
    assert_eq!(score("kind = \"format\"\nmode = \"tag_count\"", Sample::new("", "<think>r</think>", None)), 0.5);
}

fn cd(completion: &str, nums: &[i64], target: i64) -> f64 {
    score("kind = \"countdown\"", Sample::new("", completion, None).with("numbers", json!(nums)).with("target", json!(target)))
}

#[test]
fn countdown_table() {
    let n = [3, 5, 7];
    let cases: &[(&str, f64)] = &[
        ("<answer>(7 - 5) * 3</answer>", 1.0), // = 6, the target for this row
        ("<answer>3 * 5 + 7</answer>", 1.0),
        ("<answer> 7 + 3*5 </answer>", 1.0),
        ("<answer>(3*5)+7</answer>", 1.0),
        ("<answer>3 × 5 + 7</answer>", 1.0),
        ("<answer>3 \\times 5 + 7</answer>", 1.0),
        ("<answer>$3 * 5 + 7$</answer>", 1.0),
        ("<answer>3 * 5 + 7 = 22</answer>", 1.0),
        ("<answer>3 * 5 + 7 = 23</answer>", 1.0), // the right-hand side is ignored
        ("<answer>3 * 5 - 7</answer>", 0.1),
        ("<answer>3 * 5 + 7 + 0</answer>", 0.1), // 0 not given
        ("<answer>5 * 5 - 3</answer>", 0.1),     // 5 twice, 7 unused
        ("<answer>3 * 5</answer>", 0.1),         // 7 unused
        ("<answer>35 - 13</answer>", 0.1),       // digits glued
        ("<answer>3 ** 5 + 7</answer>", 0.1),
        ("<answer>3 * 5 + 7 x</answer>", 0.1),
        ("<answer>22</answer>", 0.1),
        ("<answer></answer>", 0.1),
        ("<answer>(3 * 5 + 7</answer>", 0.1),
        ("<answer>7 / 0 + 3 * 5</answer>", 0.1),
        ("no answer 3*5+7", 0.0),
        ("<answer>3*5+7", 0.0),
        ("<answer>1+1</answer> then <answer>3*5+7</answer>", 1.0),
        ("<answer>3*5+7</answer> then <answer>1+1</answer>", 0.1),
    ];
    for (c, want) in cases {
        let target = if c.starts_with("<answer>(7 - 5)") { 6 } else { 22 };
        let got = cd(c, &n, target);
        assert_eq!(got, *want, "{c:?}");
    }
    // exact rational arithmetic: 8 / (3 - 8/3) = 24
    assert_eq!(cd("<answer>8 / (3 - 8 / 3)</answer>", &[8, 3, 8, 3], 24), 1.0);
    assert_eq!(evaluate("1/3*3").unwrap().0.num, 1);
    // missing inputs are reported
    let set = RewardSet::from_toml_str("[[rewards]]\nkind = \"countdown\"\n").unwrap();
    let out = set.score_batch(&[Sample::new("", "<answer>1</answer>", None)]);
    assert_eq!(out.counts.missing_inputs, 1);
}

fn lang(body: &str, completion: &str) -> f64 {
    score(&format!("kind = \"language_consistency\"\n{body}"), Sample::new("", completion, None))
}

#[test]
fn language_table() {
    let cases: &[(&str, &str, f64)] = &[
        ("", "<think>We add the two numbers and get the total.</think><answer>5</answer>", 1.0),
        ("language = \"zh\"", "<think>我们把两个数相加</think>", 1.0),
        ("language = \"zh\"", "<think>We add the numbers</think>", 0.0),
        ("", "<think>我们把两个数相加</think>", 0.0),
        ("language = \"zh\"", "<think>我们 add 两个</think>", 0.8),
        ("", "<think>First, 我们 compute it.</think>", 0.6),
        ("", "<think>$x^2 + y^2 = \\frac{a}{b}$ so the result holds</think>", 1.0),
        ("ignore_math = false", "<think>$xx + yy$ 我们</think>", 2.0 / 4.0),
        ("", "<think>\\frac{12}{3} 4 5 6</think>", 0.0),
        ("empty_score = 1.0", "<think>1 + 2 = 3</think>", 1.0),
        ("language = \"ja\"", "<think>これは テスト です</think>", 1.0),
        ("language = \"ko\"", "<think>이것은 테스트 입니다</think>", 1.0),
        ("language = \"ru\"", "<think>Мы складываем числа and</think>", 0.75),
        ("", "no think tags here at all", 1.0),
        ("scope = \"completion\"", "<think>Some words</think><answer>答案</answer>", 0.5),
        ("", "<think>Nous calculons la somme des deux nombres et nous obtenons le total final.</think>", 0.0),
        ("detect_latin_language = false", "<think>Nous calculons la somme des deux nombres et nous obtenons le total final.</think>", 1.0),
        ("language = \"fr\"", "<think>Nous calculons la somme des deux nombres et nous obtenons le total final.</think>", 1.0),
    ];
    for (body, c, want) in cases {
        let got = lang(body, c);
        assert!((got - want).abs() < 1e-9, "{body} {c:?}: got {got}, want {want}");
    }
    // per-sample language overrides the parameter
    let s = Sample::new("", "<think>我们把两个数相加</think>", None).with("language", json!("zh"));
    assert_eq!(score("kind = \"language_consistency\"", s), 1.0);
}

#[test]
fn cosine_length_table() {
    let body = "kind = \"cosine_length\"\nmax_length = 100\nunit = \"tokens\"";
    let s = |correct: bool, len: u64| {
        Sample::new("", if correct { "\\boxed{4}" } else { "\\boxed{5}" }, Some("4")).with("completion_tokens", json!(len))
    };
    let cases: &[(bool, u64, f64)] = &[
        (true, 0, 1.0),
        (true, 50, 0.75),
        (true, 100, 0.5),
        (true, 1000, 0.5),
        (false, 0, -1.0),
        (false, 50, -0.75),
        (false, 100, -0.5),
        (false, 5000, -0.5),
    ];
    for (c, len, want) in cases {
        let got = score(body, s(*c, *len));
        assert!((got - want).abs() < 1e-9, "{c} {len}: {got}");
    }
    // monotone: shorter correct is better, longer wrong is better
    let a = score(body, s(true, 10));
    let b = score(body, s(true, 60));
    assert!(a > b);
    let a = score(body, s(false, 10));
    let b = score(body, s(false, 60));
    assert!(a < b);
    // chars when no token count; max_tokens from the sample
    let got = score("kind = \"cosine_length\"", Sample::new("", "\\boxed{4}", Some("4")).with("max_tokens", json!(9)));
    assert!((got - 0.5).abs() < 1e-9);
    // tokens unit without a count: missing input
    let set = RewardSet::from_toml_str(&format!("[[rewards]]\n{body}\n")).unwrap();
    assert_eq!(set.score_batch(&[Sample::new("", "x", Some("1"))]).counts.missing_inputs, 1);
}

#[test]
fn overlong_table() {
    let body = "kind = \"overlong_penalty\"\nmax_length = 100\ncache_length = 20";
    let s = |len: u64| Sample::new("", "x", None).with("completion_tokens", json!(len));
    for (len, want) in [(0, 0.0), (80, 0.0), (85, -0.25), (90, -0.5), (100, -1.0), (150, -1.0)] {
        let got = score(body, s(len));
        assert!((got - want).abs() < 1e-9, "{len}: {got}");
    }
    // defaults: max from the sample, cache = max / 5
    let got = score("kind = \"overlong_penalty\"", s(90).with("max_tokens", json!(100)));
    assert!((got + 0.5).abs() < 1e-9);
    let set = RewardSet::from_toml_str("[[rewards]]\nkind = \"overlong_penalty\"\n").unwrap();
    assert_eq!(set.score_batch(&[s(5)]).counts.missing_inputs, 1);
    assert!(RewardSet::from_toml_str("[[rewards]]\nkind = \"overlong_penalty\"\nmax_length = 10\ncache_length = 20\n").is_err());
}

#[test]
fn repetition_table() {
    let cases: &[(&str, f64)] = &[
        ("", 0.0),
        ("one two", 0.0),
        ("a b c d e f", 0.0),
        ("a b c a b c", -0.25), // 4 trigrams, 3 distinct
        ("x x x x x x", -0.75), // 4 trigrams, 1 distinct
        ("A b C a B c", -0.25), // case-insensitive
        ("the cat sat on the mat", 0.0),
    ];
    for (c, want) in cases {
        let got = score("kind = \"repetition\"", Sample::new("", c, None));
        assert!((got - want).abs() < 1e-9, "{c:?}: {got}");
    }
    let got = score("kind = \"repetition\"\nngram_size = 1\nmax_penalty = -2.0", Sample::new("", "a a b b", None));
    assert!((got + 1.0).abs() < 1e-9);
    let long = "wait let me check again. ".repeat(200);
    assert!(score("kind = \"repetition\"", Sample::new("", &long, None)) < -0.95);
}

#[test]
fn accuracy_module_options() {
    let s = Sample::new("", "so we get 42 in the end", Some("42"));
    assert_eq!(score("kind = \"accuracy\"", s.clone()), 0.0);
    assert_eq!(score("kind = \"accuracy\"\nlast_number_fallback = true", s), 1.0);
    let s = Sample::new("", "\\boxed{3.1416}", Some("\\pi"));
    assert_eq!(score("kind = \"accuracy\"", s.clone()), 0.0);
    assert_eq!(score("kind = \"accuracy\"\nrel_tol = 1e-3", s), 1.0);
    let s = Sample::new("", "<answer>B</answer>", Some("(B)"));
    assert_eq!(score("kind = \"accuracy\"\ncorrect = 2.0", s), 2.0);
}
