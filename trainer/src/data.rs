//! Prompt datasets (JSONL, Parquet, or a Hugging Face Hub dataset split), prompt templates and
//! the seeded data-order cursor.

use crate::config::DataCfg;
use anyhow::{bail, Context, Result};
use rand::{seq::SliceRandom, SeedableRng};
use rollout::tokenizer::{ChatMessage, Tokenizer};
use rollout::SeededRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};

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

/// Reads a dataset: the usable rows, and every malformed one (no string prompt; for JSONL
/// also not JSON or not an object) with where it is and what is wrong. Only I/O, an
/// unreadable file or an unresolvable Hub dataset is an `Err`. `path` is
///
/// * `hf://datasets/org/name[@revision]/config/split` (or `.../file.parquet`): a Hub
///   dataset's Parquet or JSONL files, fetched into the shared Hugging Face cache
///   (see [`ponder_hub::dataset`]); rows are named `hf://...(file) row N`;
/// * a `.parquet` file: every row group in order, rows named `file row N` (from 0, as
///   `datasets` indexes them); nested columns become JSON arrays and objects;
/// * anything else: JSONL, rows named `file:line`.
///
/// Any of them may end in a row range as `datasets` writes split slices: `[start:end]`
/// (rows start..end, counted from 0 over all rows, bad ones included; either side may be
/// left out, be negative to count from the end, or be a percentage, `[:10%]`).
pub fn read_rows(path: &Path, cfg: &DataCfg) -> Result<(Vec<Example>, Vec<BadRow>)> {
    let text = path.to_string_lossy().into_owned();
    let (source, range) = match split_range(&text, path.exists()) {
        Ok(x) => x,
        Err(e) => bail!("{text}: {e}"),
    };
    let mut records = vec![];
    match source.strip_prefix("hf://") {
        Some(spec) => {
            for (name, local) in ponder_hub::resolve_dataset(spec, &ponder_hub::HubConfig::from_env())? {
                records.extend(read_file(&local, &format!("hf://{spec} ({name})"), cfg)?);
            }
        }
        None => records = read_file(Path::new(source), source, cfg)?,
    }
    if let Some(r) = range {
        let (a, b) = r.bounds(records.len());
        records = records.drain(a..b).collect();
    }
    let (mut rows, mut bad) = (vec![], vec![]);
    for (origin, rec) in records {
        match rec {
            Ok((prompt, answer, extra)) => rows.push(Example { prompt, answer, extra, origin }),
            Err(problem) => bad.push(BadRow { origin, problem }),
        }
    }
    Ok((rows, bad))
}

/// A row, or why it cannot be used; with where it is.
type Record = (String, std::result::Result<(String, Option<String>, Map<String, Value>), String>);

/// One end of a row range.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
    Row(i64),
    Percent(i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct RowRange {
    start: Option<Bound>,
    end: Option<Bound>,
}

impl RowRange {
    /// `start..end` within `n` rows (empty when end <= start).
    fn bounds(&self, n: usize) -> (usize, usize) {
        let at = |b: Bound| -> usize {
            let x = match b {
                Bound::Row(r) => r,
                Bound::Percent(p) => (n as i64 * p).div_euclid(100),
            };
            (if x < 0 { n as i64 + x } else { x }).clamp(0, n as i64) as usize
        };
        let a = self.start.map(at).unwrap_or(0);
        let b = self.end.map(at).unwrap_or(n);
        (a, b.max(a))
    }
}

/// Where a row range starts in a dataset path (`data.jsonl[10:20]` -> 10, the `[`): none
/// when the path exists as written or does not end in `]`.
fn range_start(text: &str, exists: bool) -> Option<usize> {
    text.strip_suffix(']').and_then(|t| t.rfind('[')).filter(|_| !exists)
}

/// A dataset path without its row range: the file (or Hub split) it reads.
pub fn dataset_source(path: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    match range_start(&text, path.exists()) {
        Some(open) => PathBuf::from(&text[..open]),
        None => path.to_path_buf(),
    }
}

/// `data.jsonl[10:20]` -> (`data.jsonl`, the range). A path that exists as written, or does
/// not end in `]`, has no range.
fn split_range(text: &str, exists: bool) -> std::result::Result<(&str, Option<RowRange>), String> {
    let Some(open) = range_start(text, exists) else {
        return Ok((text, None));
    };
    let inner = &text[open + 1..text.len() - 1];
    let form = "a row range is [start:end] with whole numbers or percentages, e.g. [0:1000], [-500:], [:10%]";
    let (a, b) = inner.split_once(':').ok_or_else(|| format!("`[{inner}]`: {form}"))?;
    let bound = |s: &str| -> std::result::Result<Option<Bound>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let bad = || format!("`{s}` in `[{inner}]`: {form}");
        match s.strip_suffix('%') {
            Some(p) => p.trim().parse().map(|p| Some(Bound::Percent(p))).map_err(|_| bad()),
            None => s.parse().map(|r| Some(Bound::Row(r))).map_err(|_| bad()),
        }
    };
    Ok((&text[..open], Some(RowRange { start: bound(a)?, end: bound(b)? })))
}

/// One local file, Parquet or JSONL by its extension; `label` names it in messages.
fn read_file(path: &Path, label: &str, cfg: &DataCfg) -> Result<Vec<Record>> {
    if path.extension().is_some_and(|x| x == "parquet") {
        Ok(parquet_rows(path, label)?.into_iter().enumerate().map(|(i, row)| (format!("{label} row {i}"), parse_row(row, cfg))).collect())
    } else {
        read_jsonl(path, label, cfg)
    }
}

fn read_jsonl(path: &Path, label: &str, cfg: &DataCfg) -> Result<Vec<Record>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening dataset {label}"))?;
    let mut out = vec![];
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{label}:{}: cannot read line", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|e| format!("not valid JSON ({e}); each line must be one JSON object"));
        out.push((format!("{label}:{}", i + 1), row.and_then(|v| parse_row(v, cfg))));
    }
    Ok(out)
}

/// Codecs compiled in; a file written with another (brotli) is refused with this list.
const PARQUET_CODECS: &str = "uncompressed, snappy, zstd, gzip or lz4";

/// Every row of a Parquet file as a JSON object (lists as arrays, structs as objects, null as
/// null, binary as base64), row groups in order; `label` names the file in errors.
pub fn parquet_rows(path: &Path, label: &str) -> Result<Vec<Value>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(path).with_context(|| format!("opening dataset {label}"))?;
    let reader = SerializedFileReader::new(f)
        .map_err(|e| anyhow::anyhow!("{label}: not a readable Parquet file ({e}); if a download cut it short, fetch it again"))?;
    let expected = reader.metadata().file_metadata().num_rows();
    let mut rows = Vec::with_capacity(expected.max(0) as usize);
    for (i, row) in reader.into_iter().enumerate() {
        let row = row.map_err(|e| {
            let hint = if e.to_string().contains("feature") {
                format!("ponder reads Parquet compressed with {PARQUET_CODECS}; rewrite the file with pyarrow, e.g. `pq.write_table(pq.read_table(src), dst)`")
            } else {
                "the file is damaged: fetch or write it again".to_string()
            };
            anyhow::anyhow!("{label}: row {i}: cannot decode ({e}); {hint}")
        })?;
        rows.push(row.to_json_value());
    }
    if rows.len() as i64 != expected {
        bail!("{label}: read {} rows where its footer says {expected}; the file is damaged: fetch or write it again", rows.len());
    }
    Ok(rows)
}

fn parse_row(v: Value, cfg: &DataCfg) -> std::result::Result<(String, Option<String>, Map<String, Value>), String> {
    let Value::Object(mut obj) = v else { return Err("expected a JSON object".into()) };
    for (from, to) in &cfg.rename {
        if let Some(v) = obj.remove(from) {
            obj.insert(to.clone(), v);
        }
    }
    let prompt = match &cfg.prompt_format {
        Some(f) => format_fields(f, &obj, false)?,
        None => match obj.remove(&cfg.prompt_field) {
            Some(Value::String(s)) => s,
            Some(Value::Null) => return Err(format!("the prompt field `{}` is null", cfg.prompt_field)),
            Some(_) => return Err(format!("field `{}` must be a string", cfg.prompt_field)),
            None => {
                return Err(format!("missing the prompt field `{}` (set data.prompt_field to the name your data uses)", cfg.prompt_field))
            }
        },
    };
    if prompt.trim().is_empty() {
        return Err(match &cfg.prompt_format {
            Some(_) => "data.prompt_format gives an empty prompt".into(),
            None => format!("the prompt field `{}` is empty", cfg.prompt_field),
        });
    }
    let prompt = if cfg.instruction.is_empty() { prompt } else { prompt + &cfg.instruction };
    let answer = match obj.remove(&cfg.answer_field) {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    Ok((prompt, answer, obj))
}

/// `format` with every `{field}` replaced by the row's value (see `data.prompt_format`);
/// `check_only` checks the syntax alone (for recipe validation, before any row is read).
pub fn format_fields(format: &str, row: &Map<String, Value>, check_only: bool) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(format.len() + 64);
    let mut rest = format;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let (c, after) = (rest.as_bytes()[i], &rest[i + 1..]);
        if after.as_bytes().first() == Some(&c) {
            out.push(c as char);
            rest = &after[1..];
            continue;
        }
        if c == b'}' {
            return Err(format!("a lone `}}` at byte {i} of \"{format}\"; write `}}}}` for a literal brace"));
        }
        let end = after.find('}').ok_or_else(|| format!("`{{` without its `}}` in \"{format}\"; write `{{{{` for a literal brace"))?;
        let name = &after[..end];
        if name.is_empty() || name.contains('{') {
            return Err(format!("`{{{name}}}` in \"{format}\" is not a field name"));
        }
        if !check_only {
            match row.get(name) {
                Some(v) if !v.is_null() => out.push_str(&python_str(v)),
                _ => return Err(format!("data.prompt_format uses `{{{name}}}`, which the row lacks (or is null)")),
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A value as Python's `str()` prints it, so prompts match those peers build in Python:
/// text as is, `[3, 8, 1]`, `True`, `2.5`.
fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Null => "None".into(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(python_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!("{{{}}}", o.iter().map(|(k, v)| format!("'{k}': {}", python_repr(v))).collect::<Vec<_>>().join(", ")),
    }
}

/// Inside a list or dict, Python quotes text: `['a', 'b']`.
fn python_repr(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        other => python_str(other),
    }
}

/// Reads a dataset (see [`read_rows`]); any malformed row is an error listing the bad rows.
pub fn load_rows(path: &Path, cfg: &DataCfg) -> Result<Vec<Example>> {
    let (out, bad) = read_rows(path, cfg)?;
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

/// Reads several datasets, rows concatenated in order; any malformed row is an error.
pub fn load_many(paths: &crate::config::Paths, cfg: &DataCfg) -> Result<Vec<Example>> {
    let mut out = vec![];
    for p in paths.list() {
        out.extend(load_rows(p, cfg)?);
    }
    Ok(out)
}

/// Reads several datasets and screens every row against the rewards that will score it
/// (see [`screen`]), with `cfg.max_bad_fraction` as the allowance for bad rows.
pub fn load_checked(paths: &crate::config::Paths, cfg: &DataCfg, rewards: &rewards::RewardSet, what: &str) -> Result<Vec<Example>> {
    let (mut rows, mut bad) = (vec![], vec![]);
    for p in paths.list() {
        let (r, b) = read_rows(p, cfg)?;
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
        prompt_format: None,
        rename: Default::default(),
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

    fn parquet_fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet").join(name)
    }

    /// Every fixture's rows as pyarrow reads them (scripts/make_parquet_fixture.py): several
    /// row groups, snappy / zstd / gzip, lists, structs, floats, bools and nulls.
    #[test]
    fn parquet_rows_match_pyarrow() {
        let expected: Value = serde_json::from_str(&std::fs::read_to_string(parquet_fixture("expected.json")).unwrap()).unwrap();
        let files = expected["rows"].as_object().unwrap();
        assert_eq!(files.len(), 4);
        for (name, rows) in files {
            let got = parquet_rows(&parquet_fixture(name), name).unwrap();
            assert_eq!(&Value::Array(got), rows, "{name}");
        }
    }

    #[test]
    fn parquet_datasets_give_examples_and_bad_rows_by_row_number() {
        let mut cfg = plain_cfg(&crate::config::Paths::One("x".into()), "r1_zero");
        cfg.prompt_field = "question".into();
        let (rows, bad) = read_rows(&parquet_fixture("gsm8k-snappy.parquet"), &cfg).unwrap();
        assert_eq!((rows.len(), bad.len()), (23, 0));
        let jsonl: Vec<Value> = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/gsm8k/test.jsonl"))
            .unwrap()
            .lines()
            .take(23)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for (ex, want) in rows.iter().zip(&jsonl) {
            assert_eq!(ex.prompt, want["question"].as_str().unwrap());
            assert_eq!(ex.answer.as_deref(), want["answer"].as_str());
        }
        assert!(rows[22].origin.ends_with("gsm8k-snappy.parquet row 22"), "{}", rows[22].origin);
        let (rows, bad) = read_rows(&parquet_fixture("bad-rows.parquet"), &cfg).unwrap();
        assert_eq!(rows.iter().map(|r| r.prompt.as_str()).collect::<Vec<_>>(), ["What is 2 + 3?", "What is 1 + 1?"]);
        let bad: Vec<String> = bad.iter().map(|b| format!("{}: {}", b.origin.rsplit('/').next().unwrap(), b.problem)).collect();
        assert_eq!(
            bad,
            ["bad-rows.parquet row 1: the prompt field `question` is null", "bad-rows.parquet row 2: the prompt field `question` is empty"]
        );
        // Countdown rows keep their typed fields for the rewards.
        cfg.prompt_field = "note".into();
        let (rows, _) = read_rows(&parquet_fixture("countdown-zstd.parquet"), &cfg).unwrap();
        assert_eq!(rows[0].extra["nums"], serde_json::json!([44, 19, 35]));
        assert_eq!(rows[0].extra["target"], 98);
    }

    /// TinyZero's Countdown rows (`target`, `nums`) from Parquet: the prompt built from the
    /// fields as TinyZero's Python builds it, `nums` renamed to the `numbers` the reward reads,
    /// and the reward scoring a correct equation 1 on that row.
    #[test]
    fn prompt_format_and_rename_make_countdown_rows_usable() {
        let mut cfg = plain_cfg(&crate::config::Paths::One("x".into()), "r1_zero");
        cfg.prompt_format = Some("Using the numbers {numbers}, create an equation that equals {target}. {{braces}}".into());
        cfg.rename = [("nums".to_string(), "numbers".to_string())].into();
        let (rows, bad) = read_rows(&parquet_fixture("countdown-zstd.parquet"), &cfg).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        // Python: f"Using the numbers {[3, 8, 1]}, ..." prints the list as [3, 8, 1].
        assert_eq!(rows[0].prompt, "Using the numbers [3, 8, 1], create an equation that equals 24. {braces}");
        assert_eq!(rows[2].prompt, "Using the numbers [2, 5, 9, 1], create an equation that equals 7. {braces}");
        assert!(rows[0].extra.get("nums").is_none() && rows[0].extra["numbers"] == serde_json::json!([3, 8, 1]));
        let set = rewards::RewardSet::from_specs(vec![rewards::RewardSpec::new("countdown")]).unwrap();
        let mut sample = rows[0].as_sample();
        assert!(set.check_row(&sample).is_empty());
        sample.completion = "<think>8 * 3 = 24, times 1</think> <answer>(8 * 3) * 1</answer>".into();
        assert_eq!(set.score_one(&sample).total, 1.0);
        // A field the row lacks is a bad row, not a panic; bad syntax is caught up front.
        cfg.prompt_format = Some("{target} {missing}".into());
        let (_, bad) = read_rows(&parquet_fixture("countdown-zstd.parquet"), &cfg).unwrap();
        assert_eq!(bad.len(), 3);
        assert!(bad[0].problem.contains("`{missing}`, which the row lacks"), "{}", bad[0].problem);
        for (f, want) in [("{a", "without its `}`"), ("a}", "a lone `}`"), ("{}", "not a field name")] {
            let e = format_fields(f, &Map::new(), true).unwrap_err();
            assert!(e.contains(want), "{f}: {e}");
        }
        let row: Map<String, Value> =
            serde_json::from_str(r#"{"s": "it's", "l": ["a", "b'c"], "f": 2.5, "b": true, "o": {"k": 1}}"#).unwrap();
        assert_eq!(format_fields("{s} {l} {f} {b} {o}", &row, false).unwrap(), r#"it's ['a', 'b\'c'] 2.5 True {'k': 1}"#);
    }

    #[test]
    fn row_ranges_select_rows_as_datasets_slices_do() {
        let mut cfg = plain_cfg(&crate::config::Paths::One("x".into()), "r1_zero");
        cfg.prompt_field = "question".into();
        let all = read_rows(&parquet_fixture("gsm8k-snappy.parquet"), &cfg).unwrap().0;
        let pick = |range: &str| {
            let p = format!("{}{range}", parquet_fixture("gsm8k-snappy.parquet").display());
            read_rows(Path::new(&p), &cfg).unwrap().0.into_iter().map(|e| e.origin).collect::<Vec<_>>()
        };
        let origins = |r: std::ops::Range<usize>| all[r].iter().map(|e| e.origin.clone()).collect::<Vec<_>>();
        // Python: list(range(23))[a:b] for each.
        assert_eq!(pick("[0:5]"), origins(0..5));
        assert_eq!(pick("[20:]"), origins(20..23));
        assert_eq!(pick("[-3:]"), origins(20..23));
        assert_eq!(pick("[:-20]"), origins(0..3));
        assert_eq!(pick("[:50%]"), origins(0..11));
        assert_eq!(pick("[10:5]"), origins(0..0));
        assert_eq!(pick("[5:1000]"), origins(5..23));
        // Bad rows count as rows: bad-rows.parquet[1:3] is its two bad rows.
        let p = format!("{}[1:3]", parquet_fixture("bad-rows.parquet").display());
        let (good, bad) = read_rows(Path::new(&p), &cfg).unwrap();
        assert_eq!((good.len(), bad.len()), (0, 2));
        for bad in ["[5]", "[a:b]", "[1:2:3]"] {
            let p = format!("{}{bad}", parquet_fixture("gsm8k-snappy.parquet").display());
            let e = format!("{:#}", read_rows(Path::new(&p), &cfg).unwrap_err());
            assert!(e.contains("a row range is [start:end]"), "{bad}: {e}");
        }
    }

    #[test]
    fn damaged_parquet_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(parquet_fixture("gsm8k-snappy.parquet")).unwrap();
        let cut = tmp.path().join("cut.parquet");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", parquet_rows(&cut, "cut.parquet").unwrap_err());
        assert!(err.contains("cut.parquet: not a readable Parquet file") && err.contains("fetch it again"), "{err}");
        // Intact footer, damaged pages: decoding fails with the row and the file named.
        let mut flipped = bytes.clone();
        for b in &mut flipped[8..bytes.len() / 3] {
            *b ^= 0x5a;
        }
        let bad = tmp.path().join("flipped.parquet");
        std::fs::write(&bad, &flipped).unwrap();
        let err = format!("{:#}", parquet_rows(&bad, "flipped.parquet").unwrap_err());
        assert!(err.starts_with("flipped.parquet: "), "{err}");
    }

    #[test]
    fn the_instruction_is_appended_to_every_prompt_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.jsonl");
        std::fs::write(&f, "{\"question\": \"What is 2 + 2?\", \"answer\": \"#### 4\", \"id\": 7}\n").unwrap();
        let paths = crate::config::Paths::One(f.clone());
        let mut cfg = DataCfg { prompt_field: "question".into(), ..plain_cfg(&paths, "chat") };
        let plain = load_rows(&f, &cfg).unwrap();
        assert_eq!(plain[0].prompt, "What is 2 + 2?");
        cfg.instruction = " Answer after ####.".into();
        let with = load_rows(&f, &cfg).unwrap();
        assert_eq!(with[0].prompt, "What is 2 + 2? Answer after ####.");
        assert_eq!(with[0].answer.as_deref(), Some("#### 4"));
        assert_eq!(with[0].extra, plain[0].extra);
    }
}
