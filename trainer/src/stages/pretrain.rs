//! `kind = "pretrain"`: trains a byte-level BPE tokenizer and a model from nothing on a
//! generated corpus of worked solutions written by a *sloppy solver*: it slips (forgets
//! carries), often drops the R1 tags, and (with `mix_rate`) writes some steps' words in a
//! second language, the way DeepSeek-R1-Zero mixed languages.

use super::tasks::{heldout_fraction, two};
use super::{param_count, Ctx, Output, StageOutcome};
use crate::data::R1_ZERO_TEMPLATE;
use crate::lm::{self, LmCfg, LmExample};
use crate::tasks::{self, Lang, Split, TaskKind};
use crate::tiny::{self, TinyShape};
use anyhow::{anyhow, bail, Context, Result};
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rollout::folder::Policy;
use rollout::tokenizer::Tokenizer;
use rollout::SeededRng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub hidden: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub intermediate: i64,
    /// Tokenizer vocabulary to train (an upper bound; small corpora give fewer merges).
    /// Not used with the stage's `tokenizer`.
    #[serde(default)]
    pub vocab: usize,
}

impl ModelShape {
    pub fn check(&self, origin: &str, reused_tokenizer: bool) -> Result<()> {
        let ok = self.hidden > 0 && self.layers > 0 && self.heads > 0 && self.kv_heads > 0 && self.intermediate > 0;
        if !ok {
            bail!("{origin}: model shape: hidden, layers, heads, kv_heads and intermediate must all be >= 1");
        }
        if self.hidden % self.heads != 0 || self.heads % self.kv_heads != 0 {
            bail!(
                "{origin}: model shape: hidden ({}) must be a multiple of heads ({}), and heads of kv_heads ({})",
                self.hidden,
                self.heads,
                self.kv_heads
            );
        }
        if self.vocab < 300 && !reused_tokenizer {
            bail!("{origin}: model shape: vocab must be >= 300 (256 bytes + special tokens + merges), got {}", self.vocab);
        }
        Ok(())
    }

    pub fn tiny(&self) -> TinyShape {
        TinyShape {
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.kv_heads,
            intermediate: self.intermediate,
            vocab: self.vocab,
        }
    }
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
    /// Share of reasoning steps whose words the sloppy solver writes in Chinese instead of
    /// English ("十位 4 + 3 + 1 = 8" for "tens 4 + 3 + 1 = 8"): the base model then mixes
    /// languages in its `<think>` part, as DeepSeek-R1-Zero did. Default 0.
    #[serde(default)]
    pub mix_rate: f64,
    /// A second task family in the corpus, answered directly in plain text (" 47"): the
    /// base model's general knowledge, as DeepSeek-V3-Base could already write and answer
    /// questions. E.g. `compare`.
    #[serde(default)]
    pub direct_task: Option<TaskKind>,
    /// Share of the corpus's documents drawn from `direct_task` (default 0).
    #[serde(default)]
    pub direct_rate: f64,
    pub model: ModelShape,
    /// A model folder (or Hub id) whose tokenizer to use instead of training one (a distillation
    /// student must share its teacher's); `model.vocab` is then the tokenizer's size.
    #[serde(default)]
    pub tokenizer: Option<std::path::PathBuf>,
    #[serde(default)]
    pub train: LmCfg,
}

fn one() -> f64 {
    1.0
}

impl PretrainStage {
    pub fn check(&self, origin: &str) -> Result<()> {
        tasks::check(self.task, self.digits, self.heldout_fraction).map_err(|e| anyhow!("{origin}: {e}"))?;
        if let Some(t) = self.direct_task {
            tasks::check(t, self.digits, self.heldout_fraction).map_err(|e| anyhow!("{origin}: direct_task: {e}"))?;
        } else if self.direct_rate > 0.0 {
            bail!("{origin}: `direct_rate` needs a `direct_task`");
        }
        for (k, v) in [
            ("slip_rate", self.slip_rate),
            ("format_rate", self.format_rate),
            ("template_rate", self.template_rate),
            ("mix_rate", self.mix_rate),
            ("direct_rate", self.direct_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{origin}: `{k}` is a share of documents and must be in [0, 1], got {v}");
            }
        }
        if self.corpus_size == 0 {
            bail!("{origin}: `corpus_size` must be >= 1");
        }
        self.model.check(origin, self.tokenizer.is_some())?;
        self.train.check(origin)
    }
}

/// Builds the pretraining corpus: R1-Zero-template documents with (sometimes sloppy,
/// sometimes untagged, sometimes language-mixed) solutions of train-split problems.
pub fn corpus(st: &PretrainStage, seed: u64, eos: &str) -> Result<Vec<String>> {
    let n_direct = match st.direct_task {
        Some(_) => (st.corpus_size as f64 * st.direct_rate).round() as usize,
        None => 0,
    };
    let problems = tasks::generate(st.task, Split::Train, st.corpus_size - n_direct, st.digits, seed, st.heldout_fraction)?;
    let mut rng = SeededRng::seed_from_u64(seed ^ 0xc0ffee);
    let head = |p: &tasks::Problem, rng: &mut SeededRng| {
        if rng.random::<f64>() < st.template_rate {
            R1_ZERO_TEMPLATE.replace("{prompt}", &p.prompt)
        } else {
            format!("User: {}. Assistant:", p.prompt)
        }
    };
    let mut docs: Vec<String> = problems
        .iter()
        .map(|p| {
            let (steps, answer) = match &p.slip {
                Some((s, a)) if rng.random::<f64>() < st.slip_rate => (s, a.clone()),
                _ => (&p.steps, p.answer.clone()),
            };
            let head = head(p, &mut rng);
            let tagged = rng.random::<f64>() < st.format_rate;
            let reasoning =
                tasks::render_steps(steps, || if st.mix_rate > 0.0 && rng.random::<f64>() < st.mix_rate { Lang::Zh } else { Lang::En });
            let body = if tagged {
                format!(" <think> {reasoning} </think> <answer> {answer} </answer>")
            } else {
                format!(" {reasoning} , so {answer}")
            };
            format!("{head}{body}{eos}")
        })
        .collect();
    if let Some(t) = st.direct_task {
        for p in tasks::generate(t, Split::Train, n_direct, st.digits, seed, st.heldout_fraction)? {
            docs.push(format!("{} {}{eos}", head(&p, &mut rng), p.answer));
        }
        docs.shuffle(&mut rng);
    }
    Ok(docs)
}

pub fn run(ctx: &Ctx) -> Result<StageOutcome> {
    let st: PretrainStage = ctx.config()?;
    let seed = ctx.pipeline.run.seed;
    let model_dir = ctx.dir.join("model");
    let docs = corpus(&st, seed, tiny::EOS)?;
    // The tokenizer learns from the corpus without the EOS marker text.
    let plain: Vec<String> = docs.iter().map(|d| d.trim_end_matches(tiny::EOS).to_string()).collect();
    let ckpt = ctx.dir.join("checkpoint");
    // In a data-parallel launch every rank builds the same corpus and trains on its share of
    // each batch; rank 0 writes the tokenizer, the initial and the final model.
    let rank0 = ctx.rank0();
    // Resuming mid-stage: keep the tokenizer the checkpoint was trained with.
    if rank0 && (lm::checkpoint_step(&ckpt).is_none() || !model_dir.join("tokenizer.json").exists()) {
        match &st.tokenizer {
            Some(t) => {
                let t = crate::model_path::resolve(t).map_err(|e| anyhow!("{}: tokenizer: {e}", ctx.origin))?;
                tiny::create_with_tokenizer(&model_dir, st.model.tiny(), rollout::Arch::Qwen2, &t, None, seed as i64)?
            }
            None => tiny::create_random_model(&model_dir, st.model.tiny(), &plain, seed as i64)?,
        }
    }
    if let Some(pg) = ctx.dist.borrow().as_ref() {
        pg.barrier()?;
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
    let mut sinks = if rank0 { ctx.lm_sinks(&ckpt, st.train.steps)? } else { vec![] };
    if rank0 {
        eprintln!("  {} documents, {:.2}M parameters, {} steps", examples.len(), param_count(&policy) as f64 / 1e6, st.train.steps);
    }
    let out =
        lm::train_ranks(&policy, &examples, &st.train, seed, &mut sinks, ctx.quiet, Some(&ckpt), ctx.stop, ctx.dist.borrow().as_ref())?;
    if out.interrupted {
        return Ok(StageOutcome::Interrupted);
    }
    if rank0 {
        policy.save_weights(&model_dir, tch::Kind::Float, None)?;
        let _ = std::fs::remove_dir_all(&ckpt);
    }
    Ok(StageOutcome::Done(Output { model: Some(model_dir), data: None }))
}
