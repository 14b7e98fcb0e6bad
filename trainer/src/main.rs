//! `ponder`: GRPO training for reasoning models, on libtorch.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use trainer::{bench, cmd_generate, train};

#[derive(Parser)]
#[command(
    name = "ponder",
    version,
    about = "Train reasoning models with GRPO, the way DeepSeek-R1 was built",
    long_about = "ponder trains reasoning models with GRPO (group-relative policy optimisation) on libtorch.\n\
Models are Hugging Face folders (config.json, *.safetensors, tokenizer.json); Qwen2 and Llama \
families are supported, on CPU and CUDA.\n\n\
Start with `ponder demo`, then `ponder train --help`."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train with GRPO from a TOML recipe, or resume a run.
    Train(TrainArgs),
    /// Sample completions from a model folder.
    Generate(cmd_generate::GenerateArgs),
    /// Score completions with a reward set: JSONL in, JSONL out (rewards per module + total).
    Score(ScoreArgs),
    /// Create a tiny random Qwen2 model folder (tokenizer trained here; no downloads).
    InitModel(cmd_generate::InitModelArgs),
    /// Build a tiny model (once) and sample from it: the quickest check that everything works.
    Demo(cmd_generate::DemoArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

#[derive(Args)]
#[command(after_long_help = "Examples:\n  ponder train recipes/tiny-r1-zero.toml\n  ponder train recipes/tiny-r1-zero.toml --set optim.lr=3e-6 --set run.name=lr3e-6\n  ponder train --resume runs/tiny-r1-zero\n\n\
The run folder (run.output_dir/run.name) gets config.toml (the resolved recipe), metrics.jsonl \
(one row per step), samples/ and checkpoints/step-N/ (Hugging Face layout + optimizer and \
trainer state). Ctrl-C finishes the current step, saves a checkpoint and exits 0; a second \
Ctrl-C exits at once.")]
struct TrainArgs {
    /// The recipe (TOML).
    recipe: Option<PathBuf>,
    /// Continue the run in this folder from its newest complete checkpoint.
    #[arg(long, conflicts_with = "recipe")]
    resume: Option<PathBuf>,
    /// Override a recipe key: --set section.key=value (repeatable; values are TOML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Log lines instead of a progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
#[command(after_long_help = "Input lines carry `prompt`, `completion`, `answer` and any field a module reads \
(`numbers`, `target`, `language`, ...). Output lines are the input plus `rewards` (module name -> \
score) and `reward` (weighted total). Malformed lines are reported with their line number and \
skipped; the exit status is 2 when any line was skipped. A summary goes to stderr.")]
struct ScoreArgs {
    /// Reward set: a TOML file with [[rewards]] tables (a training recipe works too).
    #[arg(long)]
    rewards: PathBuf,
    /// Samples, JSONL.
    #[arg(long)]
    input: PathBuf,
    /// Where to write scored JSONL (default: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let r: Result<i32> = match cli.cmd {
        Cmd::Train(a) => run_train(a),
        Cmd::Generate(a) => cmd_generate::run(a).map(|_| 0),
        Cmd::Score(a) => rewards::score_cli::run(&a.rewards, &a.input, a.output.as_deref())
            .map(|rep| if rep.skipped > 0 { 2 } else { 0 })
            .map_err(Into::into),
        Cmd::InitModel(a) => cmd_generate::init_model(a).map(|_| 0),
        Cmd::Demo(a) => cmd_generate::demo(a).map(|_| 0),
        Cmd::Bench(b) => bench::run(b).map(|_| 0),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run_train(a: TrainArgs) -> Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this step, saving a checkpoint (Ctrl-C again to abort)");
    })?;
    // A recipe with [[stages]] is a pipeline; otherwise it is one GRPO run.
    let cfg_path = match (&a.recipe, &a.resume) {
        (_, Some(run)) => run.join("config.toml"),
        (Some(r), None) => r.clone(),
        (None, None) => anyhow::bail!("give a recipe (ponder train RECIPE.toml) or --resume RUN_DIR"),
    };
    if let Some(table) = std::fs::read_to_string(&cfg_path).ok().and_then(|t| t.parse::<toml::Table>().ok()) {
        if table.contains_key("stages") {
            let mut table = table;
            trainer::config::apply_sets(&mut table, &a.set)?;
            let mut p: trainer::pipeline::Pipeline = trainer::config::from_table(table.clone(), &cfg_path.display().to_string())?;
            if let Some(run) = &a.resume {
                p.run.output_dir = run.parent().map(PathBuf::from).unwrap_or_default();
                p.run.name = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            }
            trainer::pipeline::run(p, &table, a.resume.is_some(), a.quiet, stop)?;
            return Ok(0);
        }
    }
    let opts = train::Options { quiet: a.quiet, stop, sinks: vec![] };
    let out = train::train(a.recipe.as_deref(), a.resume.as_deref(), &a.set, opts)?;
    let ck = out.final_checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into());
    if out.interrupted {
        eprintln!("interrupted after step {}; checkpoint {ck}; resume with: ponder train --resume {}", out.steps_done, out.run_dir.display());
    } else {
        eprintln!("done: {} steps; run folder {}; final checkpoint {ck}", out.steps_done, out.run_dir.display());
    }
    Ok(0)
}
