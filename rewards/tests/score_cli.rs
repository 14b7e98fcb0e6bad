//! `ponder score` behaviour (the library side of the CLI).

use rewards::score_cli::run;
use serde_json::Value;

#[test]
fn scores_jsonl_and_skips_malformed_lines() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("rewards.toml");
    std::fs::write(&toml, "[[rewards]]\nkind = \"accuracy\"\nweight = 2\n[[rewards]]\nkind = \"countdown\"\nname = \"cd\"\n").unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"prompt": "q", "completion": "<answer>42</answer>", "answer": "42", "numbers": [40, 2], "target": 42, "id": 7}"#,
            "\n",
            "not json\n",
            "\n",
            r#"{"prompt": "q", "completion": "<answer>40-2</answer>", "answer": 42, "numbers": [40, 2], "target": 42}"#,
            "\n",
            r#"[1, 2]"#,
            "\n",
            r#"{"prompt": "q"}"#,
            "\n",
            r#"{"completion": "\\boxed{1}", "answer": null}"#,
            "\n",
        ),
    )
    .unwrap();
    let output = dir.path().join("out.jsonl");
    let report = run(&toml, &input, Some(&output)).unwrap();
    assert_eq!(report.scored, 3);
    assert_eq!(report.skipped, 3);
    assert!(!report.ok());
    let lines: Vec<Value> = std::fs::read_to_string(&output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], 7);
    assert_eq!(lines[0]["rewards"]["accuracy"], 1.0);
    assert_eq!(lines[0]["rewards"]["cd"], 0.1);
    assert_eq!(lines[0]["reward"], 2.1);
    assert_eq!(lines[1]["rewards"]["accuracy"], 0.0);
    assert_eq!(lines[1]["rewards"]["cd"], 0.1);
    assert_eq!(lines[2]["reward"], 0.0);
    assert!(lines[2]["reward_failures"].is_array());
    assert_eq!(report.counts.missing_inputs, 2); // no reference, no numbers/target
    assert_eq!(report.means[0].0, "accuracy");
    assert!((report.means[0].1 - 1.0 / 3.0).abs() < 1e-12);
}

#[test]
fn config_and_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("rewards.toml");
    std::fs::write(&toml, "[[rewards]]\nkind = \"accuracy\"\nbogus = 1\n").unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let e = run(&toml, &input, None).unwrap_err().to_string();
    assert!(e.contains("rewards.toml") && e.contains("bogus"), "{e}");
    let e = run(&dir.path().join("missing.toml"), &input, None).unwrap_err().to_string();
    assert!(e.contains("missing.toml"), "{e}");
    std::fs::write(&toml, "[[rewards]]\nkind = \"accuracy\"\n").unwrap();
    let e = run(&toml, &dir.path().join("nope.jsonl"), None).unwrap_err().to_string();
    assert!(e.contains("nope.jsonl"), "{e}");
    let report = run(&toml, &input, Some(&dir.path().join("o.jsonl"))).unwrap();
    assert_eq!((report.scored, report.skipped), (0, 0));
    assert!(report.ok());
}
