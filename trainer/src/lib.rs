//! ponder's learner side: recipes, the GRPO maths and loop, optimizer, checkpoints, metrics
//! sinks, tiny-model builders, and the pieces of the `ponder` CLI.

pub mod bench;
pub mod checkpoint;
pub mod cmd_distill;
pub mod cmd_generate;
pub mod config;
pub mod data;
pub mod distill;
pub mod eval;
pub mod grpo;
pub mod lm;
pub mod metrics;
pub mod model_path;
pub mod optim;
pub mod pipeline;
pub mod plots;
pub mod rollouts;
pub mod stages;
pub mod tasks;
pub mod tiny;
pub mod train;
pub mod wandb_sink;
pub mod zero;
