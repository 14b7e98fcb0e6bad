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
}

#[derive(Args, Debug)]
pub struct GenBench {
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
    }
}

fn bench_generate(a: GenBench) -> Result<()> {
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let device = parse_device(&a.device)?;
    let policy = Policy::load(&a.model, parse_kind(&a.dtype)?, device)?;
    let cfg = &policy.model.cfg;
    let eos = policy.eos_token_ids();
    let params = SamplingParams {
        temperature: if a.greedy { 0.0 } else { 1.0 },
        max_new_tokens: a.new_tokens,
        min_new_tokens: a.new_tokens,
        ..Default::default()
    };
    // Fixed pseudo-random prompts of `prompt_len` ids (no EOS among them).
    let prompts: Vec<Vec<i64>> = (0..a.batch)
        .map(|i| (0..a.prompt_len).map(|j| ((i * 31 + j * 17) as i64 % (cfg.vocab_size - 1)) + 1).filter(|t| !eos.contains(t)).collect())
        .collect();
    let seeds: Vec<u64> = (0..a.batch as u64).collect();
    let run_once = || -> Result<(f64, usize)> {
        let t = Instant::now();
        let out = generate(&policy.model, None, &prompts, &seeds, &eos, &params)?;
        if device != Device::Cpu {
            tch::Cuda::synchronize(0);
        }
        Ok((t.elapsed().as_secs_f64(), out.iter().map(|c| c.token_ids.len()).sum()))
    };
    run_once()?; // warm-up
    let mut times = vec![];
    let mut tokens = 0;
    for _ in 0..a.repeats.max(1) {
        let (s, n) = run_once()?;
        times.push(s);
        tokens = n;
    }
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
    println!("bench generate: model {} ({:.2}M params), {} x {} new tokens, {}, dtype {}, device {}, threads {}",
        a.model.display(), policy.named_tensors().values().map(|t| t.numel()).sum::<usize>() as f64 / 1e6,
        a.batch, a.new_tokens, if a.greedy { "greedy" } else { "sampling T=1" }, a.dtype, a.device, tch::get_num_threads());
    println!("  runs (s): {}", times.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(" "));
    println!("  tokens/s (median): {:.0}", tokens as f64 / secs);
    println!("  ms per decode step: {:.2}", secs * 1000.0 / a.new_tokens as f64);
    println!("  achieved GFLOP/s: {:.2} of a measured fp32 matmul peak of {:.1} ({:.1}%)", flops / secs / 1e9, peak, 100.0 * flops / secs / 1e9 / peak);
    println!("  peak memory (RSS): {:.0} MiB", peak_rss_mib());
    Ok(())
}
