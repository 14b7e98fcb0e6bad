//! Where a run goes and how: the recipe's `[wandb]` section merged with the usual W&B
//! environment (`WANDB_API_KEY` or `~/.netrc`, `WANDB_BASE_URL`, `WANDB_ENTITY`,
//! `WANDB_PROJECT`, `WANDB_MODE`).

use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_BASE_URL: &str = "https://api.wandb.ai";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Stream to the server while training.
    Online,
    /// Record nothing remotely; `ponder wandb-sync RUN_DIR` uploads later.
    Offline,
    /// No W&B at all (the default when a recipe has no `[wandb]` section).
    #[default]
    Disabled,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "online" | "run" => Ok(Mode::Online),
            "offline" | "dryrun" => Ok(Mode::Offline),
            "disabled" => Ok(Mode::Disabled),
            other => Err(Error::Config(format!("W&B mode {other:?} is not one of online, offline, disabled"))),
        }
    }
}

/// What a user writes (recipe `[wandb]`); every field optional, the environment fills gaps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WandbConfig {
    /// W&B project; default `WANDB_PROJECT`, else "ponder".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Team or user; default `WANDB_ENTITY`, else the API key's default entity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// Display name; default the ponder run name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// online | offline | disabled. `WANDB_MODE` in the environment wins, so a shell can
    /// always turn uploads off without editing the recipe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Seconds `finish` waits for the last uploads before giving up (and pointing at
    /// `ponder wandb-sync`). Default 30.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_timeout_s: Option<f64>,
}

/// Everything the client needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub base_url: String,
    pub api_key: Option<String>,
    pub entity: Option<String>,
    pub project: String,
    pub display_name: Option<String>,
    pub group: Option<String>,
    pub tags: Vec<String>,
    pub notes: Option<String>,
    pub job_type: Option<String>,
    /// Per-request limit; a slow server costs at most this per attempt, in the background.
    pub request_timeout: Duration,
    pub finish_timeout: Duration,
    /// History rows sent per request at most.
    pub rows_per_request: usize,
    /// How often buffered rows are sent.
    pub flush_interval: Duration,
    /// Messages the trainer may queue before rows are dropped (the stream then stops and
    /// `wandb-sync` uploads the rest from `metrics.jsonl`).
    pub queue_capacity: usize,
    /// Consecutive failed attempts before the one warning.
    pub warn_after_failures: u32,
    /// Longest wait between retries.
    pub max_backoff: Duration,
}

/// Reads environment variables through a function so tests need not touch the process's.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

impl Settings {
    /// Merges the recipe section with the environment. `default_name` is the run's display
    /// name when the recipe gives none. Online without an API key is an error now, before
    /// any training, rather than a silent failure later.
    pub fn resolve(cfg: Option<&WandbConfig>, default_name: &str, env: Env) -> Result<Settings, Error> {
        let empty = WandbConfig::default();
        let present = cfg.is_some();
        let cfg = cfg.unwrap_or(&empty);
        let mode = match env("WANDB_MODE") {
            Some(m) => m.parse()?,
            // A `[wandb]` section means "log this run"; without one W&B stays off.
            None => cfg.mode.unwrap_or(if present { Mode::Online } else { Mode::Disabled }),
        };
        let base_url = env("WANDB_BASE_URL").unwrap_or_else(|| DEFAULT_BASE_URL.to_string()).trim_end_matches('/').to_string();
        let api_key = match env("WANDB_API_KEY") {
            Some(k) => Some(k.trim().to_string()),
            None => netrc_key(&base_url, env),
        };
        if mode == Mode::Online && api_key.is_none() {
            return Err(Error::Config(format!(
                "W&B is online but no API key was found for {base_url}: set WANDB_API_KEY, or run `wandb login` \
                 (it writes ~/.netrc), or set `[wandb] mode = \"offline\"` and upload later with `ponder wandb-sync RUN_DIR`"
            )));
        }
        Ok(Settings {
            mode,
            base_url,
            api_key,
            entity: cfg.entity.clone().or_else(|| env("WANDB_ENTITY")),
            project: cfg.project.clone().or_else(|| env("WANDB_PROJECT")).unwrap_or_else(|| "ponder".to_string()),
            display_name: Some(cfg.name.clone().unwrap_or_else(|| default_name.to_string())),
            group: cfg.group.clone(),
            tags: cfg.tags.clone(),
            notes: cfg.notes.clone(),
            job_type: None,
            request_timeout: Duration::from_secs(20),
            finish_timeout: Duration::from_secs_f64(cfg.finish_timeout_s.unwrap_or(30.0).max(0.0)),
            rows_per_request: 500,
            flush_interval: Duration::from_secs(5),
            queue_capacity: 10_000,
            warn_after_failures: 5,
            max_backoff: Duration::from_secs(30),
        })
    }

    /// Where people look at the run: the app host for the public cloud, the server itself
    /// for a self-hosted instance.
    pub fn run_url(&self, entity: &str, run_id: &str) -> String {
        let app = if self.base_url == DEFAULT_BASE_URL { "https://wandb.ai".to_string() } else { self.base_url.clone() };
        format!("{app}/{entity}/{}/runs/{run_id}", self.project)
    }
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
}

/// The password `wandb login` stored for the server's host in `$NETRC` or `~/.netrc`.
fn netrc_key(base_url: &str, env: Env) -> Option<String> {
    let path = env("NETRC").map(PathBuf::from).or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".netrc")))?;
    let text = std::fs::read_to_string(path).ok()?;
    parse_netrc(&text, host_of(base_url))
}

pub(crate) fn parse_netrc(text: &str, host: &str) -> Option<String> {
    let mut tokens = text.split_whitespace();
    let mut in_machine = false;
    while let Some(t) = tokens.next() {
        match t {
            "machine" => in_machine = tokens.next() == Some(host),
            "default" => in_machine = true,
            "password" if in_machine => return tokens.next().map(str::to_string),
            _ => {}
        }
    }
    None
}

/// A new run id as the official client makes them: 8 lowercase alphanumerics.
pub fn new_run_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn netrc_finds_the_servers_host() {
        let text = "machine api.wandb.ai\n  login user\n  password k1\nmachine 127.0.0.1 login user password k2\n";
        assert_eq!(parse_netrc(text, "api.wandb.ai").as_deref(), Some("k1"));
        assert_eq!(parse_netrc(text, "127.0.0.1").as_deref(), Some("k2"));
        assert_eq!(parse_netrc(text, "example.com"), None);
        assert_eq!(host_of("http://127.0.0.1:8080/x"), "127.0.0.1");
        assert_eq!(host_of("https://api.wandb.ai"), "api.wandb.ai");
    }

    #[test]
    fn environment_fills_gaps_and_mode_env_wins() {
        let env = env_of(&[("WANDB_API_KEY", "k"), ("WANDB_PROJECT", "envp"), ("WANDB_ENTITY", "enve")]);
        let cfg = WandbConfig { project: Some("recp".into()), ..Default::default() };
        let s = Settings::resolve(Some(&cfg), "run1", &env).unwrap();
        assert_eq!((s.mode, s.project.as_str(), s.entity.as_deref()), (Mode::Online, "recp", Some("enve")));
        assert_eq!(s.display_name.as_deref(), Some("run1"));
        assert_eq!(s.run_url("e", "abc"), "https://wandb.ai/e/recp/runs/abc");
        // No section: off unless the environment asks.
        assert_eq!(Settings::resolve(None, "r", &env).unwrap().mode, Mode::Disabled);
        let env = env_of(&[("WANDB_MODE", "offline")]);
        let cfg = WandbConfig { mode: Some(Mode::Online), ..Default::default() };
        assert_eq!(Settings::resolve(Some(&cfg), "r", &env).unwrap().mode, Mode::Offline);
    }

    #[test]
    fn online_without_a_key_says_how_to_fix() {
        let env = env_of(&[("HOME", "/nonexistent")]);
        let err = Settings::resolve(Some(&WandbConfig::default()), "r", &env).unwrap_err().to_string();
        assert!(err.contains("WANDB_API_KEY") && err.contains("offline"), "{err}");
        let env = env_of(&[("WANDB_MODE", "sometimes")]);
        assert!(Settings::resolve(None, "r", &env).unwrap_err().to_string().contains("online, offline, disabled"));
    }

    #[test]
    fn run_ids_look_like_the_official_ones() {
        let id = new_run_id();
        assert_eq!(id.len(), 8);
        assert!(id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(id, new_run_id());
    }
}
