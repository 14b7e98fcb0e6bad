//! Tiny models built from nothing: a byte-level BPE tokenizer trained with the `tokenizers`
//! crate on a corpus the project generates, and a randomly initialised Qwen2 model, saved
//! as a Hugging Face folder. Used by the demo, the benchmarks and the tests (no downloads).

use anyhow::{Context, Result};
use rollout::folder::Policy;
use rollout::ModelConfig;
use serde_json::json;
use std::path::Path;
use tch::{Device, Kind};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerImpl};

pub const EOS: &str = "<|endoftext|>";
pub const SPECIAL: [&str; 3] = [EOS, "<|im_start|>", "<|im_end|>"];
/// Reasoning tags are single tokens so that format rewards are easy to learn.
pub const TAGS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];

pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Shape of a tiny Qwen2 model.
#[derive(Debug, Clone, Copy)]
pub struct TinyShape {
    pub hidden: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub intermediate: i64,
    pub vocab: usize,
}

/// The ~3M-parameter Qwen2 used by the benchmarks (hidden 256, 4 layers, 8 heads, 2 KV
/// heads, intermediate 688, vocab ~1k, tied embeddings).
pub const BENCH: TinyShape = TinyShape { hidden: 256, layers: 4, heads: 8, kv_heads: 2, intermediate: 688, vocab: 1024 };

/// Trains a byte-level BPE (digits split one by one, as Qwen does) on `corpus`.
pub fn train_tokenizer(corpus: &[String], vocab_size: usize, out: &Path) -> Result<()> {
    let specials: Vec<AddedToken> = SPECIAL.iter().map(|s| AddedToken::from(s.to_string(), true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let pre = Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]);
    let mut tk: TokenizerImpl<ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper> =
        TokenizerImpl::new(ModelWrapper::BPE(BPE::default()));
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)));
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, true, true))));
    tk.with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::new(false, true, false))));
    let mut trainer = tokenizers::models::TrainerWrapper::BpeTrainer(std::mem::take(&mut trainer));
    tk.train(&mut trainer, corpus.iter()).map_err(|e| anyhow::anyhow!("training the tokenizer: {e}"))?;
    tk.add_tokens(TAGS.iter().map(|s| AddedToken::from(s.to_string(), false)).collect::<Vec<_>>())
        .map_err(|e| anyhow::anyhow!("adding reasoning tags to the tokenizer: {e}"))?;
    std::fs::create_dir_all(out)?;
    let tok_path = out.join("tokenizer.json");
    tk.save(&tok_path, false).map_err(|e| anyhow::anyhow!("saving {}: {e}", tok_path.display()))?;
    let cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": null,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": null,
        "model_max_length": 4096,
        "add_bos_token": false,
        "clean_up_tokenization_spaces": false,
        "chat_template": CHATML,
    });
    std::fs::write(out.join("tokenizer_config.json"), serde_json::to_string_pretty(&cfg)?)?;
    Ok(())
}

/// The Qwen2 `config.json` for a tiny model (transformers 5 style).
pub fn qwen2_config(shape: TinyShape, vocab_size: i64, eos_id: i64, max_positions: i64) -> serde_json::Value {
    json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.hidden / shape.heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": true,
        "use_cache": true,
        "use_sliding_window": false,
        "attention_dropout": 0.0,
        "bos_token_id": null,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "dtype": "float32",
    })
}

/// Creates a random tiny Qwen2 model folder (tokenizer trained on `corpus`).
pub fn create_random_model(out: &Path, shape: TinyShape, corpus: &[String], seed: i64) -> Result<()> {
    create_random_model_padded(out, shape, corpus, seed, None)
}

/// [`create_random_model`] whose embedding and LM head have `vocab_rows` rows (at least the
/// tokenizer's size), as real models pad theirs (Qwen2.5: 151,936 rows for 151,665 tokens):
/// a model of a real model's shape for benchmarks, with a tokenizer trained here.
pub fn create_random_model_padded(out: &Path, shape: TinyShape, corpus: &[String], seed: i64, vocab_rows: Option<i64>) -> Result<()> {
    train_tokenizer(corpus, shape.vocab, out)?;
    let tk = rollout::tokenizer::Tokenizer::from_dir(out)?;
    let eos = tk.token_to_id(EOS).context("tokenizer lost its EOS token")?;
    // By default exactly the tokenizer's size: padded ids would only be noise for a tiny model.
    let vocab = (tk.vocab_size() as i64).max(vocab_rows.unwrap_or(0));
    let raw = qwen2_config(shape, vocab, eos, 4096);
    let cfg = ModelConfig::from_value(raw, &out.join("config.json"))?;
    let policy = Policy::random(&cfg, Kind::Float, Device::Cpu, seed)?;
    policy.save_weights(out, Kind::Float, None)?;
    let gen = json!({ "eos_token_id": [eos], "pad_token_id": eos, "do_sample": true, "temperature": 1.0 });
    std::fs::write(out.join("generation_config.json"), serde_json::to_string_pretty(&gen)?)?;
    Ok(())
}

/// A small built-in corpus: arithmetic in the R1-Zero format, so the tokenizer learns the
/// pieces the tiny recipes use.
pub fn default_corpus(seed: u64, n: usize) -> Vec<String> {
    use rand::{Rng, SeedableRng};
    use rollout::SeededRng;
    let mut rng = SeededRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let a: u32 = rng.random_range(0..1000);
            let b: u32 = rng.random_range(0..1000);
            format!(
                "A conversation between User and Assistant. User: What is {a} + {b}? Assistant: <think> {a} plus {b} is {} </think> <answer> {} </answer>",
                a + b,
                a + b
            )
        })
        .collect()
}

/// The Llama `config.json` for a tiny model: the Qwen2 one without q/k/v biases.
pub fn llama_config(shape: TinyShape, vocab_size: i64, eos_id: i64, max_positions: i64) -> serde_json::Value {
    let mut c = qwen2_config(shape, vocab_size, eos_id, max_positions);
    let o = c.as_object_mut().expect("an object");
    o.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    o.insert("model_type".into(), json!("llama"));
    o.insert("attention_bias".into(), json!(false));
    o.insert("mlp_bias".into(), json!(false));
    o.remove("use_sliding_window");
    c
}

/// Creates a randomly initialised model folder of `shape` (Qwen2 or Llama family, tied
/// embeddings) that uses the tokenizer of the model folder `tokenizer_from`: a distillation
/// student must share its teacher's tokenizer. The vocabulary is `vocab` (a teacher's
/// `config.json` size, which may exceed the tokenizer's) or the tokenizer's size.
pub fn create_with_tokenizer(
    out: &Path,
    shape: TinyShape,
    arch: rollout::config::Arch,
    tokenizer_from: &Path,
    vocab: Option<i64>,
    seed: i64,
) -> Result<()> {
    if !tokenizer_from.join("tokenizer.json").is_file() {
        anyhow::bail!("{}: no tokenizer.json there; the tokenizer to reuse must be a model folder's", tokenizer_from.display());
    }
    std::fs::create_dir_all(out)?;
    crate::checkpoint::copy_side_files(tokenizer_from, out)?;
    let tk = rollout::tokenizer::Tokenizer::from_dir(out)?;
    let eos = tk
        .eos_token_id()
        .or_else(|| tk.token_to_id(EOS))
        .with_context(|| format!("the tokenizer of {} has no EOS token", tokenizer_from.display()))?;
    let vocab = vocab.unwrap_or(tk.vocab_size() as i64);
    let raw = match arch {
        rollout::config::Arch::Qwen2 => qwen2_config(shape, vocab, eos, 4096),
        rollout::config::Arch::Llama => llama_config(shape, vocab, eos, 4096),
    };
    let cfg = ModelConfig::from_value(raw, &out.join("config.json"))?;
    let policy = Policy::random(&cfg, Kind::Float, Device::Cpu, seed)?;
    policy.save_weights(out, Kind::Float, None)?;
    if !out.join("generation_config.json").exists() {
        let gen = json!({ "eos_token_id": [eos], "pad_token_id": eos, "do_sample": true, "temperature": 1.0 });
        std::fs::write(out.join("generation_config.json"), serde_json::to_string_pretty(&gen)?)?;
    }
    Ok(())
}
