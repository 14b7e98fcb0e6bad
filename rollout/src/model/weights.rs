//! Reading and writing Hugging Face safetensors checkpoints (single file or sharded with
//! `model.safetensors.index.json`) straight into / out of a tch VarStore.

use crate::error::{Result, RolloutError};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub const SINGLE: &str = "model.safetensors";
pub const INDEX: &str = "model.safetensors.index.json";

fn st_err(path: &Path, msg: impl ToString) -> RolloutError {
    RolloutError::Safetensors { path: path.to_path_buf(), msg: msg.to_string() }
}

/// The safetensors files of a model folder.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX);
    if index.exists() {
        let v = crate::config::read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| RolloutError::Config { path: index.clone(), msg: "missing `weight_map` object".into() })?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        for f in &files {
            if !f.exists() {
                return Err(RolloutError::MissingFile {
                    path: f.clone(),
                    hint: format!("{} lists this shard; copy the complete model folder", index.display()),
                });
            }
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE);
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(RolloutError::MissingFile {
        path: single,
        hint: format!("a model folder needs {SINGLE} or {INDEX} with its shards (.bin checkpoints are not read: convert them with transformers' save_pretrained(safe_serialization=True))"),
    })
}

pub fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        _ => return None,
    })
}

/// Copies every checkpoint tensor into the variable of the same name. Every variable must be
/// found with the right shape. Checkpoint tensors with no variable are returned (e.g. an
/// `lm_head.weight` saved alongside tied embeddings), for the caller to report.
pub fn load_into(vars: &HashMap<String, Tensor>, dir: &Path) -> Result<Vec<String>> {
    let files = checkpoint_files(dir)?;
    let mut loaded = BTreeSet::new();
    let mut unused = vec![];
    for file in &files {
        let f = std::fs::File::open(file).map_err(|e| RolloutError::io(file, e))?;
        // SAFETY: read-only map of a file we do not modify while it is mapped.
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| RolloutError::io(file, e))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| st_err(file, e))?;
        for (name, view) in st.tensors() {
            let Some(var) = vars.get(&name) else {
                unused.push(name);
                continue;
            };
            let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if found != var.size() {
                return Err(RolloutError::ShapeMismatch { path: file.clone(), name, expected: var.size(), found });
            }
            let kind =
                kind_of(view.dtype()).ok_or_else(|| st_err(file, format!("tensor `{name}` has unsupported dtype {:?}", view.dtype())))?;
            let src = Tensor::from_data_size(view.data(), &found, kind);
            tch::no_grad(|| {
                let mut dst = var.shallow_clone();
                dst.copy_(&src);
            });
            loaded.insert(name);
        }
    }
    let mut missing: Vec<&String> = vars.keys().filter(|k| !loaded.contains(*k)).collect();
    missing.sort();
    if let Some(name) = missing.first() {
        let where_ = if files.len() == 1 { files[0].clone() } else { dir.join(INDEX) };
        return Err(RolloutError::MissingTensor { path: where_, name: (*name).clone(), expected: vars[*name].size() });
    }
    unused.sort();
    Ok(unused)
}

/// A tensor made ready for safetensors (on the CPU, contiguous, in the file's dtype). Its
/// bytes are copied out only when the writer asks for them, one tensor at a time, so writing
/// a file holds one tensor's bytes beside the model instead of the whole file's (4 GB for a
/// 0.5B model's AdamW moments).
struct Prepared {
    dtype: Dtype,
    shape: Vec<usize>,
    t: Tensor,
    len: usize,
}

impl safetensors::View for &Prepared {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let mut data = vec![0u8; self.len];
        self.t.copy_data_u8(&mut data, self.t.numel());
        std::borrow::Cow::Owned(data)
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

fn prepare(t: &Tensor, kind: Kind) -> Result<Prepared> {
    let t = t.detach().to_device(tch::Device::Cpu).to_kind(kind).contiguous();
    let dtype = dtype_of(kind).ok_or_else(|| RolloutError::Dtype(format!("{kind:?}")))?;
    let len = t.numel() * kind.elt_size_in_bytes();
    Ok(Prepared { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), t, len })
}

/// Writes tensors in Hugging Face layout: `model.safetensors`, or shards of at most
/// `max_shard_bytes` with `model.safetensors.index.json`. The `{"format": "pt"}` metadata
/// is what transformers expects.
pub fn save(tensors: &BTreeMap<String, Tensor>, dir: &Path, kind: Kind, max_shard_bytes: Option<usize>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| RolloutError::io(dir, e))?;
    let mut shards: Vec<Vec<(String, Prepared)>> = vec![vec![]];
    let mut size = 0usize;
    let mut total = 0usize;
    for (name, t) in tensors {
        let b = prepare(t, if t.is_floating_point() { kind } else { t.kind() })?;
        if let Some(max) = max_shard_bytes {
            if size > 0 && size + b.len > max {
                shards.push(vec![]);
                size = 0;
            }
        }
        size += b.len;
        total += b.len;
        shards.last_mut().unwrap().push((name.clone(), b));
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let fname = if n == 1 { SINGLE.to_string() } else { format!("model-{:05}-of-{:05}.safetensors", i + 1, n) };
        let path = dir.join(&fname);
        let views: Vec<(&str, &Prepared)> = shard.iter().map(|(k, b)| (k.as_str(), b)).collect();
        safetensors::serialize_to_file(views, Some(meta.clone()), &path).map_err(|e| st_err(&path, e))?;
        for (k, _) in shard {
            weight_map.insert(k.clone(), serde_json::Value::String(fname.clone()));
        }
    }
    if n > 1 {
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let path = dir.join(INDEX);
        std::fs::write(&path, serde_json::to_string_pretty(&index).unwrap()).map_err(|e| RolloutError::io(&path, e))?;
    }
    Ok(())
}

/// Writes one safetensors file of named tensors in their own dtypes (optimizer state etc.).
pub fn save_file(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let ready: Vec<(String, Prepared)> = tensors.iter().map(|(k, t)| Ok((k.clone(), prepare(t, t.kind())?))).collect::<Result<_>>()?;
    let views: Vec<(&str, &Prepared)> = ready.iter().map(|(k, b)| (k.as_str(), b)).collect();
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| st_err(path, e))
}

/// Reads every tensor of one safetensors file onto the CPU.
pub fn load_file(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| RolloutError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_err(path, e))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind =
            kind_of(view.dtype()).ok_or_else(|| st_err(path, format!("tensor `{name}` has unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(name, Tensor::from_data_size(view.data(), &shape, kind));
    }
    Ok(out)
}
