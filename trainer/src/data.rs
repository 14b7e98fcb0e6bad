//! Prompt datasets (JSONL), prompt templates and the seeded data-order cursor.

use crate::config::DataCfg;
use anyhow::{anyhow, bail, Context, Result};
use rand::{seq::SliceRandom, SeedableRng};
use rollout::tokenizer::{ChatMessage, Tokenizer};
use rollout::SeededRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::BufRead;
use std::path::Path;

/// DeepSeek-R1-Zero's template (DeepSeek-R1 paper, table 1).
pub const R1_ZERO_TEMPLATE: &str = "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:";

#[derive(Debug, Clone)]
pub struct Example {
    pub prompt: String,
    pub answer: Option<String>,
    /// Every other field of the line, passed to the reward modules.
    pub extra: Map<String, Value>,
}

/// Reads a JSONL dataset. A malformed line is an error naming the file and line.
pub fn load_jsonl(path: &Path, cfg: &DataCfg) -> Result<Vec<Example>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening dataset {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read line", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{}:{}", path.display(), i + 1);
        let v: Value =
            serde_json::from_str(&line).map_err(|e| anyhow!("{}: not valid JSON ({e}); each line must be one JSON object", where_()))?;
        let Value::Object(mut obj) = v else { bail!("{}: expected a JSON object", where_()) };
        let prompt = match obj.remove(&cfg.prompt_field) {
            Some(Value::String(s)) => s,
            Some(_) => bail!("{}: field `{}` must be a string", where_(), cfg.prompt_field),
            None => {
                bail!("{}: missing the prompt field `{}` (set data.prompt_field to the name your data uses)", where_(), cfg.prompt_field)
            }
        };
        let answer = match obj.remove(&cfg.answer_field) {
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        out.push(Example { prompt, answer, extra: obj });
    }
    if out.is_empty() {
        bail!("dataset {} has no examples", path.display());
    }
    Ok(out)
}

/// Reads several JSONL files, rows concatenated in order.
pub fn load_many(paths: &crate::config::Paths, cfg: &DataCfg) -> Result<Vec<Example>> {
    let mut out = vec![];
    for p in paths.list() {
        out.extend(load_jsonl(p, cfg)?);
    }
    Ok(out)
}

/// A `DataCfg` for reading prompt files outside a GRPO recipe (eval, sampling stages):
/// the default field names and the given template.
pub fn plain_cfg(paths: &crate::config::Paths, template: &str) -> DataCfg {
    DataCfg { train: paths.clone(), eval: None, prompt_field: "prompt".into(), answer_field: "answer".into(), template: template.into() }
}

/// Turns a prompt into model input text; returns (text, add_special_tokens). A chat template
/// already carries its special tokens, so the tokenizer must not add them again.
pub fn render_prompt(template: &str, prompt: &str, tk: &Tokenizer) -> Result<(String, bool)> {
    Ok(match template {
        "r1_zero" => (R1_ZERO_TEMPLATE.replace("{prompt}", prompt), true),
        "chat" => (tk.apply_chat_template(&[ChatMessage { role: "user".into(), content: prompt.to_string() }], true)?, false),
        custom => (custom.replace("{prompt}", prompt), true),
    })
}

/// Where training is in the data: epoch and position in that epoch's seeded permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub pos: usize,
}

impl Cursor {
    pub fn start() -> Self {
        Cursor { epoch: 0, pos: 0 }
    }

    /// The permutation of `n` examples in `epoch` for `seed`.
    pub fn order(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut SeededRng::seed_from_u64(rollout::pool::mix_seed(seed, epoch)));
        idx
    }

    /// The next `k` example indices, moving to a new epoch (reshuffled) when one runs out.
    pub fn take(&mut self, seed: u64, n: usize, k: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(k);
        let mut order = Self::order(seed, self.epoch, n);
        while out.len() < k {
            if self.pos >= n {
                self.epoch += 1;
                self.pos = 0;
                order = Self::order(seed, self.epoch, n);
            }
            out.push(order[self.pos]);
            self.pos += 1;
        }
        out
    }
}
