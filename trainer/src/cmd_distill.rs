//! `ponder distill`: one `distill` stage from the command line. It writes the same one-stage
//! pipeline a recipe would (`RUN/config.toml`), so the run folder, its metrics, checkpoints
//! and `ponder train --resume RUN` are exactly those of a recipe's stage.

use anyhow::{anyhow, bail, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MethodArg {
    Sft,
    Kd,
    /// As in recipes (`method = "on_policy"`); `on-policy` works too.
    #[value(name = "on_policy", alias = "on-policy")]
    OnPolicy,
}

#[derive(Args, Debug)]
#[command(after_long_help = "Examples:\n  \
ponder distill --method sft --sequences runs/tiny-r1/stages/rejection-sampling/data.jsonl \\\n    \
--teacher runs/tiny-r1/stages/rl-all/checkpoints/step-120 \\\n    \
--student-shape hidden=64,layers=4,heads=4,kv_heads=2,intermediate=176 --out runs/student-sft\n  \
ponder distill --method kd --teacher T --student S --sequences traces.jsonl --epochs 2 --set teacher_logprobs=\"cache\" --out runs/kd\n  \
ponder distill --method on_policy --teacher T --student S --prompts runs/tiny-r1/data/train.jsonl \\\n    \
--eval runs/tiny-r1/data/heldout.jsonl --set train.steps=240 --out runs/opd\n\n\
Methods: `sft` fine-tunes the student on teacher-written sequences (R1-Distill's method); `kd` \
minimises a divergence (forward KL by default) between the teacher's and the student's next-token \
distributions on teacher sequences, the teacher online or cached as top-k log-probs; `on_policy` \
lets the student sample and minimises the reverse KL to the teacher on its own tokens (GKD with \
lambda = 1). Without --sequences, `kd` samples the teacher on --prompts once.\n\n\
The command writes RUN/config.toml, a one-stage pipeline with the stage `distill`: every key of \
the stage kind (README, \"Distillation\") can be set with --set KEY=VALUE (TOML values; e.g. \
train.batch_size=32, divergence=\"jsd\", beta=0.5, top_k=20, lambda=0.5). Output: \
RUN/stages/distill/model (Hugging Face layout), metrics.jsonl, summary.json, checkpoints. Ctrl-C \
saves a checkpoint; continue with `ponder train --resume RUN`.")]
pub struct DistillArgs {
    /// `sft`, `kd` or `on_policy`.
    #[arg(long, value_enum)]
    pub method: MethodArg,
    /// Teacher model folder or Hub id `org/name[@revision]` (needed by `kd` and `on_policy`;
    /// with `sft` it only adds KL and agreement metrics).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Student model folder (or Hub id) to start from.
    #[arg(long, conflicts_with = "student_shape")]
    pub student: Option<PathBuf>,
    /// Or a fresh student with the teacher's tokenizer:
    /// hidden=H,layers=L,heads=A,kv_heads=K,intermediate=I[,family=qwen2|llama].
    #[arg(long, value_name = "KEY=N,...")]
    pub student_shape: Option<String>,
    /// Teacher-written sequences, JSONL with `prompt` and `completion` (repeatable).
    #[arg(long)]
    pub sequences: Vec<PathBuf>,
    /// Prompts, JSONL with `prompt` (repeatable): what `on_policy`'s student samples, and what
    /// the teacher samples when there are no --sequences.
    #[arg(long)]
    pub prompts: Vec<PathBuf>,
    /// Held-out problems (JSONL with `prompt` and `answer`) scored during training.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Passes over the sequences (`sft`, `kd`); sets train.steps.
    #[arg(long)]
    pub epochs: Option<f64>,
    /// The run folder to create (its parent is the output directory).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override a key of the stage: --set key.path=value (repeatable; values are TOML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Log lines instead of a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn path_value(p: &Path) -> toml::Value {
    toml::Value::String(p.to_string_lossy().into_owned())
}

fn paths_value(ps: &[PathBuf]) -> toml::Value {
    match ps {
        [one] => path_value(one),
        _ => toml::Value::Array(ps.iter().map(|p| path_value(p)).collect()),
    }
}

/// `hidden=64,layers=4,...` as the stage's `student_model` table.
fn shape_table(spec: &str) -> Result<toml::Table> {
    let mut t = toml::Table::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow!("--student-shape: `{part}` is not KEY=VALUE (e.g. hidden=64,layers=4,heads=4,kv_heads=2,intermediate=176)")
        })?;
        let value = match v.trim().parse::<i64>() {
            Ok(n) => toml::Value::Integer(n),
            Err(_) => toml::Value::String(v.trim().to_string()),
        };
        t.insert(k.trim().to_string(), value);
    }
    Ok(t)
}

/// The one-stage pipeline the command runs.
pub fn recipe(a: &DistillArgs) -> Result<toml::Table> {
    let name = a.out.file_name().ok_or_else(|| anyhow!("--out {}: needs a folder name", a.out.display()))?;
    let parent = a.out.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| PathBuf::from("."));
    let mut run = toml::Table::new();
    run.insert("name".into(), toml::Value::String(name.to_string_lossy().into_owned()));
    run.insert("output_dir".into(), path_value(&parent));
    run.insert("seed".into(), toml::Value::Integer(a.seed as i64));
    let mut st = toml::Table::new();
    st.insert("name".into(), "distill".into());
    st.insert("kind".into(), "distill".into());
    let method = match a.method {
        MethodArg::Sft => "sft",
        MethodArg::Kd => "kd",
        MethodArg::OnPolicy => "on_policy",
    };
    st.insert("method".into(), method.into());
    if let Some(t) = &a.teacher {
        st.insert("teacher".into(), path_value(t));
    }
    match (&a.student, &a.student_shape) {
        (Some(s), _) => {
            st.insert("student".into(), path_value(s));
        }
        (None, Some(spec)) => {
            st.insert("student_model".into(), toml::Value::Table(shape_table(spec)?));
        }
        (None, None) => {
            bail!("give the student: --student FOLDER, or --student-shape hidden=...,layers=...,heads=...,kv_heads=...,intermediate=...")
        }
    }
    if !a.sequences.is_empty() {
        st.insert("sequences".into(), paths_value(&a.sequences));
    }
    if !a.prompts.is_empty() {
        st.insert("prompts".into(), paths_value(&a.prompts));
    }
    if let Some(e) = a.epochs {
        st.insert("epochs".into(), toml::Value::Float(e));
    }
    if let Some(e) = &a.eval {
        let mut t = toml::Table::new();
        t.insert("data".into(), path_value(e));
        st.insert("eval".into(), toml::Value::Table(t));
    }
    crate::config::apply_sets(&mut st, &a.set)?;
    let mut table = toml::Table::new();
    table.insert("run".into(), toml::Value::Table(run));
    table.insert("stages".into(), toml::Value::Array(vec![toml::Value::Table(st)]));
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: DistillArgs,
    }

    fn parse(args: &str) -> DistillArgs {
        Cli::try_parse_from(std::iter::once("distill").chain(args.split_whitespace())).unwrap().a
    }

    #[test]
    fn builds_the_stage_a_recipe_would_write() {
        let a = parse(
            "--method on_policy --teacher t --student-shape hidden=64,layers=2,heads=4,kv_heads=2,intermediate=128,family=llama \
             --prompts p.jsonl --eval h.jsonl --out runs/opd --seed 3 --set train.steps=7 --set lambda=0.5",
        );
        let t = recipe(&a).unwrap();
        let p: crate::pipeline::Pipeline = crate::config::from_table(t.clone(), "test").unwrap();
        assert_eq!((p.run.name.as_str(), p.run.output_dir.as_path(), p.run.seed), ("opd", Path::new("runs"), 3));
        let st: crate::stages::distill::DistillStage = crate::config::from_table(p.stages[0].clone(), "test").unwrap();
        assert_eq!(st.method, crate::distill::Method::OnPolicy);
        assert_eq!(st.teacher.as_deref(), Some(Path::new("t")));
        let shape = st.student_model.unwrap();
        assert_eq!((shape.hidden, shape.layers, shape.intermediate), (64, 2, 128));
        assert_eq!(shape.family, crate::stages::distill::Family::Llama);
        assert_eq!(st.train.steps, 7);
        assert_eq!(st.lambda, Some(0.5));
        assert_eq!(st.eval.unwrap().data.list(), vec![&PathBuf::from("h.jsonl")]);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let no_student = parse("--method sft --sequences s.jsonl --out r");
        assert!(recipe(&no_student).unwrap_err().to_string().contains("--student FOLDER"));
        let bad_shape = parse("--method kd --teacher t --student-shape hidden64 --out r");
        assert!(recipe(&bad_shape).unwrap_err().to_string().contains("`hidden64` is not KEY=VALUE"));
        // A typo in a stage key is caught by the stage's strict schema, with the key's path.
        let typo = parse("--method kd --teacher t --student s --set top_kk=5 --out r");
        let t = recipe(&typo).unwrap();
        let p: crate::pipeline::Pipeline = crate::config::from_table(t, "test").unwrap();
        let e = crate::config::from_table::<crate::stages::distill::DistillStage>(p.stages[0].clone(), "test").unwrap_err();
        assert!(e.to_string().contains("top_kk"), "{e}");
    }
}
