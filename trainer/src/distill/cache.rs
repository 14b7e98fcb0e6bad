//! The teacher's top-k log-prob cache: the teacher runs once over the distillation
//! sequences, and every student epoch reads its distributions from disk.
//!
//! `<cache_dir>/topk.safetensors` holds, for every completion position of every sequence (in
//! sequence order), the teacher's k most likely token ids (`ids`, i32 [P, k]), their
//! log-probs at the distillation temperature (`logprobs`, f32 [P, k], descending) and the log
//! of the probability mass of all other tokens (`tail_logmass`, f32 [P]; -inf when k covers
//! the vocabulary), plus `offsets` (i64 [n + 1]: sequence i's positions are rows
//! offsets[i]..offsets[i + 1]). `meta.json` records the teacher, k, the temperature, the
//! vocabulary and a fingerprint of the sequences; a cache built for anything else is refused.
//!
//! Cost: 8 k + 4 bytes per completion token (k = 20: 164 bytes), against 4 V bytes for the
//! full distribution (V = 151,936 for Qwen2.5: 608 kB per token).

use super::loss::TopK;
use super::{completion_logits, pack};
use crate::lm::LmExample;
use anyhow::{bail, Context, Result};
use rollout::folder::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub teacher: String,
    pub k: i64,
    pub temperature: f64,
    pub vocab: i64,
    pub sequences: usize,
    pub positions: i64,
    /// Completion positions are cut at this sequence length.
    pub max_len: usize,
    /// FNV-1a of every sequence's ids and prompt length, in order.
    pub fingerprint: String,
    pub bytes_per_position: i64,
}

/// A loaded cache, rows indexed by sequence.
pub struct Cache {
    pub meta: CacheMeta,
    ids: Tensor,
    logp: Tensor,
    tail: Tensor,
    offsets: Vec<i64>,
}

pub fn fingerprint(seqs: &[LmExample]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    };
    for s in seqs {
        eat(s.loss_from as u64);
        eat(s.ids.len() as u64);
        for &t in &s.ids {
            eat(t as u64);
        }
    }
    format!("{h:016x}")
}

/// Completion positions of `s` (targets at index >= loss_from, cut at `max_len`).
pub fn positions(s: &LmExample, max_len: usize) -> i64 {
    let len = s.ids.len().min(max_len);
    len.saturating_sub(s.loss_from.max(1)) as i64
}

impl Cache {
    /// Teacher rows of sequences `idx`, in order: what their completion positions in a packed
    /// batch see.
    pub fn rows(&self, idx: &[usize]) -> TopK {
        let mut rows = vec![];
        for &i in idx {
            rows.extend(self.offsets[i]..self.offsets[i + 1]);
        }
        let r = Tensor::from_slice(&rows).to_device(self.ids.device());
        TopK {
            ids: self.ids.index_select(0, &r).to_kind(Kind::Int64),
            logp: self.logp.index_select(0, &r),
            tail: self.tail.index_select(0, &r),
        }
    }

    pub fn to_device(mut self, d: tch::Device) -> Self {
        self.ids = self.ids.to_device(d);
        self.logp = self.logp.to_device(d);
        self.tail = self.tail.to_device(d);
        self
    }

    /// Loads `dir` if it holds a cache of exactly `want` (else an error saying what differs).
    pub fn load(dir: &Path, want: &CacheMeta) -> Result<Option<Cache>> {
        let meta_path = dir.join("meta.json");
        if !meta_path.exists() {
            return Ok(None);
        }
        let meta: CacheMeta = serde_json::from_str(&std::fs::read_to_string(&meta_path)?)
            .with_context(|| format!("{}: corrupt cache metadata", meta_path.display()))?;
        if &meta != want {
            let mut diff = vec![];
            let a = serde_json::to_value(&meta)?;
            let b = serde_json::to_value(want)?;
            for (k, v) in a.as_object().unwrap() {
                if b.get(k) != Some(v) {
                    diff.push(format!("{k}: cached {v}, wanted {}", b[k]));
                }
            }
            bail!("the teacher cache in {} was built for other settings ({}); delete the folder to rebuild it, or set cache_dir to another folder", dir.display(), diff.join("; "));
        }
        let t = rollout::model::weights::load_file(&dir.join("topk.safetensors"))
            .with_context(|| format!("reading the teacher cache in {}", dir.display()))?;
        let get =
            |n: &str| t.get(n).map(|x| x.shallow_clone()).with_context(|| format!("{}: the cache has no `{n}` tensor", dir.display()));
        let offsets: Vec<i64> = Vec::try_from(&get("offsets")?)?;
        if offsets.len() != meta.sequences + 1 || *offsets.last().unwrap() != meta.positions {
            bail!("{}: cache offsets do not match its metadata; delete the folder to rebuild it", dir.display());
        }
        Ok(Some(Cache { meta, ids: get("ids")?, logp: get("logprobs")?, tail: get("tail_logmass")?, offsets }))
    }

    /// Runs the teacher over `seqs` (`batch` sequences at a time) and writes the cache to
    /// `dir` (through a temporary folder, so a kill leaves none or a whole one).
    pub fn build(dir: &Path, teacher: &Policy, seqs: &[LmExample], meta: &CacheMeta, batch: usize) -> Result<Cache> {
        let (mut ids, mut logp, mut tail) = (vec![], vec![], vec![]);
        let mut offsets = vec![0i64];
        for chunk in seqs.chunks(batch.max(1)) {
            let refs: Vec<&LmExample> = chunk.iter().collect();
            let packed = pack(&refs, meta.max_len, teacher.model.device());
            let top = tch::no_grad(|| {
                let z = completion_logits(&teacher.model, &packed, meta.vocab);
                TopK::from_logprobs(&(z.to_kind(Kind::Float) / meta.temperature).log_softmax(-1, Kind::Float), meta.k)
            });
            ids.push(top.ids.to_kind(Kind::Int).to_device(tch::Device::Cpu));
            logp.push(top.logp.to_device(tch::Device::Cpu));
            tail.push(top.tail.to_device(tch::Device::Cpu));
            for c in &packed.counts {
                offsets.push(offsets.last().unwrap() + c);
            }
        }
        let cache =
            Cache { meta: meta.clone(), ids: Tensor::cat(&ids, 0), logp: Tensor::cat(&logp, 0), tail: Tensor::cat(&tail, 0), offsets };
        if cache.ids.size()[0] != meta.positions {
            bail!("teacher cache: {} positions computed, {} expected", cache.ids.size()[0], meta.positions);
        }
        let tmp: PathBuf = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let mut t = BTreeMap::new();
        t.insert("ids".to_string(), cache.ids.shallow_clone());
        t.insert("logprobs".to_string(), cache.logp.shallow_clone());
        t.insert("tail_logmass".to_string(), cache.tail.shallow_clone());
        t.insert("offsets".to_string(), Tensor::from_slice(&cache.offsets));
        rollout::model::weights::save_file(&t, &tmp.join("topk.safetensors"))?;
        std::fs::write(tmp.join("meta.json"), serde_json::to_string_pretty(meta)?)?;
        for f in ["topk.safetensors", "meta.json"] {
            std::fs::File::open(tmp.join(f))?.sync_all()?;
        }
        let _ = std::fs::remove_dir_all(dir);
        if let Some(p) = dir.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::rename(&tmp, dir).with_context(|| format!("moving the teacher cache into {}", dir.display()))?;
        Ok(cache)
    }

    /// Bytes of the cache file.
    pub fn file_bytes(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("topk.safetensors")).map(|m| m.len()).unwrap_or(0)
    }
}
