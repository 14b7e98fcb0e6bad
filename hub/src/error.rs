//! What can go wrong between a model id and a model folder, each with what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "`{0}` is not a Hugging Face Hub model id: expected `org/name` or `org/name@revision` (letters, digits, `-`, `_`, `.`), or an existing local folder"
    )]
    InvalidId(String),

    #[error(
        "{id}: no such {} on {endpoint}, or it is private and {}. Check the id (`org/name` as on the Hub's page), or give a local {}{}",
        if id.starts_with("datasets/") { "dataset" } else { "model" },
        if *.token_sent { "the token sent (HF_TOKEN or the token file) has no access to it" } else { "no token was sent: set HF_TOKEN to a token with read access" },
        if id.starts_with("datasets/") { "file" } else { "folder" },
        if *.token_sent { "; for a private repository use a token of an account that can read it" } else { "" }
    )]
    RepoNotFound { id: String, endpoint: String, token_sent: bool },

    #[error(
        "{id}: {endpoint} refused access (HTTP {status}{}): the model is {}. Open {endpoint}/{repo} while logged in and accept its licence (gated models), create a read token at {endpoint}/settings/tokens and set HF_TOKEN to it (or log in once with `hf auth login`){}",
        server.as_deref().map(|m| format!(": {m}")).unwrap_or_default(),
        if *.gated { "gated" } else { "gated or private" },
        if *.token_sent { ". A token was sent: it is invalid, or its account has not been granted access yet" } else { "" }
    )]
    Access { id: String, repo: String, endpoint: String, status: u16, gated: bool, token_sent: bool, server: Option<String> },

    #[error("{repo}: no revision `{revision}` on {endpoint}: give a branch, tag or commit hash that exists (see {endpoint}/{repo}/tree/main), or drop `@{revision}` for main")]
    // `repo` is the URL path: `org/name`, or `datasets/org/name`.
    RevisionNotFound { repo: String, revision: String, endpoint: String },

    #[error("{id}: file `{file}` not found on {endpoint} at commit {commit}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    FileNotFound { id: String, file: String, endpoint: String, commit: String, hint: Option<String> },

    #[error(
        "{id}: the repository has no safetensors weights (model.safetensors, or model.safetensors.index.json with its shards){}. ponder reads safetensors only: convert the weights once with transformers (`AutoModelForCausalLM.from_pretrained(id).save_pretrained(dir, safe_serialization=True)`) and give that folder",
        if others.is_empty() { String::new() } else { format!("; it has {}", others.join(", ")) }
    )]
    NoWeights { id: String, others: Vec<String> },

    #[error(
        "{id}: the repository has no tokenizer.json; ponder needs the fast tokenizer. Convert it once with transformers (`AutoTokenizer.from_pretrained(id).save_pretrained(dir)`), save the model next to it and give that folder"
    )]
    NoTokenizer { id: String },

    #[error(
        "cannot reach the Hugging Face Hub at {endpoint} to fetch {id} ({cause}), and it is not in the local cache {}. Check the network (and HTTPS_PROXY if you need a proxy), set HF_ENDPOINT to use a mirror, or download it where there is a network and point HF_HUB_CACHE at a copy of that cache",
        cache.display()
    )]
    Unreachable { id: String, endpoint: String, cause: String, cache: PathBuf },

    #[error(
        "{id}: HF_HUB_OFFLINE is set and it is not in the cache {} ({what}). Unset HF_HUB_OFFLINE to download it, or download it where there is a network (`hf download {repo}`) and point HF_HUB_CACHE at that cache",
        cache.display()
    )]
    NotCached { id: String, repo: String, cache: PathBuf, what: String },

    #[error("{0}")]
    BadDatasetSpec(String),

    #[error(
        "{id}: no Parquet or JSONL files for {what} ({looked}){}",
        if available.is_empty() {
            "; the repository has no Parquet or JSONL files at all (a dataset built by a loading script: load it with `datasets`, write it out with `to_json(..., lines=True)` or `to_parquet`, and give that file)".to_string()
        } else {
            format!("; it has: {}. Give one of those as hf://{}/CONFIG/SPLIT", available.join(", "), id.split('@').next().unwrap_or(id))
        }
    )]
    NoData { id: String, what: String, looked: String, available: Vec<String> },

    #[error("{id}: {url} answered HTTP {status}{}; try again later, or check HF_ENDPOINT", server.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Http { id: String, url: String, status: u16, server: Option<String> },

    #[error("{id}: {url}: the download broke off after {got} of {} bytes ({cause}), {attempts} times in a row; run again to continue it (the partial file is kept)", expected.map(|e| e.to_string()).unwrap_or_else(|| "?".into()))]
    Interrupted { id: String, url: String, got: u64, expected: Option<u64>, cause: String, attempts: usize },

    #[error("{id}: {file} downloaded with {what}; the file was removed: run again to download it anew")]
    Corrupt { id: String, file: String, what: String },

    #[error("{id}: unexpected answer from {url}: {msg}")]
    Protocol { id: String, url: String, msg: String },

    #[error("{}: {source} (is the Hugging Face cache writable? HF_HUB_CACHE or HF_HOME choose where it is)", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl HubError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> HubError {
        HubError::Io { path: path.into(), source }
    }
}
