//! Test-time compute on a tiny random model the test builds: every aggregate of `eval` is
//! recomputed from its per-sample lines by brute force, thinking budgets hold per sample,
//! FLOPs follow the documented formula, the CLI writes its reports and charts and refuses
//! bad settings, and GRPO's periodic eval logs pass@k / maj@k.

use rewards::RewardSpec;
use rollout::generate::{SamplingParams, ThinkParams};
use std::path::{Path, PathBuf};
use trainer::eval::compute::ComputeModel;
use trainer::eval::{self, EvalSpec, SampleLine};
use trainer::tiny::{self, TinyShape};

const SHAPE: TinyShape = TinyShape { hidden: 48, layers: 2, heads: 4, kv_heads: 2, intermediate: 96, vocab: 320 };
/// The prompt ends with `<think>` (a single token): thinking starts with the first sample token.
const TEMPLATE: &str = "User: {prompt} Assistant: <think>";

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("model");
    tiny::create_random_model(&model, SHAPE, &tiny::default_corpus(2, 400), 11).unwrap();
    // Single-digit answers: the last number of a random completion is right now and then.
    let mut data = String::new();
    for i in 0..10 {
        data.push_str(&format!("{{\"prompt\": \"What is {i} + 0?\", \"answer\": \"{i}\"}}\n"));
    }
    let d = dir.join("data.jsonl");
    std::fs::write(&d, data).unwrap();
    (model, d)
}

fn rewards() -> Vec<RewardSpec> {
    let mut acc = RewardSpec::new("accuracy");
    acc.params.insert("last_number_fallback".into(), true.into());
    vec![acc, RewardSpec::new("format")]
}

fn examples(data: &Path) -> Vec<trainer::data::Example> {
    let paths = trainer::config::Paths::One(data.to_path_buf());
    trainer::data::load_many(&paths, &trainer::data::plain_cfg(&paths, TEMPLATE)).unwrap()
}

/// Every k-subset (bitmask) of n.
fn subsets(n: usize, k: usize) -> impl Iterator<Item = Vec<usize>> {
    (0u32..1 << n).filter(move |m| m.count_ones() as usize == k).map(move |m| (0..n).filter(|i| m >> i & 1 == 1).collect())
}

/// The documented vote, written out: most votes; ties to the answer group voted first.
fn vote(lines: &[&SampleLine], subset: &[usize]) -> Option<usize> {
    let mut tally: Vec<(usize, usize, usize)> = vec![];
    for &i in subset {
        if let Some(g) = lines[i].answer_group {
            match tally.iter_mut().find(|t| t.0 == g) {
                Some(t) => t.1 += 1,
                None => tally.push((g, 1, i)),
            }
        }
    }
    let top = tally.iter().map(|t| t.1).max()?;
    tally.iter().filter(|t| t.1 == top).min_by_key(|t| t.2).map(|t| t.0)
}

#[test]
fn every_aggregate_is_recomputed_from_the_sample_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let n = 16;
    let spec = EvalSpec {
        template: TEMPLATE,
        params: SamplingParams { temperature: 1.0, max_new_tokens: 14, ..Default::default() },
        samples: n,
        seed: 5,
        rewards: rewards(),
        think: ThinkParams::default(),
        best_of: vec!["logprob".into(), "accuracy".into(), "format".into()],
        dist: None,
    };
    let ex = examples(&data);
    let run = eval::evaluate_full(&model, &ex, &spec, None, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let (rep, lines) = (&run.report, &run.samples);
    let p = ex.len();
    assert_eq!(lines.len(), p * n);
    assert_eq!(rep.prompts_prefilled, p, "each prompt is prefilled once for its {n} samples");
    let per: Vec<Vec<&SampleLine>> = (0..p).map(|i| lines.iter().filter(|l| l.prompt_index == i).collect()).collect();
    assert!(per.iter().all(|g| g.iter().enumerate().all(|(j, l)| l.sample_index == j)));
    let total_correct = lines.iter().filter(|l| l.correct).count();
    assert!(total_correct > 0 && total_correct < lines.len(), "the test needs a mix of right and wrong samples ({total_correct})");

    // avg@n and its standard error over problems.
    let acc: Vec<f64> = per.iter().map(|g| g.iter().filter(|l| l.correct).count() as f64 / n as f64).collect();
    let mean = acc.iter().sum::<f64>() / p as f64;
    let sd = (acc.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (p - 1) as f64).sqrt();
    assert!((rep.accuracy - mean).abs() < 1e-12);
    assert!((rep.accuracy_stderr.unwrap() - sd / (p as f64).sqrt()).abs() < 1e-12);
    assert_eq!(rep.never_solved, acc.iter().filter(|&&a| a == 0.0).count() as f64 / p as f64);

    // The curve, k = 1, 2, 4, 8, 16, against enumeration over subsets.
    let ks: Vec<usize> = rep.curve.iter().map(|c| c.k).collect();
    assert_eq!(ks, vec![1, 2, 4, 8, 16]);
    let cfg = rollout::ModelConfig::from_file(&model.join("config.json")).unwrap();
    let cm = ComputeModel::from_config(&cfg);
    for pt in &rep.curve {
        let k = pt.k;
        let (mut pass, mut maj, mut best_lp) = (0.0, 0.0, 0.0);
        for g in &per {
            // A group's answer is its first sample's.
            let group_ok = |grp: usize| g.iter().find(|l| l.answer_group == Some(grp)).unwrap().correct;
            let subs: Vec<Vec<usize>> = subsets(n, k).collect();
            let m = subs.len() as f64;
            pass += subs.iter().filter(|s| s.iter().any(|&i| g[i].correct)).count() as f64 / m;
            maj += subs.iter().filter(|s| vote(g, s).is_some_and(group_ok)).count() as f64 / m;
            best_lp += subs
                .iter()
                .filter(|s| {
                    let top = s.iter().copied().reduce(|b, i| if g[i].logprob_mean > g[b].logprob_mean { i } else { b }).unwrap();
                    g[top].correct
                })
                .count() as f64
                / m;
        }
        let pf = p as f64;
        assert!((pt.pass - pass / pf).abs() < 1e-9, "pass@{k}: {} vs {}", pt.pass, pass / pf);
        // C(16, 8) = 12870 subsets is above the exact limit: 1000 seeded ones are drawn.
        let tol = if k == 8 { 0.03 } else { 1e-9 };
        assert!((pt.maj - maj / pf).abs() < tol, "maj@{k}: {} vs {}", pt.maj, maj / pf);
        assert!((pt.best["logprob"] - best_lp / pf).abs() < 1e-9, "best-of-{k} by logprob");
        // Selecting by the grader is an oracle: it is pass@k.
        assert!((pt.best["accuracy (oracle)"] - pt.pass).abs() < 1e-12, "oracle best-of-{k}");
        // Tokens and FLOPs per problem: the prompt once, k average samples.
        let mean_tokens = lines.iter().map(|l| l.completion_tokens as f64).sum::<f64>() / lines.len() as f64;
        assert!((pt.tokens_per_problem - k as f64 * mean_tokens).abs() < 1e-9);
        let flops = per
            .iter()
            .map(|g| {
                let l = g[0].prompt_tokens;
                cm.prompt_flops(l) + k as f64 * g.iter().map(|s| cm.sample_flops(l, s.completion_tokens)).sum::<f64>() / n as f64
            })
            .sum::<f64>()
            / pf;
        assert!((pt.flops_per_problem / flops - 1.0).abs() < 1e-12);
    }
    assert_eq!(rep.pass_at_k, Some(rep.curve[4].pass));
    assert_eq!(rep.majority_accuracy, Some(rep.curve[4].maj));
    assert!((rep.curve[0].pass - rep.accuracy).abs() < 1e-12 && (rep.curve[0].best["logprob"] - rep.accuracy).abs() < 1e-12);
    // Same answer, same verdict here: maj@1 is the accuracy too.
    assert!((rep.curve[0].maj - rep.accuracy).abs() < 1e-12);

    // Parameters that count for compute are the checkpoint's matrices (tied embeddings: the
    // embedding matrix is the LM head).
    let tensors = rollout::model::weights::load_file(&model.join("model.safetensors")).unwrap();
    let matrices: i64 = tensors.values().filter(|t| t.dim() == 2).map(|t| t.numel() as i64).sum();
    assert_eq!(cm.params(), matrices as f64);
    assert_eq!(rep.params, matrices as f64);

    // With a thinking budget, per sample: never more than T thinking tokens; forced ones
    // have T.
    let budget = 6;
    let spec = EvalSpec { think: ThinkParams { budget: Some(budget), ..Default::default() }, ..spec };
    let run = eval::evaluate_full(&model, &ex, &spec, None, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let (rep, lines) = (&run.report, &run.samples);
    for l in lines {
        assert!(l.think_tokens <= budget, "{l:?}");
        if l.budget_forced {
            assert_eq!(l.think_tokens, budget);
        }
        assert!(l.think_tokens + l.answer_tokens <= l.completion_tokens);
    }
    let forced = lines.iter().filter(|l| l.budget_forced).count();
    assert!(forced > 0, "a random model never closes on its own: the budget must fire");
    assert!((rep.think.forced_rate - forced as f64 / lines.len() as f64).abs() < 1e-12);
    assert_eq!(rep.think.opened_rate, 1.0);
    assert_eq!(rep.think.budget, Some(budget));
}

#[test]
fn equivalent_answers_vote_together() {
    // Hand-made completions of one problem whose answer is 1/2: two say 3, three say 1/2 in
    // different forms. An exact-string vote picks 3; the grader's equivalence picks 1/2.
    use rollout::generate::{Completion, FinishReason};
    let texts = [
        "<answer>3</answer>",
        "<answer>0.5</answer>",
        "<answer>3</answer>",
        "<answer>1/2</answer>",
        "<answer>\\frac{1}{2}</answer>",
        "no answer",
    ];
    let comps: Vec<Completion> = texts
        .iter()
        .map(|t| Completion {
            token_ids: vec![1, 2],
            logprobs: vec![-1.0, -1.0],
            text: t.to_string(),
            finish_reason: FinishReason::Eos,
            think: Default::default(),
        })
        .collect();
    let set = rewards::RewardSet::from_specs(eval::default_rewards()).unwrap();
    let samples: Vec<rewards::Sample> = texts.iter().map(|t| rewards::Sample::new("q", t, Some("1/2"))).collect();
    let scores = set.score_batch(&samples);
    let correct = eval::correctness(&set, &scores);
    assert_eq!(correct, vec![false, true, false, true, true, false]);
    let probs = eval::problems(&set, &scores, &[comps], &correct, &[], &[3]);
    assert_eq!(probs[0].clusters, vec![Some(0), Some(1), Some(0), Some(1), Some(1), None]);
    assert_eq!(probs[0].answers[4].as_deref(), Some("\\frac{1}{2}"));
    let curve = eval::pass_maj_curve(&probs, 6, 0);
    let maj6 = curve.last().unwrap().2;
    assert_eq!(maj6, 1.0, "1/2 has three votes against two");
    // maj@1 is the share of samples whose answer is right (the sample without one votes
    // for nothing): 3 of 6.
    assert_eq!(curve[0].2, 0.5);
}

fn ponder(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ponder")).args(args).output().unwrap()
}

#[test]
fn cli_writes_reports_charts_and_sample_lines_and_refuses_bad_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let small = tmp.path().join("small");
    tiny::create_random_model(
        &small,
        TinyShape { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64, vocab: 320 },
        &tiny::default_corpus(2, 400),
        5,
    )
    .unwrap();
    let out = tmp.path().join("out");
    let lines = tmp.path().join("new-folder/samples.jsonl");
    let (m, s, d) = (format!("big={}", model.display()), format!("small={}", small.display()), data.display().to_string());
    let common = ["--data", &d, "--template", TEMPLATE, "--samples", "4", "--max-new-tokens", "10", "--limit", "3"];
    let mut args = vec!["eval", "--model", &m, "--model", &s];
    args.extend(common);
    let (o, l) = (out.display().to_string(), lines.display().to_string());
    args.extend(["--think-budgets", "2,5", "--out-dir", &o, "--samples-output", &l]);
    let r = ponder(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["report"]["label"], "big");
    let budgets: Vec<u64> = models[1]["budgets"].as_array().unwrap().iter().map(|b| b["think"]["budget"].as_u64().unwrap()).collect();
    assert_eq!(budgets, vec![2, 5]);
    // The bigger model costs more FLOPs per problem at every k.
    let f = |i: usize| models[i]["report"]["flops_per_problem"].as_f64().unwrap();
    assert!(f(0) > f(1));
    for file in
        ["big.json", "big-budgets.json", "small.json", "small-budgets.json", "k-big.png", "k-small.png", "flops.png", "think_budget.png"]
    {
        let p = out.join(file);
        assert!(p.exists() && std::fs::metadata(&p).unwrap().len() > 0, "{file} missing");
    }
    assert_eq!(&std::fs::read(out.join("flops.png")).unwrap()[1..4], b"PNG");
    // One line per sample: 2 models x (1 + 2 budgets) runs x 3 prompts x 4 samples.
    let text = std::fs::read_to_string(&lines).unwrap();
    let parsed: Vec<SampleLine> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed.len(), 2 * 3 * 3 * 4);
    assert!(parsed.iter().filter(|l| l.think_budget == Some(2)).all(|l| l.think_tokens <= 2));

    // Saved reports combine into one set of charts (their budget sweeps found beside them).
    let again = tmp.path().join("again");
    let (b, sm, ag) = (out.join("big.json"), out.join("small.json"), again.display().to_string());
    let r = ponder(&["eval", "--combine", b.to_str().unwrap(), sm.to_str().unwrap(), "--out-dir", &ag]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for file in ["k-big.png", "k-small.png", "flops.png", "think_budget.png"] {
        assert!(again.join(file).exists(), "{file} missing after --combine");
    }
    let r = ponder(&["eval", "--combine", &l, "--out-dir", &ag]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("not an eval report"));

    // One model, no sweep: the report itself, as before.
    let mut args = vec!["eval", "--model", model.to_str().unwrap()];
    args.extend(common);
    let r = ponder(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(v["accuracy"].is_number() && v["curve"].as_array().unwrap().len() == 3);

    // Bad settings: clear errors before any model loads.
    for (extra, want) in [
        (vec!["--think-budget", "10"], "max_new_tokens"),
        (vec!["--think-budgets", "4,12"], "--think-budgets 12"),
        (vec!["--think-budget", "3", "--min-think", "5"], "exceeds the thinking budget"),
        (vec!["--best-of", "nope"], "rewards: accuracy, format"),
    ] {
        let mut args = vec!["eval", "--model", "/nonexistent"];
        args.extend(common);
        args.extend(extra);
        let r = ponder(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && err.contains(want), "{want}: {err}");
    }
    let r = ponder(&["eval", "--model", model.to_str().unwrap(), "--data", &d, "--samples", "0"]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("samples must be >= 1"));
}

/// `ponder eval` reads GSM8K rows as they are (`--prompt-field question`, the reference
/// after `####`), and a row whose reference is unusable stops it with the row's line before
/// any sampling, or is skipped within `--max-bad-fraction`.
#[test]
fn eval_reads_gsm8k_rows_and_reports_bad_ones_by_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = setup(tmp.path());
    let gsm8k = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/gsm8k/test.jsonl")).unwrap();
    let mut rows: Vec<&str> = gsm8k.lines().take(3).collect();
    rows.push(r#"{"question": "How many?", "answer": "We count them.\n#### "}"#);
    let d = tmp.path().join("gsm8k.jsonl");
    std::fs::write(&d, rows.join("\n") + "\n").unwrap();
    let (m, d) = (model.display().to_string(), d.display().to_string());
    let args = ["eval", "--model", &m, "--data", &d, "--prompt-field", "question", "--template", TEMPLATE, "--max-new-tokens", "4"];
    let r = ponder(&args);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("gsm8k.jsonl:4: reward `accuracy`: empty reference answer after extraction"), "{err}");
    assert!(err.contains("1 of 4 rows") && err.contains("set --max-bad-fraction (now 0) to at least 0.2500"), "{err}");
    assert!(!err.contains("gsm8k.jsonl:3"), "a good row was reported: {err}");
    // Without --prompt-field the rows have no prompt: all four are reported.
    let r = ponder(&["eval", "--model", &m, "--data", &d, "--template", TEMPLATE, "--max-new-tokens", "4"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("4 of 4 rows") && err.contains("missing the prompt field `prompt`"), "{err}");
    // Within the allowance: a warning, and the three good problems are evaluated.
    let mut skip = args.to_vec();
    skip.extend(["--max-bad-fraction", "0.3"]);
    let r = ponder(&skip);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("skipping 1 of 4 rows"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["num_prompts"], 3);
}

/// `ponder eval --data` on a Parquet file and on a Hub dataset split (`hf://datasets/...`,
/// served by a loopback mock Hub into a fresh HF_HOME) evaluates exactly what the same rows
/// as JSONL give: same prompts, same samples, same scores (also with `--max-batch 3`).
#[test]
fn eval_reads_parquet_and_hub_dataset_splits_as_it_reads_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = setup(tmp.path());
    let parquet = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet/gsm8k-snappy.parquet");
    let gsm8k = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/gsm8k/test.jsonl")).unwrap();
    let jsonl = tmp.path().join("gsm8k.jsonl");
    std::fs::write(&jsonl, gsm8k.lines().take(23).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let hub = ponder_hub::testing::MockHub::start();
    hub.commit(
        "datasets/openai/gsm8k",
        "main",
        &[("main/test-00000-of-00001.parquet", &std::fs::read(&parquet).unwrap()), ("README.md", b"card")],
    );
    let home = tmp.path().join("hf");
    let m = model.display().to_string();
    let eval = |data: &str, extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ponder"));
        cmd.args(["eval", "--model", &m, "--data", data, "--prompt-field", "question", "--template", TEMPLATE]);
        cmd.args(extra);
        cmd.args(["--max-new-tokens", "4", "--samples", "2", "--seed", "5"]);
        cmd.env("HF_HOME", &home).env("HF_ENDPOINT", &hub.url);
        for v in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] {
            cmd.env_remove(v);
        }
        let r = cmd.output().unwrap();
        assert!(r.status.success(), "{data}: {}", String::from_utf8_lossy(&r.stderr));
        let mut v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        // Everything but where the data came from and how long it took.
        v.as_object_mut().unwrap().retain(|k, _| k != "data" && !k.contains("second"));
        assert!(v["mean_prompt_tokens"].as_f64().unwrap() > 20.0, "the prompts are GSM8K questions");
        v
    };
    let from_jsonl = eval(&jsonl.display().to_string(), &[]);
    assert_eq!(from_jsonl["num_prompts"], 23);
    assert_eq!(eval(&parquet.display().to_string(), &[]), from_jsonl);
    assert_eq!(eval("hf://datasets/openai/gsm8k/main/test", &[]), from_jsonl);
    // Smaller decode batches (less KV-cache memory) sample exactly the same (what they cost
    // differs: a prompt split over two batches is prefilled twice).
    let small = eval(&parquet.display().to_string(), &["--max-batch", "3"]);
    for k in ["accuracy", "rewards", "mean_completion_tokens", "truncated_fraction", "majority_accuracy", "pass_at_k", "mean_prompt_tokens"]
    {
        assert_eq!(small[k], from_jsonl[k], "{k}");
    }
    assert!(home.join("hub/datasets--openai--gsm8k/refs/main").is_file());
    // A split the dataset lacks: the error names the ones it has.
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(["eval", "--model", &m, "--data", "hf://datasets/openai/gsm8k/main/train", "--prompt-field", "question"])
        .env("HF_HOME", &home)
        .env("HF_ENDPOINT", &hub.url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("split `train`") && err.contains("it has: main/test"), "{err}");
}

#[test]
fn grpo_periodic_eval_logs_pass_and_maj_at_k() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let recipe = format!(
        r#"
[run]
name = "t"
seed = 1
output_dir = "{out}"
[model]
path = "{model}"
[data]
train = "{data}"
eval = "{data}"
template = "{{prompt}} ="
[rollout]
group_size = 2
prompts_per_step = 2
max_new_tokens = 6
[[rewards]]
kind = "accuracy"
last_number_fallback = true
[train]
steps = 1
eval_every = 1
eval_limit = 6
eval_samples = 4
save_every = 0
log_samples_every = 0
"#,
        out = tmp.path().join("runs").display(),
        model = model.display(),
        data = data.display()
    );
    let r = tmp.path().join("r.toml");
    std::fs::write(&r, recipe).unwrap();
    let opts = trainer::train::Options { quiet: true, stop: Default::default(), sinks: vec![], resume_from: None, ..Default::default() };
    let out = trainer::train::train(Some(&r), None, &[], opts).unwrap();
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(out.run_dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let evals: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("eval/reward").is_some()).collect();
    assert_eq!(evals.len(), 2);
    for e in evals {
        let g = |k: &str| e[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {e}"));
        // pass@1 is the accuracy mean; same answer, same verdict: maj@1 too.
        assert!((g("eval/pass@1") - g("eval/rewards/accuracy/mean")).abs() < 1e-12);
        assert!((g("eval/maj@1") - g("eval/pass@1")).abs() < 1e-12);
        assert!(g("eval/pass@1") <= g("eval/pass@2") && g("eval/pass@2") <= g("eval/pass@4"));
        assert!(g("eval/maj@4") <= g("eval/pass@4"));
        assert_eq!(g("eval/num_prompts"), 6.0);
    }
    // The default (one sample) keeps today's rows: no pass@k.
    let out = trainer::train::train(
        Some(&r),
        None,
        &["run.name=\"one\"".into(), "train.eval_samples=1".into()],
        trainer::train::Options { quiet: true, stop: Default::default(), sinks: vec![], resume_from: None, ..Default::default() },
    )
    .unwrap();
    let text = std::fs::read_to_string(out.run_dir.join("metrics.jsonl")).unwrap();
    assert!(text.contains("eval/reward") && !text.contains("pass@"));
}

#[test]
fn worker_threads_leave_the_callers_thread_count_alone() {
    // An eval stage inside a pipeline must not change the thread count of the stages after it.
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = setup(tmp.path());
    tch::set_num_threads(2);
    let before = tch::get_num_threads();
    let pool = eval::open_pool(&model, tch::Device::Cpu, tch::Kind::Float, Some(2), Some(1)).unwrap();
    let sp = SamplingParams { max_new_tokens: 4, ..Default::default() };
    pool.generate_groups(&[vec![5, 6, 7]], 4, &sp, 0).unwrap();
    assert_eq!(tch::get_num_threads(), before);
}

#[test]
fn eval_stage_writes_the_curve_the_budget_sweep_samples_and_charts() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use trainer::pipeline::{self, Pipeline};
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = setup(tmp.path());
    let recipe = |budget: usize| {
        format!(
            r#"
[run]
name = "p"
output_dir = "{out}"
[[stages]]
name = "ttc"
kind = "eval"
model = "{model}"
data = "{data}"
template = "{template}"
samples = 4
think_budgets = [2, 4]
best_of = ["logprob", "format"]
samples_output = true
[stages.think]
budget = {budget}
[stages.sampling]
max_new_tokens = 10
"#,
            out = tmp.path().display(),
            model = model.display(),
            data = data.display(),
            template = TEMPLATE
        )
    };
    let run = |text: String| -> anyhow::Result<()> {
        let table: toml::Table = text.parse().unwrap();
        let p: Pipeline = trainer::config::from_table(table.clone(), "test")?;
        pipeline::run(p, &table, false, true, Arc::new(AtomicBool::new(false)))
    };
    // A budget that leaves no room to answer is refused before anything runs.
    let e = run(recipe(10)).unwrap_err().to_string();
    assert!(e.contains("ttc") && e.contains("max_new_tokens"), "{e}");
    run(recipe(3)).unwrap();
    let dir = tmp.path().join("p");
    let rep: eval::EvalReport = serde_json::from_str(&std::fs::read_to_string(dir.join("eval/ttc.json")).unwrap()).unwrap();
    assert_eq!(rep.curve.iter().map(|c| c.k).collect::<Vec<_>>(), vec![1, 2, 4]);
    assert_eq!(rep.think.budget, Some(3));
    assert!(rep.curve[0].best.contains_key("logprob") && rep.curve[0].best.contains_key("format"));
    let sweep: Vec<eval::EvalReport> = serde_json::from_str(&std::fs::read_to_string(dir.join("eval/ttc-budgets.json")).unwrap()).unwrap();
    assert_eq!(sweep.iter().map(|r| r.think.budget).collect::<Vec<_>>(), vec![Some(2), Some(4)]);
    let lines = std::fs::read_to_string(dir.join("eval/ttc.samples.jsonl")).unwrap();
    // (1 + 2 budgets) x 10 prompts x 4 samples, each within its budget.
    assert_eq!(lines.lines().count(), 3 * 10 * 4);
    for l in lines.lines() {
        let l: SampleLine = serde_json::from_str(l).unwrap();
        assert!(l.think_tokens <= l.think_budget.unwrap());
    }
    for f in ["k.png", "flops.png", "think_budget.png"] {
        assert!(dir.join("plots/ttc").join(f).exists(), "{f} missing");
    }
}

/// An `eval` stage reads a Parquet file (or any dataset `[data]` takes) with its own field
/// mapping (`[stages.fields]`), a row range included; a bad prompt format is refused before
/// anything runs, naming the stage.
#[test]
fn eval_stage_maps_fields_of_any_dataset() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use trainer::pipeline::{self, Pipeline};
    let tmp = tempfile::tempdir().unwrap();
    let (model, _) = setup(tmp.path());
    let parquet = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet/gsm8k-snappy.parquet");
    let recipe = |format: &str| {
        format!(
            r#"
[run]
name = "f"
output_dir = "{out}"
[[stages]]
name = "gsm"
kind = "eval"
model = "{model}"
data = "{data}[3:8]"
template = "{template}"
samples = 2
[stages.fields]
prompt_field = "question"
instruction = " Answer after ####."
{format}
[stages.sampling]
max_new_tokens = 4
"#,
            out = tmp.path().display(),
            model = model.display(),
            data = parquet.display(),
            template = TEMPLATE
        )
    };
    let run = |text: String| -> anyhow::Result<()> {
        let table: toml::Table = text.parse().unwrap();
        let p: Pipeline = trainer::config::from_table(table.clone(), "test")?;
        pipeline::run(p, &table, false, true, Arc::new(AtomicBool::new(false)))
    };
    let e = format!("{:#}", run(recipe("prompt_format = \"{question\"")).unwrap_err());
    assert!(e.contains("gsm") && e.contains("fields.prompt_format"), "{e}");
    run(recipe("")).unwrap();
    let rep: eval::EvalReport = serde_json::from_str(&std::fs::read_to_string(tmp.path().join("f/eval/gsm.json")).unwrap()).unwrap();
    assert_eq!(rep.num_prompts, 5);
    // Rows 3..8 of GSM8K's test split with the instruction: longer than the bare questions.
    let questions = trainer::data::parquet_rows(&parquet, "fixture").unwrap();
    let tk = rollout::tokenizer::Tokenizer::from_dir(&model).unwrap();
    let want: f64 = questions[3..8]
        .iter()
        .map(|q| {
            let text = TEMPLATE.replace("{prompt}", &format!("{} Answer after ####.", q["question"].as_str().unwrap()));
            tk.encode(&text, true).unwrap().len() as f64
        })
        .sum::<f64>()
        / 5.0;
    assert!((rep.mean_prompt_tokens - want).abs() < 1e-9, "{} vs {want}", rep.mean_prompt_tokens);
}
