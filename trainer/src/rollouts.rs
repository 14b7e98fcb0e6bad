//! Who samples a GRPO step's completions: the in-process worker pool, or inference servers
//! (SGLang, vLLM) already running at `[rollout] urls`. Both take the same prompts and seeds
//! and hand back the same `Completion`s; with servers, new weights travel as a versioned
//! folder in the Hugging Face layout (weights, config, tokenizer: nothing else a loader could
//! mistake for weights), published atomically, then loaded by each server's reload cycle.

use crate::checkpoint;
use crate::config::{Engine, Recipe};
use anyhow::{Context, Result};
use ponder_engine::{EngineClient, EngineConfig, EngineKind, Finish, Request, Sampling};
use rollout::folder::Policy;
use rollout::generate::{completion_text, Completion, FinishReason, SamplingParams, ThinkStats};
use rollout::pool::{sample_seed, RolloutPool};
use rollout::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tch::Kind;

/// The marker file of a published weight folder (its version).
const VERSION_FILE: &str = "ponder-version.json";

pub enum Rollouts {
    Local(RolloutPool),
    Engine(EngineRollouts),
}

pub struct EngineRollouts {
    client: EngineClient,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<i64>,
    /// `<engine_weights_dir>`: one `step-N/` folder per published version.
    root: PathBuf,
    /// Where config, tokenizer and generation files are copied from.
    model_dir: PathBuf,
    kind: Kind,
    run_name: String,
}

impl Rollouts {
    /// The engine client for a recipe whose `rollout.engine` is a server kind; it checks each
    /// server's health route now.
    pub fn connect(
        recipe: &Recipe,
        run_dir: &Path,
        model_dir: &Path,
        policy: &Policy,
        tokenizer: Arc<Tokenizer>,
        kind: Kind,
    ) -> Result<Rollouts> {
        let r = &recipe.rollout;
        let engine_kind = match r.engine {
            Engine::Sglang => EngineKind::Sglang,
            Engine::Vllm => EngineKind::Vllm,
            Engine::Local => unreachable!("the local pool is built by the trainer"),
        };
        let mut cfg = EngineConfig::new(engine_kind, r.urls.clone());
        cfg.request_timeout = Duration::from_secs(r.engine_timeout_s);
        cfg.reload_timeout = Duration::from_secs(r.engine_timeout_s);
        cfg.max_in_flight = r.engine_max_in_flight;
        let client = EngineClient::connect(cfg)?;
        let root = r.engine_weights_dir.clone().unwrap_or_else(|| run_dir.join("engine-weights"));
        // Servers get absolute paths: they do not share ponder's working directory.
        let root = std::path::absolute(&root).with_context(|| format!("rollout.engine_weights_dir {}", root.display()))?;
        Ok(Rollouts::Engine(EngineRollouts {
            client,
            tokenizer,
            eos: policy.eos_token_ids(),
            root,
            model_dir: model_dir.to_path_buf(),
            kind,
            run_name: recipe.run.name.clone(),
        }))
    }

    pub fn is_engine(&self) -> bool {
        matches!(self, Rollouts::Engine(_))
    }

    /// `group_size` samples for each prompt, grouped per prompt in order; sample `j` of prompt
    /// `i` is seeded with `sample_seed(seed, i, j)` either way.
    pub fn generate_groups(
        &self,
        prompts: &[Vec<i64>],
        group_size: usize,
        params: &SamplingParams,
        seed: u64,
    ) -> Result<Vec<Vec<Completion>>> {
        self.generate_groups_from(prompts, 0, group_size, params, seed)
    }

    /// [`generate_groups`](Self::generate_groups) for entries `first..` of a larger call,
    /// each sample seeded as it is there (a call split over data-parallel ranks draws the
    /// same samples).
    pub fn generate_groups_from(
        &self,
        prompts: &[Vec<i64>],
        first: usize,
        group_size: usize,
        params: &SamplingParams,
        seed: u64,
    ) -> Result<Vec<Vec<Completion>>> {
        match self {
            Rollouts::Local(pool) => Ok(pool.generate_groups_from(prompts, first, group_size, params, seed, None)?.0),
            Rollouts::Engine(e) => e.generate_groups(prompts, first, group_size, params, seed),
        }
    }

    /// Gives the samplers the policy's current weights, as of learner step `step`.
    pub fn sync(&self, policy: &Policy, step: u64) -> Result<()> {
        match self {
            Rollouts::Local(pool) => Ok(pool.sync_weights(&policy.named_tensors())?),
            Rollouts::Engine(e) => e.publish(policy, step),
        }
    }
}

impl EngineRollouts {
    fn generate_groups(&self, prompts: &[Vec<i64>], first: usize, g: usize, p: &SamplingParams, seed: u64) -> Result<Vec<Vec<Completion>>> {
        let reqs: Vec<Request> = (0..prompts.len())
            .flat_map(|i| (0..g).map(move |j| (i, j)))
            .map(|(i, j)| Request { prompt: prompts[i].clone(), seed: sample_seed(seed, first + i, j), key: i })
            .collect();
        let s = Sampling {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            max_new_tokens: p.max_new_tokens,
            min_new_tokens: p.min_new_tokens,
            stop_token_ids: self.eos.clone(),
            stop: p.stop.clone(),
        };
        let got = self.client.generate(&reqs, &s)?;
        let mut out: Vec<Vec<Completion>> = (0..prompts.len()).map(|_| Vec::with_capacity(g)).collect();
        for (r, x) in reqs.iter().zip(got) {
            let finish_reason = match x.finish {
                Finish::StopToken => FinishReason::Eos,
                Finish::StopString => FinishReason::Stop,
                Finish::Length => FinishReason::Length,
            };
            let text = completion_text(&self.tokenizer, &x.token_ids, finish_reason, &p.stop)?;
            out[r.key].push(Completion { token_ids: x.token_ids, logprobs: x.logprobs, text, finish_reason, think: ThinkStats::default() });
        }
        Ok(out)
    }

    /// Writes the weights as `<root>/step-N/` (temporary folder, fsync, rename; the newest two
    /// kept, so a server still reading the previous one is not cut off), then reloads every
    /// server from it as version `<run>/step-N`.
    fn publish(&self, policy: &Policy, step: u64) -> Result<()> {
        let dir = checkpoint::write_step_dir(&self.root, step, VERSION_FILE, 2, |tmp| {
            policy.save_weights(tmp, self.kind, None)?;
            checkpoint::copy_side_files(&self.model_dir, tmp)?;
            std::fs::write(tmp.join(VERSION_FILE), serde_json::json!({ "version": self.version(step) }).to_string())?;
            Ok(())
        })?;
        self.client.reload(&dir, &self.version(step))?;
        Ok(())
    }

    fn version(&self, step: u64) -> String {
        format!("{}/step-{step}", self.run_name)
    }
}
