//! Drives the `ponder` binary as a user would: generate on a fixture model (from its folder,
//! and as a Hub id from a loopback mock Hub), score with a malformed line, a recipe typo, a
//! missing model folder, Ctrl-C during training.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::ponder;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rollout/tests/fixtures").join(name)
}

#[test]
fn generate_json_lines() {
    let out = ponder()
        .args(["generate", "--model"])
        .arg(fixture("qwen2-tied"))
        .args(["--prompt", "What is 2 + 3?", "--prompt", "Hello", "--samples", "2", "--max-new-tokens", "5", "--json", "--seed", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    for (k, l) in lines.iter().enumerate() {
        assert_eq!(l["prompt_index"], k / 2);
        assert_eq!(l["sample_index"], k % 2);
        let ids = l["token_ids"].as_array().unwrap();
        assert_eq!(ids.len(), l["logprobs"].as_array().unwrap().len());
        assert!(ids.len() <= 5);
        assert!(["eos", "stop", "length"].contains(&l["finish_reason"].as_str().unwrap()));
        assert!(l["logprobs"].as_array().unwrap().iter().all(|p| p.as_f64().unwrap() <= 0.0));
    }
}

#[test]
fn generate_reports_a_missing_model_folder() {
    let out = ponder().args(["generate", "--model", "/nonexistent/model", "--prompt", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model"), "{err}");
}

/// `ponder generate --model org/name`: fetched from the Hub (HF_ENDPOINT) into HF_HOME's cache,
/// sampling what the folder itself samples; then again with HF_HUB_OFFLINE=1 and no server.
#[test]
fn generate_from_a_hub_id_through_the_cache() {
    let hub = ponder_hub::testing::MockHub::start();
    let src = fixture("qwen2-tied");
    let files: Vec<(&str, Vec<u8>)> =
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
            .into_iter()
            .map(|f| (f, std::fs::read(src.join(f)).unwrap()))
            .collect();
    let commit = hub.commit("ponder-test/qwen2-tied", "main", &files.iter().map(|(f, b)| (*f, b.as_slice())).collect::<Vec<_>>());
    let home = tempfile::tempdir().unwrap();
    let generate = |model: &std::ffi::OsStr, offline: bool| {
        let mut cmd = ponder();
        cmd.args(["generate", "--model"]).arg(model).args(["--prompt", "Hello", "--max-new-tokens", "4", "--json", "--seed", "3"]);
        cmd.env("HF_HOME", home.path()).env("HF_ENDPOINT", &hub.url);
        for v in [
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_TOKEN_PATH",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
        ] {
            cmd.env_remove(v);
        }
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let local = generate(src.as_os_str(), false);
    assert!(hub.requests().is_empty(), "a local folder never asks the Hub");
    let fetched = generate("ponder-test/qwen2-tied".as_ref(), false);
    assert_eq!(fetched, local);
    let snapshot = home.path().join("hub/models--ponder-test--qwen2-tied/snapshots").join(&commit);
    assert_eq!(std::fs::read(snapshot.join("model.safetensors")).unwrap(), files[2].1);
    hub.stop();
    assert_eq!(generate("ponder-test/qwen2-tied".as_ref(), true), local);
}

#[test]
fn score_skips_malformed_lines_with_their_number() {
    let tmp = tempfile::tempdir().unwrap();
    let rewards = tmp.path().join("r.toml");
    std::fs::write(&rewards, "[[rewards]]\nkind = \"accuracy\"\n[[rewards]]\nkind = \"format\"\nweight = 0.5\n").unwrap();
    let input = tmp.path().join("s.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"p\", \"completion\": \"<think> a </think> <answer> 5 </answer>\", \"answer\": \"5\"}\n{broken\n{\"prompt\": \"p\", \"completion\": \"no\", \"answer\": \"5\"}\n",
    )
    .unwrap();
    let out = ponder().args(["score", "--rewards"]).arg(&rewards).arg("--input").arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a skipped line must show in the exit status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2") || err.contains("line 2"), "{err}");
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["reward"].as_f64().unwrap(), 1.5);
    assert_eq!(rows[1]["reward"].as_f64().unwrap(), 0.0);
}

#[test]
fn train_rejects_a_recipe_typo_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("r.toml");
    std::fs::write(&recipe, "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n[[rewards]]\nkind = \"format\"\n[grpo]\nbetta = 0.1\n")
        .unwrap();
    let out = ponder().arg("train").arg(&recipe).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("grpo.betta") && err.contains("did you mean `beta`"), "{err}");
}

/// Ctrl-C (SIGINT) finishes the current step, saves a checkpoint at it, exits 0, and the run
/// resumes from there with no step lost or repeated.
#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    common::tiny_model_and_prompts(dir);
    let recipe = dir.join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[run]\nname = \"c\"\noutput_dir = \"{d}/runs\"\n[model]\npath = \"{d}/model\"\n[data]\ntrain = \"{d}/train.jsonl\"\ntemplate = \"{{prompt}} =\"\n\
             [rollout]\ngroup_size = 2\nprompts_per_step = 2\nmax_new_tokens = 4\n[[rewards]]\nkind = \"char_fraction\"\nchars = \"0123456789\"\n\
             [train]\nsteps = 1000000\nsave_every = 0\nlog_samples_every = 0\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let run = dir.join("runs/c");
    let child = ponder().args(["train", "--quiet"]).arg(&recipe).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let rows = common::steps_logged;
    let t0 = std::time::Instant::now();
    while rows(&run).len() < 3 {
        assert!(t0.elapsed().as_secs() < 120, "no training steps logged");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let steps = rows(&run);
    let last = *steps.last().unwrap();
    assert!(err.contains(&format!("interrupted after step {last}")), "{err}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(format!("checkpoints/step-{last}/trainer_state.json"))).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64(), Some(last), "the checkpoint is at the last logged step");
    assert_eq!(steps, (1..=last).collect::<Vec<_>>());
    // Resume two more steps: nothing lost, nothing repeated.
    let out =
        ponder().args(["train", "--quiet", "--resume"]).arg(&run).args(["--set", &format!("train.steps={}", last + 2)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(&run), (1..=last + 2).collect::<Vec<_>>());
}

/// Bad values a new user might write: each is a clear error naming the key (exit 1), found
/// when the recipe loads, never a panic (exit 101) or a hang.
#[test]
fn bad_recipe_values_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.jsonl");
    std::fs::write(&data, "{\"prompt\": \"What is 2 + 3?\", \"answer\": \"5\"}\n").unwrap();
    let recipe = tmp.path().join("r.toml");
    let model = fixture("qwen2-tied");
    std::fs::write(
        &recipe,
        format!("[run]\noutput_dir = \"{}\"\n[model]\npath = \"{}\"\n[data]\ntrain = \"{}\"\n[[rewards]]\nkind = \"accuracy\"\n[train]\nsteps = 1\n", tmp.path().join("runs").display(), model.display(), data.display()),
    )
    .unwrap();
    let cases: &[(&str, &str)] = &[
        ("grpo.logprob_chunk=0", "grpo.logprob_chunk"),
        ("grpo.logprob_chunk=-3", "grpo.logprob_chunk"),
        ("grpo.max_bad_steps=0", "grpo.max_bad_steps"),
        ("grpo.beta=-1.0", "grpo.beta"),
        ("optim.eps=0.0", "optim.eps"),
        ("optim.lr=0.0", "optim.lr"),
        ("optim.betas=[1.0, 0.999]", "optim.betas"),
        ("optim.grad_accumulation=0", "optim.grad_accumulation"),
        ("train.steps=0", "train.steps"),
        ("rollout.group_size=1", "rollout.group_size"),
        ("rollout.top_p=0.0", "top_p"),
        ("rollout.top_k=-1", "top_k"),
        ("rollout.min_p=2.0", "min_p"),
        ("rollout.min_new_tokens=999", "min_new_tokens"),
        ("rollout.max_batch=0", "rollout.max_batch"),
        ("rollout.temperature=0.0", "rollout.temperature"),
        ("rollout.threads=0", "rollout.threads"),
        ("rollout.engine=\"sglang\"", "rollout.urls"),
        ("rollout.engine=\"tgi\"", "rollout.engine"),
        ("grpo.engine_is_cap=0.5", "grpo.engine_is_cap"),
        ("data.template=\"no placeholder\"", "data.template"),
        ("model.device=\"gpu\"", "device \"gpu\""),
        ("model.dtype=\"fp8\"", "dtype \"fp8\""),
    ];
    for (set, key) in cases {
        let out = ponder().arg("train").arg(&recipe).args(["--set", set]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--set {set}: exit {:?}: {err}", out.status.code());
        assert!(err.contains(key) && !err.contains("panicked"), "--set {set}: {err}");
    }

    // A model whose config.json has zero heads: an error naming the field, not a division by zero.
    let bad_model = tmp.path().join("bad-model");
    std::fs::create_dir_all(&bad_model).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, bad_model.join(p.file_name().unwrap())).unwrap();
    }
    for (field, v) in [("num_attention_heads", 0), ("num_key_value_heads", 0)] {
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
        cfg[field] = v.into();
        std::fs::write(bad_model.join("config.json"), cfg.to_string()).unwrap();
        let out = ponder().arg("train").arg(&recipe).args(["--set", &format!("model.path=\"{}\"", bad_model.display())]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{field} = 0: {err}");
        assert!(err.contains(field) && err.contains(">= 1"), "{field} = 0: {err}");
    }

    // Pipeline stages: task sizes and model shapes are checked before the first stage runs.
    let pipeline = |stages: &str| {
        let p = tmp.path().join("p.toml");
        std::fs::write(&p, format!("[run]\noutput_dir = \"{}\"\n{stages}", tmp.path().join("runs").display())).unwrap();
        let out = ponder().arg("train").arg(&p).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let model_shape = "[stages.model]\nhidden = 32\nlayers = 1\nheads = 0\nkv_heads = 1\nintermediate = 64\nvocab = 400\n";
    for (stages, key) in [
        ("[[stages]]\nname = \"d\"\nkind = \"tasks\"\ntask = \"addition\"\ndigits = 25\n", "digits = 25"),
        ("[[stages]]\nname = \"d\"\nkind = \"tasks\"\ntask = \"addition\"\nheldout_fraction = 0.0\n", "heldout_fraction"),
        (&format!("[[stages]]\nname = \"b\"\nkind = \"pretrain\"\ntask = \"addition\"\ncorpus_size = 10\n{model_shape}"), "heads"),
        ("[[stages]]\nname = \"d\"\nkind = \"tasks\"\ntask = \"addition\"\n[[stages]]\nname = \"s\"\nkind = \"sft\"\ndata = \"{stages.later.data}\"\n", "names no earlier stage"),
        ("[[stages]]\nname = \"s\"\nkind = \"sft\"\ndata = \"x.jsonl\"\ndevice = \"cuda:x\"\n", "device \"cuda:x\""),
        ("[[stages]]\nname = \"e\"\nkind = \"eval\"\ndata = \"x.jsonl\"\ndtype = \"int8\"\n", "dtype \"int8\""),
        ("[[stages]]\nname = \"s\"\nkind = \"sft\"\ndata = \"x.jsonl\"\n[stages.train]\nbatch_size = 0\n", "batch_size"),
    ] {
        let (code, err) = pipeline(stages);
        assert_eq!(code, Some(1), "{stages}: {err}");
        assert!(err.contains(key) && !err.contains("panicked"), "{stages}: {err}");
    }
    assert!(!tmp.path().join("runs/run/data").exists(), "no stage ran before the checks");
}
