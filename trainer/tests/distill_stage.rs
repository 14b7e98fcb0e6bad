//! The `distill` stage on tiny models: a `kd` run from a top-k cache whose k covers the
//! vocabulary equals the run with the online teacher (and a small k does not); on-policy
//! distillation lowers the teacher-student KL measured on held-out prompts far beyond the
//! sampling noise; a stopped on-policy run resumes to bit-identical weights; a tokenizer
//! mismatch and bad settings are clear errors.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use trainer::distill::{self, Checkpoints, Job, Method, Settings};
use trainer::lm::{self, LmCfg, LmExample};
use trainer::pipeline::{self, Pipeline};
use trainer::tiny::{self, TinyShape};

const TEMPLATE: &str = "A conversation between User and Assistant. User: {prompt} Assistant:";

/// A teacher with peaked next-token distributions: a tiny Qwen2 trained for a few seconds on
/// the arithmetic corpus its tokenizer was built from.
fn teacher(dir: &Path) -> PathBuf {
    let m = dir.join("teacher");
    let corpus = tiny::default_corpus(3, 400);
    let shape = TinyShape { hidden: 48, layers: 2, heads: 4, kv_heads: 2, intermediate: 96, vocab: 330 };
    tiny::create_random_model(&m, shape, &corpus, 11).unwrap();
    let tk = rollout::tokenizer::Tokenizer::from_dir(&m).unwrap();
    let eos = tk.token_to_id(tiny::EOS).unwrap();
    let ex: Vec<LmExample> = corpus
        .iter()
        .map(|d| {
            let mut ids = tk.encode(d, false).unwrap();
            ids.push(eos);
            LmExample { ids, loss_from: 0 }
        })
        .collect();
    let p = rollout::folder::Policy::load(&m, tch::Kind::Float, tch::Device::Cpu).unwrap();
    let cfg = LmCfg { steps: 60, batch_size: 16, lr: 5e-3, warmup_steps: 5, log_every: 100, save_every: 0, ..Default::default() };
    lm::train(&p, &ex, &cfg, 1, &mut [], true, None, &AtomicBool::new(false)).unwrap();
    p.save_weights(&m, tch::Kind::Float, None).unwrap();
    m
}

fn prompts(path: &Path, from: u32, n: u32) {
    let body: String = (from..from + n)
        .map(|i| {
            format!("{{\"prompt\": \"What is {} + {}?\", \"answer\": \"{}\"}}\n", i * 7 % 100, i * 13 % 100, i * 7 % 100 + i * 13 % 100)
        })
        .collect();
    std::fs::write(path, body).unwrap();
}

fn run_pipeline(text: &str) -> anyhow::Result<()> {
    let table: toml::Table = text.parse().unwrap();
    let p: Pipeline = trainer::config::from_table(table.clone(), "test")?;
    pipeline::run(p, &table, false, true, Arc::new(AtomicBool::new(false)))
}

fn metrics(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn kd_recipe(out: &Path, name: &str, teacher: &Path, prompts: &Path, extra: &str) -> String {
    format!(
        r#"
[run]
name = "{name}"
seed = 3
output_dir = "{out}"
[[stages]]
name = "kd"
kind = "distill"
method = "kd"
teacher = "{teacher}"
prompts = "{prompts}"
template = "{TEMPLATE}"
teacher_samples = 2
temperature = 1.5
{extra}
[stages.student_model]
hidden = 32
layers = 1
heads = 2
kv_heads = 1
intermediate = 64
[stages.sampling]
max_new_tokens = 16
[stages.train]
steps = 6
batch_size = 8
lr = 3e-3
warmup_steps = 1
log_every = 1
"#,
        out = out.display(),
        teacher = teacher.display(),
        prompts = prompts.display(),
    )
}

fn weights(dir: &Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    rollout::model::weights::load_file(&dir.join("model.safetensors")).unwrap()
}

/// `dtype = "bf16"`: teacher and student in bf16, the student trained through fp32 master
/// weights. On the same teacher sequences its KD loss follows the fp32 run's.
#[test]
fn bf16_distillation_tracks_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let t = teacher(tmp.path());
    let pr = tmp.path().join("prompts.jsonl");
    prompts(&pr, 0, 12);
    let out = tmp.path().join("runs");
    run_pipeline(&kd_recipe(&out, "f32", &t, &pr, "")).unwrap();
    // The bf16 run reads the fp32 run's teacher sequences (a stage reuses the file it finds),
    // so both train on the same data.
    let stage = |n: &str| out.join(n).join("stages/kd");
    std::fs::create_dir_all(stage("bf16")).unwrap();
    std::fs::copy(stage("f32").join("teacher_sequences.jsonl"), stage("bf16").join("teacher_sequences.jsonl")).unwrap();
    run_pipeline(&kd_recipe(&out, "bf16", &t, &pr, "dtype = \"bf16\"")).unwrap();
    let loss = |n: &str| metrics(&stage(n).join("metrics.jsonl")).iter().map(|r| r["loss"].as_f64().unwrap()).collect::<Vec<_>>();
    let (a, b) = (loss("f32"), loss("bf16"));
    assert_eq!(a.len(), 6);
    assert!(a[5] < a[0], "fp32 KD did not learn: {a:?}");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        // Measured: within 0.07 % at every step.
        assert!((x - y).abs() <= 0.01 * x.abs(), "step {}: fp32 loss {x}, bf16 {y}", i + 1);
    }
    let w = weights(&stage("bf16").join("model"));
    assert!(w.values().all(|t| t.kind() == tch::Kind::BFloat16), "the bf16 student is saved in bf16");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(stage("bf16").join("model/config.json")).unwrap()).unwrap();
    assert!(cfg.to_string().contains("bfloat16"), "{cfg}");
}

#[test]
fn a_cache_covering_the_vocabulary_trains_exactly_like_the_online_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let t = teacher(tmp.path());
    let pr = tmp.path().join("prompts.jsonl");
    prompts(&pr, 0, 12);
    let out = tmp.path().join("runs");
    run_pipeline(&kd_recipe(&out, "online", &t, &pr, "")).unwrap();
    run_pipeline(&kd_recipe(&out, "full", &t, &pr, "teacher_logprobs = \"cache\"\ntop_k = 100000")).unwrap();
    run_pipeline(&kd_recipe(&out, "top3", &t, &pr, "teacher_logprobs = \"cache\"\ntop_k = 3")).unwrap();
    let stage = |n: &str| out.join(n).join("stages/kd");
    let loss = |n: &str| metrics(&stage(n).join("metrics.jsonl")).iter().map(|r| r["loss"].as_f64().unwrap()).collect::<Vec<_>>();
    let (a, b, c) = (loss("online"), loss("full"), loss("top3"));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "online {x} vs full cache {y}");
    }
    let (wa, wb, wc) =
        (weights(&stage("online").join("model")), weights(&stage("full").join("model")), weights(&stage("top3").join("model")));
    let maxdiff = |u: &std::collections::BTreeMap<String, tch::Tensor>, v: &std::collections::BTreeMap<String, tch::Tensor>| {
        u.iter().map(|(k, x)| f64::try_from((x - &v[k]).abs().max()).unwrap()).fold(0.0, f64::max)
    };
    assert!(maxdiff(&wa, &wb) < 1e-5, "weights differ by {}", maxdiff(&wa, &wb));
    // A top-3 cache keeps only part of the teacher: the comparison above can fail.
    assert!((a[0] - c[0]).abs() > 1e-2, "top-3 loss {} too close to the full one {}", c[0], a[0]);
    assert!(maxdiff(&wa, &wc) > 1e-4);
    // The cache holds 8 k + 4 bytes per completion position, plus the offsets.
    let s: Value = serde_json::from_str(&std::fs::read_to_string(stage("top3").join("summary.json")).unwrap()).unwrap();
    let positions = s["cache"]["positions"].as_u64().unwrap();
    assert_eq!(s["cache"]["bytes_per_position"].as_u64(), Some(28));
    let bytes = s["cache"]["file_bytes"].as_u64().unwrap();
    assert!(bytes >= 28 * positions && bytes < 28 * positions + 8 * 40 + 2048, "{bytes} bytes for {positions} positions");
    // Both sequences sets are the teacher's samples: identical across the three runs.
    let seqs = |n: &str| std::fs::read_to_string(stage(n).join("teacher_sequences.jsonl")).unwrap();
    assert_eq!(seqs("online"), seqs("top3"));
    assert_eq!(seqs("online").lines().count(), 24);
}

#[test]
fn on_policy_distillation_lowers_the_heldout_kl_beyond_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let t = teacher(tmp.path());
    let (train, held) = (tmp.path().join("train.jsonl"), tmp.path().join("held.jsonl"));
    prompts(&train, 0, 64);
    prompts(&held, 1000, 48);
    let out = tmp.path().join("runs");
    let recipe = format!(
        r#"
[run]
name = "op"
seed = 1
output_dir = "{out}"
[[stages]]
name = "op"
kind = "distill"
method = "on_policy"
teacher = "{t}"
prompts = "{train}"
template = "{TEMPLATE}"
[stages.eval]
data = "{held}"
every = 100
limit = 16
[stages.student_model]
family = "llama"
hidden = 32
layers = 2
heads = 2
kv_heads = 1
intermediate = 64
[stages.sampling]
max_new_tokens = 20
[stages.train]
steps = 100
batch_size = 8
lr = 5e-3
warmup_steps = 2
log_every = 5
"#,
        out = out.display(),
        t = t.display(),
        train = train.display(),
        held = held.display()
    );
    run_pipeline(&recipe).unwrap();
    let stage = out.join("op/stages/op");
    // Independent measurement: the student before and after samples the 48 held-out prompts
    // (fixed seed), the teacher scores each token; paired per-prompt differences.
    let tk = Arc::new(rollout::tokenizer::Tokenizer::from_dir(&t).unwrap());
    let teacher = rollout::folder::Policy::load(&t, tch::Kind::Float, tch::Device::Cpu).unwrap();
    let held_ids: Vec<Vec<i64>> = (1000..1048u32)
        .map(|i| tk.encode(&TEMPLATE.replace("{prompt}", &format!("What is {} + {}?", i * 7 % 100, i * 13 % 100)), true).unwrap())
        .collect();
    let params = rollout::generate::SamplingParams { max_new_tokens: 20, ..Default::default() };
    let measure = |dir: &Path| {
        let student = rollout::folder::Policy::load(dir, tch::Kind::Float, tch::Device::Cpu).unwrap();
        assert_eq!(student.model.cfg.arch, rollout::Arch::Llama);
        let pool = rollout::pool::RolloutPool::from_dir(dir, &[tch::Device::Cpu], tch::Kind::Float, tk.clone()).unwrap();
        distill::measure_kl(&teacher, &student, &pool, &held_ids, &params, 77, 1.0, tk.vocab_size() as i64).unwrap()
    };
    let before = measure(&stage.join("student-init"));
    let after = measure(&stage.join("model"));
    let d: Vec<f64> = before.per_sequence_reverse_kl.iter().zip(&after.per_sequence_reverse_kl).map(|(b, a)| b - a).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    eprintln!(
        "held-out reverse KL {:.3} -> {:.3} (drop {mean:.3} +- {:.3} s.e.), agreement {:.3} -> {:.3}",
        before.reverse_kl,
        after.reverse_kl,
        sd / n.sqrt(),
        before.agreement,
        after.agreement
    );
    assert!(mean > 5.0 * sd / n.sqrt(), "drop {mean} is within 5 standard errors ({})", sd / n.sqrt());
    assert!(after.reverse_kl < 0.5 * before.reverse_kl, "reverse KL {} -> {}", before.reverse_kl, after.reverse_kl);
    // The stage's own held-out measurement (step 0 and the end) saw the same direction.
    let rows = metrics(&stage.join("metrics.jsonl"));
    let ev: Vec<f64> = rows.iter().filter_map(|r| r.get("eval/kl_reverse").and_then(Value::as_f64)).collect();
    assert_eq!(ev.len(), 2, "eval at step 0 and step 100");
    assert!(ev[1] < ev[0]);
    let acc: Vec<f64> = rows.iter().filter_map(|r| r.get("eval/accuracy").and_then(Value::as_f64)).collect();
    assert_eq!(acc.len(), 2, "held-out accuracy beside the KL");
    // Per-step metrics: loss, KL and agreement, logged every 5 steps.
    let last = rows.last().unwrap();
    for k in ["loss", "kl", "kl_reverse", "agreement", "on_policy/mean_length", "flops/total"] {
        assert!(last.get(k).and_then(Value::as_f64).is_some(), "metric {k} missing: {last}");
    }
    // The model folder is Hugging Face layout.
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(stage.join("model").join(f).exists(), "{f} missing from the model folder");
    }
}

#[test]
fn a_stopped_on_policy_run_resumes_to_identical_weights() {
    use trainer::metrics::{Row, Sink};
    struct StopAt(u64, Arc<AtomicBool>);
    impl Sink for StopAt {
        fn log(&mut self, step: u64, _: &Row) -> anyhow::Result<()> {
            if step == self.0 {
                self.1.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = teacher(tmp.path());
    let s_dir = tmp.path().join("student");
    let shape = TinyShape { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64, vocab: 0 };
    tiny::create_with_tokenizer(&s_dir, shape, rollout::Arch::Qwen2, &t, None, 5).unwrap();
    let tk = Arc::new(rollout::tokenizer::Tokenizer::from_dir(&t).unwrap());
    let teacher = rollout::folder::Policy::load(&t, tch::Kind::Float, tch::Device::Cpu).unwrap();
    let prompts: Vec<Vec<i64>> = (0..10).map(|i| tk.encode(&format!("User: What is {i} + {}? Assistant:", i * 3), true).unwrap()).collect();
    let params = rollout::generate::SamplingParams { max_new_tokens: 12, ..Default::default() };
    let tpool = rollout::pool::RolloutPool::from_dir(&t, &[tch::Device::Cpu], tch::Kind::Float, tk.clone()).unwrap();
    let (seqs, _) = distill::sample_sequences(&tpool, &prompts, 1, &params, 9).unwrap();
    let settings = Settings {
        method: Method::OnPolicy,
        divergence: trainer::distill::loss::Divergence::Jsd,
        beta: 0.3,
        temperature: 1.0,
        tail: Default::default(),
        lambda: 0.5,
        sampling: params.clone(),
        train: LmCfg { steps: 8, batch_size: 6, lr: 3e-3, warmup_steps: 2, log_every: 1, save_every: 3, ..Default::default() },
        seed: 4,
        vocab: tk.vocab_size() as i64,
    };
    // A run from the untrained student with these settings, stopped at `stop_at` if given.
    let run_with = |settings: &Settings, stop_at: Option<u64>, ck: &Path| {
        let student = rollout::folder::Policy::load(&s_dir, tch::Kind::Float, tch::Device::Cpu).unwrap();
        let pool = rollout::pool::RolloutPool::from_dir(&s_dir, &[tch::Device::Cpu], tch::Kind::Float, tk.clone()).unwrap();
        let job = Job {
            settings: settings.clone(),
            student: &student,
            teacher: Some(&teacher),
            sequences: &seqs,
            cache: None,
            prompts: &prompts,
            pool: Some(&pool),
            eval: None,
            setup_flops: 0.0,
            dist: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(StopAt(stop_at.unwrap_or(0), stop.clone()))];
        let c = Checkpoints { dir: ck.to_path_buf(), side_files: s_dir.clone(), keep_last: 1 };
        distill::train(&job, &mut sinks, true, Some(&c), &stop).map(|out| (out, student.named_tensors()))
    };
    let run = |stop_at: Option<u64>, ck: &Path| run_with(&settings, stop_at, ck).unwrap();
    let (straight, w0) = run(None, &tmp.path().join("a"));
    assert_eq!((straight.steps_done, straight.interrupted), (8, false));
    let (first, _) = run(Some(5), &tmp.path().join("b"));
    assert_eq!((first.steps_done, first.interrupted), (5, true));
    assert!(tmp.path().join("b/checkpoints/step-5/config.json").exists(), "checkpoint in HF layout");
    let (second, w1) = run(None, &tmp.path().join("b"));
    assert_eq!((second.steps_done, second.interrupted), (8, false));
    for (k, x) in &w0 {
        assert!(x.equal(&w1[k]), "{k} differs after resume");
    }
    assert_eq!(straight.flops, second.flops, "cumulative FLOPs carry over the resume");
    // A real out-of-memory error at step 5 (after the step-3 checkpoint) saves step 4 and
    // says so; resuming from it ends where the straight run did, FLOPs included.
    let failing = Settings { train: LmCfg { fail_alloc_at_step: Some(5), ..settings.train.clone() }, ..settings.clone() };
    let c = tmp.path().join("c");
    let e = format!("{:#}", run_with(&failing, None, &c).unwrap_err());
    assert!(e.contains("step 5 failed") && e.contains("step-4") && e.contains("Out of memory"), "{e}");
    let (third, w2) = run(None, &c);
    assert_eq!((third.steps_done, third.interrupted), (8, false));
    for (k, x) in &w0 {
        assert!(x.equal(&w2[k]), "{k} differs after resuming from the out-of-memory checkpoint");
    }
    assert_eq!(straight.flops, third.flops);
    let init = rollout::folder::Policy::load(&s_dir, tch::Kind::Float, tch::Device::Cpu).unwrap().named_tensors();
    assert!(!w0["model.norm.weight"].equal(&init["model.norm.weight"]), "training moved the weights");
}

#[test]
fn a_tokenizer_mismatch_names_both_sizes_and_the_first_differing_token() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = |v| TinyShape { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64, vocab: v };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny::create_random_model(&a, shape(330), &tiny::default_corpus(1, 300), 1).unwrap();
    let other: Vec<String> = (0..300).map(|i| format!("the quick brown fox {i} jumps over the lazy dog, then naps")).collect();
    tiny::create_random_model(&b, shape(310), &other, 1).unwrap();
    let pr = tmp.path().join("p.jsonl");
    prompts(&pr, 0, 4);
    let out = tmp.path().join("runs");
    let recipe = format!(
        "[run]\nname = \"mm\"\noutput_dir = \"{}\"\n[[stages]]\nname = \"kd\"\nkind = \"distill\"\nmethod = \"kd\"\nteacher = \"{}\"\nstudent = \"{}\"\nprompts = \"{}\"\n",
        out.display(),
        a.display(),
        b.display(),
        pr.display()
    );
    let err = format!("{:#}", run_pipeline(&recipe).unwrap_err());
    // The truth, read from the two tokenizer.json files directly.
    let vocab = |d: &Path| -> Vec<Option<String>> {
        let j: Value = serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer.json")).unwrap()).unwrap();
        let mut m: std::collections::BTreeMap<u64, String> =
            j["model"]["vocab"].as_object().unwrap().iter().map(|(k, v)| (v.as_u64().unwrap(), k.clone())).collect();
        for t in j["added_tokens"].as_array().unwrap() {
            m.insert(t["id"].as_u64().unwrap(), t["content"].as_str().unwrap().to_string());
        }
        (0..=*m.keys().max().unwrap()).map(|i| m.get(&i).cloned()).collect()
    };
    let (va, vb) = (vocab(&a), vocab(&b));
    let first = (0..va.len().max(vb.len())).find(|&i| va.get(i).cloned().flatten() != vb.get(i).cloned().flatten()).unwrap();
    assert!(err.contains(&format!("has {} tokens", va.len())) && err.contains(&format!("has {} tokens", vb.len())), "{err}");
    assert!(err.contains(&format!("first difference is at id {first}")), "{err}");
    assert!(err.contains("stages[0] (kd)"), "{err}");
}

#[test]
fn bad_settings_are_clear_errors_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().display().to_string();
    let missing = tmp.path().join("no-teacher");
    let stage = |body: &str| format!("[run]\nname = \"x\"\noutput_dir = \"{out}\"\n[[stages]]\nname = \"d\"\nkind = \"distill\"\n{body}\n");
    let cases = [
        (format!("method = \"kd\"\nteacher = \"{}\"\nteacher_recipe = \"./ponder train recipes/tiny-r1.toml\"\nprompts = \"p.jsonl\"", missing.display()), "run that first"),
        ("method = \"kd\"\nprompts = \"p.jsonl\"".to_string(), "needs a `teacher`"),
        ("method = \"sft\"".to_string(), "needs `sequences`"),
        ("method = \"kd\"\nteacher = \"{stages.t.model}\"\nprompts = \"p.jsonl\"\ndivergence = \"jsd\"\nbeta = 1.0".to_string(), "must be in (0, 1)"),
        ("method = \"kd\"\nteacher = \"{stages.t.model}\"\nprompts = \"p.jsonl\"\ndivergence = \"reverse_kl\"\nteacher_logprobs = \"cache\"".to_string(), "use tail = \"bucket\""),
        ("method = \"on_policy\"\nteacher = \"{stages.t.model}\"\nprompts = \"p.jsonl\"\nteacher_logprobs = \"cache\"".to_string(), "scores them online"),
        ("method = \"on_policy\"\nteacher = \"{stages.t.model}\"\nprompts = \"p.jsonl\"\nlambda = 1.5".to_string(), "in [0, 1]"),
        ("method = \"kd\"\nteacher = \"{stages.t.model}\"\nprompts = \"p.jsonl\"\nlambda = 0.5".to_string(), "`on_policy` only"),
        ("method = \"kd\"\nteacher = \"{stages.t.model}\"\nprompts = \"p.jsonl\"\ndivergance = \"jsd\"".to_string(), "divergance"),
        ("method = \"distil\"\nteacher = \"t\"".to_string(), "method"),
    ];
    for (body, want) in cases {
        let mut text = stage(&body);
        if body.contains("{stages.t.model}") {
            // A model-producing stage named `t` before, so the reference is valid.
            text = text.replace(
                "[[stages]]\nname = \"d\"",
                "[[stages]]\nname = \"t\"\nkind = \"sft\"\nmodel = \"m\"\ndata = \"s.jsonl\"\n[[stages]]\nname = \"d\"",
            );
        }
        let table: toml::Table = text.parse().unwrap();
        let err = match trainer::config::from_table::<Pipeline>(table, "test") {
            Ok(p) => format!("{:#}", pipeline::validate(&p).unwrap_err()),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(want), "{body}\n=> {err}\n(wanted `{want}`)");
    }
}

#[test]
fn the_distill_recipe_checks_out_and_asks_for_its_teacher_first() {
    // Run from a folder without runs/tiny-r1: every stage's settings are checked, then the
    // missing teacher is named with the command that makes it, before anything runs.
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/tiny-r1-distill.toml");
    let table: toml::Table = std::fs::read_to_string(recipe).unwrap().parse().unwrap();
    let p: Pipeline = trainer::config::from_table(table, "recipe").unwrap();
    assert!(!Path::new("runs/tiny-r1").exists());
    let err = format!("{:#}", pipeline::validate(&p).unwrap_err());
    assert!(
        err.contains("runs/tiny-r1/stages/rl-all/checkpoints/step-120") && err.contains("./ponder train recipes/tiny-r1.toml"),
        "{err}"
    );
}

#[test]
fn a_pretrain_stage_can_reuse_the_teachers_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("t");
    let shape = TinyShape { hidden: 32, layers: 1, heads: 2, kv_heads: 1, intermediate: 64, vocab: 330 };
    tiny::create_random_model(&t, shape, &tiny::default_corpus(1, 300), 1).unwrap();
    let out = tmp.path().join("runs");
    let recipe = format!(
        "[run]\nname = \"pt\"\noutput_dir = \"{}\"\n[[stages]]\nname = \"base\"\nkind = \"pretrain\"\ntask = \"addition\"\ncorpus_size = 50\ntokenizer = \"{}\"\n[stages.model]\nhidden = 16\nlayers = 1\nheads = 2\nkv_heads = 1\nintermediate = 32\n[stages.train]\nsteps = 2\nbatch_size = 4\n",
        out.display(),
        t.display()
    );
    run_pipeline(&recipe).unwrap();
    let m = out.join("pt/stages/base/model");
    assert_eq!(std::fs::read(m.join("tokenizer.json")).unwrap(), std::fs::read(t.join("tokenizer.json")).unwrap());
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(m.join("config.json")).unwrap()).unwrap();
    let tk = rollout::tokenizer::Tokenizer::from_dir(&t).unwrap();
    assert_eq!(cfg["vocab_size"].as_u64(), Some(tk.vocab_size() as u64));
    assert_eq!(cfg["hidden_size"].as_u64(), Some(16));
    // A tokenizer folder that does not exist is named.
    let bad = recipe.replace(&t.display().to_string(), "/nonexistent/teacher").replace("name = \"pt\"", "name = \"pt2\"");
    let err = format!("{:#}", run_pipeline(&bad).unwrap_err());
    assert!(err.contains("/nonexistent/teacher") && err.contains("tokenizer.json"), "{err}");
}
