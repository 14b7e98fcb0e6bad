//! Reward sets: TOML parsing, strict keys, composition.

use rewards::{RewardSet, RewardSpec, RewardsError, Sample};
use serde_json::json;

fn err(src: &str) -> String {
    RewardSet::from_toml_str(src).unwrap_err().to_string()
}

#[test]
fn parses_all_kinds_with_defaults() {
    let set = RewardSet::from_toml_str(
        r#"
        seed = 3            # other top-level keys of a recipe are ignored
        [[rewards]]
        kind = "accuracy"
        [[rewards]]
        kind = "format"
        mode = "tag_count"
        weight = 0.5
        [[rewards]]
        kind = "language_consistency"
        language = "zh"
        [[rewards]]
        kind = "countdown"
        format_score = 0.2
        [[rewards]]
        kind = "cosine_length"
        max_length = 2000
        [[rewards]]
        kind = "overlong_penalty"
        max_length = 100
        cache_length = 20
        [[rewards]]
        kind = "repetition"
        name = "rep4"
        ngram_size = 4
        timeout_ms = 50
        "#,
    )
    .unwrap();
    assert_eq!(set.names(), vec!["accuracy", "format", "language_consistency", "countdown", "cosine_length", "overlong_penalty", "rep4"]);
    assert_eq!(set.weights(), vec![1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]);
}

#[test]
fn unknown_keys_name_the_key_and_suggest() {
    let e = err("[[rewards]]\nkind = \"accuracy\"\nrel_tolerance = 0.1\n");
    assert!(e.contains("unknown key `rel_tolerance`") && e.contains("did you mean `rel_tol`"), "{e}");
    let e = err("[[rewards]]\nkind = \"format\"\nmod = \"strict\"\n");
    assert!(e.contains("`mod`") && e.contains("did you mean `mode`"), "{e}");
    let e = err("[[rewards]]\nkind = \"format\"\nwieght = 2\n");
    assert!(e.contains("`wieght`") && e.contains("did you mean `weight`"), "{e}");
    let e = err("[[rewards]]\nkind = \"acuracy\"\n");
    assert!(e.contains("unknown kind `acuracy`") && e.contains("did you mean `accuracy`"), "{e}");
    let e = err("[[rewards]]\nkind = \"repetition\"\nzzz = 1\n");
    assert!(e.contains("`zzz`") && !e.contains("did you mean"), "{e}");
}

#[test]
fn bad_values_are_errors() {
    assert!(err("[[rewards]]\nkind = \"format\"\nmode = \"loose\"\n").contains("format"));
    assert!(err("[[rewards]]\nkind = \"repetition\"\nmax_penalty = 1.0\n").contains("max_penalty"));
    assert!(err("[[rewards]]\nkind = \"accuracy\"\nrel_tol = \"x\"\n").contains("accuracy"));
    assert!(err("[[rewards]]\nkind = \"accuracy\"\n[[rewards]]\nkind = \"accuracy\"\n").contains("duplicate"));
    assert!(err("x = 1\n").contains("no `[[rewards]]`"));
    assert!(err("[[rewards]]\nname = \"a\"\n").contains("kind"));
    assert!(matches!(RewardSet::from_specs(vec![]), Err(RewardsError::Invalid(_))));
}

#[test]
fn specs_embed_in_other_configs() {
    #[derive(serde::Deserialize)]
    struct Recipe {
        #[allow(dead_code)]
        lr: f64,
        rewards: Vec<RewardSpec>,
    }
    let r: Recipe = toml::from_str("lr = 1e-6\n[[rewards]]\nkind = \"format\"\nweight = 2\nmode = \"lenient\"\n").unwrap();
    assert_eq!(r.rewards[0].weight, 2.0);
    assert_eq!(r.rewards[0].params.get("mode").unwrap(), "lenient");
    let set = RewardSet::from_specs(r.rewards).unwrap();
    assert_eq!(set.specs()[0].kind, "format");
    let mut spec = RewardSpec::new("accuracy");
    spec.name = Some("acc".into());
    assert_eq!(RewardSet::from_specs(vec![spec]).unwrap().names(), vec!["acc"]);
}

#[test]
fn weighted_total_and_counts() {
    let set =
        RewardSet::from_toml_str("[[rewards]]\nkind = \"accuracy\"\nweight = 2.0\n[[rewards]]\nkind = \"format\"\nweight = 0.5\n").unwrap();
    let samples = vec![
        Sample::new("q", "<think>a</think> <answer>4</answer>", Some("4")),
        Sample::new("q", "<think>a</think> <answer>5</answer>", Some("4")),
        Sample::new("q", "no tags, no answer", Some("4")),
        Sample::new("q", "\\boxed{4}", None),
        Sample::new("q", "\\boxed{4}", Some("\\frac{1}{")),
    ];
    let out = set.score_batch(&samples);
    assert_eq!(out.totals(), vec![2.5, 0.5, 0.0, 0.0, 0.0]);
    assert_eq!(out.counts.no_answer, 1);
    assert_eq!(out.counts.missing_inputs, 1);
    assert_eq!(out.counts.unparseable_references, 1);
    assert_eq!(out.counts.panics + out.counts.timeouts, 0);
    assert_eq!(out.means()[0], ("accuracy".to_string(), 0.2));
    assert_eq!(out.scores[0].per_module, vec![("accuracy".to_string(), 1.0), ("format".to_string(), 1.0)]);
}

#[test]
fn parallel_equals_sequential_on_many_samples() {
    let set = RewardSet::from_toml_str(
        "[[rewards]]\nkind = \"accuracy\"\n[[rewards]]\nkind = \"repetition\"\n[[rewards]]\nkind = \"language_consistency\"\n",
    )
    .unwrap();
    let samples = rewards::bench_data::samples(500, 7);
    let a = set.score_batch(&samples);
    let b = set.score_batch_sequential(&samples);
    assert_eq!(a, b);
    let _ = json!(1);
}

/// Reward routing by task: a sample is scored only by the rewards routed to its `task`
/// (and by rewards without `tasks`); the others neither add to its total nor enter their
/// means; a task no reward covers is an error naming it.
#[test]
fn rewards_route_by_task() {
    let set = RewardSet::from_toml_str(
        r#"
        [[rewards]]
        kind = "accuracy"
        [[rewards]]
        kind = "format"
        tasks = ["addition"]
        [[rewards]]
        kind = "char_fraction"
        weight = 0.5
        tasks = ["compare"]
        "#,
    )
    .unwrap();
    assert_eq!(set.routes(), vec![vec![], vec!["addition".to_string()], vec!["compare".to_string()]]);
    // An addition sample in the R1 format, right: accuracy 1 + format 1; char_fraction routed away.
    let add = Sample::new("What is 2 + 3?", "<think> 2 + 3 = 5 </think> <answer> 5 </answer>", Some("5")).with("task", json!("addition"));
    // A compare sample without think tags, right: format does not apply to it.
    let cmp = Sample::new("Which is larger, 7 or 9?", "<answer> 9 </answer>", Some("9")).with("task", json!("compare"));
    let out = set.score_batch(&[add.clone(), cmp.clone()]);
    assert_eq!(out.scores[0].applied, vec![true, true, false]);
    assert_eq!(out.scores[1].applied, vec![true, false, true]);
    assert_eq!(out.scores[0].total, 2.0);
    // char_fraction of "<answer> 9 </answer>": 1 digit among 16 non-space characters.
    let frac = 1.0 / "<answer>9</answer>".len() as f64;
    assert!((out.scores[1].per_module[2].1 - frac).abs() < 1e-12);
    assert!((out.scores[1].total - (1.0 + 0.5 * frac)).abs() < 1e-12);
    assert_eq!(out.scores[1].task.as_deref(), Some("compare"));
    // Means are over the samples a reward applies to: format's is the addition sample's 1.0,
    // not (1 + 0) / 2.
    let means = out.means();
    assert_eq!(means[1], ("format".to_string(), 1.0));
    assert_eq!(out.values(2).len(), 1);
    // Scoring the compare sample with format directly would have given 0: routing matters.
    let fmt_only = RewardSet::from_toml_str("[[rewards]]\nkind = \"format\"").unwrap();
    assert_eq!(fmt_only.score_batch(&[cmp.clone()]).scores[0].total, 0.0);

    // Checking a dataset's tasks: covered tasks pass, an uncovered one is named.
    set.check_tasks([Some("addition"), Some("compare"), None]).unwrap();
    let routed_only = RewardSet::from_toml_str("[[rewards]]\nkind = \"accuracy\"\ntasks = [\"addition\"]").unwrap();
    let e = routed_only.check_tasks([Some("addition"), Some("poetry")]).unwrap_err().to_string();
    assert!(e.contains("task `poetry`") && e.contains("addition"), "{e}");
    let e = routed_only.check_tasks([None]).unwrap_err().to_string();
    assert!(e.contains("without a `task` field"), "{e}");
    // At scoring time an unrouted sample scores 0 and is counted, never silently.
    let stray = Sample::new("q", "<answer> 1 </answer>", Some("1")).with("task", json!("poetry"));
    let out = routed_only.score_batch(&[stray]);
    assert_eq!(out.counts.unrouted, 1);
    assert_eq!(out.scores[0].total, 0.0);
    assert!(out.scores[0].failures[0].message.contains("`poetry`"));
    // `tasks` is a common key: a typo in it is caught like any other.
    let e = err("[[rewards]]\nkind = \"accuracy\"\ntaks = [\"a\"]");
    assert!(e.contains("did you mean `tasks`"), "{e}");
}

/// Grader outcomes are typed and counted: right, wrong, no answer, unparseable reference,
/// each separately, so a grader failure never hides as a plain 0.
#[test]
fn grader_outcomes_are_counted_by_type() {
    let set = RewardSet::from_toml_str("[[rewards]]\nkind = \"accuracy\"\n[[rewards]]\nkind = \"format\"").unwrap();
    let samples = [
        Sample::new("q", "<think> a </think> <answer> 5 </answer>", Some("5")),
        Sample::new("q", "<think> a </think> <answer> 6 </answer>", Some("5")),
        Sample::new("q", "<think> a </think> <answer> 1/2 </answer>", Some("0.5")),
        Sample::new("q", "I do not know", Some("5")),
        Sample::new("q", "<answer> 5 </answer>", Some("\\frac{")),
    ];
    let out = set.score_batch(&samples);
    let c = out.counts;
    assert_eq!((c.correct, c.wrong, c.no_answer), (2, 1, 1), "{c:?}");
    assert_eq!(c.unparseable_references, 1, "{c:?}");
    assert_eq!(out.scores[2].judged, vec![true]);
    assert!(out.scores[3].judged.is_empty(), "no answer is not a wrong answer");
}

fn row(answer: Option<&str>, extra: serde_json::Value) -> Sample {
    let mut s = Sample::new("q", "", answer);
    if let serde_json::Value::Object(m) = extra {
        s.extra = m;
    }
    s
}

#[test]
fn check_row_reports_what_each_routed_reward_lacks() {
    let set = RewardSet::from_toml_str(
        r#"
        [[rewards]]
        kind = "accuracy"
        tasks = ["math"]
        [[rewards]]
        kind = "format"
        [[rewards]]
        kind = "countdown"
        tasks = ["countdown"]
        "#,
    )
    .unwrap();
    let math = json!({"task": "math"});
    // Good rows: a plain number, a GSM8K solution (value after ####), a MATH solution
    // (last \boxed{}), a word answer, a choice letter.
    for a in ["42", "She pays 3 * 6 = 18.\n#### 18", "so $x = \\boxed{\\frac{1}{2}}$.", "odd", "(B)"] {
        assert!(set.check_row(&row(Some(a), math.clone())).is_empty(), "{a}");
    }
    let problems = |a: Option<&str>, extra: serde_json::Value| set.check_row(&row(a, extra));
    // Missing, empty, empty after ####, unparseable: each named with the reward.
    let p = problems(None, math.clone());
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, "accuracy");
    assert!(p[0].1.contains("no reference"), "{p:?}");
    assert!(problems(Some("  "), math.clone())[0].1.contains("empty reference"));
    assert!(problems(Some("The answer is\n#### "), math.clone())[0].1.contains("empty reference answer after extraction"));
    let p = problems(Some("\\frac{1}{"), math.clone());
    assert!(p[0].1.contains("cannot parse"), "{p:?}");
    // Routing: the countdown row is not checked by accuracy (it has no answer) but by
    // countdown, which needs `numbers` and `target`.
    assert!(problems(None, json!({"task": "countdown", "numbers": [3, 5, 7], "target": 22})).is_empty());
    let p = problems(None, json!({"task": "countdown", "numbers": [3, "x"], "target": 22}));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "countdown");
    assert!(p[0].1.contains("integers"), "{p:?}");
    assert!(problems(None, json!({"task": "countdown", "numbers": [3]}))[0].1.contains("target"));
}
