//! The policy side of ponder: Qwen2 / Llama models in tch loaded from Hugging Face folders,
//! tokenizer and chat template, batched KV-cache generation with sampling, and the rollout
//! worker pool.

pub mod config;
pub mod error;
pub mod folder;
pub mod generate;
pub mod model;
pub mod pool;
pub mod tokenizer;

pub use config::{Arch, ModelConfig};
pub use error::{Result, RolloutError};
pub use model::CausalLm;

/// The seeded random stream behind data order, corpora and sampling: ChaCha12 by name, so
/// a seed gives the same values whatever `rand` release is in the tree (`rand`'s `StdRng`
/// makes no such promise).
pub type SeededRng = rand_chacha::ChaCha12Rng;
