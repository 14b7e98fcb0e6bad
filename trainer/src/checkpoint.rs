//! Checkpoints: `checkpoints/step-N/` holds the policy in Hugging Face layout (loadable by
//! transformers as is, tokenizer included), `optimizer.safetensors` (AdamW moments) and
//! `trainer_state.json` (step, data cursor, optimizer step). Written to a temporary folder
//! and renamed, so a crash mid-write never damages an existing checkpoint.

use crate::data::Cursor;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE: &str = "trainer_state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";
pub const REFERENCE: &str = "reference.safetensors";
/// Files copied from the source model folder so a checkpoint stands alone.
pub const MODEL_SIDE_FILES: [&str; 6] =
    ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json", "special_tokens_map.json", "vocab.json"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// GRPO steps completed.
    pub step: u64,
    pub cursor: Cursor,
    pub optimizer_step: u64,
    /// Consecutive steps skipped for non-finite loss/gradients.
    pub bad_steps: u64,
    /// Whether `reference.safetensors` holds a reference that replaced the initial model.
    pub reference_saved: bool,
    /// The W&B run id, so a resumed run continues the same W&B run.
    #[serde(default)]
    pub wandb_run_id: Option<String>,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Complete checkpoints (those with a trainer_state.json), oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    let mut out = vec![];
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            if p.join(STATE).exists() {
                out.push((n, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn latest(run_dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(list(run_dir)?.pop())
}

/// Writes a checkpoint with `fill(tmp_dir)` producing the model files, then the state, then
/// renames into place and prunes to `keep_last`.
pub fn write(run_dir: &Path, state: &TrainerState, keep_last: usize, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let dir = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&dir)?;
    let final_dir = dir.join(format!("step-{}", state.step));
    let tmp = dir.join(format!(".tmp-step-{}", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    let state_path = tmp.join(STATE);
    std::fs::write(&state_path, serde_json::to_string_pretty(state)?)?;
    // fsync the files so a power cut after the rename cannot leave empty files behind.
    for e in std::fs::read_dir(&tmp)? {
        let p = e?.path();
        if p.is_file() {
            std::fs::File::open(&p)?.sync_all()?;
        }
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).with_context(|| format!("moving checkpoint into {}", final_dir.display()))?;
    if keep_last > 0 {
        let all = list(run_dir)?;
        if all.len() > keep_last {
            for (_, p) in &all[..all.len() - keep_last] {
                std::fs::remove_dir_all(p).with_context(|| format!("removing old checkpoint {}", p.display()))?;
            }
        }
    }
    Ok(final_dir)
}

pub fn read_state(ckpt: &Path) -> Result<TrainerState> {
    let p = ckpt.join(STATE);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: corrupt trainer state", p.display()))
}

/// Copies tokenizer and generation files from the source model folder.
pub fn copy_side_files(src: &Path, dst: &Path) -> Result<()> {
    for f in MODEL_SIDE_FILES {
        let s = src.join(f);
        if s.exists() {
            std::fs::copy(&s, dst.join(f)).with_context(|| format!("copying {}", s.display()))?;
        }
    }
    if !dst.join("tokenizer.json").exists() {
        bail!("{} has no tokenizer.json to copy into the checkpoint", src.display());
    }
    Ok(())
}
