//! Table-driven tests of math answer equivalence and extraction.

use rewards::math::{equivalent, extract_answer, extract_reference, EquivOptions, Source, Verdict};
use rewards::modules::accuracy::{Accuracy, AccuracyParams, Judgement};
use rewards::modules::Ctx;
use rewards::{RewardSet, Sample};

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
            bad.push(format!("ref `{r}` pred `{p}`: expected {expected}, got {v:?}"));
        }
    }
    assert!(bad.is_empty(), "{} of {} cases fail:\n{}", bad.len(), all.len(), bad.join("\n"));
}

#[test]
fn equivalence_is_symmetric_for_plain_values() {
    // For scalar answers the reference and the prediction can be swapped.
    let o = EquivOptions::default();
    for (expected, r, p) in cases() {
        let plain = |s: &str| !s.contains(['=', '<', '>', '\\', ',', '(', '[', '|']) && !s.contains("ge") && s.len() < 20;
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
        assert!(matches!(equivalent("3", r, &o), Verdict::UnparseableReference(_)), "{r}");
    }
}

const EXTRACT: &[(&str, Option<&str>)] = &[
    ("The answer is \\boxed{42}.", Some("42")),
    ("\\boxed{1} then \\boxed{2}", Some("2")),
    ("so \\boxed{\\frac{1}{2}}", Some("\\frac{1}{2}")),
    ("so \\boxed{\\{1,2\\}}", Some("\\{1,2\\}")),
    ("\\fbox{7}", Some("7")),
    ("$\\boxed 5$", Some("5")),
    ("<think>maybe \\boxed{3}</think> <answer>\\boxed{4}</answer>", Some("4")),
    ("<think>maybe \\boxed{3}</think> <answer>4</answer>", Some("4")),
    ("<think>x</think><answer> 12 </answer>", Some("12")),
    ("<think>x</think><answer>The answer is 12.</answer>", Some("12")),
    ("<think>x</think><answer>$x = 5$</answer>", Some("$x = 5$")),
    ("<think>x</think><answer>5", Some("5")),
    ("<think>x</think><answer></answer> \\boxed{9}", Some("9")),
    ("The answer is 17.", Some("17")),
    ("Thus the final answer is $\\frac{3}{4}$.", Some("\\frac{3}{4}")),
    ("Final Answer: 6", Some("6")),
    ("**Final Answer:** 6", Some("6")),
    ("so the answer is 42 because 6*7", Some("42")),
    ("I computed 6*7=42", None),
    ("", None),
    ("\\boxed{unbalanced", None),
    ("The answer is\n", None),
    // consecutive boxes are one answer (compared as a whole list), never the last alone
    ("<answer>\\boxed{1}\\boxed{2}</answer>", Some("\\boxed{1}\\boxed{2}")),
    ("<answer>\\boxed{1}, \\boxed{2}</answer>", Some("\\boxed{1}, \\boxed{2}")),
    ("<answer>\\boxed{(1,2)} \\text{ and } \\boxed{(3,4)}</answer>", Some("\\boxed{(1,2)} \\text{ and } \\boxed{(3,4)}")),
    ("The answer is $\\boxed{1} \\quad \\boxed{2}$.", Some("\\boxed{1} \\quad \\boxed{2}")),
    ("so \\boxed{3}, \\boxed{3}", Some("3")),
    ("\\boxed{1} is wrong, so \\boxed{2}", Some("2")),
    ("<answer>Final Answer: The final answer is $9$. I hope it is correct.</answer>", Some("9")),
    ("<answer>Answer $ 9 $</answer>", Some("Answer $ 9 $")),
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
    assert_eq!(extract_answer("<answer>\\boxed{2}</answer>", false).unwrap().1, Source::BoxedInAnswerTag);
    assert_eq!(extract_answer("<answer>2</answer>", false).unwrap().1, Source::AnswerTag);
    assert_eq!(extract_answer("\\boxed{2}", false).unwrap().1, Source::Boxed);
    assert_eq!(extract_answer("the answer is 2", false).unwrap().1, Source::Phrase);
    assert!(extract_answer("6*7=42", false).is_err());
    assert_eq!(extract_answer("6*7=42", true).unwrap(), ("42", Source::LastNumber));
    assert_eq!(extract_answer("so -3.5 it is", true).unwrap().0, "-3.5");
    assert_eq!(extract_answer("total 1,234 apples", true).unwrap().0, "1,234");
}

#[test]
fn reference_extraction() {
    assert_eq!(extract_reference("Natalia sold 48/2 = 24 clips.\n#### 72"), "72");
    assert_eq!(extract_reference("so the area is $\\boxed{12\\pi}$."), "12\\pi");
    assert_eq!(extract_reference(" 5 "), "5");
}

#[test]
fn gsm8k_and_math_references_grade() {
    let o = EquivOptions::default();
    let g = |c: &str, r: &str| rewards::math::grade(c, r, false, &o).unwrap();
    assert_eq!(g("<answer>72</answer>", "blah\n#### 72"), Verdict::Correct);
    assert_eq!(g("<answer>1,000</answer>", "#### 1000"), Verdict::Correct);
    assert_eq!(g("\\boxed{\\dfrac{\\pi}{2}}", "thus $\\boxed{\\frac{\\pi}{2}}$"), Verdict::Correct);
    assert_eq!(g("\\boxed{\\pi}", "thus $\\boxed{\\frac{\\pi}{2}}$"), Verdict::Wrong);
}

fn judge(completion: &str, reference: Option<&str>) -> Judgement {
    Accuracy::new(AccuracyParams::default()).judge(&Sample::new("", completion, reference), &Ctx::unlimited())
}

/// Real answer forms (issue 16) through the `accuracy` module, inside `<answer>` blocks.
const END_TO_END: &[(&str, &str, bool)] = &[
    ("<answer>Answer $ 9 $</answer>", "9", true),
    ("<answer>Answer $ 8 $</answer>", "9", false),
    ("<answer>\\( 9 \\)</answer>", "9", true),
    ("<answer>\\[ 9 \\]</answer>", "9", true),
    ("<answer>\\[ 9 \\]</answer>", "#### 9", true),
    ("<answer>Final Answer: The largest $n$ is 34.</answer>", "34", true),
    ("<answer>Final Answer: The largest $n$ is 34.</answer>", "35", false),
    ("<answer>\nThe largest $n$ is $34$.\n</answer>", "34", true),
    ("<answer>x = 5+5+1 = 11</answer>", "11", true),
    ("<answer>x = 5+5+1 = 11</answer>", "12", false),
    ("<answer>x = 5+5+1 = 12</answer>", "11", false),
    ("<answer>$x \\geq 5$</answer>", "x >= 5", true),
    ("<answer>$x \\geq 5$</answer>", "x > 5", false),
    ("<answer>x != 3</answer>", "x \\neq 3", true),
    ("<answer>$-x > -1$</answer>", "x < 1", true),
    ("<answer>$-x > -1$</answer>", "x > 1", false),
    ("<answer>$x > 3$</answer>", "(3, \\infty)", true),
    ("<answer>$x \\geq 3$</answer>", "(3, \\infty)", false),
    ("<answer>$(p,q)=(3,2)$</answer>", "(3,2)", true),
    ("<answer>$(p,q)=(3,2)$</answer>", "(2,3)", false),
    ("<answer>AB=4,CD=5</answer>", "4, 5", true),
    ("<answer>AB=5,CD=4</answer>", "4, 5", false),
    ("<answer>$\\frac{NO}{BO}=\\frac{1}{\\sqrt{6}}$</answer>", "\\frac{1}{\\sqrt{6}}", true),
    ("<answer>\\boxed{1}\\boxed{2}</answer>", "$\\boxed{1,2}$", true),
    ("<answer>\\boxed{1}\\boxed{2}</answer>", "\\{1,2\\}", true),
    ("<answer>\\boxed{1}\\boxed{2}</answer>", "1", false),
    ("<answer>\\boxed{1}\\boxed{2}</answer>", "2", false),
    ("<answer>\\boxed{1}, \\boxed{2}, \\boxed{3}</answer>", "1, 2", false),
    ("<answer>The solutions are $\\boxed{1}$ and $\\boxed{2}$.</answer>", "2, 1", true),
    ("<answer>\\boxed{(1,2)} \\boxed{(3,4)}</answer>", "\\{(3,4),(1,2)\\}", true),
    ("<answer>\\boxed{(1,2)} \\boxed{(4,3)}</answer>", "\\{(3,4),(1,2)\\}", false),
    ("<answer>\\{(3,4),(1,2)\\}</answer>", "\\{(1,2),(3,4)\\}", true),
    ("<answer>$W(x)=1$ or $W(x)=-1$</answer>", "W(x)=\\pm 1", true),
    ("<answer>$W(x)=1$</answer>", "W(x)=\\pm 1", false),
    (
        "<answer>\\boxed{\\begin{bmatrix} \\frac12 & 0 \\\\ 0 & 2 \\end{bmatrix}}</answer>",
        "\\begin{pmatrix} 0.5 & 0 \\\\ 0 & 2 \\end{pmatrix}",
        true,
    ),
    (
        "<answer>\\begin{bmatrix} 2 & 0 \\\\ 0 & \\frac12 \\end{bmatrix}</answer>",
        "\\begin{pmatrix} 0.5 & 0 \\\\ 0 & 2 \\end{pmatrix}",
        false,
    ),
    ("<answer>28 pct</answer>", "28\\%", true),
    ("<answer>\\boxed{€18}</answer>", "18", true),
    ("<answer>4 m²</answer>", "4", true),
    ("<answer>$11,\\! 111$</answer>", "11111", true),
    ("<answer>1,22</answer>", "1.22", true),
    ("<answer>1, 22</answer>", "1.22", false),
    ("<answer>1,222</answer>", "1.222", false),
    ("<answer>\\text{Odd}</answer>", "\\text{odd}", true),
    ("<answer>The function is even.</answer>", "\\text{odd}", false),
    // several candidates: no credit for containing the right one
    ("<answer>1, 2, 3, 4, 5</answer>", "3", false),
    ("<answer>It is 3 or 4.</answer>", "3", false),
    ("<answer>$3$ or $4$</answer>", "4", false),
    ("<answer>\\boxed{3} or \\boxed{4}</answer>", "3", false),
    ("<answer>\\boxed{3} or \\boxed{4}</answer>", "4", false),
    ("<answer>x is 3 or x is 4</answer>", "4", false),
    // the last block and the box inside it win over earlier boxes
    ("<think>maybe \\boxed{3}</think><answer>4</answer>", "4", true),
    ("<think>maybe \\boxed{3}</think><answer>4</answer>", "3", false),
];

#[test]
fn accuracy_module_end_to_end() {
    let mut bad = Vec::new();
    for (c, r, want) in END_TO_END {
        let j = judge(&format!("<think>work</think>\n{c}"), Some(r));
        let want_j = if *want { Judgement::Correct } else { Judgement::Wrong };
        if j != want_j {
            bad.push(format!("{c:?} vs {r:?}: got {j:?}, want {want_j:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn accuracy_judgements_are_typed() {
    assert!(matches!(judge("<think>no answer here</think>", Some("3")), Judgement::NoAnswer(_)));
    assert!(matches!(judge("<think>x</think><answer> </answer>", Some("3")), Judgement::NoAnswer(_)));
    assert!(matches!(judge("<answer>3</answer>", Some("\\frac{1}{")), Judgement::UnparseableReference(_)));
    assert_eq!(judge("<answer>3</answer>", None), Judgement::MissingReference);
    assert_eq!(judge("<answer>3</answer>", Some("3")), Judgement::Correct);
    assert_eq!(judge("<answer>4</answer>", Some("3")), Judgement::Wrong);
    // a deadline already past: a time-out, not a wrong answer
    let past = std::time::Instant::now().checked_sub(std::time::Duration::from_millis(5)).unwrap();
    let acc = Accuracy::new(AccuracyParams::default());
    let s = Sample::new("", "<answer>3</answer>", Some("3"));
    assert_eq!(acc.judge(&s, &Ctx { deadline: past }), Judgement::Timeout);
    // no answer is checked first: it needs no time
    let s = Sample::new("", "nothing", Some("3"));
    assert!(matches!(acc.judge(&s, &Ctx { deadline: past }), Judgement::NoAnswer(_)));
}

#[test]
fn judgements_reach_the_batch_counts() {
    let set = RewardSet::from_toml_str("[[rewards]]\nkind = \"accuracy\"\ncorrect = 2.0\n").unwrap();
    let out = set.score_batch(&[
        Sample::new("", "<answer>Answer $ 9 $</answer>", Some("9")),
        Sample::new("", "<answer>\\boxed{1}\\boxed{2}</answer>", Some("2")),
        Sample::new("", "no answer", Some("9")),
        Sample::new("", "<answer>9</answer>", Some("\\weird{9}")),
        Sample::new("", "<answer>9</answer>", None),
    ]);
    assert_eq!(out.totals(), vec![2.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(out.counts.no_answer, 1);
    assert_eq!(out.counts.unparseable_references, 1);
    assert_eq!(out.counts.missing_inputs, 1);
    assert_eq!(out.counts.timeouts, 0);
}

/// Every reference of GSM8K (both splits, vendored in `data/gsm8k/`, unchanged) passes the
/// row check and grades: the value after its last `####`, read here independently (commas
/// dropped, parsed as a number), is correct and that value plus one is wrong.
#[test]
fn every_gsm8k_reference_parses_and_grades() {
    let o = EquivOptions::default();
    for (file, rows) in [("test.jsonl", 1319), ("train.jsonl", 7473)] {
        let path = format!("{}/../data/gsm8k/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut n = 0;
        for (i, line) in text.lines().enumerate() {
            let at = format!("{file}:{}", i + 1);
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let reference = row["answer"].as_str().unwrap();
            rewards::math::check_reference(reference).unwrap_or_else(|e| panic!("{at}: {e}"));
            let tail = reference.rsplit("####").next().unwrap().trim().replace(',', "");
            let value: f64 = tail.parse().unwrap_or_else(|_| panic!("{at}: `{tail}` is not a number"));
            let g = |v: f64| rewards::math::grade(&format!("<answer>{v}</answer>"), reference, false, &o).unwrap();
            assert_eq!(g(value), Verdict::Correct, "{at}: {value}");
            assert_eq!(g(value + 1.0), Verdict::Wrong, "{at}: {value} + 1");
            n += 1;
        }
        assert_eq!(n, rows, "{file}");
    }
}
