//! Data-parallel GRPO: two `ponder train` processes launched as torchrun would (RANK,
//! WORLD_SIZE, MASTER_ADDR, MASTER_PORT), Gloo on 127.0.0.1, against one process. Each rank
//! draws half the prompts and runs every other learner pass; an update then has at least two
//! passes (grad_accumulation rounded up to a multiple of the world), and the summed gradient
//! is the one process's accumulated gradient with grad_accumulation = 2: the weights must be
//! bit-identical.

#[path = "support/model_server.rs"]
mod model_server;

use model_server::model_server;
use ponder_engine::EngineKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use trainer::tiny::{self, TinyShape};

const SHAPE: TinyShape = TinyShape { hidden: 64, layers: 2, heads: 4, kv_heads: 2, intermediate: 128, vocab: 384 };

fn setup(dir: &Path) -> PathBuf {
    tiny::create_random_model(&dir.join("model"), SHAPE, &tiny::default_corpus(1, 600), 7).unwrap();
    let mut data = String::new();
    for i in 0..40 {
        data.push_str(&format!("{{\"prompt\": \"What is {i} + {}?\", \"answer\": \"{}\"}}\n", i + 3, 2 * i + 3));
    }
    std::fs::write(dir.join("train.jsonl"), &data).unwrap();
    let recipe = format!(
        r#"
[run]
name = "dp"
seed = 11
output_dir = "{out}"
[model]
path = "{model}"
[data]
train = "{dir}/train.jsonl"
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
loss_type = "dapo"
dynamic_sampling = true
[optim]
lr = 3e-3
[train]
steps = 4
save_every = 2
"#,
        out = dir.join("runs").display(),
        model = dir.join("model").display(),
        dir = dir.display(),
    );
    let p = dir.join("recipe.toml");
    std::fs::write(&p, recipe).unwrap();
    p
}

fn ponder() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ponder"));
    for k in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"] {
        c.env_remove(k);
    }
    c
}

/// A free local port for a world's rendezvous.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `ponder ARGS` as rank `rank` of a world of two meeting at `port`, as torchrun would
/// start it, output captured.
fn rank_command(args: &[&str], rank: usize, port: u16) -> Command {
    let mut c = ponder();
    c.args(args)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `ponder train ARGS` as ranks 0 and 1 of a world of two.
fn torchrun(args: &[&str]) -> Vec<Output> {
    let port = free_port();
    let mut kids: Vec<_> = (0..2).map(|rank| rank_command(args, rank, port).spawn().unwrap()).collect();
    let t0 = Instant::now();
    while kids.iter_mut().any(|k| k.try_wait().unwrap().is_none()) {
        if t0.elapsed() > Duration::from_secs(300) {
            kids.iter_mut().for_each(|k| drop(k.kill()));
            panic!("the ranks did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kids.into_iter().map(|k| k.wait_with_output().unwrap()).collect()
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r.get("reward").is_some())
        .collect()
}

#[test]
fn two_ranks_train_the_weights_of_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let r = recipe.to_str().unwrap();
    let one = ponder().args(["train", r, "--quiet", "--set", "run.name=\"one\"", "--set", "optim.grad_accumulation=2"]).output().unwrap();
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let outs = torchrun(&["train", r, "--quiet", "--set", "run.name=\"two\""]);
    for (rank, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // The same with the layers checkpointed and the LM head in chunks of 3 positions: each
    // rank's pass still adds its gradient (the tied head's and the embeddings' together)
    // in one accumulation, as one process's passes do.
    let staged = ["--set", "grpo.gradient_checkpointing=true", "--set", "grpo.logprob_chunk=3"];
    let one_ck = ponder()
        .args(["train", r, "--quiet", "--set", "run.name=\"one-ck\"", "--set", "optim.grad_accumulation=2"])
        .args(staged)
        .output()
        .unwrap();
    assert!(one_ck.status.success(), "{}", String::from_utf8_lossy(&one_ck.stderr));
    let outs_ck = torchrun(&[&["train", r, "--quiet", "--set", "run.name=\"two-ck\""][..], &staged].concat());
    for (rank, o) in outs_ck.iter().enumerate() {
        assert!(o.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let (a, b) = (tmp.path().join("runs/one"), tmp.path().join("runs/two"));
    let (a_ck, b_ck) = (tmp.path().join("runs/one-ck"), tmp.path().join("runs/two-ck"));
    for step in [2, 4] {
        let load =
            |run: &Path| rollout::model::weights::load_file(&run.join(format!("checkpoints/step-{step}/model.safetensors"))).unwrap();
        let (wa, wb) = (load(&a_ck), load(&b_ck));
        for (k, t) in &wa {
            assert!(t.equal(&wb[k]), "step {step}, checkpointed: {k} differs between one process and two ranks");
        }
    }
    for step in [2, 4] {
        let load =
            |run: &Path| rollout::model::weights::load_file(&run.join(format!("checkpoints/step-{step}/model.safetensors"))).unwrap();
        let (wa, wb) = (load(&a), load(&b));
        for (k, t) in &wa {
            assert!(t.equal(&wb[k]), "step {step}: {k} differs between one process and two ranks");
        }
    }
    // Rank 0 alone logged, every step once, with the one process's rewards and losses.
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), 4);
    assert_eq!(mb.len(), 4);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x["reward"], y["reward"]);
        assert_eq!(x["dynamic_sampling/prompts_sampled"], y["dynamic_sampling/prompts_sampled"]);
        let (lx, ly) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((lx - ly).abs() <= 1e-6 * lx.abs().max(1e-3), "loss {lx} vs {ly}");
        assert_eq!(x["num_tokens"], y["num_tokens"]);
    }

    // Resuming with another number of ranks is refused, naming the right one.
    let err = ponder().args(["train", "--resume", b.to_str().unwrap(), "--set", "train.steps=6"]).output().unwrap();
    let msg = String::from_utf8_lossy(&err.stderr);
    assert_eq!(err.status.code(), Some(1), "{msg}");
    assert!(msg.contains("2 data-parallel rank(s)") && msg.contains("--nproc-per-node 2"), "{msg}");
    // ... and with the same number it continues.
    let outs = torchrun(&["train", "--resume", b.to_str().unwrap(), "--quiet", "--set", "train.steps=6"]);
    for (rank, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(metrics(&b).iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
}

/// With one-step-off overlap each rank samples its share of the next batch during the
/// update; the shares are gathered after it. Same weights as one process with the overlap.
#[test]
fn two_ranks_with_overlap_train_the_weights_of_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let r = recipe.to_str().unwrap();
    let set = ["--set", "rollout.staleness=1"];
    let one = ponder()
        .args(["train", r, "--quiet", "--set", "run.name=\"one\"", "--set", "optim.grad_accumulation=2"])
        .args(set)
        .output()
        .unwrap();
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let outs = torchrun(&["train", r, "--quiet", "--set", "run.name=\"two\"", set[0], set[1]]);
    for (rank, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let (a, b) = (tmp.path().join("runs/one"), tmp.path().join("runs/two"));
    let load = |run: &Path| rollout::model::weights::load_file(&run.join("checkpoints/step-4/model.safetensors")).unwrap();
    // Not bit for bit: the ratio's old log-probs are now the sampler's, and a rank samples
    // half the rows per forward pass, which rounds differently in the last bits.
    let (wa, wb) = (load(&a), load(&b));
    for (k, t) in &wa {
        let d = f64::try_from((t - &wb[k]).abs().max()).unwrap();
        assert!(d < 1e-5, "{k} differs by {d} between one process and two ranks");
    }
    for (x, y) in metrics(&a).iter().zip(&metrics(&b)) {
        assert_eq!(x["reward"], y["reward"], "the ranks sampled other completions");
    }
    let stale: Vec<f64> = metrics(&b).iter().map(|r| r["rollout/staleness"].as_f64().unwrap()).collect();
    assert!(stale[0] == 0.0 && stale[1..].iter().all(|&s| s > 0.0), "{stale:?}");
}

/// ZeRO-2 (`optim.zero_stage = 2`): gradients reduce-scattered, each rank updating its half
/// of the fp32 master weights and moments, the halves gathered. Without clipping it is the
/// unsharded update bit for bit, weights and the optimizer state a checkpoint holds; with
/// clipping the global norm is summed in another order (last bits). A sharded run resumes
/// exactly.
#[test]
fn zero2_equals_the_unsharded_update() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let r = recipe.to_str().unwrap().to_string();
    let run = |name: &str, extra: &[&str]| {
        let mut args = vec!["train".to_string(), r.clone(), "--quiet".into(), "--set".into(), format!("run.name=\"{name}\"")];
        for e in extra {
            args.extend(["--set".to_string(), e.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for (rank, o) in torchrun(&args).iter().enumerate() {
            assert!(o.status.success(), "{name} rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
        }
        tmp.path().join("runs").join(name)
    };
    let load = |run: &Path, step: u64, file: &str| {
        rollout::model::weights::load_file(&run.join(format!("checkpoints/step-{step}/{file}"))).unwrap()
    };
    let max_diff = |a: &Path, b: &Path, step: u64, file: &str| -> f64 {
        let (x, y) = (load(a, step, file), load(b, step, file));
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{file}: other tensors");
        x.iter().map(|(k, t)| f64::try_from((t - &y[k]).abs().max()).unwrap()).fold(0.0, f64::max)
    };
    let plain = run("plain", &["optim.max_grad_norm=0"]);
    let zero = run("zero", &["optim.max_grad_norm=0", "optim.zero_stage=2"]);
    for step in [2, 4] {
        assert_eq!(max_diff(&plain, &zero, step, "model.safetensors"), 0.0, "step {step}: weights");
        assert_eq!(max_diff(&plain, &zero, step, "train-state/optimizer.safetensors"), 0.0, "step {step}: optimizer state");
    }
    // bf16 weights: the fp32 master weights are sharded too, and a sharded bf16 run resumes
    // exactly. (Against the unsharded bf16 run it is not bit for bit: unsharded, the summed
    // gradient is written back into the bf16 gradient tensors, rounded, before the update;
    // ZeRO-2 keeps the fp32 sum.)
    let bf16 = ["optim.max_grad_norm=0", "model.dtype=\"bf16\"", "optim.zero_stage=2"];
    let zero16 = run("zero-bf16", &bf16);
    let half16 = run("zero-bf16-half", &[&bf16[..], &["train.steps=2"]].concat());
    for (rank, o) in torchrun(&["train", "--resume", half16.to_str().unwrap(), "--quiet", "--set", "train.steps=4"]).iter().enumerate() {
        assert!(o.status.success(), "resume rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(max_diff(&zero16, &half16, 4, "model.safetensors"), 0.0, "resumed bf16 sharded run: weights");
    assert_eq!(max_diff(&zero16, &half16, 4, "train-state/optimizer.safetensors"), 0.0, "resumed bf16 sharded run: optimizer");
    let st = load(&zero16, 4, "train-state/optimizer.safetensors");
    let w = load(&zero16, 4, "model.safetensors");
    for k in w.keys() {
        assert!(st.contains_key(&format!("master.{k}")), "no fp32 master copy of {k}");
    }
    let plain_clip = run("plain-clip", &[]);
    let zero_clip = run("zero-clip", &["optim.zero_stage=2"]);
    let d = max_diff(&plain_clip, &zero_clip, 4, "model.safetensors");
    assert!(d < 1e-6, "with clipping the weights differ by {d}");
    // Resume a sharded run from its step-2 checkpoint: the straight run's weights.
    let half = run("zero-half", &["optim.max_grad_norm=0", "optim.zero_stage=2", "train.steps=2"]);
    for (rank, o) in torchrun(&["train", "--resume", half.to_str().unwrap(), "--quiet", "--set", "train.steps=4"]).iter().enumerate() {
        assert!(o.status.success(), "resume rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(max_diff(&zero, &half, 4, "model.safetensors"), 0.0, "resumed sharded run");
}

/// Rollouts on an inference server (a loopback mock of SGLang's routes sampling with ponder's
/// model) with two learner ranks: each rank asks the server for its share of the samples,
/// rank 0 alone publishes the weights (once before the first rollout, then after every
/// step) and the other rank samples only after the reload. Same weights as one process on
/// its own server.
#[test]
fn two_ranks_sample_on_an_engine_and_rank_0_publishes() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let r = recipe.to_str().unwrap();
    let (one_srv, two_srv) = (model_server(EngineKind::Sglang), model_server(EngineKind::Sglang));
    let urls = |url: &str| format!("rollout.urls=[\"{url}\"]");
    let (u1, u2) = (urls(&one_srv.url), urls(&two_srv.url));
    let eng = "rollout.engine=\"sglang\"";
    let one = ponder()
        .args(["train", r, "--quiet", "--set", "run.name=\"one\"", "--set", "optim.grad_accumulation=2", "--set", eng, "--set", &u1])
        .output()
        .unwrap();
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    for (rank, o) in torchrun(&["train", r, "--quiet", "--set", "run.name=\"two\"", "--set", eng, "--set", &u2]).iter().enumerate() {
        assert!(o.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let (a, b) = (tmp.path().join("runs/one"), tmp.path().join("runs/two"));
    let load = |run: &Path| rollout::model::weights::load_file(&run.join("checkpoints/step-4/model.safetensors")).unwrap();
    let (wa, wb) = (load(&a), load(&b));
    for (k, t) in &wa {
        assert!(t.equal(&wb[k]), "{k} differs between one process and two ranks on the engine");
    }
    for (x, y) in metrics(&a).iter().zip(&metrics(&b)) {
        assert_eq!(x["reward"], y["reward"]);
        assert!(y["engine/mismatch_kl"].as_f64().unwrap().abs() < 1e-6, "{y}");
    }
    let reloads = |m: &ponder_engine::testing::MockEngine| m.routes().iter().filter(|r| *r == "/update_weights_from_disk").count();
    assert_eq!(reloads(&one_srv), 5);
    assert_eq!(reloads(&two_srv), 5, "rank 0 alone publishes: once before step 1, then after each of the 4 steps");
    assert!(two_srv.weights().unwrap().ends_with("engine-weights/step-4"), "{:?}", two_srv.weights());
}

/// Ctrl-C reaching one rank only (a launcher usually signals all): both ranks stop at the
/// same step, rank 0 saves it, both exit cleanly, and the run resumes from there.
#[test]
fn a_stop_on_one_rank_stops_every_rank_at_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = setup(tmp.path());
    let port = free_port();
    let args = ["train", recipe.to_str().unwrap(), "--quiet", "--set", "train.steps=100000", "--set", "train.save_every=0"];
    let (r0, r1) = (rank_command(&args, 0, port).spawn().unwrap(), rank_command(&args, 1, port).spawn().unwrap());
    let run = tmp.path().join("runs/dp");
    let t0 = Instant::now();
    while metrics_if_any(&run).len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the ranks never logged 3 steps");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = Command::new("kill").args(["-INT", &r1.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let (o0, o1) = (r0.wait_with_output().unwrap(), r1.wait_with_output().unwrap());
    for (rank, o) in [(0, &o0), (1, &o1)] {
        assert!(o.status.success(), "rank {rank}: {:?} {}", o.status, String::from_utf8_lossy(&o.stderr));
    }
    let steps: Vec<u64> = metrics(&run).iter().map(|r| r["step"].as_u64().unwrap()).collect();
    let last = *steps.last().unwrap();
    assert_eq!(steps, (1..=last).collect::<Vec<_>>(), "every step logged once");
    assert!(run.join(format!("checkpoints/step-{last}/model.safetensors")).exists(), "rank 0 saved the step both stopped at");
    let outs = torchrun(&["train", "--resume", run.to_str().unwrap(), "--quiet", "--set", &format!("train.steps={}", last + 2)]);
    for (rank, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(metrics(&run).len() as u64, last + 2);
}

/// The metrics rows written so far (a line still being written is skipped).
fn metrics_if_any(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r.get("reward").is_some())
        .collect()
}

/// A small R1 pipeline: task data, a pretrained base, SFT, GRPO, rejection sampling, an
/// evaluation and on-policy distillation.
fn pipeline(dir: &Path) -> PathBuf {
    let recipe = format!(
        r#"
[run]
name = "one"
seed = 5
output_dir = "{out}"
[[stages]]
name = "data"
kind = "tasks"
task = "increment"
digits = 2
train_size = 200
heldout_size = 20
sft_size = 64
[[stages]]
name = "base"
kind = "pretrain"
task = "increment"
digits = 2
corpus_size = 200
template_rate = 0.0
[stages.model]
hidden = 32
layers = 1
heads = 2
kv_heads = 1
intermediate = 64
vocab = 300
[stages.train]
steps = 5
batch_size = 8
[[stages]]
name = "sft"
kind = "sft"
data = "{{run}}/data/sft.jsonl"
[stages.train]
steps = 6
batch_size = 8
lr = 3e-3
warmup_steps = 1
log_every = 1
save_every = 3
[[stages]]
name = "rl"
kind = "grpo"
[stages.data]
train = "{{run}}/data/train.jsonl"
[stages.rollout]
group_size = 4
prompts_per_step = 4
max_new_tokens = 12
# Digits in the completion: a reward with spread from the first step.
[[stages.rewards]]
kind = "char_fraction"
chars = "0123456789"
[stages.grpo]
beta = 0.04
[stages.optim]
lr = 3e-3
[stages.train]
steps = 2
[[stages]]
name = "rs"
kind = "rejection_sample"
data = "{{run}}/data/train.jsonl"
limit = 12
samples = 2
shard_size = 4
[stages.sampling]
max_new_tokens = 12
[[stages.rewards]]
kind = "char_fraction"
chars = "0123456789"
[stages.filters]
drop_truncated = false
[[stages]]
name = "eval"
kind = "eval"
data = "{{run}}/data/heldout.jsonl"
samples = 2
samples_output = true
[stages.sampling]
max_new_tokens = 12
[[stages]]
name = "distill"
kind = "distill"
method = "on_policy"
teacher = "{{stages.rl.model}}"
student = "{{stages.sft.model}}"
sequences = "{{stages.rs.data}}"
prompts = "{{run}}/data/train.jsonl"
limit = 16
lambda = 0.5
[stages.sampling]
max_new_tokens = 12
[stages.train]
steps = 3
batch_size = 8
lr = 1e-3
warmup_steps = 0
log_every = 1
"#,
        out = dir.join("runs").display(),
    );
    let p = dir.join("pipeline.toml");
    std::fs::write(&p, recipe).unwrap();
    p
}

/// A pipeline under a launcher: `pretrain`, `sft` and `grpo` train on both ranks (each on
/// half of every batch, gradients summed), `rejection_sample` deals its shards out and `eval`
/// splits its prompts, `distill` trains on half of every batch, and `tasks` runs on rank 0
/// while rank 1 waits. The result is the one
/// process's, bit for bit, when that process accumulates the same halves (`micro_batch_size`
/// = half the batch, `grad_accumulation` = 2).
#[test]
fn two_ranks_run_a_pipeline_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = pipeline(tmp.path());
    let r = recipe.to_str().unwrap();
    let one = ponder()
        .args(["train", r, "--quiet", "--set", "stages.base.train.micro_batch_size=4", "--set", "stages.sft.train.micro_batch_size=4"])
        .args(["--set", "stages.rl.optim.grad_accumulation=2"])
        .output()
        .unwrap();
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let outs = torchrun(&["train", r, "--quiet", "--set", "run.name=\"two\""]);
    for (rank, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let (a, b) = (tmp.path().join("runs/one"), tmp.path().join("runs/two"));
    let same = |rel: &str| {
        let load = |run: &Path| rollout::model::weights::load_file(&run.join(rel)).unwrap();
        let (wa, wb) = (load(&a), load(&b));
        assert_eq!(wa.len(), wb.len());
        for (k, t) in &wa {
            assert!(t.equal(&wb[k]), "{rel}: {k} differs between one process and two ranks");
        }
    };
    same("stages/base/model/model.safetensors");
    same("stages/sft/model/model.safetensors");
    same("stages/rl/checkpoints/step-2/model.safetensors");
    // Rank 0 alone logged the SFT stage: every step once, the one process's losses.
    let rows = |run: &Path| -> Vec<(u64, f64)> {
        std::fs::read_to_string(run.join("stages/sft/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
            .collect()
    };
    let (ra, rb) = (rows(&a), rows(&b));
    assert_eq!(rb.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    for (x, y) in ra.iter().zip(&rb) {
        assert!((x.1 - y.1).abs() <= 1e-6 * x.1.abs(), "SFT step {}: loss {} vs {}", x.0, x.1, y.1);
    }
    // Rejection sampling: the same kept rows (the provenance names each run's model folder).
    let kept = |run: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join("stages/rs/data.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("source");
                v
            })
            .collect()
    };
    let (ka, kb) = (kept(&a), kept(&b));
    assert_eq!(ka.len(), kb.len());
    assert!(ka.len() >= 12, "{} rows kept", ka.len());
    assert_eq!(ka, kb);
    // The evaluation, its prompts split over the ranks: the same samples and scores.
    let eval =
        |run: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(run.join("eval/eval.json")).unwrap()).unwrap() };
    let (ea, eb) = (eval(&a), eval(&b));
    for k in ["accuracy", "format_rate", "mean_completion_tokens"] {
        assert_eq!(ea[k], eb[k], "eval {k}");
    }
    // Every sample, in order: the same text and scores; its mean log-prob to float rounding
    // (a rank's forward passes hold half the rows, which rounds differently in the last bits).
    let lines = |run: &Path| -> Vec<(serde_json::Value, f64)> {
        let text = std::fs::read_to_string(run.join("eval/eval.samples.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("model");
                let lp = o.remove("logprob_mean").unwrap().as_f64().unwrap();
                (v, lp)
            })
            .collect()
    };
    let (la, lb) = (lines(&a), lines(&b));
    assert_eq!(la.len(), 40, "20 problems x 2 samples");
    for (i, ((x, lx), (y, ly))) in la.iter().zip(&lb).enumerate() {
        assert!(x == y, "eval sample {i} differs:\n{x}\n{y}");
        assert!((lx - ly).abs() <= 1e-5, "eval sample {i}: mean log-prob {lx} vs {ly}");
    }
    // On-policy distillation: each rank trains on half of every batch (its teacher sequences
    // and its own samples, seeded as in one process), each half's loss weighted by its share
    // of the positions. One process has no micro-batches there, so the sums round differently:
    // the same weights to float rounding, and the same logged losses.
    let load = |run: &Path| rollout::model::weights::load_file(&run.join("stages/distill/model/model.safetensors")).unwrap();
    let (da, db, before) = (load(&a), load(&b), rollout::model::weights::load_file(&a.join("stages/sft/model/model.safetensors")).unwrap());
    let mut moved = 0.0f64;
    for (k, t) in &da {
        let d = f64::try_from((t - &db[k]).abs().max()).unwrap();
        assert!(d <= 1e-5, "distill: {k} differs by {d} between one process and two ranks");
        moved = moved.max(f64::try_from((t - &before[k]).abs().max()).unwrap());
    }
    assert!(moved > 1e-4, "distillation did not move the student ({moved})");
    let dl = |run: &Path| -> Vec<f64> {
        std::fs::read_to_string(run.join("stages/distill/metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
            .collect()
    };
    let (xa, xb) = (dl(&a), dl(&b));
    assert_eq!(xa.len(), 3);
    for (x, y) in xa.iter().zip(&xb) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "distill loss {x} vs {y}");
    }
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(b.join("pipeline.json")).unwrap()).unwrap();
    assert_eq!(state["completed"].as_array().unwrap().len(), 7);
    assert!(String::from_utf8_lossy(&outs[1].stderr).contains("rank 1 of 2"));
}

/// A rank 0 that dies while it runs a stage alone (here writing a million task problems):
/// the waiting rank exits with an error naming the stage, long before the group's timeout,
/// instead of hanging.
#[test]
fn a_waiting_rank_fails_cleanly_when_rank_0_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = tmp.path().join("p.toml");
    std::fs::write(
        &recipe,
        format!(
            "[run]\nname = \"one\"\noutput_dir = \"{}\"\n[[stages]]\nname = \"data\"\nkind = \"tasks\"\ntask = \"increment\"\ndigits = 6\ntrain_size = 1000000\nheldout_size = 20\n",
            tmp.path().join("runs").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let args = ["train", recipe.to_str().unwrap(), "--quiet"];
    // A hang would end at the group's timeout, 600 s, not the default 1800.
    let spawn = |rank| rank_command(&args, rank, port).env("PONDER_DIST_TIMEOUT_S", "600").spawn().unwrap();
    let (mut r0, r1) = (spawn(0), spawn(1));
    // Rank 0 is in the stage once its folder exists.
    let t0 = Instant::now();
    while !tmp.path().join("runs/one/stages/data").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "rank 0 never reached the tasks stage");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    r0.kill().unwrap();
    let killed = Instant::now();
    let out = r1.wait_with_output().unwrap();
    let _ = r0.wait();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!tmp.path().join("runs/one/pipeline.json").exists(), "rank 0 finished the stage before it was killed");
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("waiting for rank 0") && msg.contains("data"), "{msg}");
    assert!(killed.elapsed() < Duration::from_secs(60), "rank 1 took {:?} to notice", killed.elapsed());
}
