//! Every model argument (`[model] path`, a stage's `model`, `teacher`, `student` and
//! `tokenizer`, `--model`, `--teacher`, `--student`) is a local folder or a Hugging Face Hub
//! id, `org/name[@revision]`; this gives the folder to read. A local path that exists always
//! wins; an id is fetched into (or found in) the shared Hugging Face cache by `ponder-hub`.

use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};

/// The folder `p` names: `p` itself, or the cache snapshot of the Hub model it names.
pub fn resolve(p: &Path) -> Result<PathBuf> {
    ponder_hub::resolve_model(p, &ponder_hub::HubConfig::from_env())
        .map_err(|e| anyhow!("model `{}` is not a local folder, so it was looked up on the Hugging Face Hub: {e}", p.display()))
}

/// Whether `p` will be taken as a Hub id (spelled `org/name[@revision]`, no such local path).
pub fn is_hub_id(p: &Path) -> bool {
    ponder_hub::hub_id(p).is_some()
}
