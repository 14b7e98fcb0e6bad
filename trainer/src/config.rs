//! Recipes: TOML, checked strictly. Unknown keys are errors that name the key path and
//! suggest the closest valid key; every field has a default documented here and in the
//! README; `--set a.b=c` overrides; the resolved recipe is saved in the run folder.

use crate::grpo::{EngineIs, LossType, ScaleRewards};
use anyhow::{anyhow, bail, Context, Result};
use rewards::RewardSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default)]
    pub run: RunCfg,
    pub model: ModelCfg,
    pub data: DataCfg,
    #[serde(default)]
    pub rollout: RolloutCfg,
    /// `[[rewards]]` tables, as in the rewards crate.
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
    #[serde(default)]
    pub grpo: GrpoCfg,
    #[serde(default)]
    pub optim: OptimCfg,
    #[serde(default)]
    pub train: TrainCfg,
    /// `[wandb]`: stream this run to Weights & Biases (off without the section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wandb: Option<ponder_wandb::WandbConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunCfg {
    /// Run name: the run folder is `<output_dir>/<name>`.
    pub name: String,
    /// Drives data order, sampling and initialisation.
    pub seed: u64,
    pub output_dir: PathBuf,
}

impl Default for RunCfg {
    fn default() -> Self {
        RunCfg { name: "run".into(), seed: 0, output_dir: "runs".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCfg {
    /// Hugging Face model folder (relative paths are relative to the recipe file), or a Hub
    /// id `org/name[@revision]` fetched into the Hugging Face cache (a local folder wins).
    pub path: PathBuf,
    /// f32 | bf16 | f16 (default f32).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Learner device: cpu | cuda | cuda:N (default cpu).
    #[serde(default = "default_device")]
    pub device: String,
}

fn default_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "cpu".into()
}

/// One file or several: `"a.jsonl"` or `["a.jsonl", "b.jsonl"]` (rows concatenated in order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl Paths {
    pub fn list(&self) -> Vec<&PathBuf> {
        match self {
            Paths::One(p) => vec![p],
            Paths::Many(v) => v.iter().collect(),
        }
    }

    pub fn list_mut(&mut self) -> Vec<&mut PathBuf> {
        match self {
            Paths::One(p) => vec![p],
            Paths::Many(v) => v.iter_mut().collect(),
        }
    }
}

impl From<PathBuf> for Paths {
    fn from(p: PathBuf) -> Self {
        Paths::One(p)
    }
}

impl std::fmt::Display for Paths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v: Vec<String> = self.list().iter().map(|p| p.display().to_string()).collect();
        f.write_str(&v.join(", "))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCfg {
    /// Training prompts: one dataset or a list (rows concatenated; mix tasks this way, each
    /// row's `task` field routing its rewards). A dataset is a JSONL file, a `.parquet` file, or
    /// a Hub dataset split `hf://datasets/org/name[@revision]/config/split` (fetched into the
    /// shared Hugging Face cache).
    pub train: Paths,
    /// Held-out prompts, one dataset or a list, as `train` (optional; used by `train.eval_every`).
    #[serde(default)]
    pub eval: Option<Paths>,
    /// Field holding the prompt text (default "prompt").
    #[serde(default = "default_prompt_field")]
    pub prompt_field: String,
    /// Field holding the reference answer (default "answer"); every other field is passed to
    /// the reward modules as is (e.g. `numbers`, `target`).
    #[serde(default = "default_answer_field")]
    pub answer_field: String,
    /// `r1_zero` (DeepSeek-R1-Zero's template, built in), `chat` (the model's chat template,
    /// prompt as the user message) or a custom string containing `{prompt}`.
    #[serde(default = "default_template")]
    pub template: String,
    /// Share of rows allowed to be unusable (malformed JSON, no prompt, a reference answer
    /// the rewards cannot read) before the run refuses to start (default 0: any bad row
    /// stops it with a report of the rows; above 0 they are skipped with a warning).
    #[serde(default)]
    pub max_bad_fraction: f64,
    /// Text appended, as is, to every row's prompt before the template renders it (e.g.
    /// veRL's GSM8K " Let's think step by step and output the final answer after \"####\".");
    /// with `template = "chat"` it lands inside the user message of any model's template.
    #[serde(default)]
    pub instruction: String,
    /// The prompt built from the row's fields instead of read from `prompt_field`: `{name}`
    /// becomes the field's value (text as it is; numbers, and lists as `[3, 8, 1]`, as Python
    /// prints them), `{{` and `}}` literal braces; e.g. TinyZero's Countdown
    /// "Using the numbers {nums}, create an equation that equals {target}. ...".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_format: Option<String>,
    /// Fields renamed in every row before anything reads it (`{ nums = "numbers" }` gives
    /// TinyZero's Countdown rows the `numbers` field the countdown reward reads).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rename: std::collections::BTreeMap<String, String>,
}

/// How the rows of a stage's prompt files become prompts and answers (`[stages.fields]` of
/// `eval` and `rejection_sample` stages): the same keys, defaults and meaning as in `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsCfg {
    #[serde(default = "default_prompt_field")]
    pub prompt_field: String,
    #[serde(default = "default_answer_field")]
    pub answer_field: String,
    #[serde(default)]
    pub instruction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_format: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rename: std::collections::BTreeMap<String, String>,
}

impl Default for FieldsCfg {
    fn default() -> Self {
        FieldsCfg {
            prompt_field: default_prompt_field(),
            answer_field: default_answer_field(),
            instruction: String::new(),
            prompt_format: None,
            rename: Default::default(),
        }
    }
}

impl FieldsCfg {
    /// A `DataCfg` reading `paths` with these fields and `template`.
    pub fn data_cfg(&self, paths: &Paths, template: &str) -> DataCfg {
        DataCfg {
            prompt_field: self.prompt_field.clone(),
            answer_field: self.answer_field.clone(),
            instruction: self.instruction.clone(),
            prompt_format: self.prompt_format.clone(),
            rename: self.rename.clone(),
            ..crate::data::plain_cfg(paths, template)
        }
    }

    /// The prompt format's syntax (rows are checked when read).
    pub fn check(&self, origin: &str) -> Result<()> {
        if let Some(f) = &self.prompt_format {
            crate::data::format_fields(f, &serde_json::Map::new(), true).map_err(|e| anyhow!("{origin}: fields.prompt_format: {e}"))?;
        }
        Ok(())
    }
}

fn default_prompt_field() -> String {
    "prompt".into()
}
fn default_answer_field() -> String {
    "answer".into()
}
fn default_template() -> String {
    "r1_zero".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutCfg {
    /// G: completions sampled per prompt.
    pub group_size: usize,
    pub prompts_per_step: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    /// 0 = off.
    pub top_k: i64,
    /// 0 = off.
    pub min_p: f64,
    /// Stop strings (completion text is cut before them).
    pub stop: Vec<String>,
    /// EOS suppressed until this many tokens (benchmarks use it to fix the length).
    pub min_new_tokens: usize,
    /// Rollout workers, each with its own copy of the policy on `devices[i % len]`.
    pub workers: usize,
    /// Intra-op CPU threads of each rollout worker (default: the learner's). A small model
    /// decodes faster as one-thread workers, one per core, than as one worker whose tiny ops
    /// are split across threads.
    pub threads: Option<usize>,
    /// Devices of the workers (default: the learner's device).
    pub devices: Vec<String>,
    /// Rows per generation forward pass on one worker.
    pub max_batch: usize,
    /// Who samples: `local` (the in-process worker pool) or an inference server already
    /// running at `urls`: `sglang` or `vllm` (README: "Rollouts on an inference engine").
    pub engine: Engine,
    /// Base URLs of the servers (`engine` other than `local`); samples are spread over them.
    pub urls: Vec<String>,
    /// Seconds one engine call may take (a generation request, or one step of the weight
    /// reload cycle) before it is an error naming the server (default 600).
    pub engine_timeout_s: u64,
    /// Requests in flight per server at once (default 64).
    pub engine_max_in_flight: usize,
    /// Where new weights are published for the servers, one folder per version; it must be
    /// readable by the servers at the same path (a shared filesystem across nodes). Default:
    /// `<run dir>/engine-weights`.
    pub engine_weights_dir: Option<PathBuf>,
    /// One-step-off-policy overlap: 1 = while the learner updates on step t's batch, the
    /// samplers draw step t+1's with the weights from before that update (one step stale;
    /// the PPO ratio against the sampler's log-probs corrects the lag); 0 = synchronous.
    pub staleness: u32,
}

/// `[rollout] engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Local,
    Sglang,
    Vllm,
}

impl RolloutCfg {
    /// The sampling settings of rollouts (and of GRPO's periodic evaluation).
    pub fn sampling(&self) -> rollout::generate::SamplingParams {
        rollout::generate::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            stop: self.stop.clone(),
        }
    }
}

impl Default for RolloutCfg {
    fn default() -> Self {
        RolloutCfg {
            group_size: 8,
            prompts_per_step: 8,
            max_new_tokens: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            stop: vec![],
            min_new_tokens: 0,
            workers: 1,
            threads: None,
            devices: vec![],
            max_batch: 256,
            engine: Engine::Local,
            urls: vec![],
            engine_timeout_s: 600,
            engine_max_in_flight: 64,
            staleness: 0,
            engine_weights_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoCfg {
    /// KL coefficient; 0 = no reference model is loaded. Default 0.001 (R1-Zero).
    pub beta: f64,
    /// Lower clip range: ratios below 1 - epsilon are clipped (default 0.2).
    pub epsilon: f64,
    /// Upper clip range (default: = epsilon; DAPO's clip-higher uses 0.28).
    pub epsilon_high: Option<f64>,
    /// grpo | bnpo | dapo | dr_grpo (default dapo, as TRL).
    pub loss_type: LossType,
    /// group | batch | none (default group).
    pub scale_rewards: ScaleRewards,
    /// mu: optimisation passes over each rollout batch (default 1: ratio = 1).
    pub num_iterations: usize,
    /// Sequences per optimizer step; 0 = the whole rollout batch (default 0).
    pub minibatch_size: usize,
    /// Truncated completions (no EOS within max_new_tokens) get no loss (default false).
    pub mask_truncated_completions: bool,
    /// Drop groups whose rewards are all equal (dynamic sampling without refill; default false).
    pub drop_zero_std_groups: bool,
    /// DAPO's dynamic sampling: drop groups whose rewards are all equal and draw more
    /// prompts, in rounds, until `prompts_per_step` informative groups are in hand or
    /// `max_refill_prompts` extra prompts were drawn (default false).
    pub dynamic_sampling: bool,
    /// Cap on the extra prompts one step may draw with `dynamic_sampling` (default: 2 x
    /// prompts_per_step, so at most 3x the generation of a step without it, as DAPO's
    /// 3x generation batch). A step that hits the cap trains on the informative groups it has.
    pub max_refill_prompts: Option<usize>,
    /// Replace the reference model by the current policy every N steps (R1-Zero: 400); 0 = never.
    pub ref_sync_every: usize,
    /// Positions per chunk when computing log-probs: the learner takes the LM head, the
    /// loss and its backward one chunk at a time, so one [rows, chunk, vocab] block of fp32
    /// logits (and its gradient) is the most that lives at once (default 256).
    pub logprob_chunk: i64,
    /// Activation checkpointing for the policy's pass: the layers keep only their inputs and
    /// are recomputed during the backward, one at a time (TRL's `gradient_checkpointing`).
    /// Trades about a third more learner compute for activation memory that no longer grows
    /// with the layers; the gradients are the same. Default false.
    pub gradient_checkpointing: bool,
    /// Cap on padded tokens (rows x sequence length) per forward/backward pass; larger
    /// minibatches are split into equal micro-batches whose gradients accumulate into the
    /// same update (veRL's `ppo_max_token_len_per_gpu`). Bounds learner memory. 0 = no cap.
    /// Default 4096: peers split by default too (TRL's per_device_train_batch_size is 8),
    /// and a pass of 4096 tokens already keeps the matmuls large.
    pub max_tokens_per_micro_batch: usize,
    /// Abort (after saving a checkpoint) after this many consecutive non-finite steps.
    pub max_bad_steps: usize,
    /// With an inference engine sampling, its log-probs differ from the learner's (other
    /// kernels, precision): each token's loss is weighted by w = pi_learner / pi_engine at
    /// the rollout's weights, `truncate`d at `engine_is_cap` (TRL, veRL's TIS) or `mask`ed
    /// out above it; `off` trusts the engine. Unused with the local pool (its log-probs are
    /// the learner's). Default truncate.
    pub engine_is: EngineIs,
    /// The cap of `engine_is` (default 2.0, as TRL).
    pub engine_is_cap: f64,
}

impl GrpoCfg {
    /// The refill cap for a step of `prompts_per_step` prompts.
    pub fn max_refill_prompts(&self, prompts_per_step: usize) -> usize {
        self.max_refill_prompts.unwrap_or(2 * prompts_per_step)
    }
}

impl Default for GrpoCfg {
    fn default() -> Self {
        GrpoCfg {
            beta: 0.001,
            epsilon: 0.2,
            epsilon_high: None,
            loss_type: LossType::Dapo,
            scale_rewards: ScaleRewards::Group,
            num_iterations: 1,
            minibatch_size: 0,
            mask_truncated_completions: false,
            drop_zero_std_groups: false,
            dynamic_sampling: false,
            max_refill_prompts: None,
            ref_sync_every: 0,
            logprob_chunk: 256,
            gradient_checkpointing: false,
            max_tokens_per_micro_batch: 4096,
            max_bad_steps: 3,
            engine_is: EngineIs::Truncate,
            engine_is_cap: 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimCfg {
    /// AdamW learning rate (default 1e-6, DeepSeekMath).
    pub lr: f64,
    /// Decoupled weight decay, not applied to biases and norms (default 0).
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// constant | linear | cosine (decay to 0 at the last step), after warmup.
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// Gradient clipping by global norm; 0 = off (default 1.0).
    pub max_grad_norm: f64,
    /// Micro-batches per optimizer step (splits each minibatch to bound memory).
    pub grad_accumulation: usize,
    /// In a data-parallel launch: 0 = every rank holds the whole optimizer state; 2 = ZeRO-2
    /// (gradients reduce-scattered; each rank keeps the fp32 master weights and AdamW
    /// moments of its 1/world share and updates it; the shares are all-gathered).
    pub zero_stage: u32,
}

impl Default for OptimCfg {
    fn default() -> Self {
        OptimCfg {
            lr: 1e-6,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            max_grad_norm: 1.0,
            grad_accumulation: 1,
            zero_stage: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainCfg {
    /// GRPO steps (one rollout batch each).
    pub steps: usize,
    /// Evaluate on `data.eval` every N steps (and at the end); 0 = never.
    pub eval_every: usize,
    /// Held-out prompts used per evaluation (0 = all).
    pub eval_limit: usize,
    /// Samples per held-out prompt in each evaluation (N). With N > 1 the metrics also
    /// carry `eval/pass@k` and `eval/maj@k` for k = 1, 2, 4, ..., N. Default 1 (one sample).
    pub eval_samples: usize,
    /// Checkpoint every N steps (and at the end); 0 = only at the end.
    pub save_every: usize,
    /// Checkpoints kept (oldest removed first).
    pub keep_last: usize,
    /// Write a few completions to `samples/` every N steps; 0 = never.
    pub log_samples_every: usize,
    /// How many completions each time.
    pub samples_to_log: usize,
}

impl Default for TrainCfg {
    fn default() -> Self {
        TrainCfg {
            steps: 100,
            eval_every: 0,
            eval_limit: 0,
            eval_samples: 1,
            save_every: 50,
            keep_last: 2,
            log_samples_every: 10,
            samples_to_log: 4,
        }
    }
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a message naming the
/// key path and the closest valid key.
fn explain(path: &str, msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let bad = rest.split('`').next().unwrap_or("");
        let valid: Vec<&str> = msg.split("expected").nth(1).map(|e| e.split('`').skip(1).step_by(2).collect()).unwrap_or_default();
        let full = if path.is_empty() || path == "." {
            bad.to_string()
        } else {
            format!("{}.{bad}", path.trim_end_matches(&format!(".{bad}")[..]).trim_end_matches(bad).trim_end_matches('.'))
        };
        let best = valid.iter().map(|v| (strsim::levenshtein(bad, v), *v)).min();
        let hint = match best {
            Some((d, v)) if d <= 3 || v.starts_with(bad) || bad.starts_with(v) => format!("; did you mean `{v}`?"),
            _ => String::new(),
        };
        let list = if valid.is_empty() { String::new() } else { format!(" Valid keys here: {}.", valid.join(", ")) };
        return format!("unknown key `{full}`{hint}{list}");
    }
    if path.is_empty() || path == "." {
        msg.to_string()
    } else {
        format!("`{path}`: {msg}")
    }
}

/// Parses `value` of a `--set key=value` as TOML (number, bool, array, string in quotes),
/// falling back to a bare string.
fn parse_set_value(v: &str) -> toml::Value {
    let doc = format!("x = {v}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("x").unwrap_or(toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    }
}

/// Applies `a.b.c=value` overrides to a parsed TOML table. In an array of tables that have
/// a `name` (a pipeline's `[[stages]]`), the next part of the path picks the table by name:
/// `stages.student-base.slip_rate=0.9`.
pub fn apply_sets(table: &mut toml::Table, sets: &[String]) -> Result<()> {
    for s in sets {
        let (key, value) = s.split_once('=').ok_or_else(|| anyhow!("--set {s:?}: expected key.path=value"))?;
        let parts: Vec<&str> = key.trim().split('.').collect();
        let mut cur = &mut *table;
        let mut i = 0;
        while i + 1 < parts.len() {
            let p = parts[i];
            let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let by_name = matches!(entry, toml::Value::Array(_)) && i + 2 < parts.len();
            cur = if by_name {
                let items = entry.as_array_mut().expect("checked above");
                let name = parts[i + 1];
                let names: Vec<String> = items.iter().filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string)).collect();
                i += 1;
                items
                    .iter_mut()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
                    .and_then(|t| t.as_table_mut())
                    .ok_or_else(|| anyhow!("--set {s:?}: no `{p}` entry is named {name:?} (names: {})", names.join(", ")))?
            } else {
                entry.as_table_mut().ok_or_else(|| anyhow!("--set {s:?}: `{p}` is not a table"))?
            };
            i += 1;
        }
        cur.insert(parts[parts.len() - 1].to_string(), parse_set_value(value.trim()));
    }
    Ok(())
}

/// Checks a `device` (cpu | cuda | cuda:N) and `dtype` (f32 | bf16 | f16) as written, before
/// any model loads; whether the device exists is checked when the model loads.
pub fn check_device_dtype(origin: &str, device: &str, dtype: &str) -> Result<()> {
    let d = device.to_ascii_lowercase();
    if !(d == "cpu" || d == "cuda" || d.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok())) {
        bail!("{origin}: device {device:?} is not one of cpu, cuda, cuda:N");
    }
    rollout::folder::parse_kind(dtype).map_err(|_| anyhow!("{origin}: dtype {dtype:?} is not one of f32, bf16, f16"))?;
    Ok(())
}

/// Deserialises any strict config type from a TOML table, with key-path errors.
pub fn from_table<T: for<'de> Deserialize<'de>>(table: toml::Table, origin: &str) -> Result<T> {
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        anyhow!("{origin}: {}", explain(&path, msg.trim()))
    })
}

impl Recipe {
    /// Reads a recipe file with `--set` overrides. Relative paths inside are resolved against
    /// the recipe's folder.
    pub fn load(path: &Path, sets: &[String]) -> Result<(Recipe, toml::Table)> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
        let mut table: toml::Table = text.parse().map_err(|e| anyhow!("{}: invalid TOML: {e}", path.display()))?;
        apply_sets(&mut table, sets)?;
        let mut r: Recipe = from_table(table.clone(), &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        r.resolve_paths(base);
        r.validate()?;
        Ok((r, table))
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        // A data path may end in a row range (`file.jsonl[0:100]`): the file decides.
        let fix = |p: &mut PathBuf| {
            let file = crate::data::dataset_source(p);
            if p.is_relative() && !file.exists() && base.join(&file).exists() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.model.path);
        for p in self.data.train.list_mut() {
            fix(p);
        }
        if let Some(e) = self.data.eval.as_mut() {
            for p in e.list_mut() {
                fix(p);
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        let r = &self.rollout;
        if r.group_size < 2 {
            bail!("rollout.group_size must be >= 2 (GRPO compares samples within a group), got {}", r.group_size);
        }
        if r.prompts_per_step == 0 {
            bail!("rollout.prompts_per_step must be >= 1");
        }
        if r.max_new_tokens == 0 {
            bail!("rollout.max_new_tokens must be >= 1");
        }
        if r.temperature <= 0.0 {
            bail!("rollout.temperature must be > 0 for RL (got {}): greedy rollouts give identical samples", r.temperature);
        }
        if r.workers == 0 {
            bail!("rollout.workers must be >= 1");
        }
        if r.threads == Some(0) {
            bail!("rollout.threads must be >= 1 (intra-op threads per rollout worker), or left out for the learner's count");
        }
        if r.max_batch == 0 {
            bail!("rollout.max_batch must be >= 1 (rows per generation pass)");
        }
        if r.staleness > 1 {
            bail!(
                "rollout.staleness = {}: only 0 (synchronous) and 1 (one-step-off overlap: the next batch is sampled while the learner updates) are supported",
                r.staleness
            );
        }
        r.sampling().validate().map_err(|e| anyhow!("[rollout]: {e}"))?;
        if r.engine == Engine::Local && !r.urls.is_empty() {
            bail!("rollout.urls is set but rollout.engine is \"local\": set rollout.engine = \"sglang\" or \"vllm\" to sample on those servers, or remove urls");
        }
        if r.engine != Engine::Local {
            if r.urls.is_empty() {
                bail!(
                    "rollout.engine = {:?} needs rollout.urls, the servers' base URLs, e.g. urls = [\"http://127.0.0.1:30000\"]",
                    r.engine
                );
            }
            if let Some(u) = r.urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
                bail!("rollout.urls: {u:?} is not an http:// or https:// URL");
            }
            // The learner's ratios and the engine correction assume the full distribution.
            if r.top_p != 1.0 || r.top_k != 0 || r.min_p != 0.0 {
                bail!(
                    "rollout.top_p / top_k / min_p must be 1 / 0 / 0 when an engine samples for training (got {} / {} / {}): \
                     the engine's log-probs are of the unfiltered distribution, so a filtered sample's ratio is wrong",
                    r.top_p,
                    r.top_k,
                    r.min_p
                );
            }
            if r.engine_timeout_s == 0 || r.engine_max_in_flight == 0 {
                bail!("rollout.engine_timeout_s and rollout.engine_max_in_flight must be >= 1");
            }
        }
        check_device_dtype("[model]", &self.model.device, &self.model.dtype)?;
        let g = &self.grpo;
        if !(g.engine_is_cap >= 1.0 && g.engine_is_cap.is_finite()) {
            bail!("grpo.engine_is_cap must be a number >= 1 (the largest importance weight kept), got {}", g.engine_is_cap);
        }
        if g.epsilon < 0.0 || g.epsilon_high.is_some_and(|e| e < 0.0) {
            bail!("grpo.epsilon and grpo.epsilon_high must be >= 0");
        }
        if !(g.beta >= 0.0 && g.beta.is_finite()) {
            bail!("grpo.beta must be a number >= 0, got {}", g.beta);
        }
        if !(g.epsilon.is_finite() && g.epsilon_high.is_none_or(f64::is_finite)) {
            bail!("grpo.epsilon and grpo.epsilon_high must be finite");
        }
        if g.logprob_chunk < 1 {
            bail!("grpo.logprob_chunk must be >= 1 (positions per log-prob chunk), got {}", g.logprob_chunk);
        }
        if g.max_bad_steps == 0 {
            bail!("grpo.max_bad_steps must be >= 1 (consecutive non-finite steps tolerated before stopping)");
        }
        if g.num_iterations == 0 {
            bail!("grpo.num_iterations must be >= 1");
        }
        if g.max_refill_prompts.is_some() && !g.dynamic_sampling {
            bail!("grpo.max_refill_prompts caps dynamic sampling's refill and does nothing without it: set grpo.dynamic_sampling = true or remove it");
        }
        if self.optim.grad_accumulation == 0 {
            bail!("optim.grad_accumulation must be >= 1");
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            bail!("optim.lr must be a positive number, got {}", o.lr);
        }
        if !(o.eps > 0.0 && o.eps.is_finite()) {
            bail!("optim.eps must be > 0 (AdamW divides by sqrt(v) + eps), got {}", o.eps);
        }
        if !o.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            bail!("optim.betas must both be in [0, 1), got {:?}", o.betas);
        }
        if !(o.weight_decay >= 0.0 && o.weight_decay.is_finite()) || !(o.max_grad_norm >= 0.0 && o.max_grad_norm.is_finite()) {
            bail!("optim.weight_decay and optim.max_grad_norm must be numbers >= 0");
        }
        if o.zero_stage != 0 && o.zero_stage != 2 {
            bail!("optim.zero_stage must be 0 (no sharding) or 2 (ZeRO-2: gradients and optimizer state sharded over the data-parallel ranks), got {}", o.zero_stage);
        }
        if o.zero_stage == 2 && matches!(rollout::folder::parse_kind(&self.model.dtype), Ok(tch::Kind::Half)) {
            bail!("optim.zero_stage = 2 does not support model.dtype = \"f16\" (its loss scaling is not sharded yet): use bf16 or f32");
        }
        if self.train.steps == 0 {
            bail!("train.steps must be >= 1");
        }
        let t = &self.data.template;
        if t != "r1_zero" && t != "chat" && !t.contains("{prompt}") {
            bail!("data.template must be `r1_zero`, `chat`, or a string containing {{prompt}}; got {t:?}");
        }
        if let Some(f) = &self.data.prompt_format {
            crate::data::format_fields(f, &serde_json::Map::new(), true).map_err(|e| anyhow::anyhow!("data.prompt_format: {e}"))?;
        }
        if !(0.0..1.0).contains(&self.data.max_bad_fraction) {
            bail!("data.max_bad_fraction must be in [0, 1) (the share of unusable rows to skip), got {}", self.data.max_bad_fraction);
        }
        if self.rewards.is_empty() {
            bail!("the recipe has no [[rewards]] tables: GRPO needs at least one reward (e.g. [[rewards]] kind = \"accuracy\")");
        }
        rewards::RewardSet::from_specs(self.rewards.clone()).map_err(|e| anyhow!("[[rewards]]: {e}"))?;
        Ok(())
    }

    pub fn run_dir(&self) -> PathBuf {
        self.run.output_dir.join(&self.run.name)
    }
}
