//! A Hugging Face model folder on disk, loaded into a trainable tch VarStore.

use crate::config::{GenerationDefaults, ModelConfig};
use crate::error::{Result, RolloutError};
use crate::model::{weights, CausalLm, Init};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// Parses `f32`/`float32`/`fp32`, `bf16`/`bfloat16`, `f16`/`float16`/`fp16`.
pub fn parse_kind(s: &str) -> Result<Kind> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" | "float" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" | "fp16" | "half" => Ok(Kind::Half),
        _ => Err(RolloutError::Dtype(s.to_string())),
    }
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// The GPU a bare `cuda` means: this process's local rank under a launcher (torchrun's
/// `LOCAL_RANK`, Slurm's `SLURM_LOCALID`), so that each rank of a node gets its own GPU;
/// 0 otherwise.
pub fn local_cuda_index(var: impl Fn(&str) -> Option<String>) -> usize {
    ["LOCAL_RANK", "SLURM_LOCALID"].iter().find_map(|k| var(k).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// Parses `cpu`, `cuda` (this process's GPU: [`local_cuda_index`]), `cuda:N` and checks
/// the device exists.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.to_ascii_lowercase();
    let dev = match s.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => Device::Cuda(local_cuda_index(|k| std::env::var(k).ok())),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Device::Cuda(n),
            None => return Err(RolloutError::Device(format!("unknown device {s:?}; use cpu, cuda or cuda:N"))),
        },
    };
    let n = tch::Cuda::device_count() as usize;
    match dev {
        Device::Cuda(i) if i >= n => Err(RolloutError::Device(if n == 0 {
            format!("device {s:?} requested but CUDA is not available (no GPU, or libtorch was installed without CUDA: rerun scripts/setup-libtorch.sh on the GPU machine); use --device cpu")
        } else {
            format!("device {s:?} requested but only {n} CUDA device(s) exist")
        })),
        d => Ok(d),
    }
}

/// A loaded policy: its variables (trainable) and the model that reads them.
pub struct Policy {
    pub vs: nn::VarStore,
    pub model: CausalLm,
    pub dir: PathBuf,
    pub generation: GenerationDefaults,
}

impl Policy {
    /// Loads `config.json`, `generation_config.json` (optional) and the safetensors weights.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Policy> {
        let cfg_path = dir.join("config.json");
        if !dir.is_dir() {
            return Err(RolloutError::MissingFile {
                path: dir.to_path_buf(),
                hint: "expected a Hugging Face model folder (config.json, model.safetensors, tokenizer.json)".into(),
            });
        }
        let cfg = ModelConfig::from_file(&cfg_path).map_err(|e| match e {
            RolloutError::MissingFile { path, .. } => {
                RolloutError::MissingFile { path, hint: "every model folder needs config.json; is this the right folder?".into() }
            }
            e => e,
        })?;
        check_kind_device(kind, device)?;
        let vs = nn::VarStore::new(device);
        let model = CausalLm::new(&vs.root(), &cfg, Init::Empty);
        let mut vs = vs;
        vs.set_kind(kind);
        let vars = vs.variables();
        let _unused = weights::load_into(&vars, dir)?;
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.exists() { GenerationDefaults::from_file(&gen_path)? } else { GenerationDefaults::default() };
        Ok(Policy { vs, model, dir: dir.to_path_buf(), generation })
    }

    /// A fresh randomly initialised policy (HF init, std 0.02).
    pub fn random(cfg: &ModelConfig, kind: Kind, device: Device, seed: i64) -> Result<Policy> {
        check_kind_device(kind, device)?;
        tch::manual_seed(seed);
        let mut vs = nn::VarStore::new(device);
        let model = CausalLm::new(&vs.root(), cfg, Init::Random { std: 0.02 });
        vs.set_kind(kind);
        Ok(Policy { vs, model, dir: PathBuf::new(), generation: GenerationDefaults::default() })
    }

    /// Freezes the weights and fuses projections for generation (see
    /// [`CausalLm::fuse_for_inference`]); for rollout workers and `ponder generate`, never
    /// for a model being trained.
    pub fn fuse_for_inference(&mut self) {
        self.vs.freeze();
        self.model.fuse_for_inference();
    }

    /// EOS ids: generation_config.json's, else config.json's.
    pub fn eos_token_ids(&self) -> Vec<i64> {
        if !self.generation.eos_token_ids.is_empty() {
            self.generation.eos_token_ids.clone()
        } else {
            self.model.cfg.eos_token_ids.clone()
        }
    }

    /// Named tensors in checkpoint order (tied `lm_head` is not a separate tensor).
    pub fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// Copies `src` tensors (by name) into this policy's variables, across devices/dtypes.
    pub fn copy_from(&self, src: &BTreeMap<String, Tensor>) -> Result<()> {
        let vars = self.vs.variables();
        for (name, var) in &vars {
            let s = src.get(name).ok_or_else(|| RolloutError::Generation(format!("weight sync: tensor `{name}` missing")))?;
            tch::no_grad(|| var.shallow_clone().copy_(s));
        }
        Ok(())
    }

    /// Writes config.json + safetensors (Hugging Face layout) into `dir`.
    pub fn save_weights(&self, dir: &Path, kind: Kind, max_shard_bytes: Option<usize>) -> Result<()> {
        weights::save(&self.named_tensors(), dir, kind, max_shard_bytes)?;
        let mut raw = self.model.cfg.raw.clone();
        if let Some(obj) = raw.as_object_mut() {
            // Keep whichever dtype key the source used; transformers 5 reads both.
            let key = if obj.contains_key("dtype") { "dtype" } else { "torch_dtype" };
            obj.insert(key.into(), kind_name(kind).into());
        }
        let path = dir.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&raw).unwrap()).map_err(|e| RolloutError::io(&path, e))
    }
}

fn check_kind_device(_kind: Kind, device: Device) -> Result<()> {
    if let Device::Cuda(i) = device {
        if i >= tch::Cuda::device_count() as usize {
            return Err(RolloutError::Device(format!("cuda:{i} is not available; use --device cpu")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_cuda_is_the_local_rank_gpu() {
        let env =
            |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(local_cuda_index(env(&[])), 0);
        assert_eq!(local_cuda_index(env(&[("LOCAL_RANK", "3"), ("RANK", "11")])), 3);
        assert_eq!(local_cuda_index(env(&[("SLURM_LOCALID", "5")])), 5);
        assert_eq!(local_cuda_index(env(&[("LOCAL_RANK", "x"), ("SLURM_LOCALID", "2")])), 2);
    }
}
