//! A small Weights & Biases client for ponder.
//!
//! No usable Rust W&B crate exists, so this speaks W&B's HTTP API the way the official
//! client (wandb 0.31) does: GraphQL `UpsertBucket` creates or resumes a run, the run's
//! `file_stream` receives history rows, the summary and the final `complete` + `exitcode`,
//! and `CreateRunFiles` + `PUT` upload files such as tables. The interface is three calls:
//! [`Run::start`], [`Run::log`] (never blocks), [`Run::finish`]; [`sync`] uploads a run
//! folder's `metrics.jsonl` afterwards. Pure Rust, no torch.

mod client;
mod settings;
mod stream;
mod sync;
pub mod testing;

pub use client::{Bucket, Client, ResumeStatus, RunFields};
pub use settings::{new_run_id, process_env, Env, Mode, Settings, WandbConfig, DEFAULT_BASE_URL};
pub use stream::{now_ts, wrap_config, Report, Row, Run, RunOptions, State, Worker, STATE_FILE};
pub use sync::{samples_table, sync, SyncReport};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error("could not reach W&B: {0}")]
    Transport(String),
    #[error("W&B answered HTTP {status} to {url}: {body}")]
    Http { url: String, status: u16, body: String },
    #[error("unexpected answer from W&B: {0}")]
    Protocol(String),
}
