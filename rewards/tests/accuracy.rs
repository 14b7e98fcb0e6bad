//! Table-driven tests of math answer equivalence and extraction.

use rewards::math::{equivalent, extract_answer, extract_reference, EquivOptions, Source, Verdict};

const CASES: &str = include_str!("../data/accuracy_cases.tsv");

fn cases() -> Vec<(bool, &'static str, &'static str)> {
    CASES
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut it = l.splitn(3, '\t');
            let e = it.next().unwrap();
            let r = it.next().expect("reference column");
            let p = it.next().expect("prediction column");
            (e == "1", r, p)
        })
        .collect()
}

#[test]
fn equivalence_table() {
    let o = EquivOptions::default();
    let all = cases();
    assert!(all.len() > 300, "table has {} cases", all.len());
    let mut bad = Vec::new();
    for (expected, r, p) in &all {
        let v = equivalent(p, r, &o);
        let got = v == Verdict::Correct;
        if got != *expected || matches!(v, Verdict::UnparseableReference(_)) {
            bad.push(format!(
                "ref `{r}` pred `{p}`: expected {expected}, got {v:?}"
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} cases fail:\n{}",
        bad.len(),
        all.len(),
        bad.join("\n")
    );
}

#[test]
fn equivalence_is_symmetric_for_plain_values() {
    // For scalar answers the reference and the prediction can be swapped.
    let o = EquivOptions::default();
    for (expected, r, p) in cases() {
        let plain = |s: &str| {
            !s.contains(['=', '<', '>', '\\', ',', '(', '[', '|'])
                && !s.contains("ge")
                && s.len() < 20
        };
        if plain(r) && plain(p) && !r.chars().all(|c| c.is_ascii_uppercase()) {
            let v = equivalent(r, p, &o) == Verdict::Correct;
            assert_eq!(v, expected, "swapped: ref `{p}` pred `{r}`");
        }
    }
}

#[test]
fn unparseable_reference_is_reported() {
    let o = EquivOptions::default();
    for r in ["\\frac{1}{", "\\weird{3}", "2 +* 3", "\\sqrt{}"] {
        assert!(
            matches!(equivalent("3", r, &o), Verdict::UnparseableReference(_)),
            "{r}"
        );
    }
}

const EXTRACT: &[(&str, Option<&str>)] = &[
    ("The answer is \\boxed{42}.", Some("42")),
    ("\\boxed{1} then \\boxed{2}", Some("2")),
    ("so \\boxed{\\frac{1}{2}}", Some("\\frac{1}{2}")),
    ("so \\boxed{\\{1,2\\}}", Some("\\{1,2\\}")),
    ("\\fbox{7}", Some("7")),
    ("$\\boxed 5$", Some("5")),
    (
        "<think>maybe \\boxed{3}</think> <answer>\\boxed{4}</answer>",
        Some("4"),
    ),
    (
        "<think>maybe \\boxed{3}</think> <answer>4</answer>",
        Some("4"),
    ),
    ("<think>x</think><answer> 12 </answer>", Some("12")),
    (
        "<think>x</think><answer>The answer is 12.</answer>",
        Some("12"),
    ),
    ("<think>x</think><answer>$x = 5$</answer>", Some("$x = 5$")),
    ("<think>x</think><answer>5", Some("5")),
    ("<think>x</think><answer></answer> \\boxed{9}", Some("9")),
    ("The answer is 17.", Some("17")),
    (
        "Thus the final answer is $\\frac{3}{4}$.",
        Some("\\frac{3}{4}"),
    ),
    ("Final Answer: 6", Some("6")),
    ("**Final Answer:** 6", Some("6")),
    ("so the answer is 42 because 6*7", Some("42")),
    ("I computed 6*7=42", None),
    ("", None),
    ("\\boxed{unbalanced", None),
    ("The answer is\n", None),
];

#[test]
fn extraction_table() {
    for (text, want) in EXTRACT {
        let got = extract_answer(text, false).ok().map(|(a, _)| a);
        assert_eq!(got, *want, "completion {text:?}");
    }
}

#[test]
fn extraction_sources_and_fallback() {
    assert_eq!(
        extract_answer("<answer>\\boxed{2}</answer>", false)
            .unwrap()
            .1,
        Source::BoxedInAnswerTag
    );
    assert_eq!(
        extract_answer("<answer>2</answer>", false).unwrap().1,
        Source::AnswerTag
    );
    assert_eq!(
        extract_answer("\\boxed{2}", false).unwrap().1,
        Source::Boxed
    );
    assert_eq!(
        extract_answer("the answer is 2", false).unwrap().1,
        Source::Phrase
    );
    assert!(extract_answer("6*7=42", false).is_err());
    assert_eq!(
        extract_answer("6*7=42", true).unwrap(),
        ("42", Source::LastNumber)
    );
    assert_eq!(extract_answer("so -3.5 it is", true).unwrap().0, "-3.5");
    assert_eq!(
        extract_answer("total 1,234 apples", true).unwrap().0,
        "1,234"
    );
}

#[test]
fn reference_extraction() {
    assert_eq!(
        extract_reference("Natalia sold 48/2 = 24 clips.\n#### 72"),
        "72"
    );
    assert_eq!(
        extract_reference("so the area is $\\boxed{12\\pi}$."),
        "12\\pi"
    );
    assert_eq!(extract_reference(" 5 "), "5");
}

#[test]
fn gsm8k_and_math_references_grade() {
    let o = EquivOptions::default();
    let g = |c: &str, r: &str| rewards::math::grade(c, r, false, &o).unwrap();
    assert_eq!(g("<answer>72</answer>", "blah\n#### 72"), Verdict::Correct);
    assert_eq!(g("<answer>1,000</answer>", "#### 1000"), Verdict::Correct);
    assert_eq!(
        g(
            "\\boxed{\\dfrac{\\pi}{2}}",
            "thus $\\boxed{\\frac{\\pi}{2}}$"
        ),
        Verdict::Correct
    );
    assert_eq!(
        g("\\boxed{\\pi}", "thus $\\boxed{\\frac{\\pi}{2}}$"),
        Verdict::Wrong
    );
}
