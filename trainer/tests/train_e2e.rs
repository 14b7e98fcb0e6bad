//! End to end on a tiny random model that the test builds itself: a short run writes
//! everything, a learnable toy reward rises, resume is bit-identical, config errors are clear.

use std::path::{Path, PathBuf};
use trainer::config::Recipe;
use trainer::tiny::{self, TinyShape};
use trainer::train::{self, Options};

const SHAPE: TinyShape = TinyShape { hidden: 64, layers: 2, heads: 4, kv_heads: 2, intermediate: 128, vocab: 384 };

fn setup(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    tiny::create_random_model(&model, SHAPE, &tiny::default_corpus(1, 600), 7).unwrap();
    let mut data = String::new();
    for i in 0..40 {
        data.push_str(&format!("{{\"prompt\": \"What is {i} + {}?\", \"answer\": \"{}\"}}\n", i + 3, 2 * i + 3));
    }
    std::fs::write(dir.join("train.jsonl"), &data).unwrap();
    let eval: String = data.lines().take(20).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("eval.jsonl"), eval).unwrap();
    model
}

fn recipe(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"
[run]
name = "t"
seed = 3
output_dir = "{out}"

[model]
path = "{model}"

[data]
train = "{dir}/train.jsonl"
eval = "{dir}/eval.jsonl"
template = "{{prompt}} ="

[rollout]
group_size = 4
prompts_per_step = 4
max_new_tokens = 8

[[rewards]]
kind = "char_fraction"
chars = "0123456789"

[grpo]
beta = 0.04
loss_type = "grpo"

[optim]
lr = 1e-3

[train]
steps = 5
save_every = 2
keep_last = 2
log_samples_every = 2
eval_every = 5
eval_limit = 8
{extra}
"#,
        out = dir.join("runs").display(),
        model = dir.join("model").display(),
        dir = dir.display(),
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn opts() -> Options {
    Options { quiet: true, stop: Default::default(), sinks: vec![], resume_from: None, ..Default::default() }
}

/// Asserts that two runs' `step-N` checkpoints hold identical weights.
fn same_weights(a: &Path, b: &Path, step: u64, what: &str) {
    let load = |r: &Path| rollout::model::weights::load_file(&r.join(format!("checkpoints/step-{step}/model.safetensors"))).unwrap();
    let (a, b) = (load(a), load(b));
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        assert!(t.equal(&b[k]), "{k} {what}");
    }
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn short_run_writes_everything() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(tmp.path(), "");
    let out = train::train(Some(&r), None, &[], opts()).unwrap();
    assert_eq!(out.steps_done, 5);
    let run = out.run_dir;
    assert!(run.join("config.toml").exists());
    let rows = metrics(&run);
    let steps: Vec<u64> = rows.iter().filter(|r| r.get("reward").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);
    let train_row = rows.iter().find(|r| r.get("reward").is_some()).unwrap();
    for key in [
        "reward",
        "reward_std",
        "rewards/char_fraction/mean",
        "kl",
        "entropy",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/clipped_ratio",
        "learning_rate",
        "grad_norm",
        "time/step_s",
        "throughput/rollout_tokens_per_s",
        "throughput/learner_tokens_per_s",
        "loss",
    ] {
        assert!(train_row.get(key).is_some_and(|v| v.is_number()), "metric {key} missing: {train_row}");
    }
    // Evaluations at step 0 (the starting point) and at the end.
    let evals: Vec<u64> = rows.iter().filter(|r| r.get("eval/reward").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(evals, vec![0, 5]);
    assert!(train_row["kl"].as_f64().unwrap() >= 0.0);
    // Samples every 2 steps; checkpoints kept: last 2 (step-4 and the final step-5).
    assert!(run.join("samples/step-000002.jsonl").exists());
    let ckpts: Vec<String> =
        std::fs::read_dir(run.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    let mut ckpts = ckpts;
    ckpts.sort();
    assert_eq!(ckpts, vec!["step-4", "step-5"]);
    let ck = run.join("checkpoints/step-5");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        "train-state/optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(ck.join(f).exists(), "{f} missing from checkpoint");
    }
    // The only top-level tensors are the weights: a server that loads every *.safetensors of
    // the folder (SGLang, vLLM) reads nothing else.
    let top: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert_eq!(top, ["model.safetensors"]);
    // The checkpoint is a model folder ponder (and transformers) loads as is, and it moved.
    let p = rollout::folder::Policy::load(&ck, tch::Kind::Float, tch::Device::Cpu).unwrap();
    let p0 = rollout::folder::Policy::load(&tmp.path().join("model"), tch::Kind::Float, tch::Device::Cpu).unwrap();
    let w = "model.layers.0.mlp.up_proj.weight";
    assert!(!p.named_tensors()[w].equal(&p0.named_tensors()[w]), "weights did not change");
    // A second `train` into the same folder refuses instead of clobbering.
    let e = train::train(Some(&r), None, &[], opts()).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");
}

#[test]
fn resume_is_bit_identical() {
    // fp32, and bf16 through its fp32 master weights (which the checkpoint must carry: the
    // bf16 weights are only their rounding).
    for dtype in ["f32", "bf16"] {
        let tmp = tempfile::tempdir().unwrap();
        setup(tmp.path());
        let r = recipe(tmp.path(), "");
        let sets = |name: &str, steps: u32| {
            vec![
                format!("run.name=\"{name}\""),
                format!("train.steps={steps}"),
                "train.eval_every=0".into(),
                format!("model.dtype=\"{dtype}\""),
            ]
        };
        let straight = train::train(Some(&r), None, &sets("straight", 4), opts()).unwrap();
        let half = train::train(Some(&r), None, &sets("split", 2), opts()).unwrap();
        assert_eq!(half.steps_done, 2);
        if dtype == "bf16" {
            // A checkpoint written before the optimizer state moved into train-state/ (it sat
            // beside the weights) still resumes exactly.
            let ck = half.run_dir.join("checkpoints/step-2");
            std::fs::rename(ck.join("train-state/optimizer.safetensors"), ck.join("optimizer.safetensors")).unwrap();
            std::fs::remove_dir(ck.join("train-state")).unwrap();
        }
        let resumed = train::train(None, Some(&half.run_dir), &["train.steps=4".into()], opts()).unwrap();
        assert_eq!(resumed.steps_done, 4);
        same_weights(&straight.run_dir, &resumed.run_dir, 4, &format!("{dtype}: differs between straight and resumed runs"));
        let oa =
            rollout::model::weights::load_file(&straight.run_dir.join("checkpoints/step-4/train-state/optimizer.safetensors")).unwrap();
        let ob = rollout::model::weights::load_file(&resumed.run_dir.join("checkpoints/step-4/train-state/optimizer.safetensors")).unwrap();
        for (k, t) in &oa {
            assert!(t.equal(&ob[k]), "{dtype}: optimizer state {k} differs");
        }
        assert_eq!(oa.keys().any(|k| k.starts_with("master.")), dtype == "bf16", "{dtype}: master weights in the optimizer state");
        // metrics.jsonl: steps 1..4 once each.
        let steps: Vec<u64> = metrics(&resumed.run_dir).iter().map(|r| r["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
    }
}

#[test]
fn toy_reward_rises() {
    // Reward = fraction of completion characters that are digits; a random model starts low.
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(tmp.path(), "");
    let sets: Vec<String> = [
        "run.name=\"toy\"",
        "train.steps=30",
        "train.eval_every=0",
        "train.save_every=0",
        "rollout.group_size=8",
        "rollout.prompts_per_step=8",
        "grpo.beta=0.0",
        "grpo.loss_type=\"dapo\"",
        "optim.lr=3e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = train::train(Some(&r), None, &sets, opts()).unwrap();
    let rows = metrics(&out.run_dir);
    let rewards: Vec<f64> = rows.iter().filter_map(|r| r.get("reward")?.as_f64()).collect();
    let first = rewards[..5].iter().sum::<f64>() / 5.0;
    let last = rewards[rewards.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last > first + 0.2 && last > 2.0 * first, "reward did not rise clearly: first {first:.3}, last {last:.3}: {rewards:?}");
}

#[test]
fn config_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(tmp.path(), "");
    let err = |sets: &[&str]| -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Recipe::load(&r, &sets).unwrap_err())
    };
    let e = err(&["optim.lrr=1e-3"]);
    assert!(e.contains("optim.lrr") && e.contains("did you mean `lr`"), "{e}");
    let e = err(&["grpo.loss_type=\"ppo\""]);
    assert!(e.contains("grpo.loss_type") && e.contains("dapo"), "{e}");
    let e = err(&["rollout.group_size=1"]);
    assert!(e.contains("group_size"), "{e}");
    let e = err(&["trian.steps=3"]);
    assert!(e.contains("trian") && e.contains("did you mean `train`"), "{e}");
    let e = err(&["grpo.max_refill_prompts=8"]);
    assert!(e.contains("grpo.dynamic_sampling = true"), "{e}");
    let e = err(&["data.template=\"no placeholder\""]);
    assert!(e.contains("{prompt}"), "{e}");
    // A malformed dataset line names the file and line.
    std::fs::write(tmp.path().join("bad.jsonl"), "{\"prompt\": \"a\"}\n{oops\n").unwrap();
    let sets = vec![format!("data.train=\"{}\"", tmp.path().join("bad.jsonl").display())];
    let e = format!("{:#}", train::train(Some(&r), None, &sets, opts()).unwrap_err());
    assert!(e.contains("bad.jsonl:2"), "{e}");
}

/// Rows that cannot be used, whether malformed (not JSON, no prompt) or unscorable by the
/// recipe's rewards (no reference answer, an empty one), are all reported with their line
/// before any rollout; `data.max_bad_fraction` above their share skips them instead.
#[test]
fn bad_rows_are_reported_with_their_lines_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(tmp.path(), "[[rewards]]\nkind = \"accuracy\"\nweight = 0.0\n");
    let good = std::fs::read_to_string(tmp.path().join("train.jsonl")).unwrap();
    // Lines 41-44 are bad, each in its own way; 40 good rows before them.
    let bad_lines = [
        "{\"prompt\": \"What is 1 + 1?\", \"answer\": \"\"}",
        "{oops",
        "{\"prompt\": \"What is 2 + 2?\"}",
        "{\"prompt\": \"\", \"answer\": \"4\"}",
    ];
    let data = tmp.path().join("mixed.jsonl");
    std::fs::write(&data, format!("{good}{}\n", bad_lines.join("\n"))).unwrap();
    let run = |extra: &[&str]| {
        let mut sets = vec![format!("data.train=\"{}\"", data.display()), "train.steps=1".to_string(), "train.eval_every=0".to_string()];
        sets.extend(extra.iter().map(|s| s.to_string()));
        train::train(Some(&r), None, &sets, opts())
    };
    let e = format!("{:#}", run(&[]).unwrap_err());
    assert!(e.contains("4 of 44 rows"), "{e}");
    for (line, what) in [(41, "empty reference answer"), (42, "not valid JSON"), (43, "no reference `answer`"), (44, "is empty")] {
        let at = format!("mixed.jsonl:{line}: ");
        let row = e.lines().find(|l| l.contains(&at)).unwrap_or_else(|| panic!("line {line} not reported: {e}"));
        assert!(row.contains(what), "line {line} should say {what:?}: {row}");
    }
    assert!(!e.contains("mixed.jsonl:40:"), "a good row was reported: {e}");
    assert!(e.contains("data.max_bad_fraction") && e.contains("0.0909"), "the error must say how to skip them: {e}");
    // Their share is 4/44 = 0.091: an allowance below it still refuses, one above trains.
    assert!(run(&["data.max_bad_fraction=0.05"]).is_err());
    let out = run(&["data.max_bad_fraction=0.1", "run.name=\"skip\""]).unwrap();
    assert_eq!(metrics(&out.run_dir).iter().filter(|r| r.get("reward").is_some()).count(), 1);
    // Without the accuracy reward, the rows without an answer are fine; the malformed ones are not.
    let r2 = recipe(tmp.path(), "");
    let sets = vec![format!("data.train=\"{}\"", data.display())];
    let e = format!("{:#}", train::train(Some(&r2), None, &sets, opts()).unwrap_err());
    assert!(e.contains("2 of 44 rows") && e.contains("mixed.jsonl:42") && e.contains("mixed.jsonl:44"), "{e}");
}

/// DAPO's dynamic sampling. A reward that is 0 for most samples (the share of `7`s in the
/// completion) leaves many groups all-zero. The same seed without dynamic sampling shows
/// the first round's zero-variance groups; with it, the step draws more prompts until it
/// has `prompts_per_step` informative groups and trains on exactly that many. A reward no
/// sample can earn stops at the refill cap and trains on nothing. Resume stays bit-identical.
#[test]
fn dynamic_sampling_refills_to_informative_groups() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(tmp.path(), "");
    let run = |name: &str, extra: &[&str]| {
        let mut sets: Vec<String> = [
            format!("run.name=\"{name}\""),
            "train.steps=3".into(),
            "train.eval_every=0".into(),
            "rewards=[{kind=\"char_fraction\", chars=\"7\"}]".into(),
        ]
        .to_vec();
        sets.extend(extra.iter().map(|s| s.to_string()));
        metrics(&train::train(Some(&r), None, &sets, opts()).unwrap().run_dir)
    };
    let plain = run("plain", &[]);
    let dynamic = run("dynamic", &["grpo.dynamic_sampling=true", "grpo.max_refill_prompts=40"]);
    let f = |row: &serde_json::Value, k: &str| row[k].as_f64().unwrap_or_else(|| panic!("no {k} in {row}"));
    // Round 0 of the dynamic run is the plain run's step (same seed), so its zero-variance
    // groups are what the refill has to replace.
    let zero_first = f(&plain[0], "frac_reward_zero_std");
    assert!(zero_first > 0.0, "the test reward gave no zero-variance group: {}", plain[0]);
    assert!(plain[0].get("dynamic_sampling/rounds").is_none());
    let mut refilled = 0;
    for row in &dynamic {
        let (rounds, sampled, informative, trained) = (
            f(row, "dynamic_sampling/rounds"),
            f(row, "dynamic_sampling/prompts_sampled"),
            f(row, "dynamic_sampling/informative_groups"),
            f(row, "dynamic_sampling/groups_trained"),
        );
        // Informative groups counted by the step match the zero-variance share it logs.
        assert_eq!(informative, (sampled * (1.0 - f(row, "frac_reward_zero_std"))).round(), "{row}");
        assert_eq!(trained, informative.min(4.0), "{row}");
        assert!(sampled <= 44.0, "the cap was passed: {row}");
        if rounds > 1.0 {
            refilled += 1;
            assert!(sampled > 4.0, "{row}");
        } else {
            assert!(informative >= 4.0 && sampled == 4.0, "stopped after one round without enough groups: {row}");
        }
    }
    assert!(f(&dynamic[0], "dynamic_sampling/rounds") > 1.0, "step 1 had zero-variance groups but drew no more: {}", dynamic[0]);
    assert!(refilled >= 1);

    // Nothing to earn: every group is all-zero, the step stops at the cap, trains nothing.
    let none = run(
        "none",
        &["grpo.dynamic_sampling=true", "grpo.max_refill_prompts=6", "rewards=[{kind=\"char_fraction\", chars=\"\\U0001F600\"}]"],
    );
    for row in &none {
        assert_eq!(f(row, "dynamic_sampling/prompts_sampled"), 10.0, "{row}");
        assert_eq!(f(row, "dynamic_sampling/groups_trained"), 0.0, "{row}");
        assert_eq!(f(row, "loss"), 0.0, "{row}");
    }

    // Kill-and-resume in the middle of refilling steps reproduces the straight run.
    let sets = |name: &str, steps: u32| {
        vec![
            format!("run.name=\"{name}\""),
            format!("train.steps={steps}"),
            "train.eval_every=0".into(),
            "rewards=[{kind=\"char_fraction\", chars=\"7\"}]".into(),
            "grpo.dynamic_sampling=true".into(),
        ]
    };
    let straight = train::train(Some(&r), None, &sets("ds-straight", 4), opts()).unwrap();
    let half = train::train(Some(&r), None, &sets("ds-split", 2), opts()).unwrap();
    let resumed = train::train(None, Some(&half.run_dir), &["train.steps=4".into()], opts()).unwrap();
    same_weights(&straight.run_dir, &resumed.run_dir, 4, "differs between straight and resumed dynamic-sampling runs");
}

/// A real out-of-memory error (the learner asks libtorch's allocator for 64 TiB at step 3)
/// ends the run with an error that says so, after checkpointing step 2, the last completed
/// step (the run saves no checkpoint of its own before step 4); resuming from it gives the
/// weights of a run that never failed.
#[test]
fn out_of_memory_keeps_the_last_completed_step() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(tmp.path(), "");
    let sets =
        |name: &str| vec![format!("run.name=\"{name}\""), "train.steps=4".into(), "train.save_every=0".into(), "train.eval_every=0".into()];
    let straight = train::train(Some(&r), None, &sets("straight"), opts()).unwrap();
    let oom = Options { fail_alloc_at_step: Some(3), ..opts() };
    let e = format!("{:#}", train::train(Some(&r), None, &sets("oom"), oom).unwrap_err());
    assert!(e.contains("step 3 failed") && e.contains("step-2") && e.contains("Out of memory") && e.contains("--resume"), "{e}");
    assert!(trainer::train::is_out_of_memory(&e), "{e}");
    let run = tmp.path().join("runs/oom");
    let ckpts: Vec<u64> = trainer::checkpoint::list(&run).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(ckpts, vec![2]);
    assert_eq!(metrics(&run).len(), 2, "only completed steps are logged");
    let resumed = train::train(None, Some(&run), &[], opts()).unwrap();
    assert_eq!(resumed.steps_done, 4);
    same_weights(&straight.run_dir, &resumed.run_dir, 4, "differs after resuming from the out-of-memory checkpoint");
}

#[test]
fn non_finite_steps_are_skipped_then_abort_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = setup(tmp.path());
    // Poison one weight: every loss becomes NaN.
    let p = rollout::folder::Policy::load(&model, tch::Kind::Float, tch::Device::Cpu).unwrap();
    tch::no_grad(|| {
        let _ = p.named_tensors()["model.norm.weight"].shallow_clone().fill_(f64::NAN);
    });
    p.save_weights(&model, tch::Kind::Float, None).unwrap();
    let r = recipe(tmp.path(), "");
    let sets: Vec<String> = ["run.name=\"nan\"", "grpo.max_bad_steps=2", "train.eval_every=0"].iter().map(|s| s.to_string()).collect();
    let e = format!("{:#}", train::train(Some(&r), None, &sets, opts()).unwrap_err());
    assert!(e.contains("non-finite") && e.contains("checkpoint"), "{e}");
    let run = tmp.path().join("runs/nan");
    assert!(run.join("checkpoints/step-2/trainer_state.json").exists(), "no checkpoint saved before aborting");
    let rows = metrics(&run);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["skipped_updates"].as_u64() == Some(1)));
}

/// `grpo.max_tokens_per_micro_batch` splits the learner's pass into micro-batches of rows
/// of similar length, each cut to its own longest row; their gradients accumulate into the
/// same update: weights after two steps match the unsplit run to float rounding, for the
/// token-normalised (dapo), per-sequence (grpo) and constant-normalised (dr_grpo) losses.
/// A stop string makes completion lengths vary, so the passes differ in rows and width.
#[test]
fn token_capped_micro_batches_give_the_same_update() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(tmp.path(), "");
    for lt in ["dapo", "grpo", "dr_grpo"] {
        let sets = |name: &str, cap: usize| {
            vec![
                format!("run.name=\"{name}-{lt}\""),
                "train.steps=2".into(),
                "train.eval_every=0".into(),
                "rollout.max_new_tokens=12".into(),
                "rollout.stop=[\"e\"]".into(),
                // Adam divides by sqrt(v) + eps: at eps 1e-8 a near-zero gradient's float
                // noise (summation order differs between passes) becomes a visible update.
                "optim.eps=1e-5".into(),
                format!("grpo.loss_type=\"{lt}\""),
                format!("grpo.max_tokens_per_micro_batch={cap}"),
            ]
        };
        let whole = train::train(Some(&r), None, &sets("whole", 0), opts()).unwrap();
        let split = train::train(Some(&r), None, &sets("split", 60), opts()).unwrap();
        let (mw, ms) = (metrics(&whole.run_dir), metrics(&split.run_dir));
        assert_eq!(mw[0]["micro_batches"].as_u64(), Some(1));
        assert!(ms[0]["micro_batches"].as_u64().unwrap() > 2, "{lt}: the cap should split 16 rows into several passes");
        let (lo, hi) = (ms[0]["completions/min_length"].as_f64().unwrap(), ms[0]["completions/max_length"].as_f64().unwrap());
        assert!(lo < hi, "{lt}: completion lengths should vary ({lo}..{hi})");
        // The learner (each prompt computed once per pass, rows attending to it) scores
        // the sampled tokens as the sampler did (KV-cache decoding, one row at a time).
        for m in [&mw[0], &ms[0]] {
            let d = m["learner/rollout_logprob_diff_max"].as_f64().unwrap();
            assert!(d < 1e-4, "{lt}: learner vs rollout log-probs differ by {d}");
        }
        // Grouping by length wastes less than padding every row to the longest.
        let (pw, ps) = (mw[0]["learner/padding_fraction"].as_f64().unwrap(), ms[0]["learner/padding_fraction"].as_f64().unwrap());
        assert!(ps < pw, "{lt}: padding {ps} split vs {pw} whole");
        for (a, b) in mw.iter().zip(&ms) {
            let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
            assert!((la - lb).abs() < 1e-6 * la.abs().max(1.0), "{lt}: loss {la} vs {lb}");
        }
        let a = rollout::model::weights::load_file(&whole.run_dir.join("checkpoints/step-2/model.safetensors")).unwrap();
        let b = rollout::model::weights::load_file(&split.run_dir.join("checkpoints/step-2/model.safetensors")).unwrap();
        for (name, t) in &a {
            let d = f64::try_from((t - &b[name]).abs().max()).unwrap();
            assert!(d < 1e-6, "{lt}: {name} differs by {d}");
        }
    }
}

/// The learner takes the LM head, the loss and its backward a chunk of positions at a time
/// (`grpo.logprob_chunk`), and with `grpo.gradient_checkpointing` recomputes the layers
/// during the backward: neither changes the update. Against one chunk over all 12
/// positions: chunks of 5 (three chunks, the last short), and chunks of 5 with checkpointed
/// layers, for a per-sequence (grpo), a per-pass (bnpo) and a token-level (dapo) loss with
/// the KL term on. Losses and weights after two steps agree to float rounding.
#[test]
fn chunked_head_and_checkpointed_layers_give_the_same_update() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(tmp.path(), "");
    for lt in ["grpo", "bnpo", "dapo"] {
        let run = |name: &str, extra: &[&str]| {
            let mut sets: Vec<String> = vec![
                format!("run.name=\"{name}-{lt}\""),
                "train.steps=2".into(),
                "train.eval_every=0".into(),
                "rollout.max_new_tokens=12".into(),
                "rollout.stop=[\"e\"]".into(),
                "optim.eps=1e-5".into(),
                format!("grpo.loss_type=\"{lt}\""),
                // Two passes, so bnpo's per-pass normaliser is exercised.
                "grpo.max_tokens_per_micro_batch=120".into(),
            ];
            sets.extend(extra.iter().map(|s| s.to_string()));
            train::train(Some(&r), None, &sets, opts()).unwrap().run_dir
        };
        let whole = run("whole", &["grpo.logprob_chunk=64"]);
        let chunked = run("chunked", &["grpo.logprob_chunk=5"]);
        let checkpointed = run("checkpointed", &["grpo.logprob_chunk=5", "grpo.gradient_checkpointing=true"]);
        let mw = metrics(&whole);
        assert!(mw[0]["completions/max_length"].as_f64().unwrap() > 10.0, "{lt}: rows should span three chunks of 5");
        assert!(mw[0]["micro_batches"].as_u64().unwrap() >= 2, "{lt}: the cap should split the batch");
        for other in [&chunked, &checkpointed] {
            for (a, b) in mw.iter().zip(&metrics(other)) {
                for key in ["loss", "kl", "entropy"] {
                    let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                    assert!((x - y).abs() < 1e-6 * x.abs().max(1.0), "{lt} {}: {key} {x} vs {y}", other.display());
                }
            }
            let wa = rollout::model::weights::load_file(&whole.join("checkpoints/step-2/model.safetensors")).unwrap();
            let wb = rollout::model::weights::load_file(&other.join("checkpoints/step-2/model.safetensors")).unwrap();
            for (name, t) in &wa {
                let d = f64::try_from((t - &wb[name]).abs().max()).unwrap();
                assert!(d < 1e-6, "{lt} {}: {name} differs by {d}", other.display());
            }
        }
    }
}

/// `rollout.staleness = 1`: step t+1's batch is sampled during step t's update with the
/// weights from before it. Checked against a run whose weights cannot move (lr 1e-30 leaves
/// every fp32 weight as it is): the overlap run's step-2 samples are exactly that run's (both
/// drawn from the base weights), while a synchronous run's step 2 differs. A checkpoint
/// carries the batch in flight, so resuming from it reproduces the straight run bit for bit.
#[test]
fn one_step_off_overlap_samples_a_step_behind_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    setup(tmp.path());
    let r = recipe(tmp.path(), "");
    let run = |name: &str, extra: &[&str]| {
        let mut sets: Vec<String> = vec![
            format!("run.name=\"{name}\""),
            "train.steps=4".into(),
            "train.eval_every=0".into(),
            "train.save_every=2".into(),
            "train.keep_last=4".into(),
            "train.log_samples_every=1".into(),
            "rollout.threads=1".into(),
        ];
        sets.extend(extra.iter().map(|s| s.to_string()));
        train::train(Some(&r), None, &sets, opts()).unwrap().run_dir
    };
    let overlap = run("overlap", &["rollout.staleness=1"]);
    let frozen = run("frozen", &["optim.lr=1e-30"]);
    let sync = run("sync", &[]);
    // The premise: the frozen run's weights did not move (beyond 1e-20: a weight that is
    // exactly 0 can take a 1e-30 step).
    let base = rollout::model::weights::load_file(&tmp.path().join("model/model.safetensors")).unwrap();
    let frozen_w = rollout::model::weights::load_file(&frozen.join("checkpoints/step-2/model.safetensors")).unwrap();
    for (k, t) in &base {
        let d = f64::try_from((t - &frozen_w[k]).abs().max()).unwrap();
        assert!(d < 1e-20, "lr 1e-30 moved {k} by {d}");
    }
    let samples = |run: &Path, step: u64| -> Vec<String> {
        std::fs::read_to_string(run.join(format!("samples/step-{step:06}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["completion"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(samples(&overlap, 1), samples(&sync, 1), "step 1 has nothing to overlap with");
    assert_eq!(samples(&overlap, 2), samples(&frozen, 2), "step 2 was not sampled with the weights from before step 1's update");
    assert_ne!(samples(&sync, 2), samples(&frozen, 2), "the test cannot tell stale samples from fresh ones");
    let rows = metrics(&overlap);
    let stale: Vec<f64> = rows.iter().map(|r| r["rollout/staleness"].as_f64().unwrap()).collect();
    assert_eq!(stale, [0.0, 1.0, 1.0, 1.0]);
    assert!(metrics(&sync)[1].get("rollout/staleness").is_none());
    // The learner sees the lag as a gap between its log-probs and the sampler's.
    let gap = |rows: &[serde_json::Value]| rows[1]["learner/rollout_logprob_diff_mean"].as_f64().unwrap();
    assert!(gap(&rows) > 20.0 * gap(&metrics(&sync)).max(1e-6), "overlap gap {} vs sync {}", gap(&rows), gap(&metrics(&sync)));

    // As after kill -9 during step 3: resume a copy of the run from its step-2 checkpoint.
    assert!(overlap.join("checkpoints/step-2/train-state/inflight.json").exists());
    let copy = tmp.path().join("runs/overlap-copy");
    std::process::Command::new("cp").arg("-r").arg(&overlap).arg(&copy).status().unwrap();
    std::fs::write(
        copy.join("config.toml"),
        std::fs::read_to_string(copy.join("config.toml")).unwrap().replace("\"overlap\"", "\"overlap-copy\""),
    )
    .unwrap();
    let o = Options { resume_from: Some("step-2".into()), ..opts() };
    let resumed = train::train(None, Some(&copy), &[], o).unwrap();
    assert_eq!(resumed.steps_done, 4);
    same_weights(&overlap, &resumed.run_dir, 4, "differs between the straight overlap run and its resume from step 2");
    let steps: Vec<u64> = metrics(&resumed.run_dir).iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
}
