//! Hugging Face Hub model ids for ponder: `org/name[@revision]` wherever a model folder is
//! accepted, and dataset splits, `hf://datasets/org/name[@revision]/config/split` wherever a
//! dataset file is (see [`dataset`]). The files ponder reads (config.json, tokenizer files, safetensors weights) are
//! fetched into and read from the cache Python's `huggingface_hub` uses (`HF_HUB_CACHE`,
//! `HF_HOME`; default `~/.cache/huggingface/hub`), in its layout, so a model downloaded by
//! either is reused by the other. `HF_ENDPOINT`, `HF_TOKEN` (or the token file of
//! `hf auth login`) and `HF_HUB_OFFLINE=1` behave as in Python. Pure Rust, no torch.

mod cache;
mod client;
mod config;
pub mod dataset;
mod error;
mod id;
pub mod testing;

pub use cache::RepoCache;
pub use client::{cached_snapshot, Hub, OPTIONAL_FILES, SINGLE_WEIGHTS, WEIGHTS_INDEX};
pub use config::{HubConfig, DEFAULT_ENDPOINT};
pub use dataset::DatasetSpec;
pub use error::HubError;
pub use id::{is_commit_hash, ModelId, RepoKind, DEFAULT_REVISION};

use std::path::{Path, PathBuf};

/// A model argument as a folder to read: an existing local path is used as it is (a local
/// folder always wins over a Hub id of the same spelling); otherwise an `org/name[@revision]`
/// is fetched into the Hugging Face cache and its snapshot folder returned. Anything else is
/// returned unchanged, for the model loader to report as a missing folder.
pub fn resolve_model(spec: &Path, cfg: &HubConfig) -> Result<PathBuf, HubError> {
    match hub_id(spec) {
        Some(id) => Hub::new(cfg.clone()).model(&id),
        None => Ok(spec.to_path_buf()),
    }
}

/// The data files of `hf://datasets/...` (`spec` is what follows `hf://`): (repository path,
/// local file) in order, fetched into the shared cache unless there already.
pub fn resolve_dataset(spec: &str, cfg: &HubConfig) -> Result<Vec<(String, PathBuf)>, HubError> {
    let spec = DatasetSpec::parse(spec).map_err(HubError::BadDatasetSpec)?;
    Hub::new(cfg.clone()).dataset(&spec)
}

/// The Hub id `spec` names, if it is one and no local path of that name exists.
pub fn hub_id(spec: &Path) -> Option<ModelId> {
    if spec.exists() {
        return None;
    }
    spec.to_str().and_then(ModelId::parse)
}
