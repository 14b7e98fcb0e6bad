//! Where the cache is, which server to ask and with what token: read from the environment
//! the way Python's `huggingface_hub` reads it, so both share one cache and one login.

use std::path::PathBuf;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    /// `HF_ENDPOINT` [https://huggingface.co], without a trailing `/`.
    pub endpoint: String,
    /// The hub cache: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`
    /// (`HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`).
    pub cache_dir: PathBuf,
    /// `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the file `HF_TOKEN_PATH`
    /// [`$HF_HOME/token`] that `hf auth login` writes.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) set to 1 / ON / YES / TRUE: resolve from
    /// the cache only, never touch the network.
    pub offline: bool,
    /// A progress line on stderr while a file downloads.
    pub progress: bool,
}

impl HubConfig {
    /// The process environment.
    pub fn from_env() -> HubConfig {
        HubConfig::from_vars(|k| std::env::var(k).ok())
    }

    /// The settings these variables give (`var` answers like `std::env::var(..).ok()`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> HubConfig {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        let home = || var("HOME").map(PathBuf::from).or_else(std::env::home_dir).unwrap_or_else(|| PathBuf::from("."));
        let expand = |p: String| match p.strip_prefix("~/") {
            Some(rest) => home().join(rest),
            None if p == "~" => home(),
            None => PathBuf::from(p),
        };
        let hf_home = var("HF_HOME")
            .map(expand)
            .unwrap_or_else(|| var("XDG_CACHE_HOME").map(expand).unwrap_or_else(|| home().join(".cache")).join("huggingface"));
        let cache_dir = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")).map(expand).unwrap_or_else(|| hf_home.join("hub"));
        let token_file = var("HF_TOKEN_PATH").map(expand).unwrap_or_else(|| hf_home.join("token"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| std::fs::read_to_string(token_file).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let truthy = |k: &str| var(k).is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.trim().to_ascii_uppercase().as_str()));
        HubConfig {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string(),
            cache_dir,
            token,
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
            progress: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Settings from these variables only; HOME defaults to a folder that does not exist, so
    /// no test reads the real ~/.cache.
    fn cfg(vars: &[(&str, &str)]) -> HubConfig {
        let m: HashMap<String, String> =
            [("HOME", "/nonexistent-home")].iter().chain(vars).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubConfig::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn cache_dir_follows_python_precedence() {
        let home = [("HOME", "/h")];
        assert_eq!(cfg(&home).cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(cfg(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]).cache_dir, PathBuf::from("/x/huggingface/hub"));
        assert_eq!(cfg(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x"), ("HF_HOME", "~/hf")]).cache_dir, PathBuf::from("/h/hf/hub"));
        assert_eq!(cfg(&[("HF_HOME", "/a"), ("HUGGINGFACE_HUB_CACHE", "/old")]).cache_dir, PathBuf::from("/old"));
        assert_eq!(cfg(&[("HF_HOME", "/a"), ("HUGGINGFACE_HUB_CACHE", "/old"), ("HF_HUB_CACHE", "/new")]).cache_dir, PathBuf::from("/new"));
    }

    #[test]
    fn endpoint_offline_and_token() {
        let c = cfg(&[("HF_ENDPOINT", "http://mirror.example/")]);
        assert_eq!(c.endpoint, "http://mirror.example");
        assert!(!c.offline);
        assert_eq!(c.token, None);
        assert_eq!(cfg(&[]).endpoint, DEFAULT_ENDPOINT);
        for v in ["1", "on", "YES", "true"] {
            assert!(cfg(&[("HF_HUB_OFFLINE", v)]).offline, "{v}");
        }
        assert!(cfg(&[("TRANSFORMERS_OFFLINE", "1")]).offline);
        for v in ["0", "no", ""] {
            assert!(!cfg(&[("HF_HUB_OFFLINE", v)]).offline, "{v}");
        }
        assert_eq!(cfg(&[("HF_TOKEN", "hf_a"), ("HUGGING_FACE_HUB_TOKEN", "hf_b")]).token.as_deref(), Some("hf_a"));
        assert_eq!(cfg(&[("HUGGING_FACE_HUB_TOKEN", "hf_b")]).token.as_deref(), Some("hf_b"));
    }

    #[test]
    fn token_file_of_hf_auth_login() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(cfg(&[("HF_HOME", home)]).token.as_deref(), Some("hf_file"));
        assert_eq!(cfg(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")]).token.as_deref(), Some("hf_env"));
        let other = dir.path().join("other");
        std::fs::write(&other, "hf_other").unwrap();
        assert_eq!(cfg(&[("HF_HOME", home), ("HF_TOKEN_PATH", other.to_str().unwrap())]).token.as_deref(), Some("hf_other"));
    }
}
