//! `hf://datasets/org/name[@revision]/config/split` (or `.../path/to/file.parquet`): the data
//! files of one split of a Hub dataset, found by file name, as `datasets` finds them for a
//! repository without a loading script:
//!
//! * at the revision: Parquet or JSONL files `config/split.ext`, `config/split-*.ext` and
//!   `config/split/**.ext`; for the config `default` also `data/split...` and `split...` at the
//!   top (the layout `push_to_hub` writes);
//! * else, for `main`, the Hub's own Parquet conversion (revision `refs/convert/parquet`,
//!   `config/split/*.parquet`, or `config/partial-split/` for a dataset too big to convert
//!   whole), which exists for most datasets whatever their original format.
//!
//! Files are fetched into the shared cache (`datasets--org--name/`) as a model's are.

use crate::id::{ModelId, DEFAULT_REVISION};
use std::collections::BTreeSet;

/// The Hub's Parquet conversion branch.
pub const PARQUET_CONVERSION: &str = "refs/convert/parquet";

/// File types ponder reads as data.
pub const DATA_EXTENSIONS: [&str; 2] = [".parquet", ".jsonl"];

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Split {
        config: String,
        split: String,
    },
    /// One file of the repository, by its path.
    File(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    pub id: ModelId,
    pub target: Target,
}

impl DatasetSpec {
    /// Parses what follows `hf://`: `datasets/org/name[@revision]/config/split`,
    /// `datasets/org/name[@revision]/split` (config `default`) or
    /// `datasets/org/name[@revision]/path/file.parquet`. A revision holding `/` is written
    /// with `%2F` (`@refs%2Fconvert%2Fparquet`), as `huggingface_hub`'s file system does.
    pub fn parse(s: &str) -> Result<DatasetSpec, String> {
        const FORM: &str = "expected hf://datasets/org/name/config/split (e.g. hf://datasets/openai/gsm8k/main/train), hf://datasets/org/name/split for the config `default`, or hf://datasets/org/name/path/file.parquet; `@revision` may follow the name";
        let rest = s.strip_prefix("datasets/").ok_or_else(|| format!("hf://{s}: only datasets can be read this way; {FORM}"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("hf://{s}: {FORM}"));
        }
        let repo = format!("{}/{}", parts[0], parts[1].replace("%2F", "/").replace("%2f", "/"));
        let id =
            ModelId::parse_dataset(&repo).ok_or_else(|| format!("hf://{s}: `{repo}` is not a dataset id (org/name[@revision]); {FORM}"))?;
        let tail = &parts[2..];
        let target = if DATA_EXTENSIONS.iter().any(|x| tail[tail.len() - 1].ends_with(x)) {
            if tail.iter().any(|p| *p == "." || *p == "..") {
                return Err(format!("hf://{s}: a file path inside the repository may not hold `.` or `..`"));
            }
            Target::File(tail.join("/"))
        } else {
            match tail {
                [split] => Target::Split { config: "default".into(), split: split.to_string() },
                [config, split] => Target::Split { config: config.to_string(), split: split.to_string() },
                _ => return Err(format!("hf://{s}: {FORM} (a file must end in .parquet or .jsonl)")),
            }
        };
        Ok(DatasetSpec { id, target })
    }

    /// `config/split`, or the file, for messages.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Split { config, split } => format!("config `{config}`, split `{split}`"),
            Target::File(f) => format!("file `{f}`"),
        }
    }

    /// Whether the Hub's Parquet conversion may stand in when the revision has no such files.
    pub fn may_use_conversion(&self) -> bool {
        matches!(self.target, Target::Split { .. }) && self.id.revision == DEFAULT_REVISION
    }

    /// The repository files this spec names, in order (shards sort by name).
    pub fn pick<'a>(&self, files: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        match &self.target {
            Target::File(f) => files.into_iter().filter(|x| *x == f).cloned().collect(),
            Target::Split { config, split } => split_files(files, config, split),
        }
    }
}

fn is_data(f: &str) -> bool {
    DATA_EXTENSIONS.iter().any(|x| f.ends_with(x))
}

/// The data files of `config` / `split` among a repository's files, sorted.
pub fn split_files<'a>(files: impl IntoIterator<Item = &'a String>, config: &str, split: &str) -> Vec<String> {
    let mut prefixes = vec![format!("{config}/")];
    if config == "default" {
        prefixes.extend(["data/".to_string(), String::new()]);
    }
    let hit = |rest: &str| {
        DATA_EXTENSIONS.iter().any(|x| rest == format!("{split}{x}"))
            || (rest.starts_with(&format!("{split}-")) && !rest.contains('/'))
            || rest.starts_with(&format!("{split}/"))
            || rest.starts_with(&format!("partial-{split}/"))
    };
    let picked: BTreeSet<String> =
        files.into_iter().filter(|f| is_data(f) && prefixes.iter().any(|p| f.strip_prefix(p.as_str()).is_some_and(hit))).cloned().collect();
    picked.into_iter().collect()
}

/// `config/split` for every data file, as best the names tell, for "it has ..." hints.
pub fn available_splits<'a>(files: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let stem = |name: &str| {
        let name = name.strip_prefix("partial-").unwrap_or(name);
        let end = name.find(['-', '.']).unwrap_or(name.len());
        name[..end].to_string()
    };
    let mut out = BTreeSet::new();
    for f in files.into_iter().filter(|f| is_data(f)) {
        let parts: Vec<&str> = f.split('/').collect();
        let (config, split) = match parts.as_slice() {
            [one] => ("default", stem(one)),
            ["data", next, ..] => ("default", stem(next)),
            [config, next, ..] => (*config, stem(next)),
            [] => continue,
        };
        out.insert(format!("{config}/{split}"));
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[&str]) -> Vec<String> {
        files.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn specs() {
        let s = DatasetSpec::parse("datasets/openai/gsm8k/main/train").unwrap();
        assert_eq!((s.id.repo.as_str(), s.id.revision.as_str()), ("openai/gsm8k", "main"));
        assert_eq!(s.target, Target::Split { config: "main".into(), split: "train".into() });
        assert!(s.may_use_conversion());
        let s = DatasetSpec::parse("datasets/HuggingFaceH4/MATH-500/test").unwrap();
        assert_eq!(s.target, Target::Split { config: "default".into(), split: "test".into() });
        let s = DatasetSpec::parse("datasets/openai/gsm8k@refs%2Fconvert%2Fparquet/main/test/0000.parquet").unwrap();
        assert_eq!(s.id.revision, "refs/convert/parquet");
        assert_eq!(s.target, Target::File("main/test/0000.parquet".into()));
        assert!(!s.may_use_conversion());
        let s = DatasetSpec::parse("datasets/a/b@v1.0/x/y").unwrap();
        assert_eq!(s.id.revision, "v1.0");
        assert!(!s.may_use_conversion(), "a pinned revision is not silently swapped for the conversion");
        for bad in [
            "openai/gsm8k/main/train",
            "datasets/openai/gsm8k",
            "datasets/openai//main",
            "datasets/a/b/c/d/e",
            "datasets/a/b/../x.parquet",
            "models/a/b/c",
        ] {
            assert!(DatasetSpec::parse(bad).is_err(), "{bad}");
        }
        assert!(DatasetSpec::parse("models/a/b/c").unwrap_err().contains("only datasets"));
    }

    #[test]
    fn split_files_follow_the_hub_layouts() {
        // openai/gsm8k at main
        let gsm = set(&[
            "README.md",
            "main/test-00000-of-00001.parquet",
            "main/train-00000-of-00001.parquet",
            "socratic/train-00000-of-00001.parquet",
        ]);
        assert_eq!(split_files(&gsm, "main", "train"), ["main/train-00000-of-00001.parquet"]);
        assert_eq!(split_files(&gsm, "main", "validation"), Vec::<String>::new());
        assert_eq!(available_splits(&gsm), ["main/test", "main/train", "socratic/train"]);
        // push_to_hub's default layout, shards in order, and a split whose name prefixes another
        let d = set(&[
            "data/train-00001-of-00002.parquet",
            "data/train-00000-of-00002.parquet",
            "data/train_extra-00000-of-00001.parquet",
            "data/test-00000-of-00001.parquet",
        ]);
        assert_eq!(split_files(&d, "default", "train"), ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]);
        assert_eq!(
            available_splits(&d),
            ["default/test", "default/train_extra", "default/train"]
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        // files at the top, JSONL
        let top = set(&["train.jsonl", "test.jsonl", "notes.txt"]);
        assert_eq!(split_files(&top, "default", "test"), ["test.jsonl"]);
        // the Parquet conversion branch, whole and partial
        let conv = set(&["main/train/0000.parquet", "main/train/0001.parquet", "big/partial-train/0000.parquet"]);
        assert_eq!(split_files(&conv, "main", "train"), ["main/train/0000.parquet", "main/train/0001.parquet"]);
        assert_eq!(split_files(&conv, "big", "train"), ["big/partial-train/0000.parquet"]);
        assert_eq!(available_splits(&conv), ["big/train", "main/train"]);
        // a config named like the default layout's folder is not confused with it
        assert_eq!(split_files(&gsm, "default", "train"), Vec::<String>::new());
    }
}
