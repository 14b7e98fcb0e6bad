//! Runs survive what happens to real runs: a damaged newest checkpoint, a second process on
//! the same run folder, and kill -9 at random moments (checkpoint writes included) in GRPO,
//! pretraining and SFT. After each, resuming ends bit-identical to an uninterrupted run (on
//! CPU), with every metrics step logged once.

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{ponder, steps_logged, tiny_model_and_prompts};

/// A tiny model, prompts and a GRPO recipe writing to `dir/runs/<name>`; returns the recipe.
fn grpo_setup(dir: &Path, steps: usize, save_every: usize) -> PathBuf {
    tiny_model_and_prompts(dir);
    let recipe = dir.join("r.toml");
    std::fs::write(
        &recipe,
        format!(
            "[model]\npath = \"{d}/model\"\n[data]\ntrain = \"{d}/train.jsonl\"\ntemplate = \"{{prompt}} =\"\n\
             [rollout]\ngroup_size = 4\nprompts_per_step = 2\nmax_new_tokens = 6\n[[rewards]]\nkind = \"char_fraction\"\nchars = \"0123456789\"\n\
             [optim]\nlr = 1e-3\n[grpo]\nbeta = 0.04\n[train]\nsteps = {steps}\nsave_every = {save_every}\nlog_samples_every = 0\n",
            d = dir.display()
        ),
    )
    .unwrap();
    recipe
}

fn train(recipe: &Path, out: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    ponder()
        .args(["train", "--quiet"])
        .arg(recipe)
        .args(["--set", &format!("run.output_dir=\"{}\"", out.display()), "--set", &format!("run.name=\"{name}\"")])
        .args(extra)
        .output()
        .unwrap()
}

fn resume(run: &Path, extra: &[&str]) -> std::process::Output {
    ponder().args(["train", "--quiet", "--resume"]).arg(run).args(extra).output().unwrap()
}

fn same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        assert_eq!(std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap(), "{f} differs: {} vs {}", a.display(), b.display());
    }
}

#[test]
fn a_damaged_checkpoint_is_skipped_and_from_picks_one() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = grpo_setup(tmp.path(), 6, 2);
    let out = tmp.path().join("runs");
    let o = train(&recipe, &out, "straight", &["--set", "train.keep_last=0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let straight = out.join("straight");

    // Stop after 4 steps, then truncate the newest checkpoint's weights.
    let o = train(&recipe, &out, "damaged", &["--set", "train.steps=4", "--set", "train.keep_last=0"]);
    assert!(o.status.success());
    let run = out.join("damaged");
    let w = run.join("checkpoints/step-4/model.safetensors");
    let len = std::fs::metadata(&w).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&w).unwrap().set_len(len / 2).unwrap();
    let o = resume(&run, &["--set", "train.steps=6"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("step-4") && err.contains("damaged") && err.contains("truncated"), "{err}");
    // It went on from step 2: steps 3..6 again, each logged once, and the same weights as a
    // run that was never damaged.
    assert_eq!(steps_logged(&run), (1..=6).collect::<Vec<_>>());
    same_files(
        &straight.join("checkpoints/step-6"),
        &run.join("checkpoints/step-6"),
        &["model.safetensors", "train-state/optimizer.safetensors"],
    );

    // --from step-2 on the finished straight run redoes steps 3..6 to the same bits.
    let before = std::fs::read(straight.join("checkpoints/step-6/model.safetensors")).unwrap();
    let o = resume(&straight, &["--from", "step-2", "--set", "train.keep_last=0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(steps_logged(&straight), (1..=6).collect::<Vec<_>>());
    assert_eq!(std::fs::read(straight.join("checkpoints/step-6/model.safetensors")).unwrap(), before);
    let o = resume(&straight, &["--from", "step-5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("--from step-5"), "{err}");
}

#[test]
fn a_second_process_on_a_run_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = grpo_setup(tmp.path(), 1_000_000, 0);
    let out = tmp.path().join("runs");
    let run = out.join("busy");
    let mut first = ponder()
        .args(["train", "--quiet"])
        .arg(&recipe)
        .args(["--set", &format!("run.output_dir=\"{}\"", out.display()), "--set", "run.name=\"busy\""])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while steps_logged(&run).len() < 2 {
        assert!(t0.elapsed().as_secs() < 120, "no training steps logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = resume(&run, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another ponder process") && err.contains(&format!("pid {}", first.id())), "{err}");
    // kill -9 releases the lock with the process: a resume then runs, and says the previous
    // holder ended uncleanly.
    first.kill().unwrap();
    first.wait().unwrap();
    let o = resume(&run, &["--set", "train.steps=3", "--set", "train.save_every=1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("without releasing it cleanly"), "{err}");
}

/// Spawns `start` (then `resume` after the first time) and, `kills` times, waits until the
/// run has logged a new step since it started, then kills it with SIGKILL a random 0-60 ms
/// later (so kills land in checkpoint writes, in step computations and in start-up); then
/// lets the last process finish. Progress between kills is guaranteed, so the test ends.
fn kill_then_finish(
    rng: &mut StdRng,
    start: impl Fn() -> Command,
    resume: impl Fn() -> Command,
    started: impl Fn() -> bool,
    progress: impl Fn() -> usize,
    kills: usize,
) {
    for round in 0..=kills {
        let mut cmd = if round == 0 || !started() { start() } else { resume() };
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let before = progress();
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "a run ended with {status}: {err}");
                assert_eq!(round, kills, "the run finished after only {round} kills");
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(300), "no progress");
            if round < kills && progress() > before {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..60)));
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn kill_9_at_random_moments_then_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut rng = StdRng::seed_from_u64(7);

    // GRPO, a checkpoint every step (so kills land in checkpoint writes too).
    let recipe = grpo_setup(dir, 10, 1);
    let out = dir.join("runs");
    let o = train(&recipe, &out, "straight", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = out.join("killed");
    let start = || {
        let mut c = ponder();
        c.args(["train", "--quiet"]).arg(&recipe).args([
            "--set",
            &format!("run.output_dir=\"{}\"", out.display()),
            "--set",
            "run.name=\"killed\"",
        ]);
        c
    };
    let resume_cmd = || {
        let mut c = ponder();
        c.args(["train", "--quiet", "--resume"]).arg(&run);
        c
    };
    kill_then_finish(&mut rng, start, resume_cmd, || run.join("config.toml").exists(), || steps_logged(&run).len(), 5);
    assert_eq!(steps_logged(&run), (1..=10).collect::<Vec<_>>());
    same_files(
        &out.join("straight/checkpoints/step-10"),
        &run.join("checkpoints/step-10"),
        &["model.safetensors", "train-state/optimizer.safetensors"],
    );

    // A pipeline: pretraining then SFT, checkpoints every 5 steps.
    let sft = dir.join("sft.jsonl");
    std::fs::write(
        &sft,
        (0..40).map(|i| format!("{{\"prompt\": \"echo {i}\", \"completion\": \" <answer> {i} </answer>\"}}\n")).collect::<String>(),
    )
    .unwrap();
    let pipeline = |name: &str| {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "[run]\nname = \"{name}\"\noutput_dir = \"{o}\"\n[[stages]]\nname = \"base\"\nkind = \"pretrain\"\ntask = \"increment\"\ncorpus_size = 300\ntemplate_rate = 0.0\n\
                 [stages.model]\nhidden = 32\nlayers = 1\nheads = 2\nkv_heads = 1\nintermediate = 64\nvocab = 300\n[stages.train]\nsteps = 60\nbatch_size = 8\nsave_every = 5\nlog_every = 1\n\
                 [[stages]]\nname = \"sft\"\nkind = \"sft\"\ndata = \"{sft}\"\ntemplate = \"{{prompt}} ->\"\n[stages.train]\nsteps = 40\nbatch_size = 8\nsave_every = 5\nlog_every = 1\n",
                o = out.display(),
                sft = sft.display()
            ),
        )
        .unwrap();
        p
    };
    let p_straight = pipeline("pstraight");
    let o = ponder().args(["train", "--quiet"]).arg(&p_straight).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p_killed = pipeline("pkilled");
    let prun = out.join("pkilled");
    let start = || {
        let mut c = ponder();
        c.args(["train", "--quiet"]).arg(&p_killed);
        c
    };
    let resume_cmd = || {
        let mut c = ponder();
        c.args(["train", "--quiet", "--resume"]).arg(&prun);
        c
    };
    let progress = || steps_logged(&prun.join("stages/base")).len() + steps_logged(&prun.join("stages/sft")).len();
    kill_then_finish(&mut rng, start, resume_cmd, || prun.join("config.toml").exists(), progress, 6);
    for stage in ["base", "sft"] {
        same_files(
            &out.join(format!("pstraight/stages/{stage}/model")),
            &prun.join(format!("stages/{stage}/model")),
            &["model.safetensors"],
        );
    }
    assert_eq!(steps_logged(&prun.join("stages/base")), (1..=60).collect::<Vec<_>>());
    assert_eq!(steps_logged(&prun.join("stages/sft")), (1..=40).collect::<Vec<_>>());
}
