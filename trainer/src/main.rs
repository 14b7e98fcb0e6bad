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
Models are Hugging Face folders (config.json, *.safetensors, tokenizer.json) or Hub ids \
(org/name[@revision], fetched into the Hugging Face cache: HF_HOME, HF_HUB_CACHE, HF_TOKEN, \
HF_ENDPOINT and HF_HUB_OFFLINE=1 as in Python; a local folder of the same name wins); Qwen2 \
and Llama families are supported, on CPU and CUDA.\n\n\
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
    /// Distil a teacher into a (smaller) student: SFT on its traces, token-level KD, or
    /// on-policy distillation (one `distill` stage, resumable with `ponder train --resume`).
    Distill(trainer::cmd_distill::DistillArgs),
    /// Held-out evaluation and test-time compute: accuracy, pass@k / maj@k / best-of-k for k up
    /// to --samples, thinking budgets, FLOPs per problem, charts (JSON + PNG).
    Eval(EvalArgs),
    /// Create a tiny random Qwen2 model folder (tokenizer trained here; no downloads).
    InitModel(cmd_generate::InitModelArgs),
    /// Build a tiny model (once) and sample from it: the quickest check that everything works.
    Demo(cmd_generate::DemoArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Upload a run folder's metrics to Weights & Biases (offline runs, failed uploads).
    WandbSync(WandbSyncArgs),
    /// Plot metrics of several runs in one chart (PNG), e.g. a curve with and without a reward.
    Plot(PlotArgs),
}

#[derive(Args)]
#[command(after_long_help = "Example (the language-consistency curve of reasoning RL with and without the language reward):\n  \
ponder plot --metric rewards/language_consistency/full_rate \\\n    --run R1-Zero=runs/tiny-r1-zero/stages/grpo --run R1=runs/tiny-r1/stages/reasoning-rl \\\n    --out lang.png\n\n\
Each --run is LABEL=FOLDER (a run or stage folder holding metrics.jsonl) or just FOLDER. \
With several --metric, every (run, metric) pair is a line.")]
struct PlotArgs {
    /// Metric name as in metrics.jsonl (repeatable).
    #[arg(long, required = true)]
    metric: Vec<String>,
    /// LABEL=FOLDER or FOLDER (repeatable).
    #[arg(long, required = true)]
    run: Vec<String>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// Chart title (default: the metric names).
    #[arg(long)]
    title: Option<String>,
}

fn run_plot(a: PlotArgs) -> Result<()> {
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = vec![];
    for r in &a.run {
        let (label, dir) = match r.split_once('=') {
            Some((l, d)) => (l.to_string(), PathBuf::from(d)),
            None => (r.clone(), PathBuf::from(r)),
        };
        let series = trainer::plots::read_series(&dir.join("metrics.jsonl"))?;
        for m in &a.metric {
            let v = series.get(m).cloned().ok_or_else(|| {
                let known: Vec<&str> = series.keys().map(String::as_str).filter(|k| !k.starts_with("time/")).collect();
                anyhow::anyhow!("{}: no metric `{m}` (it has: {})", dir.join("metrics.jsonl").display(), known.join(", "))
            })?;
            let name = if a.metric.len() > 1 { format!("{label} {m}") } else { label.clone() };
            lines.push((name, v));
        }
    }
    let refs: Vec<(&str, &[(f64, f64)])> = lines.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    let title = a.title.clone().unwrap_or_else(|| a.metric.join(", "));
    trainer::plots::line_chart(&a.out, &title, &refs)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

#[derive(Args)]
#[command(after_long_help = "Example:\n  WANDB_API_KEY=... ponder wandb-sync runs/tiny-r1-zero\n\n\
Reads RUN_DIR/metrics.jsonl (one row per step), the [wandb] section of RUN_DIR/config.toml and \
the usual environment (WANDB_API_KEY or ~/.netrc, WANDB_BASE_URL, WANDB_ENTITY, WANDB_PROJECT). \
RUN_DIR/wandb.json records the W&B run id and the last step the server has: the upload continues \
the same run, sends only later rows, and running it again sends nothing twice. Sample tables \
from RUN_DIR/samples/ go up with their step. A pipeline folder syncs each training stage.")]
struct WandbSyncArgs {
    /// The run folder (runs/NAME), or a pipeline folder.
    run_dir: PathBuf,
}

#[derive(Args)]
#[command(
    after_long_help = "Examples:\n  ponder train recipes/tiny-r1-zero.toml\n  ponder train recipes/tiny-r1-zero.toml --set optim.lr=3e-6 --set run.name=lr3e-6\n  ponder train --resume runs/tiny-r1-zero\n\n\
The run folder (run.output_dir/run.name) gets config.toml (the resolved recipe), metrics.jsonl \
(one row per step), samples/ and checkpoints/step-N/ (Hugging Face layout + optimizer and \
trainer state). Ctrl-C finishes the current step, saves a checkpoint and exits 0; a second \
Ctrl-C exits at once.\n\n\
A [wandb] section (or WANDB_MODE=online) streams every metrics row to Weights & Biases from a \
background thread: a slow or unreachable server never holds training up, and --resume continues \
the same W&B run. Offline or failed uploads: `ponder wandb-sync RUN_DIR`.\n\n\
Several processes (one per GPU): `torchrun --nproc-per-node N --no-python ponder train RECIPE`, \
or Slurm's srun with MASTER_ADDR / MASTER_PORT exported. A GRPO run trains data-parallel; in a \
pipeline, pretrain / sft / grpo / distill stages train data-parallel, rejection_sample and \
eval split their prompts, tasks stages run on rank 0 while the others wait. Rank 0 writes the run \
folder (shared by every rank); a bare `cuda` is each rank's LOCAL_RANK GPU; every collective \
waits at most PONDER_DIST_TIMEOUT_S seconds (default 1800)."
)]
struct TrainArgs {
    /// The recipe (TOML).
    recipe: Option<PathBuf>,
    /// Continue the run in this folder from its newest valid checkpoint (a damaged newer one
    /// is skipped with a warning).
    #[arg(long, conflicts_with = "recipe")]
    resume: Option<PathBuf>,
    /// With --resume: continue from this checkpoint (`step-N` in RUN/checkpoints/) instead.
    #[arg(long, requires = "resume", value_name = "step-N")]
    from: Option<String>,
    /// Override a recipe key: --set section.key=value (repeatable; values are TOML). In a
    /// pipeline a stage is picked by name: --set stages.student-base.slip_rate=1.0
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
        Cmd::Distill(a) => run_distill(a),
        Cmd::Eval(a) => run_eval(a).map(|_| 0),
        Cmd::InitModel(a) => cmd_generate::init_model(a).map(|_| 0),
        Cmd::Demo(a) => cmd_generate::demo(a).map(|_| 0),
        Cmd::Bench(b) => bench::run(b).map(|_| 0),
        Cmd::WandbSync(a) => trainer::wandb_sink::sync_dir(&a.run_dir).map(|_| 0),
        Cmd::Plot(a) => run_plot(a).map(|_| 0),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

#[derive(Args)]
#[command(
    after_long_help = "Examples:\n  ponder eval --model runs/tiny-r1-zero/stages/grpo/checkpoints/step-120 --data runs/tiny-r1-zero/data/heldout.jsonl --samples 64 --max-new-tokens 64 --out-dir eval-out\n  ponder eval --model base=runs/tiny-r1-zero/stages/base/model --model rl=runs/tiny-r1-zero/stages/grpo/checkpoints/step-120 \\\n    --data runs/tiny-r1-zero/data/heldout.jsonl --samples 16 --think-budgets 4,8,16,32 --out-dir eval-out\n\n\
Samples --samples N completions per prompt (each prompt is computed once and its KV cache shared \
by its N samples) and reports accuracy (avg@n, with its standard error over problems), format rate, \
lengths and, for k = 1, 2, 4, ..., N: unbiased pass@k, maj@k (majority vote over extracted answers, \
answers the grader judges equivalent count as one, ties to the answer voted first; for 1 < k < N the \
mean over all k-subsets, or over 1000 seeded ones when there are more than 5000) and best-of-k by \
each --best-of scorer, each with the tokens and inference FLOPs per problem that k samples cost.\n\n\
Thinking: --think-budget T forces the end-of-thinking string (--think-end) once the <think> part has \
T tokens (budget forcing); --min-think T replaces an earlier end of thinking by --continuation; \
--think-budgets A,B,C runs one evaluation per budget (accuracy vs thinking tokens).\n\n\
Output: the JSON report on stdout (and --output): for one model without a budget sweep the report \
itself, else {\"models\": [{\"report\": ..., \"budgets\": [...]}]}. --out-dir DIR also gets \
LABEL.json, LABEL-budgets.json and the charts k.png (accuracy vs k; k-LABEL.png per model when \
there are several), think_budget.png and flops.png (accuracy vs FLOPs per problem, every model in one chart). --samples-output writes one JSON line per \
sample. `ponder eval --combine A.json B.json --out-dir D` draws the charts of saved reports together \
(e.g. models evaluated at different times)."
)]
struct EvalArgs {
    /// Model folder or Hub id (`org/name[@revision]`), or LABEL=MODEL (repeatable: several
    /// models share the charts).
    #[arg(long, required_unless_present = "combine")]
    model: Vec<String>,
    /// The problems: JSONL, Parquet, or a Hub dataset split
    /// `hf://datasets/org/name[@revision]/config/split`, each optionally with a row range
    /// `[start:end]` (e.g. `hf://datasets/openai/gsm8k/main/test[:500]`); rows with `prompt`
    /// and `answer` fields (see --prompt-field, --answer-field) and any the rewards read.
    #[arg(long, required_unless_present = "combine")]
    data: Option<PathBuf>,
    /// Evaluate nothing: draw the charts of saved reports (LABEL.json as --out-dir writes
    /// them; a LABEL-budgets.json beside one is its budget sweep) into --out-dir.
    #[arg(long, num_args = 1.., conflicts_with = "model", requires = "out_dir")]
    combine: Vec<PathBuf>,
    /// Reward set TOML ([[rewards]] tables); default: accuracy + format.
    #[arg(long)]
    rewards: Option<PathBuf>,
    /// r1_zero | chat | a string with {prompt}
    #[arg(long, default_value = "r1_zero")]
    template: String,
    /// Field holding the prompt (GSM8K's is `question`).
    #[arg(long, default_value = "prompt", value_name = "FIELD")]
    prompt_field: String,
    /// Field holding the reference answer (GSM8K's `answer` works as is: the text after `####`).
    #[arg(long, default_value = "answer", value_name = "FIELD")]
    answer_field: String,
    /// Text appended to every prompt before the template (a recipe's `data.instruction`).
    #[arg(long, default_value = "", value_name = "TEXT")]
    instruction: String,
    /// Build each prompt from the row's fields instead of --prompt-field: `{name}` becomes
    /// the field's value, as Python's str() prints it (a recipe's `data.prompt_format`).
    #[arg(long, value_name = "FORMAT")]
    prompt_format: Option<String>,
    /// Rename a field of every row before anything reads it, FROM=TO (repeatable; a recipe's
    /// `data.rename`), e.g. `nums=numbers` for TinyZero's Countdown rows.
    #[arg(long, value_name = "FROM=TO")]
    rename: Vec<String>,
    /// Samples per prompt (N).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Evaluate the first N prompts only (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Share of rows the rewards cannot score (no answer, an unreadable reference) that is
    /// skipped with a warning; by default any such row stops the evaluation with a report.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    max_bad_fraction: f64,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// best-of-k scorer (repeatable): `logprob` (mean token log-prob) or a reward name of
    /// the set (the grading reward is reported as an oracle).
    #[arg(long = "best-of", default_value = "logprob")]
    best_of: Vec<String>,
    /// Thinking budget in tokens: the end-of-thinking string is forced in after T thinking tokens.
    #[arg(long)]
    think_budget: Option<usize>,
    /// Minimum thinking tokens: an earlier end of thinking is replaced by the continuation word.
    #[arg(long, default_value_t = 0)]
    min_think: usize,
    /// A budget sweep: one evaluation per budget (comma-separated), accuracy vs thinking tokens.
    #[arg(long, value_delimiter = ',')]
    think_budgets: Vec<usize>,
    /// What opens the thinking part.
    #[arg(long, default_value = "<think>")]
    think_open: String,
    /// What closes it.
    #[arg(long, default_value = "</think>")]
    think_close: String,
    /// Forced in when the budget is reached.
    #[arg(long, default_value = "</think> <answer>")]
    think_end: String,
    /// Fed in place of an early end of thinking under --min-think.
    #[arg(long, default_value = "Wait")]
    continuation: String,
    /// Model copies sampling in parallel (default: on CPU one per core, on a GPU one).
    #[arg(long)]
    workers: Option<usize>,
    /// Intra-op CPU threads per worker (default on CPU: cores / workers).
    #[arg(long)]
    threads: Option<usize>,
    /// Samples a worker decodes as one batch: its KV cache grows with it (memory is about
    /// workers x batch x sequence length x layers x 2 x KV heads x head size x 4 bytes);
    /// smaller batches are slower (40 SmolLM2 samples: 37 s at 256, 68 s at 4).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    max_batch: u64,
    /// Write one JSON line per sample here.
    #[arg(long)]
    samples_output: Option<PathBuf>,
    /// Write reports and charts (PNG) into this folder.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Also write the JSON report here.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Reads reports saved by `ponder eval --out-dir` (and the budget sweep beside each).
fn read_reports(files: &[PathBuf]) -> Result<Vec<(trainer::eval::EvalReport, Vec<trainer::eval::EvalReport>)>> {
    let read =
        |p: &std::path::Path| -> Result<String> { std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display())) };
    files
        .iter()
        .map(|f| {
            let r: trainer::eval::EvalReport = serde_json::from_str(&read(f)?).map_err(|e| {
                anyhow::anyhow!("{}: not an eval report ({e}); give the LABEL.json that `ponder eval --out-dir` wrote", f.display())
            })?;
            let sweep = f.with_file_name(format!("{}-budgets.json", f.file_stem().unwrap_or_default().to_string_lossy()));
            let b = if sweep.exists() {
                serde_json::from_str(&read(&sweep)?).map_err(|e| anyhow::anyhow!("{}: {e}", sweep.display()))?
            } else {
                vec![]
            };
            Ok((r, b))
        })
        .collect()
}

fn run_eval(a: EvalArgs) -> Result<()> {
    use std::io::Write;
    use trainer::eval::{self, EvalSpec};
    if !a.combine.is_empty() {
        let results = read_reports(&a.combine)?;
        return write_charts(a.out_dir.as_deref().expect("clap requires --out-dir"), &results, false);
    }
    let data = a.data.clone().expect("clap requires --data");
    let paths = trainer::config::Paths::One(data.clone());
    let fields = trainer::config::FieldsCfg {
        prompt_field: a.prompt_field.clone(),
        answer_field: a.answer_field.clone(),
        instruction: a.instruction.clone(),
        prompt_format: a.prompt_format.clone(),
        rename: a
            .rename
            .iter()
            .map(|r| {
                r.split_once('=')
                    .filter(|(f, t)| !f.is_empty() && !t.is_empty())
                    .map(|(f, t)| (f.to_string(), t.to_string()))
                    .ok_or_else(|| anyhow::anyhow!("--rename {r}: expected FROM=TO, e.g. --rename nums=numbers"))
            })
            .collect::<Result<_>>()?,
    };
    if let Some(f) = &fields.prompt_format {
        trainer::data::format_fields(f, &Default::default(), true).map_err(|e| anyhow::anyhow!("--prompt-format: {e}"))?;
    }
    let cfg = fields.data_cfg(&paths, &a.template);
    let rewards = match &a.rewards {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
            rewards::RewardSet::from_toml_str(&text)?.specs().to_vec()
        }
        None => eval::default_rewards(),
    };
    let examples =
        trainer::stages::eval::load_screened(&paths, &cfg, a.limit, &rewards, a.max_bad_fraction, "ponder eval", "--max-bad-fraction")?;
    let params = rollout::generate::SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
        ..Default::default()
    };
    let think = rollout::generate::ThinkParams {
        open: a.think_open.clone(),
        close: a.think_close.clone(),
        end: a.think_end.clone(),
        continuation: a.continuation.clone(),
        budget: a.think_budget,
        min: a.min_think,
    };
    let spec = EvalSpec {
        template: &a.template,
        params,
        samples: a.samples,
        seed: a.seed,
        rewards,
        think,
        best_of: a.best_of.clone(),
        dist: None,
    };
    // Every setting is checked before the first model loads.
    spec.check()?;
    for &b in &a.think_budgets {
        EvalSpec { think: rollout::generate::ThinkParams { budget: Some(b), ..spec.think.clone() }, ..spec.clone() }
            .check()
            .map_err(|e| anyhow::anyhow!("--think-budgets {b}: {e}"))?;
    }
    let models: Vec<(String, PathBuf)> = a
        .model
        .iter()
        .map(|m| match m.split_once('=') {
            Some((l, d)) => (l.to_string(), PathBuf::from(d)),
            None => (m.clone(), PathBuf::from(m)),
        })
        .collect();
    let device = rollout::folder::parse_device(&a.device)?;
    let kind = rollout::folder::parse_kind(&a.dtype)?;
    let mut sample_out = match &a.samples_output {
        Some(p) => {
            if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("creating {}: {e}", d.display()))?;
            }
            Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| anyhow::anyhow!("creating {}: {e}", p.display()))?))
        }
        None => None,
    };
    let mut results: Vec<(eval::EvalReport, Vec<eval::EvalReport>)> = vec![];
    for (label, model) in &models {
        let dir = &trainer::model_path::resolve(model)?;
        let mut pool =
            eval::open_pool(dir, device, kind, a.workers, a.threads).map_err(|e| anyhow::anyhow!("model {}: {e:#}", dir.display()))?;
        pool.max_batch = a.max_batch as usize;
        let mut runs = vec![eval::evaluate_full(dir, &examples, &spec, Some(&pool), device, kind)?];
        runs.extend(eval::sweep_budgets(dir, &examples, &spec, &a.think_budgets, &pool)?);
        let mut reports = vec![];
        for mut run in runs {
            run.report.data = data.display().to_string();
            run.report.label = label.clone();
            if let Some(w) = sample_out.as_mut() {
                for mut line in run.samples {
                    line.model = label.clone();
                    writeln!(w, "{}", serde_json::to_string(&line)?)?;
                }
            }
            eprintln!("{}", eval::summary(&run.report));
            reports.push(run.report);
        }
        let main = reports.remove(0);
        results.push((main, reports));
    }
    if let Some(w) = sample_out.as_mut() {
        w.flush()?;
    }
    let text = if results.len() == 1 && results[0].1.is_empty() {
        serde_json::to_string_pretty(&results[0].0)?
    } else {
        let models: Vec<_> = results.iter().map(|(r, b)| serde_json::json!({ "report": r, "budgets": b })).collect();
        serde_json::to_string_pretty(&serde_json::json!({ "models": models }))?
    };
    println!("{text}");
    if let Some(o) = &a.output {
        std::fs::write(o, &text).map_err(|e| anyhow::anyhow!("writing {}: {e}", o.display()))?;
    }
    if let Some(dir) = &a.out_dir {
        write_charts(dir, &results, true)?;
    }
    Ok(())
}

/// Charts (and, with `reports`, the reports) of evaluated models into `dir`: k.png (or
/// k-LABEL.png per model), flops.png, think_budget.png.
fn write_charts(
    dir: &std::path::Path,
    results: &[(trainer::eval::EvalReport, Vec<trainer::eval::EvalReport>)],
    reports: bool,
) -> Result<()> {
    use trainer::eval::{charts, EvalReport};
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let file = |r: &EvalReport| r.label.replace(['/', '\\', ' '], "_");
    if reports {
        for (r, b) in results {
            std::fs::write(dir.join(format!("{}.json", file(r))), serde_json::to_string_pretty(r)?)?;
            if !b.is_empty() {
                std::fs::write(dir.join(format!("{}-budgets.json", file(r))), serde_json::to_string_pretty(b)?)?;
            }
        }
    }
    let mains: Vec<&EvalReport> = results.iter().map(|(r, _)| r).collect();
    for r in &mains {
        let name = if mains.len() == 1 { "k.png".to_string() } else { format!("k-{}.png", file(r)) };
        charts::k_chart(&dir.join(name), r)?;
    }
    charts::flops_chart(&dir.join("flops.png"), &mains)?;
    // The sweep's points, and the unforced run when it had no budget.
    let sweeps: Vec<(String, Vec<&EvalReport>)> = results
        .iter()
        .filter(|(_, b)| !b.is_empty())
        .map(|(r, b)| (r.label.clone(), b.iter().chain(r.think.budget.is_none().then_some(r)).collect()))
        .collect();
    if !sweeps.is_empty() {
        charts::budget_chart(&dir.join("think_budget.png"), &sweeps)?;
    }
    eprintln!("wrote {} to {}", if reports { "reports and charts" } else { "charts" }, dir.display());
    Ok(())
}

/// Ctrl-C sets the flag (the current step finishes and is saved); a second one exits.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this step, saving a checkpoint (Ctrl-C again to abort)");
    })?;
    Ok(stop)
}

fn run_distill(a: trainer::cmd_distill::DistillArgs) -> Result<i32> {
    let stop = stop_flag()?;
    let table = trainer::cmd_distill::recipe(&a)?;
    let p: trainer::pipeline::Pipeline = trainer::config::from_table(table.clone(), "ponder distill")?;
    trainer::pipeline::run(p, &table, false, a.quiet, stop)?;
    Ok(0)
}

fn run_train(a: TrainArgs) -> Result<i32> {
    let stop = stop_flag()?;
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
            if a.from.is_some() {
                anyhow::bail!("--from picks a checkpoint of a single GRPO run; a pipeline resumes each stage at its newest valid checkpoint by itself (damaged ones are skipped)");
            }
            trainer::pipeline::run(p, &table, a.resume.is_some(), a.quiet, stop)?;
            return Ok(0);
        }
    }
    let opts = train::Options { quiet: a.quiet, stop, sinks: vec![], resume_from: a.from.clone(), ..Default::default() };
    let out = train::train(a.recipe.as_deref(), a.resume.as_deref(), &a.set, opts)?;
    let ck = out.final_checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into());
    if out.interrupted {
        eprintln!(
            "interrupted after step {}; checkpoint {ck}; resume with: ponder train --resume {}",
            out.steps_done,
            out.run_dir.display()
        );
    } else {
        eprintln!("done: {} steps; run folder {}; final checkpoint {ck}", out.steps_done, out.run_dir.display());
    }
    Ok(0)
}
