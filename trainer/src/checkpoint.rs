//! Checkpoints: `checkpoints/step-N/` holds the policy in Hugging Face layout (loadable by
//! transformers, SGLang or vLLM as is, tokenizer included), `train-state/optimizer.safetensors`
//! (AdamW moments; in a subfolder, where no loader that globs `*.safetensors` looks) and
//! `trainer_state.json` (step, data cursor, optimizer step). Written to a temporary folder
//! and renamed, so a crash mid-write never damages an existing checkpoint.

use crate::data::Cursor;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE: &str = "trainer_state.json";
/// Trainer-only tensors live in a subfolder: a weight loader that takes every top-level
/// `*.safetensors` of a model folder (SGLang's and vLLM's do) must not read them as weights.
pub const OPTIMIZER: &str = "train-state/optimizer.safetensors";
pub const REFERENCE: &str = "train-state/reference.safetensors";

/// Where `name` (e.g. [`OPTIMIZER`]) is in checkpoint `dir`: its place, or, in a checkpoint
/// written before the subfolder existed, the top level.
pub fn find(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    match Path::new(name).file_name() {
        Some(f) if !p.exists() && dir.join(f).exists() => dir.join(f),
        _ => p,
    }
}

/// `dir/name`, its folder created, for writing.
pub fn place(dir: &Path, name: &str) -> Result<PathBuf> {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    Ok(p)
}
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
    /// Data-parallel ranks the run trained with (resume needs the same number).
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Complete checkpoints (those with a trainer_state.json), oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    list_in(&checkpoints_dir(run_dir), STATE)
}

/// The newest complete checkpoint, damaged or not (see [`latest_valid`]).
pub fn latest(run_dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(list(run_dir)?.pop())
}

/// Writes a checkpoint with `fill(tmp_dir)` producing the model files, then the state, then
/// renames into place and prunes to `keep_last`.
pub fn write(run_dir: &Path, state: &TrainerState, keep_last: usize, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    write_step_dir(&checkpoints_dir(run_dir), state.step, STATE, keep_last, |tmp| {
        fill(tmp)?;
        std::fs::write(tmp.join(STATE), serde_json::to_string_pretty(state)?)?;
        Ok(())
    })
}

/// The one checkpoint writer of every stage kind: `fill` writes the files of `step-N` into
/// a temporary folder (the state file, named `state_file`, last); the files and the folder
/// are fsynced, the folder renamed to `parent/step-N` and the parent fsynced, then all but
/// the newest `keep_last` complete checkpoints are removed (0 = keep all). A kill at any
/// moment leaves every earlier checkpoint whole, and the new one either whole or absent.
pub fn write_step_dir(
    parent: &Path,
    step: u64,
    state_file: &str,
    keep_last: usize,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(parent)?;
    let final_dir = parent.join(format!("step-{step}"));
    let tmp = parent.join(format!(".tmp-step-{step}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    fill(&tmp)?;
    if !tmp.join(state_file).exists() {
        bail!("checkpoint writer: {} was not written", tmp.join(state_file).display());
    }
    // fsync the files (and those of subfolders) so a power cut after the rename cannot leave
    // empty files behind.
    for e in std::fs::read_dir(&tmp)? {
        let p = e?.path();
        if p.is_file() {
            std::fs::File::open(&p)?.sync_all()?;
        } else if p.is_dir() {
            for f in std::fs::read_dir(&p)? {
                let f = f?.path();
                if f.is_file() {
                    std::fs::File::open(&f)?.sync_all()?;
                }
            }
            sync_dir(&p);
        }
    }
    sync_dir(&tmp);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).with_context(|| format!("moving checkpoint into {}", final_dir.display()))?;
    sync_dir(parent);
    if keep_last > 0 {
        let all = list_in(parent, state_file)?;
        if all.len() > keep_last {
            for (_, p) in &all[..all.len() - keep_last] {
                std::fs::remove_dir_all(p).with_context(|| format!("removing old checkpoint {}", p.display()))?;
            }
        }
    }
    Ok(final_dir)
}

/// Writes `body` to `path` through a temporary file in the same folder (fsync, rename), so
/// a kill leaves either the whole file or the previous one.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}

/// fsync a directory (its entries: a rename in it survives a power cut). Best effort: some
/// filesystems refuse to open directories.
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Complete `step-N` folders (holding `state_file`) under `parent`, oldest first.
pub fn list_in(parent: &Path, state_file: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = vec![];
    if !parent.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(parent).with_context(|| format!("listing {}", parent.display()))? {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(n) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            if p.join(state_file).exists() {
                out.push((n, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Checks that a checkpoint folder is whole: `state_file` parses as JSON, every
/// `*.safetensors` has a readable header whose tensors end exactly at the end of the file
/// (a truncated or padded file fails), and `config.json`, when present, parses.
pub fn validate(dir: &Path, state_file: &str) -> Result<()> {
    let state = dir.join(state_file);
    let text = std::fs::read_to_string(&state).with_context(|| format!("reading {}", state.display()))?;
    serde_json::from_str::<serde_json::Value>(&text).with_context(|| format!("{}: not valid JSON", state.display()))?;
    let cfg = dir.join("config.json");
    if cfg.exists() {
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&cfg)?)
            .with_context(|| format!("{}: not valid JSON", cfg.display()))?;
    }
    let mut tensors = 0;
    let state_dir = dir.join(Path::new(OPTIMIZER).parent().unwrap());
    for folder in [dir, state_dir.as_path()] {
        if !folder.is_dir() {
            continue;
        }
        for e in std::fs::read_dir(folder)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                check_safetensors(&p)?;
                tensors += 1;
            }
        }
    }
    if tensors == 0 {
        bail!("{}: no .safetensors file", dir.display());
    }
    Ok(())
}

/// A safetensors file's header against its size, without reading the tensors.
fn check_safetensors(p: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |why: String| anyhow::anyhow!("{}: {why}", p.display());
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let size = f.metadata()?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| bad("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return Err(bad(format!("header length {n} does not fit a file of {size} bytes (truncated?)")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|_| bad("truncated header".into()))?;
    let h: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("unreadable header ({e})")))?;
    let mut end = 0u64;
    for (k, v) in &h {
        if k == "__metadata__" {
            continue;
        }
        let off = v
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| bad(format!("tensor `{k}` has no data_offsets")))?;
        end = end.max(off[1].as_u64().unwrap_or(u64::MAX));
    }
    if 8 + n + end != size {
        return Err(bad(format!("holds {size} bytes but its header describes {} (truncated or damaged)", 8 + n + end)));
    }
    Ok(())
}

/// The newest checkpoint under `parent` that [`validate`]s. A damaged newer one is skipped
/// with a warning naming what is wrong (it stays on disk for inspection).
pub fn latest_valid(parent: &Path, state_file: &str) -> Result<Option<(u64, PathBuf)>> {
    let all = list_in(parent, state_file)?;
    for (step, dir) in all.iter().rev() {
        match validate(dir, state_file) {
            Ok(()) => return Ok(Some((*step, dir.clone()))),
            Err(e) => eprintln!("warning: checkpoint {} is damaged ({e:#}); falling back to an older one", dir.display()),
        }
    }
    Ok(None)
}

/// An exclusive lock on a run folder, held while a process writes to it (an OS file lock:
/// released when the process exits, even by kill -9, so a crash leaves no stale lock).
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes `dir/.lock`, or fails naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "run folder {} is in use by another ponder process ({}); wait for it to finish or stop it (Ctrl-C saves a checkpoint), then resume",
                    dir.display(),
                    if holder.trim().is_empty() { "unknown pid".to_string() } else { holder.trim().to_string() }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
        use std::io::{Seek, Write};
        let previous = std::fs::read_to_string(&path).unwrap_or_default();
        if !previous.trim().is_empty() {
            eprintln!(
                "note: {} was last used by {} , which ended without releasing it cleanly (crashed or killed); continuing",
                dir.display(),
                previous.trim()
            );
        }
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        write!(file, "pid {} on {}", std::process::id(), std::env::var("HOSTNAME").unwrap_or_else(|_| "this host".into()))?;
        file.flush()?;
        Ok(RunLock { _file: file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Empty the file: the next holder then knows this process ended cleanly.
        let _ = self._file.set_len(0);
    }
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
