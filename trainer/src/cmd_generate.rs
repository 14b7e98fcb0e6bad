//! `ponder generate`, `ponder init-model`, `ponder demo`.

use crate::tiny;
use anyhow::{bail, Context, Result};
use clap::Args;
use rollout::folder::{parse_device, parse_kind, Policy};
use rollout::generate::{generate, Completion, SamplingParams};
use rollout::pool::sample_seed;
use rollout::tokenizer::{ChatMessage, Tokenizer};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
#[command(
    after_long_help = "Examples:\n  ponder generate --model runs/demo/model --prompt 'What is 2 + 3?' --samples 4\n  ponder generate --model DIR --prompts prompts.jsonl --chat --json > out.jsonl\n\n\
With --json, one JSON object per line: prompt_index, sample_index, text, token_ids, logprobs \
(log-probabilities of the sampled tokens under the temperature-scaled policy), finish_reason \
(eos | stop | length)."
)]
pub struct GenerateArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json), or a Hub id
    /// `org/name[@revision]` (fetched into the Hugging Face cache; a local folder wins).
    #[arg(long)]
    pub model: PathBuf,
    /// A prompt; repeat for several.
    #[arg(long = "prompt", conflicts_with = "prompts")]
    pub prompt: Vec<String>,
    /// JSONL file, one prompt per line: a string, or an object with `prompt` (text) or
    /// `messages` ([{role, content}, ...]).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Samples per prompt (the group size G).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// EOS is suppressed until this many tokens were generated.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    /// 0 = off.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f64,
    /// Stop string; repeat for several.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// f32 | bf16 | f16
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// One JSON object per sample on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Reads prompts from a JSONL file: strings, or objects with `prompt` or `messages`.
pub fn read_prompts(path: &Path) -> Result<Vec<Vec<ChatMessage>>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
        let msgs = match &v {
            serde_json::Value::String(s) => vec![ChatMessage { role: "user".into(), content: s.clone() }],
            serde_json::Value::Object(o) => {
                if let Some(m) = o.get("messages") {
                    serde_json::from_value(m.clone())
                        .with_context(|| format!("{}:{}: `messages` must be a list of {{role, content}}", path.display(), i + 1))?
                } else if let Some(p) = o.get("prompt").and_then(|p| p.as_str()) {
                    vec![ChatMessage { role: "user".into(), content: p.to_string() }]
                } else {
                    bail!("{}:{}: expected a `prompt` string or a `messages` list", path.display(), i + 1)
                }
            }
            _ => bail!("{}:{}: expected a string or an object", path.display(), i + 1),
        };
        out.push(msgs);
    }
    Ok(out)
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let kind = parse_kind(&a.dtype)?;
    let device = parse_device(&a.device)?;
    let conversations: Vec<Vec<ChatMessage>> = match &a.prompts {
        Some(p) => read_prompts(p)?,
        None => a.prompt.iter().map(|p| vec![ChatMessage { role: "user".into(), content: p.clone() }]).collect(),
    };
    if conversations.is_empty() {
        bail!("no prompts: give --prompt TEXT (repeatable) or --prompts FILE.jsonl");
    }
    let model = crate::model_path::resolve(&a.model)?;
    let tk = Tokenizer::from_dir(&model)?;
    let mut policy = Policy::load(&model, kind, device)?;
    policy.fuse_for_inference();
    let mut prompt_ids = vec![];
    for conv in &conversations {
        let text = if a.chat {
            tk.apply_chat_template(conv, true)?
        } else {
            conv.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")
        };
        // A chat template already holds the special tokens; plain prompts get the
        // tokenizer's own (e.g. BOS).
        prompt_ids.push(tk.encode(&text, !a.chat)?);
    }
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        max_new_tokens: a.max_new_tokens,
        min_new_tokens: a.min_new_tokens,
        stop: a.stop.clone(),
    };
    let eos = policy.eos_token_ids();
    let rows: Vec<(usize, usize)> = (0..prompt_ids.len()).flat_map(|i| (0..a.samples).map(move |j| (i, j))).collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for chunk in rows.chunks(a.batch.max(1)) {
        let prompts: Vec<Vec<i64>> = chunk.iter().map(|&(i, _)| prompt_ids[i].clone()).collect();
        let seeds: Vec<u64> = chunk.iter().map(|&(i, j)| sample_seed(a.seed, i, j)).collect();
        let comps = generate(&policy.model, Some(&tk), &prompts, &seeds, &eos, &params)?;
        for (&(i, j), c) in chunk.iter().zip(comps) {
            print_completion(&mut out, a.json, i, j, &c)?;
        }
    }
    Ok(())
}

fn print_completion(out: &mut impl Write, json: bool, i: usize, j: usize, c: &Completion) -> Result<()> {
    if json {
        let v = serde_json::json!({
            "prompt_index": i,
            "sample_index": j,
            "text": c.text,
            "token_ids": c.token_ids,
            "logprobs": c.logprobs,
            "finish_reason": c.finish_reason.as_str(),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "=== prompt {i} sample {j} ({} tokens, {}) ===\n{}", c.token_ids.len(), c.finish_reason.as_str(), c.text)?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct InitModelArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Hidden size, layers, heads, KV heads, intermediate size, vocab: defaults are the ~3M
    /// parameter benchmark model.
    #[arg(long, default_value_t = tiny::BENCH.hidden)]
    pub hidden: i64,
    #[arg(long, default_value_t = tiny::BENCH.layers)]
    pub layers: i64,
    #[arg(long, default_value_t = tiny::BENCH.heads)]
    pub heads: i64,
    #[arg(long, default_value_t = tiny::BENCH.kv_heads)]
    pub kv_heads: i64,
    #[arg(long, default_value_t = tiny::BENCH.intermediate)]
    pub intermediate: i64,
    #[arg(long, default_value_t = tiny::BENCH.vocab)]
    pub vocab: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// Rows of the embedding and LM head (`vocab_size` in config.json), padded above the
    /// tokenizer's size: e.g. 151936 for a model of Qwen2.5's shape (benchmarks).
    #[arg(long)]
    pub vocab_size: Option<i64>,
}

pub fn init_model(a: InitModelArgs) -> Result<()> {
    let shape = tiny::TinyShape {
        hidden: a.hidden,
        layers: a.layers,
        heads: a.heads,
        kv_heads: a.kv_heads,
        intermediate: a.intermediate,
        vocab: a.vocab,
    };
    if a.hidden % a.heads != 0 || a.heads % a.kv_heads != 0 {
        bail!("--hidden must be a multiple of --heads, and --heads a multiple of --kv-heads");
    }
    let corpus = tiny::default_corpus(a.seed as u64, 4000);
    tiny::create_random_model_padded(&a.out, shape, &corpus, a.seed, a.vocab_size)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo model lives (created on first use).
    #[arg(long, default_value = "runs/demo/model")]
    pub model: PathBuf,
}

pub fn demo(a: DemoArgs) -> Result<()> {
    if !a.model.join("config.json").exists() {
        eprintln!("creating a tiny random Qwen2 model in {} ...", a.model.display());
        init_model(InitModelArgs {
            out: a.model.clone(),
            hidden: tiny::BENCH.hidden,
            layers: tiny::BENCH.layers,
            heads: tiny::BENCH.heads,
            kv_heads: tiny::BENCH.kv_heads,
            intermediate: tiny::BENCH.intermediate,
            vocab: tiny::BENCH.vocab,
            seed: 0,
            vocab_size: None,
        })?;
    }
    eprintln!("sampling 2 prompts x 3 samples (an untrained model writes noise: training comes next)");
    run(GenerateArgs {
        model: a.model,
        prompt: vec!["What is 12 + 30?".into(), "What is 7 + 5?".into()],
        prompts: None,
        chat: true,
        samples: 3,
        max_new_tokens: 24,
        min_new_tokens: 0,
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        min_p: 0.0,
        stop: vec![],
        seed: 0,
        dtype: "f32".into(),
        device: "cpu".into(),
        batch: 64,
        json: false,
    })
}
