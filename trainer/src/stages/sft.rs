//! `kind = "sft"`: supervised fine-tuning, loss on completion tokens only, from JSONL rows
//! with `prompt` and `completion` (one file or several, e.g. rejection-sampled reasoning
//! traces plus non-reasoning data, as R1's second SFT mixes them).

use super::{cpu, f32s, r1, Ctx, Output, StageOutcome};
use crate::config::Paths;
use crate::data;
use crate::lm::{self, LmCfg, LmExample};
use anyhow::{bail, Result};
use rollout::folder::Policy;
use rollout::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftStage {
    pub name: String,
    pub kind: String,
    /// Model folder or Hub id to start from (default: the previous stage's output). R1's second SFT
    /// starts from the base model again: `model = "{stages.base.model}"`.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Prompt / completion rows: one dataset or a list (JSONL, Parquet, `hf://datasets/...`,
    /// each with an optional `[start:end]` row range).
    pub data: Paths,
    /// `[stages.fields]`: how rows become prompts (`prompt_field`, `instruction`,
    /// `prompt_format`, `rename`), as in `[data]`.
    #[serde(default)]
    pub fields: crate::config::FieldsCfg,
    /// The field holding the completion to learn [completion].
    #[serde(default = "completion")]
    pub completion_field: String,
    /// Prompt template (`r1_zero`, `chat`, or a string with `{prompt}`).
    #[serde(default = "r1")]
    pub template: String,
    /// Passes over the data; when set, `train.steps` = ceil(epochs x rows / batch_size), so
    /// the stage fits a dataset whose size is known only at run time (rejection sampling).
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Where the model trains: cpu | cuda | cuda:N.
    #[serde(default = "cpu")]
    pub device: String,
    /// f32, or bf16 / f16 with fp32 master weights and moments in the optimizer (f16 with
    /// dynamic loss scaling), as the GRPO learner. The model is saved in this dtype.
    #[serde(default = "f32s")]
    pub dtype: String,
    #[serde(default)]
    pub train: LmCfg,
}

impl SftStage {
    pub fn check(&self, origin: &str) -> Result<()> {
        if let Some(e) = self.epochs {
            if !(e > 0.0 && e.is_finite()) {
                bail!("{origin}: `epochs` must be a positive number, got {e}");
            }
        }
        self.fields.check(origin)?;
        crate::config::check_device_dtype(origin, &self.device, &self.dtype)?;
        self.train.check(origin)
    }
}

fn completion() -> String {
    "completion".into()
}

pub fn run(ctx: &Ctx) -> Result<StageOutcome> {
    let mut st: SftStage = ctx.config()?;
    let src = ctx.model_or_previous(&st.model)?;
    let model_dir = ctx.dir.join("model");
    let tk = Tokenizer::from_dir(&src)?;
    let kind = rollout::folder::parse_kind(&st.dtype)?;
    let policy = Policy::load(&src, kind, rollout::folder::parse_device(&st.device)?)?;
    let eos = policy.eos_token_ids().first().copied();
    let mut examples = vec![];
    for p in st.data.list() {
        examples.extend(sft_examples(p, &st.template, &st.fields, &st.completion_field, &tk, eos)?);
    }
    if examples.is_empty() {
        bail!("{}: no SFT rows in {}", ctx.origin, st.data);
    }
    if let Some(e) = st.epochs {
        st.train.steps = ((e * examples.len() as f64) / st.train.batch_size as f64).ceil().max(1.0) as usize;
    }
    if ctx.rank0() {
        eprintln!("  {} rows from {}, {} steps", examples.len(), st.data, st.train.steps);
    }
    let ckpt = ctx.dir.join("checkpoint");
    // In a data-parallel launch every rank trains on its share of each batch; rank 0 writes.
    let rank0 = ctx.rank0();
    let mut sinks = if rank0 { ctx.lm_sinks(&ckpt, st.train.steps)? } else { vec![] };
    let seed = ctx.pipeline.run.seed;
    let out =
        lm::train_ranks(&policy, &examples, &st.train, seed, &mut sinks, ctx.quiet, Some(&ckpt), ctx.stop, ctx.dist.borrow().as_ref())?;
    if out.interrupted {
        return Ok(StageOutcome::Interrupted);
    }
    if rank0 {
        policy.save_weights(&model_dir, kind, None)?;
        crate::checkpoint::copy_side_files(&src, &model_dir)?;
        let _ = std::fs::remove_dir_all(&ckpt);
    }
    Ok(StageOutcome::Done(Output { model: Some(model_dir), data: None }))
}

/// SFT sequences: template(prompt) + completion + EOS, loss on the completion. Rows are read
/// as every dataset is (see [`data::read_rows`]); a row without a prompt or without a string
/// `completion_field` stops the stage with the first rows that lack one.
pub fn sft_examples(
    path: &Path,
    template: &str,
    fields: &crate::config::FieldsCfg,
    completion_field: &str,
    tk: &Tokenizer,
    eos: Option<i64>,
) -> Result<Vec<LmExample>> {
    let cfg = fields.data_cfg(&crate::config::Paths::One(path.to_path_buf()), template);
    let (rows, mut bad) = data::read_rows(path, &cfg)?;
    let mut pairs = Vec::with_capacity(rows.len());
    for ex in rows {
        // The answer field is taken out of `extra` when rows are read.
        let c = if completion_field == cfg.answer_field {
            ex.answer.clone()
        } else {
            ex.extra.get(completion_field).and_then(|x| x.as_str()).map(String::from)
        };
        match c {
            Some(c) => pairs.push((ex.prompt, c)),
            None => bad.push(data::BadRow {
                origin: ex.origin,
                problem: format!("needs a string completion field `{completion_field}` (set completion_field to the name your data uses)"),
            }),
        }
    }
    if !bad.is_empty() {
        let list: String = bad.iter().take(10).map(|b| format!("\n  {}: {}", b.origin, b.problem)).collect();
        bail!("{}: {} row(s) cannot be used for SFT:{list}", path.display(), bad.len());
    }
    let mut out = vec![];
    for (p, c) in pairs {
        let (ptext, special) = data::render_prompt(template, &p, tk)?;
        let mut ids = tk.encode(&ptext, special)?;
        let loss_from = ids.len();
        ids.extend(tk.encode(&c, false)?);
        ids.extend(eos);
        out.push(LmExample { ids, loss_from });
    }
    Ok(out)
}
