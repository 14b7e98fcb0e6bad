//! `config.json` and `generation_config.json`, in both the transformers 4 style (flat
//! `rope_theta` / `rope_scaling`, `torch_dtype`) and the transformers 5 style
//! (`rope_parameters`, `dtype`).

use crate::error::{Result, RolloutError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The model families ponder runs. Both are pre-norm decoders with RMSNorm, RoPE, GQA
/// and a SwiGLU MLP; they differ in biases and rope scaling, which the config carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    Qwen2,
    Llama,
}

pub const SUPPORTED_ARCHITECTURES: &str =
    "Qwen2ForCausalLM (Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen), LlamaForCausalLM (Llama 3.x, SmolLM2, DeepSeek-R1-Distill-Llama)";

impl Arch {
    pub fn hf_name(self) -> &'static str {
        match self {
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Llama => "LlamaForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
        }
    }
}

/// How rotary frequencies are derived from `rope_theta`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The normalised model configuration.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always for Qwen2; `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// o_proj carries a bias (Llama `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// The dtype the checkpoint says it was saved in (`torch_dtype` / `dtype`), if any.
    pub dtype: Option<String>,
    pub bos_token_id: Option<i64>,
    pub eos_token_ids: Vec<i64>,
    /// The raw JSON, kept so checkpoints we write carry every field the user had.
    pub raw: Value,
}

fn cfg_err(path: &Path, msg: impl Into<String>) -> RolloutError {
    RolloutError::Config { path: path.to_path_buf(), msg: msg.into() }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| RolloutError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| RolloutError::Json { path: path.to_path_buf(), source })
}

/// `eos_token_id` may be a number, a list of numbers or null.
pub(crate) fn id_list(v: Option<&Value>) -> Vec<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_i64()).collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw = read_json(path)?;
        Self::from_value(raw, path)
    }

    pub fn from_value(raw: Value, path: &Path) -> Result<Self> {
        let obj = raw.as_object().ok_or_else(|| cfg_err(path, "expected a JSON object"))?;
        let archs: Vec<String> = match obj.get("architectures") {
            Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            _ => vec![],
        };
        let model_type = obj.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = if archs.iter().any(|a| a == "Qwen2ForCausalLM") || (archs.is_empty() && model_type == "qwen2") {
            Arch::Qwen2
        } else if archs.iter().any(|a| a == "LlamaForCausalLM") || (archs.is_empty() && model_type == "llama") {
            Arch::Llama
        } else {
            let found = if archs.is_empty() { format!("model_type={model_type}") } else { archs.join(", ") };
            return Err(RolloutError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found,
                supported: SUPPORTED_ARCHITECTURES.into(),
            });
        };
        let int = |k: &str| -> Result<i64> {
            obj.get(k).and_then(Value::as_i64).ok_or_else(|| cfg_err(path, format!("missing or non-integer field `{k}`")))
        };
        // Sizes must be >= 1: a 0 would divide by zero or build empty tensors later.
        let pos = |k: &str, v: i64| -> Result<i64> {
            if v >= 1 {
                Ok(v)
            } else {
                Err(cfg_err(path, format!("`{k}` must be >= 1, got {v}")))
            }
        };
        let hidden_size = pos("hidden_size", int("hidden_size")?)?;
        let num_attention_heads = pos("num_attention_heads", int("num_attention_heads")?)?;
        let num_key_value_heads =
            pos("num_key_value_heads", obj.get("num_key_value_heads").and_then(Value::as_i64).unwrap_or(num_attention_heads))?;
        for k in ["vocab_size", "intermediate_size", "num_hidden_layers"] {
            pos(k, int(k)?)?;
        }
        let head_dim = match obj.get("head_dim").and_then(Value::as_i64) {
            Some(h) => pos("head_dim", h)?,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(cfg_err(path, "hidden_size is not divisible by num_attention_heads and no head_dim is given"));
                }
                hidden_size / num_attention_heads
            }
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(cfg_err(
                path,
                format!("num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"),
            ));
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(cfg_err(path, format!("hidden_act {act:?} is not supported (only silu)")));
            }
        }
        // transformers 5 nests rope settings in `rope_parameters`; 4 has them flat.
        let rope_params = obj.get("rope_parameters").and_then(Value::as_object);
        let rope_theta =
            rope_params.and_then(|p| p.get("rope_theta")).or_else(|| obj.get("rope_theta")).and_then(Value::as_f64).unwrap_or(10000.0);
        let scaling_obj = match rope_params {
            Some(p) => Some(p),
            None => obj.get("rope_scaling").and_then(Value::as_object),
        };
        let rope_scaling = match scaling_obj {
            None => RopeScaling::Default,
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
                let f = |k: &str| -> Result<f64> {
                    s.get(k).and_then(Value::as_f64).ok_or_else(|| cfg_err(path, format!("rope scaling `{kind}` needs `{k}`")))
                };
                match kind {
                    "default" => RopeScaling::Default,
                    "linear" => RopeScaling::Linear { factor: f("factor")? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: f("original_max_position_embeddings")?,
                    },
                    other => {
                        return Err(cfg_err(path, format!("rope type {other:?} is not supported (supported: default, linear, llama3)")))
                    }
                }
            }
        };
        let attention_bias = obj.get("attention_bias").and_then(Value::as_bool).unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama => (attention_bias, attention_bias),
        };
        let dtype = obj.get("dtype").or_else(|| obj.get("torch_dtype")).and_then(Value::as_str).map(String::from);
        Ok(ModelConfig {
            arch,
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: obj.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: obj.get("max_position_embeddings").and_then(Value::as_i64).unwrap_or(32768),
            tie_word_embeddings: obj.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: obj.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false),
            dtype,
            bos_token_id: obj.get("bos_token_id").and_then(Value::as_i64),
            eos_token_ids: id_list(obj.get("eos_token_id")),
            raw,
        })
    }
}

/// The parts of `generation_config.json` ponder uses.
#[derive(Debug, Clone, Default)]
pub struct GenerationDefaults {
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: Option<i64>,
    pub bos_token_id: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
}

impl GenerationDefaults {
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        Ok(GenerationDefaults {
            eos_token_ids: id_list(v.get("eos_token_id")),
            pad_token_id: v.get("pad_token_id").and_then(Value::as_i64),
            bos_token_id: v.get("bos_token_id").and_then(Value::as_i64),
            temperature: v.get("temperature").and_then(Value::as_f64),
            top_p: v.get("top_p").and_then(Value::as_f64),
            top_k: v.get("top_k").and_then(Value::as_i64),
        })
    }
}
