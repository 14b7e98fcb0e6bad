//! Data-parallel GRPO: two `ponder train` processes launched as torchrun would (RANK,
//! WORLD_SIZE, MASTER_ADDR, MASTER_PORT), Gloo on 127.0.0.1, against one process. Each rank
//! draws half the prompts and runs every other learner pass; an update then has at least two
//! passes (grad_accumulation rounded up to a multiple of the world), and the summed gradient
//! is the one process's accumulated gradient with grad_accumulation = 2: the weights must be
//! bit-identical.

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

/// `ponder train ARGS` as ranks 0 and 1 of a world of two.
fn torchrun(args: &[&str]) -> Vec<Output> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut kids: Vec<_> = (0..2)
        .map(|rank| {
            ponder()
                .args(args)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
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
    let (a, b) = (tmp.path().join("runs/one"), tmp.path().join("runs/two"));
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

#[test]
fn pipelines_are_refused_under_a_launcher() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p.toml");
    std::fs::write(
        &p,
        format!("[run]\noutput_dir = \"{}\"\n[[stages]]\nname = \"data\"\nkind = \"tasks\"\ntask = \"addition\"\n", tmp.path().display()),
    )
    .unwrap();
    let out = ponder()
        .args(["train", p.to_str().unwrap()])
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", "1")
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("pipeline") && msg.contains("GRPO recipes"), "{msg}");
}
