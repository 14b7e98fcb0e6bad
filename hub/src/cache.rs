//! One model's folder in the shared cache, laid out as Python's `huggingface_hub` lays it
//! out, so either program reuses what the other downloaded:
//!
//! ```text
//! <cache>/models--org--name/
//!     refs/<revision>                 the commit hash the revision pointed at, no newline
//!     blobs/<etag>                    file contents, named by ETag (sha256 for LFS files)
//!     blobs/<etag>.incomplete         a download in progress, continued with a Range request
//!     snapshots/<commit>/<file>       relative symlink to ../../blobs/<etag> (a copy where
//!                                     symlinks are not possible)
//! <cache>/.locks/models--org--name/<etag>.lock    held while a blob downloads
//! ```

use crate::error::HubError;
use crate::id::{is_commit_hash, ModelId};
use std::fs::File;
use std::path::{Path, PathBuf};

pub struct RepoCache {
    pub dir: PathBuf,
    locks: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, id: &ModelId) -> RepoCache {
        RepoCache { dir: cache_dir.join(id.folder_name()), locks: cache_dir.join(".locks").join(id.folder_name()) }
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    pub fn pointer(&self, commit: &str, file: &str) -> PathBuf {
        self.snapshot(commit).join(file)
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// The commit a revision names: itself when it is a full hash, else what `refs/<revision>`
    /// recorded the last time it was resolved online.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let c = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let c = c.trim();
        is_commit_hash(c).then(|| c.to_string())
    }

    /// Records `refs/<revision>` = commit (not for a commit hash itself), written through a
    /// temporary file so a concurrent reader never sees half of it, and only when it changed
    /// (a read-only cache that is up to date keeps working).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), HubError> {
        if revision == commit {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        let parent = path.parent().expect("refs/<revision> has a parent");
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        let tmp = path.with_file_name(format!("{}.{}.tmp", path.file_name().unwrap().to_string_lossy(), std::process::id()));
        std::fs::write(&tmp, commit).map_err(|e| HubError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| HubError::io(&path, e))
    }

    /// An exclusive lock on `.locks/.../<etag>.lock`: the same file (and, on Unix, the same
    /// `flock`) Python's `filelock` takes, so two downloaders never write one blob at once.
    pub fn lock(&self, etag: &str) -> Result<File, HubError> {
        std::fs::create_dir_all(&self.locks).map_err(|e| HubError::io(&self.locks, e))?;
        let path = self.locks.join(format!("{etag}.lock"));
        let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| HubError::io(&path, e))?;
        if let Err(std::fs::TryLockError::WouldBlock) = f.try_lock() {
            eprintln!("waiting for another process downloading the same file (lock {})", path.display());
            f.lock().map_err(|e| HubError::io(&path, e))?;
        }
        Ok(f)
    }

    /// Points `snapshots/<commit>/<file>` at the blob: a relative symlink, so the cache can be
    /// moved or mounted elsewhere; a copy where symlinks cannot be made.
    pub fn link(&self, blob: &Path, pointer: &Path) -> Result<(), HubError> {
        let parent = pointer.parent().expect("a pointer has a parent");
        std::fs::create_dir_all(parent).map_err(|e| HubError::io(parent, e))?;
        // A dangling link (blob removed by a cache cleanup) is replaced.
        let _ = std::fs::remove_file(pointer);
        let rel = relative_to(blob, parent);
        #[cfg(unix)]
        if std::os::unix::fs::symlink(&rel, pointer).is_ok() {
            return Ok(());
        }
        let _ = rel;
        std::fs::copy(blob, pointer).map(drop).map_err(|e| HubError::io(pointer, e))
    }
}

/// `target` as seen from folder `from`, both under one root (`../../blobs/<etag>`).
fn relative_to(target: &Path, from: &Path) -> PathBuf {
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..f.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c);
    }
    rel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_are_relative_links_into_blobs() {
        assert_eq!(relative_to(Path::new("/c/m/blobs/e"), Path::new("/c/m/snapshots/abc")), PathBuf::from("../../blobs/e"));
        assert_eq!(relative_to(Path::new("/c/m/blobs/e"), Path::new("/c/m/snapshots/abc/sub")), PathBuf::from("../../../blobs/e"));
    }
}
