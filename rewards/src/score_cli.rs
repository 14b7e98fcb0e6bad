//! `ponder score`: score a JSONL file with a reward set.

use crate::{BatchCounts, RewardSet, RewardsError, Sample};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

/// What `ponder score` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScoreReport {
    /// Lines scored.
    pub scored: usize,
    /// Malformed lines skipped (each reported on stderr with its line number).
    pub skipped: usize,
    /// `(module, mean score)` in the set's order.
    pub means: Vec<(String, f64)>,
    /// Mean weighted total.
    pub mean_total: f64,
    pub counts: BatchCounts,
}

impl ScoreReport {
    /// Whether every line was scored (the CLI's exit status).
    pub fn ok(&self) -> bool {
        self.skipped == 0
    }
}

/// Turns one JSON object into a sample: `completion` (string, required), `prompt`
/// (string, default empty), `answer` (string or number, optional); every other field
/// goes to `extra`.
pub fn sample_from_json(obj: &Map<String, Value>) -> Result<Sample, String> {
    let completion = match obj.get("completion") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("`completion` must be a string".into()),
        None => return Err("missing `completion`".into()),
    };
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(_) => return Err("`prompt` must be a string".into()),
    };
    let answer = match obj.get("answer") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        None | Some(Value::Null) => None,
        Some(_) => return Err("`answer` must be a string or a number".into()),
    };
    let mut extra = Map::new();
    for (k, v) in obj {
        if !matches!(k.as_str(), "prompt" | "completion" | "answer") {
            extra.insert(k.clone(), v.clone());
        }
    }
    Ok(Sample { prompt, completion, answer, extra })
}

const CHUNK: usize = 4096;

/// Runs `ponder score --rewards FILE.toml --input samples.jsonl [--output scored.jsonl]`:
/// writes each input object plus `rewards` (module name -> score) and `reward`
/// (weighted total) to `output` (stdout when `None`); reports malformed lines with
/// their line numbers on stderr and skips them; prints a summary to stderr.
pub fn run(rewards_toml: &Path, input: &Path, output: Option<&Path>) -> Result<ScoreReport, RewardsError> {
    fn io(p: &Path) -> impl Fn(std::io::Error) -> RewardsError + '_ {
        move |e| RewardsError::Io { path: p.display().to_string(), source: e }
    }
    let src = std::fs::read_to_string(rewards_toml).map_err(io(rewards_toml))?;
    let set = RewardSet::from_toml_str(&src).map_err(|e| RewardsError::Invalid(format!("{}: {e}", rewards_toml.display())))?;
    let reader = BufReader::new(std::fs::File::open(input).map_err(io(input))?);
    let out_path = output.map(Path::to_path_buf);
    let mut writer: Box<dyn Write> = match &out_path {
        Some(p) => Box::new(BufWriter::new(std::fs::File::create(p).map_err(io(p))?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let out_err = |e: std::io::Error| RewardsError::Io {
        path: out_path.as_ref().map_or("<stdout>".to_string(), |p| p.display().to_string()),
        source: e,
    };
    let names = set.names();
    let mut report = ScoreReport { means: names.iter().map(|n| (n.clone(), 0.0)).collect(), ..Default::default() };
    let mut total_sum = 0.0;
    let mut applied = vec![0usize; names.len()];
    let mut objs: Vec<Map<String, Value>> = Vec::with_capacity(CHUNK);
    let mut samples: Vec<Sample> = Vec::with_capacity(CHUNK);
    let flush = |objs: &mut Vec<Map<String, Value>>,
                 samples: &mut Vec<Sample>,
                 report: &mut ScoreReport,
                 total_sum: &mut f64,
                 applied: &mut Vec<usize>,
                 w: &mut Box<dyn Write>|
     -> Result<(), RewardsError> {
        let scores = set.score_batch(samples);
        report.counts.add(&scores.counts);
        for (mut obj, sc) in objs.drain(..).zip(scores.scores) {
            let mut r = Map::new();
            // A reward routed away from the sample's task is left out (not a 0).
            for (i, (name, v)) in sc.per_module.iter().enumerate() {
                if sc.applied[i] {
                    r.insert(name.clone(), Value::from(*v));
                    report.means[i].1 += v;
                    applied[i] += 1;
                }
            }
            *total_sum += sc.total;
            obj.insert("rewards".into(), Value::Object(r));
            obj.insert("reward".into(), Value::from(sc.total));
            if !sc.failures.is_empty() {
                obj.insert("reward_failures".into(), serde_json::to_value(&sc.failures).unwrap_or(Value::Null));
            }
            serde_json::to_writer(&mut *w, &obj).map_err(|e| out_err(e.into()))?;
            w.write_all(b"\n").map_err(out_err)?;
            report.scored += 1;
        }
        samples.clear();
        Ok(())
    };
    for (lineno, line) in reader.lines().enumerate() {
        let line = line.map_err(io(input))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Value>(&line).map_err(|e| e.to_string()).and_then(|v| match v {
            Value::Object(o) => sample_from_json(&o).map(|s| (o, s)),
            _ => Err("not a JSON object".to_string()),
        });
        match parsed {
            Ok((o, s)) => {
                objs.push(o);
                samples.push(s);
                if samples.len() == CHUNK {
                    flush(&mut objs, &mut samples, &mut report, &mut total_sum, &mut applied, &mut writer)?;
                }
            }
            Err(e) => {
                eprintln!("{}:{}: skipped malformed line: {e}", input.display(), lineno + 1);
                report.skipped += 1;
            }
        }
    }
    flush(&mut objs, &mut samples, &mut report, &mut total_sum, &mut applied, &mut writer)?;
    writer.flush().map_err(out_err)?;
    let n = report.scored.max(1) as f64;
    for (m, k) in report.means.iter_mut().zip(&applied) {
        m.1 /= (*k).max(1) as f64;
    }
    report.mean_total = total_sum / n;
    eprintln!("scored {} lines, skipped {} malformed", report.scored, report.skipped);
    for (name, m) in &report.means {
        eprintln!("  {name:<24} mean {m:.4}");
    }
    eprintln!("  {:<24} mean {:.4}", "reward (weighted)", report.mean_total);
    let c = &report.counts;
    eprintln!(
        "  errors: {} panics, {} timeouts, {} unparseable references, {} missing inputs, {} unrouted; {} without answer",
        c.panics, c.timeouts, c.unparseable_references, c.missing_inputs, c.unrouted, c.no_answer
    );
    Ok(report)
}
