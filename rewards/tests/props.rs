//! Property tests: arbitrary Unicode never panics and scores stay in range.

use proptest::prelude::*;
use rewards::math::{equivalent, extract_answer, EquivOptions};
use rewards::{RewardSet, Sample};
use serde_json::json;

fn all_kinds() -> RewardSet {
    RewardSet::from_toml_str(
        r#"
        [[rewards]]
        kind = "accuracy"
        [[rewards]]
        kind = "format"
        [[rewards]]
        kind = "format"
        name = "tags"
        mode = "tag_count"
        [[rewards]]
        kind = "language_consistency"
        [[rewards]]
        kind = "language_consistency"
        name = "zh"
        language = "zh"
        [[rewards]]
        kind = "countdown"
        [[rewards]]
        kind = "cosine_length"
        [[rewards]]
        kind = "overlong_penalty"
        max_length = 50
        [[rewards]]
        kind = "repetition"
        "#,
    )
    .unwrap()
}

fn ranges() -> Vec<(f64, f64)> {
    vec![(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (-1.0, 0.0), (-1.0, 0.0)]
}

/// Strings mixing math-looking pieces, tags and arbitrary Unicode.
fn mathy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\\boxed{".to_string()),
        Just("}".to_string()),
        Just("{".to_string()),
        Just("<answer>".to_string()),
        Just("</answer>".to_string()),
        Just("<think>".to_string()),
        Just("</think>".to_string()),
        Just("\\frac".to_string()),
        Just("\\sqrt".to_string()),
        Just("^".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("[".to_string()),
        Just(",".to_string()),
        Just("$".to_string()),
        Just("\\".to_string()),
        Just("=".to_string()),
        Just("!".to_string()),
        Just("the answer is ".to_string()),
        "[0-9]{1,40}",
        "[a-zA-Z]{1,3}",
        "[-+*/. ]",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_unicode_never_panics(c in any::<String>(), a in any::<String>(), p in any::<String>()) {
        let set = all_kinds();
        let s = Sample::new(&p, &c, Some(&a)).with("numbers", json!([1, 2, 3])).with("target", json!(6));
        let out = set.score_batch(&[s]);
        prop_assert_eq!(out.counts.panics, 0);
        for ((_, v), (lo, hi)) in out.scores[0].per_module.iter().zip(ranges()) {
            prop_assert!(v.is_finite() && *v >= lo && *v <= hi, "{} not in [{}, {}]", v, lo, hi);
        }
    }

    #[test]
    fn mathy_strings_never_panic(c in mathy(), a in mathy()) {
        let set = all_kinds();
        let s = Sample::new("", &c, Some(&a)).with("numbers", json!([1, 2, 3])).with("target", json!(6));
        let out = set.score_batch(&[s]);
        prop_assert_eq!(out.counts.panics, 0);
        for ((_, v), (lo, hi)) in out.scores[0].per_module.iter().zip(ranges()) {
            prop_assert!(v.is_finite() && *v >= lo && *v <= hi);
        }
        let _ = extract_answer(&c, true);
        let _ = equivalent(&c, &a, &EquivOptions::default());
    }

    #[test]
    fn an_answer_equals_itself(n in -100000i64..100000, d in 1i64..1000) {
        let o = EquivOptions::default();
        let f = format!("\\frac{{{n}}}{{{d}}}");
        prop_assert_eq!(equivalent(&f, &f, &o), rewards::math::Verdict::Correct);
        let dec = format!("{}", n as f64 / d as f64);
        // a decimal with full precision equals the fraction
        prop_assert_eq!(equivalent(&dec, &f, &o), rewards::math::Verdict::Correct);
        let off = format!("\\frac{{{}}}{{{d}}}", n + 1);
        prop_assert_eq!(equivalent(&off, &f, &o), rewards::math::Verdict::Wrong);
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    let o = EquivOptions::default();
    for depth in [10usize, 100, 1000, 20000] {
        let s = format!("{}1{}", "(".repeat(depth), ")".repeat(depth));
        let _ = equivalent(&s, "1", &o);
        let b = format!("\\boxed{{{}1{}}}", "{".repeat(depth), "}".repeat(depth));
        let set = all_kinds();
        let out = set.score_batch(&[Sample::new("", &b, Some(&s))]);
        assert_eq!(out.counts.panics, 0);
        let e = format!("<answer>{}1+2+3{}</answer>", "(".repeat(depth), ")".repeat(depth));
        let _ = rewards::modules::countdown::evaluate(&e);
        let pw = format!("2{}", "^2".repeat(depth.min(500)));
        let _ = equivalent(&pw, "1", &o);
    }
}

#[test]
fn adversarial_inputs_stay_linear() {
    // many unbalanced boxes, deep \text nesting, long unit chains: must finish quickly
    let set = all_kinds();
    let n = 200_000;
    let inputs = [
        "\\boxed{".repeat(n / 7),
        format!("<answer>{}5{}</answer>", "\\text{".repeat(n / 6), "}".repeat(n / 6)),
        format!("<answer>5{}</answer>", " cm".repeat(n / 3)),
        "the answer is ".repeat(n / 14),
        "<think>".repeat(n / 7),
    ];
    for c in &inputs {
        let out = set.score_batch(&[Sample::new("", c, Some(c))]);
        assert_eq!(out.counts.panics, 0);
        assert_eq!(out.counts.timeouts, 0, "{}", &c[..40]);
    }
}
