//! Prompt datasets (JSONL), prompt templates and the seeded data-order cursor.

use crate::config::DataCfg;
use anyhow::{bail, Context, Result};
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
    /// Where the row came from, `file:line`, for error reports.
    pub origin: String,
}

impl Example {
    /// The row as a reward sample without a completion (for [`rewards::RewardSet::check_row`]).
    pub fn as_sample(&self) -> rewards::Sample {
        rewards::Sample { prompt: self.prompt.clone(), completion: String::new(), answer: self.answer.clone(), extra: self.extra.clone() }
    }
}

/// A dataset row that cannot be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    /// `file:line`.
    pub origin: String,
    pub problem: String,
}

/// Reads a JSONL dataset: the usable rows, and every malformed one (not JSON, not an
/// object, no string prompt) with its line and what is wrong. Only I/O is an `Err`.
pub fn read_jsonl(path: &Path, cfg: &DataCfg) -> Result<(Vec<Example>, Vec<BadRow>)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening dataset {}", path.display()))?;
    let mut out = vec![];
    let mut bad = vec![];
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read line", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        match parse_row(&line, cfg) {
            Ok((prompt, answer, extra)) => out.push(Example { prompt, answer, extra, origin }),
            Err(problem) => bad.push(BadRow { origin, problem }),
        }
    }
    Ok((out, bad))
}

fn parse_row(line: &str, cfg: &DataCfg) -> std::result::Result<(String, Option<String>, Map<String, Value>), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e}); each line must be one JSON object"))?;
    let Value::Object(mut obj) = v else { return Err("expected a JSON object".into()) };
    let prompt = match obj.remove(&cfg.prompt_field) {
        Some(Value::String(s)) if s.trim().is_empty() => return Err(format!("the prompt field `{}` is empty", cfg.prompt_field)),
        Some(Value::String(s)) => s,
        Some(_) => return Err(format!("field `{}` must be a string", cfg.prompt_field)),
        None => return Err(format!("missing the prompt field `{}` (set data.prompt_field to the name your data uses)", cfg.prompt_field)),
    };
    let prompt = if cfg.instruction.is_empty() { prompt } else { prompt + &cfg.instruction };
    let answer = match obj.remove(&cfg.answer_field) {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    Ok((prompt, answer, obj))
}

/// Reads a JSONL dataset; any malformed line is an error listing the bad lines.
pub fn load_jsonl(path: &Path, cfg: &DataCfg) -> Result<Vec<Example>> {
    let (out, bad) = read_jsonl(path, cfg)?;
    let out = screen(out, bad, None, 0.0, &path.display().to_string(), "")?;
    if out.is_empty() {
        bail!("dataset {} has no examples", path.display());
    }
    Ok(out)
}

/// How many bad rows a report lists before "and N more".
const REPORT_ROWS: usize = 10;

/// Adds the rows that `rewards` cannot score (a missing or unreadable reference answer,
/// missing countdown numbers, ...) to `bad`, then either drops every bad row with a
/// warning, when they are at most `max_bad_fraction` of all rows, or fails with a report
/// of them (`file:line: what`), so a run never starts on data it would silently score 0.
/// `what` names the data in messages; `key` is the setting that raises the allowance.
pub fn screen(
    rows: Vec<Example>,
    mut bad: Vec<BadRow>,
    rewards: Option<&rewards::RewardSet>,
    max_bad_fraction: f64,
    what: &str,
    key: &str,
) -> Result<Vec<Example>> {
    let mut good = Vec::with_capacity(rows.len());
    for ex in rows {
        let problems = rewards.map(|r| r.check_row(&ex.as_sample())).unwrap_or_default();
        if problems.is_empty() {
            good.push(ex);
        } else {
            let problem = problems.iter().map(|(name, p)| format!("reward `{name}`: {p}")).collect::<Vec<_>>().join("; ");
            bad.push(BadRow { origin: ex.origin, problem });
        }
    }
    if bad.is_empty() {
        return Ok(good);
    }
    let total = good.len() + bad.len();
    let mut list = bad.iter().take(REPORT_ROWS).map(|b| format!("\n  {}: {}", b.origin, b.problem)).collect::<String>();
    if bad.len() > REPORT_ROWS {
        list.push_str(&format!("\n  ... and {} more", bad.len() - REPORT_ROWS));
    }
    let fraction = bad.len() as f64 / total as f64;
    if fraction <= max_bad_fraction {
        eprintln!(
            "warning: {what}: skipping {} of {total} rows ({:.2} %, within {key} = {max_bad_fraction}):{list}",
            bad.len(),
            100.0 * fraction
        );
        return Ok(good);
    }
    let how = if key.is_empty() {
        "fix or remove these rows".to_string()
    } else {
        format!("fix or remove these rows, or set {key} (now {max_bad_fraction}) to at least {fraction:.4} to skip them with a warning")
    };
    bail!("{what}: {} of {total} rows cannot be used:{list}\n{how}", bad.len())
}

/// Reads several JSONL files, rows concatenated in order; any malformed line is an error.
pub fn load_many(paths: &crate::config::Paths, cfg: &DataCfg) -> Result<Vec<Example>> {
    let mut out = vec![];
    for p in paths.list() {
        out.extend(load_jsonl(p, cfg)?);
    }
    Ok(out)
}

/// Reads several JSONL files and screens every row against the rewards that will score it
/// (see [`screen`]), with `cfg.max_bad_fraction` as the allowance for bad rows.
pub fn load_checked(paths: &crate::config::Paths, cfg: &DataCfg, rewards: &rewards::RewardSet, what: &str) -> Result<Vec<Example>> {
    let (mut rows, mut bad) = (vec![], vec![]);
    for p in paths.list() {
        let (r, b) = read_jsonl(p, cfg)?;
        rows.extend(r);
        bad.extend(b);
    }
    let out = screen(rows, bad, Some(rewards), cfg.max_bad_fraction, &format!("{what} {paths}"), "data.max_bad_fraction")?;
    if out.is_empty() {
        bail!("{what} {paths} has no examples");
    }
    Ok(out)
}

/// A `DataCfg` for reading prompt files outside a GRPO recipe (eval, sampling stages):
/// the default field names and the given template.
pub fn plain_cfg(paths: &crate::config::Paths, template: &str) -> DataCfg {
    DataCfg {
        train: paths.clone(),
        eval: None,
        prompt_field: "prompt".into(),
        answer_field: "answer".into(),
        template: template.into(),
        max_bad_fraction: 0.0,
        instruction: String::new(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instruction_is_appended_to_every_prompt_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.jsonl");
        std::fs::write(&f, "{\"question\": \"What is 2 + 2?\", \"answer\": \"#### 4\", \"id\": 7}\n").unwrap();
        let paths = crate::config::Paths::One(f.clone());
        let mut cfg = DataCfg { prompt_field: "question".into(), ..plain_cfg(&paths, "chat") };
        let plain = load_jsonl(&f, &cfg).unwrap();
        assert_eq!(plain[0].prompt, "What is 2 + 2?");
        cfg.instruction = " Answer after ####.".into();
        let with = load_jsonl(&f, &cfg).unwrap();
        assert_eq!(with[0].prompt, "What is 2 + 2? Answer after ####.");
        assert_eq!(with[0].answer.as_deref(), Some("#### 4"));
        assert_eq!(with[0].extra, plain[0].extra);
    }
}
