//! `org/name` or `org/name@revision`: a model (or a dataset) on the Hub.

use std::fmt;

pub const DEFAULT_REVISION: &str = "main";

/// Models and datasets live under different URL prefixes and cache folder names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit hash [main].
    pub revision: String,
    pub kind: RepoKind,
}

impl ModelId {
    /// `org/name[@revision]`, or `None` when `s` is not shaped like one. Only the two-part
    /// form is taken: a bare `name` or `a/b/c` is far more likely a local path than a model.
    pub fn parse(s: &str) -> Option<ModelId> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (s, DEFAULT_REVISION),
        };
        let (org, name) = repo.split_once('/')?;
        if !(valid_part(org) && valid_part(name) && repo.len() <= 96 && valid_revision(revision)) {
            return None;
        }
        Some(ModelId { repo: repo.to_string(), revision: revision.to_string(), kind: RepoKind::Model })
    }

    /// A dataset repository, `org/name[@revision]` (or `None`, as [`ModelId::parse`]).
    pub fn parse_dataset(s: &str) -> Option<ModelId> {
        ModelId::parse(s).map(|m| ModelId { kind: RepoKind::Dataset, ..m })
    }

    /// The same repository at another revision.
    pub fn at(&self, revision: &str) -> ModelId {
        ModelId { revision: revision.to_string(), ..self.clone() }
    }

    /// The cache folder name: `models--org--name` (`datasets--org--name`).
    pub fn folder_name(&self) -> String {
        format!("{}--{}", self.kind_plural(), self.repo.replace('/', "--"))
    }

    /// `models` or `datasets`: the API's path part and the cache folder's prefix.
    pub fn kind_plural(&self) -> &'static str {
        match self.kind {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    /// The repository's page and file URLs below the endpoint: `org/name` for a model,
    /// `datasets/org/name` for a dataset.
    pub fn url_path(&self) -> String {
        match self.kind {
            RepoKind::Model => self.repo.clone(),
            RepoKind::Dataset => format!("datasets/{}", self.repo),
        }
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == RepoKind::Dataset {
            f.write_str("datasets/")?;
        }
        if self.revision == DEFAULT_REVISION {
            f.write_str(&self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

/// The Hub's rule for a namespace or a name: word characters, `-` and `.`, starting and ending
/// with a letter, digit or `_`, and no `--` or `..` (`--` separates the parts of a cache folder).
fn valid_part(p: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    p.chars().all(|c| word(c) || c == '-' || c == '.') && p.starts_with(word) && p.ends_with(word) && !p.contains("--") && !p.contains("..")
}

/// A revision becomes a path under `refs/`, so nothing that could leave that folder.
fn valid_revision(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 256
        && !r.starts_with('/')
        && !r.ends_with('/')
        && r.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && r.chars().all(|c| c.is_ascii_graphic() && c != '\\')
}

/// A full commit hash (40 hex digits), as `refs/` files hold.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_revisions() {
        let m = ModelId::parse("Qwen/Qwen2.5-0.5B-Instruct").unwrap();
        assert_eq!((m.repo.as_str(), m.revision.as_str()), ("Qwen/Qwen2.5-0.5B-Instruct", "main"));
        assert_eq!(m.folder_name(), "models--Qwen--Qwen2.5-0.5B-Instruct");
        assert_eq!(m.to_string(), "Qwen/Qwen2.5-0.5B-Instruct");
        let m = ModelId::parse("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B@refs/pr/1").unwrap();
        assert_eq!(m.revision, "refs/pr/1");
        assert_eq!(m.to_string(), "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B@refs/pr/1");
        assert!(ModelId::parse("a/b@0123456789abcdef0123456789abcdef01234567").is_some());
        for bad in [
            "gpt2",
            "runs/x/stages/base/model",
            "/abs/model",
            "./model",
            "../x/y",
            "a/b@",
            "a/b@../../etc",
            "a/b@x/../y",
            "org--x/y",
            "a/-b",
            "a/b c",
            "~/m",
            "",
        ] {
            assert_eq!(ModelId::parse(bad), None, "{bad}");
        }
        let d = ModelId::parse_dataset("openai/gsm8k").unwrap();
        assert_eq!(
            (d.folder_name(), d.url_path(), d.to_string()),
            ("datasets--openai--gsm8k".into(), "datasets/openai/gsm8k".into(), "datasets/openai/gsm8k".into())
        );
        assert_eq!(d.at("refs/convert/parquet").to_string(), "datasets/openai/gsm8k@refs/convert/parquet");
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
    }
}
