//! `ponder bench ...`: benchmarks that print figures (never timed tests).

use anyhow::Result;
use clap::{Args, Subcommand};
use rollout::folder::{parse_device, parse_kind, Policy};
use rollout::generate::{generate, SamplingParams};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Generation throughput: tokens/s, ms per decode step, GFLOP/s, peak memory.
    Generate(GenBench),
    /// GRPO step throughput at TRL-comparable settings: s/step, tokens/s, GFLOP/s, memory.
    Train(TrainBench),
}

#[derive(Args, Debug)]
pub struct GenBench {
    /// Model folder or Hub id `org/name[@revision]`.
    #[arg(long)]
    pub model: PathBuf,
    /// Sequences per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// New tokens per sequence (EOS suppressed so every sequence has exactly this many).
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Greedy decoding instead of sampling at temperature 1.
    #[arg(long)]
    pub greedy: bool,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 16)]
    pub prompt_len: usize,
    /// Timed repetitions (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Intra-op threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    /// Variable-length completions, as in real rollouts: this fraction of the vocabulary
    /// counts as EOS and is not suppressed, so lengths vary (about geometric, mean ~1/rate
    /// on a random model, capped at --new-tokens). 0 = every row has exactly --new-tokens.
    #[arg(long, default_value_t = 0.0)]
    pub stop_rate: f64,
}

/// Peak resident memory of this process in MiB (VmHWM).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Measured fp32 matmul throughput (GFLOP/s) of this machine via libtorch, 512^3 matmuls.
pub fn matmul_peak_gflops(device: Device) -> f64 {
    let n = 512i64;
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let _ = a.matmul(&b);
    let mut best = 0.0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let reps = 20;
        for _ in 0..reps {
            let _ = a.matmul(&b);
        }
        if device != Device::Cpu {
            tch::Cuda::synchronize(0);
        }
        let g = 2.0 * (n * n * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
        best = best.max(g);
    }
    best
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Generate(a) => bench_generate(a),
        BenchCmd::Train(a) => bench_train(a),
    }
}

fn bench_generate(a: GenBench) -> Result<()> {
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let device = parse_device(&a.device)?;
    let mut policy = Policy::load(&crate::model_path::resolve(&a.model)?, parse_kind(&a.dtype)?, device)?;
    policy.fuse_for_inference();
    let cfg = &policy.model.cfg;
    let mut eos = policy.eos_token_ids();
    if a.stop_rate > 0.0 {
        eos.extend(stop_ids(a.stop_rate, cfg.vocab_size, &eos));
    }
    let params = SamplingParams {
        temperature: if a.greedy { 0.0 } else { 1.0 },
        max_new_tokens: a.new_tokens,
        min_new_tokens: if a.stop_rate > 0.0 { 0 } else { a.new_tokens },
        ..Default::default()
    };
    // Fixed pseudo-random prompts of `prompt_len` ids (no EOS among them).
    let prompts: Vec<Vec<i64>> = (0..a.batch)
        .map(|i| (0..a.prompt_len).map(|j| ((i * 31 + j * 17) as i64 % (cfg.vocab_size - 1)) + 1).filter(|t| !eos.contains(t)).collect())
        .collect();
    let seeds: Vec<u64> = (0..a.batch as u64).collect();
    let run_once = || -> Result<(f64, Vec<usize>)> {
        let t = Instant::now();
        let out = generate(&policy.model, None, &prompts, &seeds, &eos, &params)?;
        if device != Device::Cpu {
            tch::Cuda::synchronize(0);
        }
        Ok((t.elapsed().as_secs_f64(), out.iter().map(|c| c.token_ids.len()).collect()))
    };
    run_once()?; // warm-up
    let mut times = vec![];
    let mut lens = vec![];
    for _ in 0..a.repeats.max(1) {
        let (s, l) = run_once()?;
        times.push(s);
        lens = l;
    }
    let tokens: usize = lens.iter().sum();
    let secs = median(times.clone());
    // FLOPs per generated token: 2 x (matmul parameters incl. lm_head) + attention over the
    // average context (QK^T and AV: 4 x layers x heads x head_dim x ctx).
    let h = cfg.hidden_size as f64;
    let per_layer = h * (cfg.num_attention_heads * cfg.head_dim) as f64 * 2.0
        + h * (cfg.num_key_value_heads * cfg.head_dim) as f64 * 2.0
        + 3.0 * h * cfg.intermediate_size as f64;
    let matmul_params = per_layer * cfg.num_hidden_layers as f64 + h * cfg.vocab_size as f64;
    let ctx = a.prompt_len as f64 + a.new_tokens as f64 / 2.0;
    let attn = 4.0 * (cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim) as f64 * ctx;
    let flops = (2.0 * matmul_params + attn) * tokens as f64;
    let peak = matmul_peak_gflops(device);
    println!(
        "bench generate: model {} ({:.2}M params), {} x {} new tokens, {}, dtype {}, device {}, threads {}",
        a.model.display(),
        policy.named_tensors().values().map(|t| t.numel()).sum::<usize>() as f64 / 1e6,
        a.batch,
        a.new_tokens,
        if a.greedy { "greedy" } else { "sampling T=1" },
        a.dtype,
        a.device,
        tch::get_num_threads()
    );
    println!("  runs (s): {}", times.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(" "));
    println!("  tokens/s (median): {:.0}", tokens as f64 / secs);
    if a.stop_rate > 0.0 {
        let longest = lens.iter().max().copied().unwrap_or(0);
        println!("  completion length: mean {:.1}, max {longest} (stop rate {})", tokens as f64 / lens.len() as f64, a.stop_rate);
    }
    println!("  ms per decode step: {:.2}", secs * 1000.0 / lens.iter().max().copied().unwrap_or(1).max(1) as f64);
    println!(
        "  achieved GFLOP/s: {:.2} of a measured fp32 matmul peak of {:.1} ({:.1}%)",
        flops / secs / 1e9,
        peak,
        100.0 * flops / secs / 1e9 / peak
    );
    println!("  peak memory (RSS): {:.0} MiB", peak_rss_mib());
    Ok(())
}

#[derive(Args, Debug)]
pub struct TrainBench {
    /// Model folder (e.g. one made by `ponder init-model`) or Hub id `org/name[@revision]`.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub prompts: usize,
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// New tokens per completion (EOS suppressed so every completion has exactly this many).
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Timed GRPO steps (after one warm-up step); medians are reported.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 0.04)]
    pub beta: f64,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Intra-op threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    /// Completions per forward/backward pass (0 = the whole batch at once); gradients of
    /// the micro-batches accumulate into one optimizer step, the same update (tested).
    #[arg(long, default_value_t = 0)]
    pub micro_batch: usize,
    /// `grpo.max_tokens_per_micro_batch`: cap on padded tokens per learner pass (0 = no
    /// cap). The default is the recipe default, so the bench measures what a recipe gets.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens_per_micro_batch: usize,
    /// Variable-length completions, as in real rollouts: this fraction of the vocabulary
    /// also counts as EOS (written into a copy of the model's generation_config.json) and EOS
    /// is not suppressed. 0 = every completion has exactly --new-tokens.
    #[arg(long, default_value_t = 0.0)]
    pub stop_rate: f64,
    /// `rollout.workers`: rollout workers, each with its own copy of the policy.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// `rollout.threads`: intra-op threads of each rollout worker (0 = the learner's count).
    #[arg(long, default_value_t = 0)]
    pub rollout_threads: usize,
    /// `rollout.staleness`: 1 = one-step-off overlap (the next step's batch is sampled while
    /// the learner updates, one step stale); 0 = synchronous.
    #[arg(long, default_value_t = 0)]
    pub staleness: u32,
    /// `grpo.gradient_checkpointing`: the policy's layers keep only their inputs and are
    /// recomputed in the backward (less activation memory, about a third more learner work).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// `grpo.logprob_chunk`: positions per LM-head chunk in the learner (one chunk's
    /// [rows, chunk, vocab] fp32 logits is the most that lives at once).
    #[arg(long, default_value_t = 256)]
    pub logprob_chunk: i64,
}

/// The ids `--stop-rate` adds as EOS: the last ceil(rate x vocab) ids of the vocabulary
/// (the same ones `scripts/bench_*.py` use).
fn stop_ids(rate: f64, vocab: i64, eos: &[i64]) -> Vec<i64> {
    let n = ((rate * vocab as f64).ceil() as i64).clamp(0, vocab - 1);
    (vocab - n..vocab).filter(|t| !eos.contains(t)).collect()
}

/// A copy of model folder `src` in `dst` whose generation_config.json lists `eos` (the
/// model's EOS ids and the extra ones) as its EOS ids.
fn with_eos(src: &std::path::Path, dst: &std::path::Path, eos: &[i64]) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name()))?;
        }
    }
    let path = dst.join("generation_config.json");
    let mut g: serde_json::Value = match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)?,
        Err(_) => serde_json::json!({}),
    };
    g["eos_token_id"] = serde_json::json!(eos);
    std::fs::write(&path, serde_json::to_string_pretty(&g)?)?;
    Ok(())
}

/// One GRPO step at TRL-comparable settings: dapo loss, epsilon 0.2, mu 1, AdamW lr 1e-5,
/// max_grad_norm 1, temperature 1, a reward with variance inside every group.
pub fn bench_train(a: TrainBench) -> Result<()> {
    use crate::train::{Options, Trainer};
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let tmp = tempfile::tempdir()?;
    let model = crate::model_path::resolve(&a.model)?;
    let model_dir = if a.stop_rate > 0.0 {
        // The model's own EOS ids may come from config.json: write them all out.
        let probe = Policy::load(&model, Kind::Float, Device::Cpu)?;
        let mut eos = probe.eos_token_ids();
        eos.extend(stop_ids(a.stop_rate, probe.model.cfg.vocab_size, &eos));
        let dir = tmp.path().join("model");
        with_eos(&model, &dir, &eos)?;
        dir
    } else {
        model.canonicalize()?
    };
    let data = tmp.path().join("prompts.jsonl");
    let lines: String = (0..a.prompts.max(1) * 4)
        .map(|i| format!("{{\"prompt\": \"What is {i} + {}?\", \"answer\": \"{}\"}}\n", i + 7, 2 * i + 7))
        .collect();
    std::fs::write(&data, lines)?;
    let recipe = format!(
        r#"
[run]
name = "bench"
output_dir = "{out}"
[model]
path = "{model}"
dtype = "{dtype}"
device = "{device}"
[data]
train = "{data}"
template = "{{prompt}}"
[rollout]
group_size = {g}
prompts_per_step = {p}
max_new_tokens = {n}
min_new_tokens = {min_n}
temperature = 1.0
workers = {workers}
staleness = {staleness}
{rollout_threads}
[[rewards]]
kind = "char_fraction"
[grpo]
beta = {beta}
epsilon = 0.2
loss_type = "dapo"
num_iterations = 1
max_tokens_per_micro_batch = {cap}
gradient_checkpointing = {ckpt}
logprob_chunk = {chunk}
[optim]
lr = 1e-5
max_grad_norm = 1.0
grad_accumulation = {accum}
[train]
steps = {steps}
save_every = 0
log_samples_every = 0
"#,
        out = tmp.path().display(),
        model = model_dir.display(),
        min_n = if a.stop_rate > 0.0 { 0 } else { a.new_tokens },
        dtype = a.dtype,
        device = a.device,
        data = data.display(),
        g = a.group_size,
        p = a.prompts,
        n = a.new_tokens,
        beta = a.beta,
        // With overlap every measured step samples the next one ahead, the last included.
        steps = a.steps + 1 + a.staleness as usize,
        cap = a.max_tokens_per_micro_batch,
        ckpt = a.gradient_checkpointing,
        chunk = a.logprob_chunk,
        accum = if a.micro_batch == 0 { 1 } else { (a.prompts * a.group_size).div_ceil(a.micro_batch) },
        workers = a.workers.max(1),
        staleness = a.staleness,
        rollout_threads = if a.rollout_threads > 0 { format!("threads = {}", a.rollout_threads) } else { String::new() },
    );
    let table: toml::Table = recipe.parse()?;
    let r: crate::config::Recipe = crate::config::from_table(table.clone(), "bench recipe")?;
    let mut opts = Options { quiet: true, stop: Default::default(), sinks: vec![], resume_from: None, ..Default::default() };
    let mut t = Trainer::new(r, &table, false, &mut opts)?;
    let params: usize = t.policy().named_tensors().values().map(|x| x.numel()).sum();
    let mut rows = vec![];
    // With overlap the first step samples its own batch: it is the warm-up step dropped below.
    for _ in 0..=a.steps {
        rows.push(t.step()?);
    }
    let rows = &rows[1..];
    let get = |k: &str| median(rows.iter().map(|r| r.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN)).collect());
    let step_s = get("time/step_s");
    let tokens = get("completions/mean_length") * (a.prompts * a.group_size) as f64;
    let seq_tokens = get("num_tokens");
    // Rollout: 2 x params per generated token; learner: 6 x params per token (forward +
    // backward) plus 2 x params for the reference forward when beta > 0.
    let learner_flops = seq_tokens * params as f64 * (6.0 + if a.beta > 0.0 { 2.0 } else { 0.0 });
    let flops = 2.0 * params as f64 * tokens + learner_flops;
    let device = parse_device(&a.device)?;
    let peak = matmul_peak_gflops(device);
    println!(
        "bench train: {} ({:.2}M params), {} prompts x G={} x {} new tokens, learner passes per step {} (token cap {}), beta {}, dapo, dtype {}, device {}, threads {}, rollout workers {} x {} threads{}",
        a.model.display(),
        params as f64 / 1e6,
        a.prompts,
        a.group_size,
        a.new_tokens,
        get("micro_batches"),
        a.max_tokens_per_micro_batch,
        a.beta,
        a.dtype,
        a.device,
        tch::get_num_threads(),
        a.workers.max(1),
        if a.rollout_threads > 0 { a.rollout_threads.to_string() } else { "the learner's".into() },
        if a.staleness > 0 { ", one-step-off overlap (the next batch sampled during the update)" } else { "" },
    );
    if a.gradient_checkpointing {
        println!("  activation checkpointing: the policy's layers recomputed in the backward");
    }
    if a.stop_rate > 0.0 {
        println!(
            "  completion length: mean {:.1}, max {:.0} (stop rate {})",
            get("completions/mean_length"),
            get("completions/max_length"),
            a.stop_rate
        );
    }
    println!("  learner padding fraction: {:.3}", get("learner/padding_fraction"));
    println!(
        "  steps (s): {}",
        rows.iter().map(|r| format!("{:.3}", r["time/step_s"].as_f64().unwrap_or(f64::NAN))).collect::<Vec<_>>().join(" ")
    );
    println!("  seconds per step (median): {step_s:.3}  ({:.3} steps/s)", 1.0 / step_s);
    let rollout_key = if a.staleness > 0 { "throughput/rollout_ahead_tokens_per_s" } else { "throughput/rollout_tokens_per_s" };
    println!("  rollout tokens/s: {:.0}   learner tokens/s: {:.0}", get(rollout_key), get("throughput/learner_tokens_per_s"));
    if a.staleness > 0 {
        println!(
            "  overlapped: sampling ahead {:.3} s, learner {:.3} s per step (medians)",
            get("time/rollout_ahead_s"),
            get("time/learner_s")
        );
    }
    println!(
        "  achieved GFLOP/s: {:.2} of a measured fp32 matmul peak of {:.1} ({:.1}%)",
        flops / step_s / 1e9,
        peak,
        100.0 * flops / step_s / 1e9 / peak
    );
    println!("  peak memory (RSS): {:.0} MiB", peak_rss_mib());
    Ok(())
}
