//! Multi-stage recipes: `[[stages]]` run in order, each stage's output model feeding the
//! next. A run resumes at the stage (and, for GRPO, the step) where it stopped.
//!
//! Stage kinds: `tasks` (write train / held-out JSONL from a task generator), `pretrain`
//! (train a tokenizer and a model from nothing on a generated corpus), `sft` (loss on
//! completion tokens only), `grpo` (the GRPO trainer with the usual recipe sections), `eval`
//! (held-out accuracy to JSON). Paths may use `{run}` for the run folder.

use crate::config::{from_table, RunCfg};
use crate::data::{self, R1_ZERO_TEMPLATE};
use crate::eval::{self, EvalSpec};
use crate::lm::{self, LmCfg, LmExample};
use crate::metrics::{JsonlSink, Sink};
use crate::tasks::{self, Split, TaskKind};
use crate::tiny::{self, TinyShape};
use crate::train::{self, Options};
use anyhow::{anyhow, bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rewards::RewardSpec;
use rollout::folder::{parse_device, parse_kind, Policy};
use rollout::generate::SamplingParams;
use rollout::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    #[serde(default)]
    pub run: RunCfg,
    /// `[wandb]` for every training stage (a GRPO stage's own `[stages.wandb]` wins): each
    /// stage is its own W&B run named `<pipeline>/<stage>`, grouped under the pipeline's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wandb: Option<ponder_wandb::WandbConfig>,
    pub stages: Vec<toml::Table>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksStage {
    pub name: String,
    pub kind: String,
    pub task: TaskKind,
    /// Operand digits (addition, multiplication) or how many numbers (countdown).
    #[serde(default = "two")]
    pub digits: u32,
    #[serde(default = "n_train")]
    pub train_size: usize,
    #[serde(default = "n_heldout")]
    pub heldout_size: usize,
    /// Share of all problems reserved for the held-out split.
    #[serde(default = "heldout_fraction")]
    pub heldout_fraction: f64,
}

fn two() -> u32 {
    2
}
fn n_train() -> usize {
    5000
}
fn n_heldout() -> usize {
    200
}
fn heldout_fraction() -> f64 {
    0.2
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub hidden: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub intermediate: i64,
    /// Tokenizer vocabulary to train (an upper bound; small corpora give fewer merges).
    pub vocab: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainStage {
    pub name: String,
    pub kind: String,
    pub task: TaskKind,
    #[serde(default = "two")]
    pub digits: u32,
    #[serde(default = "heldout_fraction")]
    pub heldout_fraction: f64,
    /// Documents in the corpus (problems from the train split only).
    pub corpus_size: usize,
    /// Share of solutions that carry the sloppy solver's slip (a wrong answer).
    #[serde(default)]
    pub slip_rate: f64,
    /// Share of solutions written in the R1-Zero tag format; the rest end in plain text.
    #[serde(default = "one")]
    pub format_rate: f64,
    /// Share of documents that carry the full R1-Zero template; the rest keep only its end
    /// ("User: {prompt}. Assistant: ..."), which teaches the same skill at a third of the cost.
    #[serde(default = "one")]
    pub template_rate: f64,
    pub model: ModelShape,
    #[serde(default)]
    pub train: LmCfg,
}

/// Sinks of a pretrain / SFT stage: its `metrics.jsonl` (rows after the checkpoint being
/// resumed from dropped) and, with a pipeline `[wandb]`, a W&B run `<pipeline>/<stage>`.
fn lm_sinks(p: &Pipeline, name: &str, stage_dir: &Path, ckpt: &Path, table: &toml::Table, steps: usize) -> Result<Vec<Box<dyn Sink>>> {
    let from = lm::checkpoint_step(ckpt);
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(JsonlSink::open(stage_dir, Some(from.unwrap_or(0) as u64))?)];
    if let Some(w) = &p.wandb {
        let w = crate::wandb_sink::stage_wandb(w, &p.run.name, name);
        let config = serde_json::to_value(table)?;
        if let Some(sink) = crate::wandb_sink::WandbSink::open(Some(&w), name, stage_dir, config, from.is_some(), None, steps as u64)? {
            sinks.push(Box::new(sink));
        }
    }
    Ok(sinks)
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftStage {
    pub name: String,
    pub kind: String,
    /// Model folder (default: the previous stage's output).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// JSONL with `prompt` and `completion`.
    pub data: PathBuf,
    /// Prompt template (`r1_zero`, `chat`, or a string with `{prompt}`).
    #[serde(default = "r1")]
    pub template: String,
    #[serde(default)]
    pub train: LmCfg,
}

fn r1() -> String {
    "r1_zero".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalStage {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub model: Option<PathBuf>,
    pub data: PathBuf,
    #[serde(default = "r1")]
    pub template: String,
    #[serde(default = "one_usize")]
    pub samples: usize,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Reward set (default: accuracy + format).
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
    #[serde(default)]
    pub limit: usize,
}

fn one_usize() -> usize {
    1
}

/// Which stages are done, and where each put its model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipelineState {
    pub completed: Vec<(String, Option<PathBuf>)>,
}

fn state_path(run_dir: &Path) -> PathBuf {
    run_dir.join("pipeline.json")
}

fn subst(p: &Path, run_dir: &Path) -> PathBuf {
    PathBuf::from(p.to_string_lossy().replace("{run}", &run_dir.to_string_lossy()))
}

/// Builds the pretraining corpus: R1-Zero-template documents with (sometimes sloppy, sometimes
/// untagged) solutions of train-split problems.
pub fn corpus(st: &PretrainStage, seed: u64, eos: &str) -> Vec<String> {
    let problems = tasks::generate(st.task, Split::Train, st.corpus_size, st.digits, seed, st.heldout_fraction);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc0ffee);
    problems
        .iter()
        .map(|p| {
            let (reasoning, answer) = match &p.slip {
                Some((r, a)) if rng.random::<f64>() < st.slip_rate => (r.clone(), a.clone()),
                _ => (p.reasoning.clone(), p.answer.clone()),
            };
            let head = if rng.random::<f64>() < st.template_rate {
                R1_ZERO_TEMPLATE.replace("{prompt}", &p.prompt)
            } else {
                format!("User: {}. Assistant:", p.prompt)
            };
            let body = if rng.random::<f64>() < st.format_rate {
                format!(" <think> {reasoning} </think> <answer> {answer} </answer>")
            } else {
                format!(" {reasoning} , so {answer}")
            };
            format!("{head}{body}{eos}")
        })
        .collect()
}

fn stage_kind(t: &toml::Table, i: usize) -> Result<(String, String)> {
    let name = t.get("name").and_then(|v| v.as_str()).ok_or_else(|| anyhow!("stages[{i}]: missing `name`"))?.to_string();
    let kind = t.get("kind").and_then(|v| v.as_str()).ok_or_else(|| anyhow!("stages[{i}] ({name}): missing `kind` (tasks | pretrain | sft | grpo | eval)"))?.to_string();
    Ok((name, kind))
}

/// Checks every stage's table up front, so a typo in stage 4 fails before stage 1 runs.
pub fn validate(p: &Pipeline) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    for (i, t) in p.stages.iter().enumerate() {
        let (name, kind) = stage_kind(t, i)?;
        if !names.insert(name.clone()) {
            bail!("stages[{i}]: duplicate stage name `{name}`");
        }
        let origin = format!("stages[{i}] ({name})");
        match kind.as_str() {
            "tasks" => drop(from_table::<TasksStage>(t.clone(), &origin)?),
            "pretrain" => drop(from_table::<PretrainStage>(t.clone(), &origin)?),
            "sft" => drop(from_table::<SftStage>(t.clone(), &origin)?),
            "eval" => drop(from_table::<EvalStage>(t.clone(), &origin)?),
            "grpo" => {
                let mut t = t.clone();
                t.remove("name");
                t.remove("kind");
                if !t.contains_key("model") {
                    t.insert("model".into(), toml::Value::Table([("path".to_string(), toml::Value::String("{previous}".into()))].into_iter().collect()));
                }
                drop(from_table::<crate::config::Recipe>(t, &origin)?);
            }
            other => bail!("{origin}: unknown stage kind `{other}` (tasks | pretrain | sft | grpo | eval)"),
        }
    }
    Ok(())
}

pub fn run(p: Pipeline, resolved: &toml::Table, resume: bool, quiet: bool, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    validate(&p)?;
    let run_dir = p.run.output_dir.join(&p.run.name);
    if !resume && state_path(&run_dir).exists() {
        bail!("run folder {} already holds a run; continue it with `ponder train --resume {}`, or pick another run.name", run_dir.display(), run_dir.display());
    }
    std::fs::create_dir_all(&run_dir)?;
    if !resume {
        std::fs::write(run_dir.join("config.toml"), toml::to_string_pretty(resolved)?)?;
    }
    let mut state: PipelineState = if state_path(&run_dir).exists() {
        serde_json::from_str(&std::fs::read_to_string(state_path(&run_dir))?).context("reading pipeline.json")?
    } else {
        PipelineState::default()
    };
    let mut previous: Option<PathBuf> = state.completed.iter().rev().find_map(|(_, m)| m.clone());
    for (i, t) in p.stages.iter().enumerate() {
        let (name, kind) = stage_kind(t, i)?;
        if state.completed.iter().any(|(n, _)| n == &name) {
            eprintln!("stage {name} ({kind}): done earlier, skipped");
            continue;
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!("interrupted before stage {name}; resume with: ponder train --resume {}", run_dir.display());
            return Ok(());
        }
        let stage_dir = run_dir.join("stages").join(&name);
        std::fs::create_dir_all(&stage_dir)?;
        let origin = format!("stages[{i}] ({name})");
        eprintln!("stage {name} ({kind})");
        let t0 = std::time::Instant::now();
        let output: Option<PathBuf> = match kind.as_str() {
            "tasks" => {
                let st: TasksStage = from_table(t.clone(), &origin)?;
                let dir = run_dir.join("data");
                std::fs::create_dir_all(&dir)?;
                for (split, n, file) in [(Split::Train, st.train_size, "train.jsonl"), (Split::Heldout, st.heldout_size, "heldout.jsonl")] {
                    let ps = tasks::generate(st.task, split, n, st.digits, p.run.seed, st.heldout_fraction);
                    let body: String = ps.iter().map(|q| format!("{}\n", q.to_json())).collect();
                    std::fs::write(dir.join(file), body)?;
                }
                eprintln!("  wrote {} train and {} held-out problems to {}", st.train_size, st.heldout_size, dir.display());
                previous.clone()
            }
            "pretrain" => {
                let st: PretrainStage = from_table(t.clone(), &origin)?;
                let model_dir = stage_dir.join("model");
                let docs = corpus(&st, p.run.seed, tiny::EOS);
                let shape = TinyShape {
                    hidden: st.model.hidden,
                    layers: st.model.layers,
                    heads: st.model.heads,
                    kv_heads: st.model.kv_heads,
                    intermediate: st.model.intermediate,
                    vocab: st.model.vocab,
                };
                // The tokenizer learns from the corpus without the EOS marker text.
                let plain: Vec<String> = docs.iter().map(|d| d.trim_end_matches(tiny::EOS).to_string()).collect();
                let ckpt = stage_dir.join("checkpoint");
                // Resuming mid-stage: keep the tokenizer the checkpoint was trained with.
                if lm::checkpoint_step(&ckpt).is_none() || !model_dir.join("tokenizer.json").exists() {
                    tiny::create_random_model(&model_dir, shape, &plain, p.run.seed as i64)?;
                }
                let tk = Tokenizer::from_dir(&model_dir)?;
                let eos = tk.token_to_id(tiny::EOS).context("EOS token")?;
                let examples: Vec<LmExample> = plain
                    .iter()
                    .map(|d| {
                        let mut ids = tk.encode(d, false)?;
                        ids.push(eos);
                        Ok(LmExample { ids, loss_from: 0 })
                    })
                    .collect::<Result<_>>()?;
                let policy = Policy::load(&model_dir, tch::Kind::Float, tch::Device::Cpu)?;
                let mut sinks = lm_sinks(&p, &name, &stage_dir, &ckpt, t, st.train.steps)?;
                eprintln!("  {} documents, {:.2}M parameters, {} steps", examples.len(), param_count(&policy) as f64 / 1e6, st.train.steps);
                let out = lm::train(&policy, &examples, &st.train, p.run.seed, &mut sinks, quiet, Some(&ckpt), &stop)?;
                if out.interrupted {
                    eprintln!("interrupted in stage {name} at step {}; resume with: ponder train --resume {}", out.steps_done, run_dir.display());
                    return Ok(());
                }
                policy.save_weights(&model_dir, tch::Kind::Float, None)?;
                let _ = std::fs::remove_dir_all(&ckpt);
                Some(model_dir)
            }
            "sft" => {
                let st: SftStage = from_table(t.clone(), &origin)?;
                let src = st.model.clone().or(previous.clone()).ok_or_else(|| anyhow!("{origin}: no model (give `model` or put a stage before)"))?;
                let src = subst(&src, &run_dir);
                let model_dir = stage_dir.join("model");
                let tk = Tokenizer::from_dir(&src)?;
                let policy = Policy::load(&src, tch::Kind::Float, tch::Device::Cpu)?;
                let eos = policy.eos_token_ids().first().copied();
                let examples = sft_examples(&subst(&st.data, &run_dir), &st.template, &tk, eos)?;
                let ckpt = stage_dir.join("checkpoint");
                let mut sinks = lm_sinks(&p, &name, &stage_dir, &ckpt, t, st.train.steps)?;
                let out = lm::train(&policy, &examples, &st.train, p.run.seed, &mut sinks, quiet, Some(&ckpt), &stop)?;
                if out.interrupted {
                    eprintln!("interrupted in stage {name} at step {}; resume with: ponder train --resume {}", out.steps_done, run_dir.display());
                    return Ok(());
                }
                policy.save_weights(&model_dir, tch::Kind::Float, None)?;
                crate::checkpoint::copy_side_files(&src, &model_dir)?;
                let _ = std::fs::remove_dir_all(&ckpt);
                Some(model_dir)
            }
            "grpo" => {
                let mut t = t.clone();
                t.remove("name");
                t.remove("kind");
                let prev = previous.clone().ok_or_else(|| anyhow!("{origin}: no model (give [stages.model] path or put a stage before)"))?;
                let model = t.entry("model").or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let mt = model.as_table_mut().ok_or_else(|| anyhow!("{origin}: `model` must be a table"))?;
                mt.entry("path").or_insert_with(|| toml::Value::String(prev.to_string_lossy().into()));
                let run_t: toml::Table = toml::from_str(&toml::to_string(&RunCfg {
                    name: name.clone(),
                    seed: p.run.seed,
                    output_dir: run_dir.join("stages"),
                })?)?;
                t.insert("run".into(), toml::Value::Table(run_t));
                if let (false, Some(w)) = (t.contains_key("wandb"), &p.wandb) {
                    t.insert("wandb".into(), toml::Value::try_from(crate::wandb_sink::stage_wandb(w, &p.run.name, &name))?);
                }
                let text = toml::to_string(&t)?.replace("{run}", &run_dir.to_string_lossy());
                let t: toml::Table = toml::from_str(&text)?;
                let mut recipe: crate::config::Recipe = from_table(t.clone(), &origin)?;
                recipe.validate()?;
                recipe.resolve_paths(Path::new("."));
                let resuming = stage_dir.join("metrics.jsonl").exists();
                let opts = Options { quiet, stop: stop.clone(), sinks: vec![] };
                let mut opts = opts;
                let mut trainer = train::Trainer::new(recipe, &t, resuming, &mut opts)?;
                let out = trainer.run(&stop)?;
                if out.interrupted {
                    eprintln!("interrupted in stage {name}; resume with: ponder train --resume {}", run_dir.display());
                    return Ok(());
                }
                crate::plots::plot_run(&stage_dir, &run_dir.join("plots"))?;
                out.final_checkpoint
            }
            "eval" => {
                let st: EvalStage = from_table(t.clone(), &origin)?;
                let model = subst(&st.model.clone().or(previous.clone()).ok_or_else(|| anyhow!("{origin}: no model"))?, &run_dir);
                let data_path = subst(&st.data, &run_dir);
                let dcfg = crate::config::DataCfg { train: data_path.clone(), eval: None, prompt_field: "prompt".into(), answer_field: "answer".into(), template: st.template.clone() };
                let mut examples = data::load_jsonl(&data_path, &dcfg)?;
                if st.limit > 0 {
                    examples.truncate(st.limit);
                }
                let spec = EvalSpec {
                    template: &st.template,
                    params: st.sampling.clone(),
                    samples: st.samples,
                    seed: p.run.seed,
                    rewards: if st.rewards.is_empty() { eval::default_rewards() } else { st.rewards.clone() },
                };
                let mut rep = eval::evaluate(&model, &examples, &spec, None, parse_device("cpu")?, parse_kind("f32")?)?;
                rep.data = data_path.display().to_string();
                let out = run_dir.join("eval");
                std::fs::create_dir_all(&out)?;
                std::fs::write(out.join(format!("{name}.json")), serde_json::to_string_pretty(&rep)?)?;
                eprintln!(
                    "  accuracy {:.3}, format {:.3}, mean length {:.1} tokens over {} prompts",
                    rep.accuracy,
                    rep.format_rate.unwrap_or(f64::NAN),
                    rep.mean_completion_tokens,
                    rep.num_prompts
                );
                previous.clone()
            }
            other => bail!("{origin}: unknown stage kind `{other}`"),
        };
        eprintln!("  stage {name} took {:.1}s", t0.elapsed().as_secs_f64());
        previous = output.clone().or(previous);
        state.completed.push((name, output));
        std::fs::write(state_path(&run_dir), serde_json::to_string_pretty(&state)?)?;
    }
    if let Some(m) = &previous {
        eprintln!("pipeline done; final model: {}", m.display());
    }
    Ok(())
}

fn param_count(p: &Policy) -> usize {
    p.named_tensors().values().map(|t| t.numel()).sum()
}

/// SFT sequences: template(prompt) + completion + EOS, loss on the completion.
pub fn sft_examples(path: &Path, template: &str, tk: &Tokenizer, eos: Option<i64>) -> Result<Vec<LmExample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow!("{}:{}: not valid JSON ({e})", path.display(), i + 1))?;
        let (Some(p), Some(c)) = (v.get("prompt").and_then(|x| x.as_str()), v.get("completion").and_then(|x| x.as_str())) else {
            bail!("{}:{}: needs string fields `prompt` and `completion`", path.display(), i + 1);
        };
        let (ptext, special) = data::render_prompt(template, p, tk)?;
        let mut ids = tk.encode(&ptext, special)?;
        let loss_from = ids.len();
        ids.extend(tk.encode(c, false)?);
        ids.extend(eos);
        out.push(LmExample { ids, loss_from });
    }
    Ok(out)
}
