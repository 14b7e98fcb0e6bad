//! `kind = "distill"`: a teacher's reasoning moved into a (smaller) student, with
//! `method = "sft" | "kd" | "on_policy"` (see `distill/mod.rs` for what each does and
//! `distill/loss.rs` for the divergences). The student is an existing model folder
//! (`student`, default: the previous stage's model) or a fresh one of a given shape
//! (`[stages.student_model]`) created with the teacher's tokenizer. Teacher and student must
//! share the tokenizer.
//!
//! Teacher sequences (for `kd`, and the 1 - lambda share of `on_policy`) come from
//! `sequences` (JSONL with `prompt` and `completion`, e.g. a `rejection_sample` stage's data),
//! or the stage samples the teacher on `prompts` once (`teacher_samples` per prompt, saved to
//! `teacher_sequences.jsonl`). Writes `model/` (Hugging Face layout), `checkpoints/step-N/`
//! (the same layout plus optimizer moments, resumed from), `metrics.jsonl` and `summary.json`.

use super::{cpu, f32s, one_usize, r1, Ctx, Output, StageOutcome};
use crate::config::Paths;
use crate::distill::cache::{self, Cache, CacheMeta};
use crate::distill::loss::{Divergence, Tail};
use crate::distill::{self, Checkpoints, HeldOut, Job, Method, Settings};
use crate::lm::{LmCfg, LmExample};
use crate::metrics::{JsonlSink, Sink};
use crate::tiny::{self, TinyShape};
use anyhow::{anyhow, bail, Context, Result};
use rollout::config::Arch;
use rollout::folder::{parse_device, Policy};
use rollout::generate::SamplingParams;
use rollout::pool::{mix_seed, RolloutPool};
use rollout::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `kd` reads the teacher's distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TeacherLogprobs {
    /// The teacher runs forward on every batch.
    #[default]
    Online,
    /// The teacher runs once; its top-k log-probs per position are read from disk.
    Cache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    #[default]
    Qwen2,
    Llama,
}

/// The shape of a fresh student (its vocabulary is the teacher's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentShape {
    #[serde(default)]
    pub family: Family,
    pub hidden: i64,
    pub layers: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub intermediate: i64,
}

/// Held-out measurement during training on the student's samples: accuracy, format and
/// language consistency (the pipeline's `[[eval_rewards]]`, else accuracy + format) and, with
/// a teacher, the teacher-student KL and argmax agreement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlEvalCfg {
    /// Held-out problems (JSONL with `prompt` and `answer`).
    pub data: Paths,
    /// Prompts used per file (0 = all).
    #[serde(default)]
    pub limit: usize,
    /// Steps between measurements (also at step 0 and at the end).
    #[serde(default = "fifty")]
    pub every: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillStage {
    pub name: String,
    pub kind: String,
    pub method: Method,
    /// Teacher model folder or Hub id (required for `kd` and `on_policy`; for `sft` optional, then only
    /// used for the KL and agreement metrics).
    #[serde(default)]
    pub teacher: Option<PathBuf>,
    /// The command that produces the teacher, named in the error when it is missing.
    #[serde(default)]
    pub teacher_recipe: Option<String>,
    /// Student model folder or Hub id (default: the previous stage's model).
    #[serde(default)]
    pub student: Option<PathBuf>,
    /// Or a fresh student of this shape, created with the teacher's tokenizer.
    #[serde(default)]
    pub student_model: Option<StudentShape>,
    /// Prompts (JSONL): what the student samples (`on_policy`), and what the teacher samples
    /// when `sequences` is not given.
    #[serde(default)]
    pub prompts: Option<Paths>,
    /// Teacher-written sequences, JSONL with `prompt` and `completion` (required for `sft`).
    #[serde(default)]
    pub sequences: Option<Paths>,
    #[serde(default = "r1")]
    pub template: String,
    /// Prompts used from each `prompts` file (0 = all).
    #[serde(default)]
    pub limit: usize,
    /// Samples per prompt when the stage samples the teacher.
    #[serde(default = "one_usize")]
    pub teacher_samples: usize,
    /// Sampling of the teacher's sequences and of the student's on-policy samples.
    #[serde(default)]
    pub sampling: SamplingParams,
    /// `forward_kl` (default for `kd`), `reverse_kl` (default for `on_policy`) or `jsd`.
    #[serde(default)]
    pub divergence: Option<Divergence>,
    /// JSD's beta, in (0, 1).
    #[serde(default = "half")]
    pub beta: f64,
    /// Distillation temperature: both models' logits are divided by it.
    #[serde(default = "one_f")]
    pub temperature: f64,
    #[serde(default)]
    pub teacher_logprobs: TeacherLogprobs,
    /// Tokens per position kept in the cache.
    #[serde(default = "twenty")]
    pub top_k: i64,
    /// What the cache does with the teacher's mass outside its top-k.
    #[serde(default)]
    pub tail: Tail,
    /// Cache folder (default `<stage>/teacher_cache`); a shared folder lets several stages
    /// reuse one teacher pass.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// `on_policy`: share of each batch sampled by the student (default 1; the rest are
    /// teacher sequences).
    #[serde(default)]
    pub lambda: Option<f64>,
    /// `sft` / `kd`: passes over the sequences; sets `train.steps`.
    #[serde(default)]
    pub epochs: Option<f64>,
    #[serde(default)]
    pub train: LmCfg,
    #[serde(default)]
    pub eval: Option<KlEvalCfg>,
    #[serde(default = "cpu")]
    pub device: String,
    /// f32, or bf16 / f16: teacher and student in that dtype, the student trained through
    /// fp32 master weights and moments (f16 with dynamic loss scaling), the divergences
    /// computed in fp32; the student is saved in this dtype.
    #[serde(default = "f32s")]
    pub dtype: String,
    /// Checkpoints kept (0 = all).
    #[serde(default = "one_usize")]
    pub keep_last: usize,
}

fn one_f() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn twenty() -> i64 {
    20
}
fn fifty() -> usize {
    50
}

impl DistillStage {
    pub fn divergence(&self) -> Divergence {
        self.divergence.unwrap_or(match self.method {
            Method::OnPolicy => Divergence::ReverseKl,
            _ => Divergence::ForwardKl,
        })
    }

    fn lambda(&self) -> f64 {
        self.lambda.unwrap_or(1.0)
    }

    /// Needs teacher sequences (given or sampled)?
    fn needs_sequences(&self) -> bool {
        match self.method {
            Method::Sft | Method::Kd => true,
            Method::OnPolicy => (self.lambda() * self.train.batch_size as f64).round() < self.train.batch_size as f64,
        }
    }

    pub fn check(&self, origin: &str) -> Result<()> {
        crate::config::check_device_dtype(origin, &self.device, &self.dtype)?;
        let m = match self.method {
            Method::Sft => "sft",
            Method::Kd => "kd",
            Method::OnPolicy => "on_policy",
        };
        if self.method != Method::Sft && self.teacher.is_none() {
            bail!("{origin}: method `{m}` needs a `teacher` model folder");
        }
        if self.method == Method::Sft {
            if self.sequences.is_none() {
                bail!("{origin}: method `sft` needs `sequences` (JSONL with `prompt` and `completion`: the teacher's traces)");
            }
            if self.divergence.is_some() || self.teacher_logprobs != TeacherLogprobs::Online {
                bail!("{origin}: `divergence` and `teacher_logprobs` apply to methods `kd` and `on_policy`, not `sft` (its loss is the traces' next-token loss)");
            }
        }
        if self.student.is_some() && self.student_model.is_some() {
            bail!("{origin}: give either `student` (a model folder) or `[student_model]` (a fresh model's shape), not both");
        }
        if self.student_model.is_some() && self.teacher.is_none() {
            bail!("{origin}: a fresh `student_model` takes the teacher's tokenizer: give `teacher`");
        }
        if let Some(s) = &self.student_model {
            let ok = s.hidden > 0 && s.layers > 0 && s.heads > 0 && s.kv_heads > 0 && s.intermediate > 0;
            if !ok || s.hidden % s.heads != 0 || s.heads % s.kv_heads != 0 {
                bail!("{origin}: student_model: hidden, layers, heads, kv_heads and intermediate must be >= 1, hidden a multiple of heads and heads of kv_heads (got hidden {}, heads {}, kv_heads {})", s.hidden, s.heads, s.kv_heads);
            }
        }
        if let Some(l) = self.lambda {
            if self.method != Method::OnPolicy {
                bail!("{origin}: `lambda` applies to method `on_policy` only");
            }
            if !(0.0..=1.0).contains(&l) {
                bail!("{origin}: `lambda` is the share of on-policy sequences and must be in [0, 1], got {l}");
            }
        }
        if self.method == Method::OnPolicy && self.prompts.is_none() && self.lambda() > 0.0 {
            bail!("{origin}: method `on_policy` needs `prompts` for the student to sample");
        }
        if self.needs_sequences() && self.sequences.is_none() && self.prompts.is_none() {
            bail!("{origin}: method `{m}` needs teacher sequences: give `sequences` (JSONL with `prompt` and `completion`) or `prompts` for the teacher to sample");
        }
        if self.divergence() == Divergence::Jsd && !(self.beta > 0.0 && self.beta < 1.0) {
            bail!(
                "{origin}: `beta` of the JSD must be in (0, 1), got {} (for the KL ends use divergence = \"forward_kl\" or \"reverse_kl\")",
                self.beta
            );
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!("{origin}: `temperature` must be a positive number, got {}", self.temperature);
        }
        if self.teacher_logprobs == TeacherLogprobs::Cache {
            if self.method == Method::OnPolicy {
                bail!("{origin}: `teacher_logprobs = \"cache\"` is for `kd`: on-policy samples are new every step, so the teacher scores them online");
            }
            if self.top_k < 1 {
                bail!("{origin}: `top_k` must be >= 1, got {}", self.top_k);
            }
            if self.divergence() == Divergence::ReverseKl && self.tail == Tail::Renormalize {
                bail!("{origin}: reverse KL from a top-k cache with tail = \"renormalize\" is infinite wherever the student puts mass outside the teacher's top-k; use tail = \"bucket\"");
            }
        }
        if let Some(e) = self.epochs {
            if self.method == Method::OnPolicy {
                bail!("{origin}: `epochs` applies to `sft` and `kd` (fixed sequences); on-policy runs `train.steps`");
            }
            if !(e > 0.0 && e.is_finite()) {
                bail!("{origin}: `epochs` must be a positive number, got {e}");
            }
        }
        if self.teacher_samples == 0 {
            bail!("{origin}: `teacher_samples` must be >= 1");
        }
        if let Some(e) = &self.eval {
            if e.every == 0 {
                bail!("{origin}: eval.every must be >= 1");
            }
        }
        self.sampling.validate().map_err(|e| anyhow!("{origin}: sampling: {e}"))?;
        self.train.check(origin)?;
        // A literal teacher folder (no stage reference, no Hub id: that is fetched when the
        // stage runs) must exist before anything runs.
        if let Some(t) = &self.teacher {
            if !t.to_string_lossy().contains('{') && !crate::model_path::is_hub_id(t) {
                teacher_exists(t, self.teacher_recipe.as_deref(), origin)?;
            }
        }
        Ok(())
    }
}

fn teacher_exists(t: &Path, recipe: Option<&str>, origin: &str) -> Result<()> {
    if t.join("config.json").is_file() {
        return Ok(());
    }
    let how = match recipe {
        Some(r) => format!("; it is produced by `{r}`: run that first"),
        None => String::new(),
    };
    bail!("{origin}: teacher model folder {} not found (no config.json there){how}", t.display())
}

/// Teacher and student must use the same tokenizer: the same token at every id.
pub fn check_same_tokenizer(teacher: &Tokenizer, student: &Tokenizer) -> Result<()> {
    let (nt, ns) = (teacher.vocab_size(), student.vocab_size());
    for id in 0..nt.max(ns) as i64 {
        let (a, b) = (teacher.id_to_token(id), student.id_to_token(id));
        if a != b {
            let show = |x: Option<String>| x.map_or("(none)".to_string(), |s| format!("{s:?}"));
            bail!(
                "teacher and student tokenizers differ: the teacher's ({}) has {nt} tokens, the student's ({}) has {ns} tokens; the first difference is at id {id}: teacher {}, student {}. Distillation compares next-token distributions id by id, so both need the same tokenizer: create the student with the teacher's (`[stages.student_model]`, or a pretrain stage with `tokenizer = <teacher folder>`)",
                teacher.dir().display(),
                student.dir().display(),
                show(a),
                show(b)
            );
        }
    }
    Ok(())
}

fn encode_prompts(paths: &Paths, template: &str, limit: usize, tk: &Tokenizer) -> Result<Vec<Vec<i64>>> {
    super::eval::load_limited(paths, template, limit)?
        .iter()
        .map(|e| {
            let (text, special) = crate::data::render_prompt(template, &e.prompt, tk)?;
            Ok(tk.encode(&text, special)?)
        })
        .collect()
}

/// Teacher samples saved once (ids as sampled: re-encoding decoded text can differ).
fn teacher_sequences(
    path: &Path,
    teacher_dir: &Path,
    tk: &Arc<Tokenizer>,
    prompts: &[Vec<i64>],
    st: &DistillStage,
    device: tch::Device,
    seed: u64,
    dist: Option<&ponder_dist::ProcessGroup>,
) -> Result<Vec<LmExample>> {
    if path.exists() {
        let text = std::fs::read_to_string(path)?;
        return text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: corrupt line; delete the file to sample again", path.display(), i + 1))?;
                let ids: Vec<i64> =
                    serde_json::from_value(v["ids"].clone()).with_context(|| format!("{}:{}: no `ids`", path.display(), i + 1))?;
                let loss_from =
                    v["prompt_tokens"].as_u64().with_context(|| format!("{}:{}: no `prompt_tokens`", path.display(), i + 1))? as usize;
                Ok(LmExample { ids, loss_from })
            })
            .collect();
    }
    let rank0 = dist.is_none_or(|d| d.rank == 0);
    if rank0 {
        eprintln!("  sampling {} teacher sequences", prompts.len() * st.teacher_samples);
    }
    let pool = RolloutPool::from_dir(teacher_dir, &[device], rollout::folder::parse_kind(&st.dtype)?, tk.clone())?;
    let seed = mix_seed(seed, 0x7eac);
    let seqs = match dist {
        None => distill::sample_sequences(&pool, prompts, st.teacher_samples, &st.sampling, seed)?.0,
        Some(pg) => {
            // Each rank samples a contiguous share of the prompts, seeded as in one process.
            let (a, b) = crate::train::share(Some(pg), prompts.len());
            let (mine, _) = distill::sample_sequences_from(&pool, &prompts[a..b], a, st.teacher_samples, &st.sampling, seed)?;
            let rows: Vec<(Vec<i64>, usize)> = mine.into_iter().map(|e| (e.ids, e.loss_from)).collect();
            let all = crate::train::gather(Some(pg), rows, "teacher sequences")?;
            all.into_iter().map(|(ids, loss_from)| LmExample { ids, loss_from }).collect()
        }
    };
    if !rank0 {
        return Ok(seqs);
    }
    let mut body = String::new();
    for s in &seqs {
        let text = tk.decode(&s.ids[s.loss_from..], false)?;
        body.push_str(&json!({"prompt_tokens": s.loss_from, "ids": s.ids, "completion": text}).to_string());
        body.push('\n');
    }
    crate::checkpoint::write_atomic(path, body.as_bytes())?;
    Ok(seqs)
}

pub fn run(ctx: &Ctx) -> Result<StageOutcome> {
    let mut st: DistillStage = ctx.config()?;
    st.check(&ctx.origin)?;
    let seed = ctx.pipeline.run.seed;
    let device = parse_device(&st.device)?;
    let kind = rollout::folder::parse_kind(&st.dtype)?;
    let t_start = std::time::Instant::now();
    // In a data-parallel launch every rank trains on its share of each batch (and samples
    // its share of the teacher's sequences); rank 0 writes the stage's files, the others
    // read them after a barrier.
    let dist = ctx.dist.borrow();
    let rank0 = ctx.rank0();
    let barrier = || -> Result<()> {
        if let Some(pg) = dist.as_ref() {
            pg.barrier()?;
        }
        Ok(())
    };
    // Teacher.
    let (teacher, teacher_tk) = match &st.teacher {
        Some(t) => {
            let t = &crate::model_path::resolve(t).map_err(|e| anyhow!("{}: teacher: {e}", ctx.origin))?;
            teacher_exists(t, st.teacher_recipe.as_deref(), &ctx.origin)?;
            let mut p = Policy::load(t, kind, device)?;
            p.vs.freeze();
            (Some(p), Some(Arc::new(Tokenizer::from_dir(t)?)))
        }
        None => (None, None),
    };
    // Student: a folder, the previous model, or a fresh one with the teacher's tokenizer.
    let student_dir = match (&st.student_model, &teacher) {
        (Some(s), Some(t)) => {
            let dir = ctx.dir.join("student-init");
            if rank0 && !dir.join("config.json").exists() {
                let shape = TinyShape {
                    hidden: s.hidden,
                    layers: s.layers,
                    heads: s.heads,
                    kv_heads: s.kv_heads,
                    intermediate: s.intermediate,
                    vocab: 0,
                };
                let arch = match s.family {
                    Family::Qwen2 => Arch::Qwen2,
                    Family::Llama => Arch::Llama,
                };
                let tmp = ctx.dir.join("student-init.tmp");
                let _ = std::fs::remove_dir_all(&tmp);
                tiny::create_with_tokenizer(&tmp, shape, arch, &t.dir, Some(t.model.cfg.vocab_size), seed as i64)?;
                std::fs::rename(&tmp, &dir)?;
            }
            barrier()?;
            dir
        }
        _ => ctx.model_or_previous(&st.student)?,
    };
    let tk = Arc::new(Tokenizer::from_dir(&student_dir)?);
    if let Some(ttk) = &teacher_tk {
        check_same_tokenizer(ttk, &tk).map_err(|e| anyhow!("{}: {e}", ctx.origin))?;
    }
    let student = Policy::load(&student_dir, kind, device)?;
    let vocab = tk.vocab_size() as i64;
    for (who, p) in [("student", Some(&student)), ("teacher", teacher.as_ref())] {
        if let Some(p) = p {
            if p.model.cfg.vocab_size < vocab {
                bail!(
                    "{}: the {who}'s config.json has vocab_size {} but its tokenizer has {vocab} tokens",
                    ctx.origin,
                    p.model.cfg.vocab_size
                );
            }
        }
    }
    let eos = student.eos_token_ids().first().copied();
    let n_teacher = teacher.as_ref().map(distill::param_count).unwrap_or(0.0);
    let mut setup_flops = 0.0;
    // Teacher sequences.
    let sequences: Vec<LmExample> = if !st.needs_sequences() {
        vec![]
    } else if let Some(paths) = &st.sequences {
        let mut v = vec![];
        for p in paths.list() {
            v.extend(super::sft::sft_examples(p, &st.template, &Default::default(), "completion", &tk, eos)?);
        }
        if v.is_empty() {
            bail!("{}: no sequences in {paths}", ctx.origin);
        }
        v
    } else {
        let prompts = encode_prompts(st.prompts.as_ref().unwrap(), &st.template, st.limit, &tk)?;
        let t = &teacher.as_ref().unwrap().dir;
        let seqs = teacher_sequences(
            &ctx.dir.join("teacher_sequences.jsonl"),
            t,
            teacher_tk.as_ref().unwrap(),
            &prompts,
            &st,
            device,
            seed,
            dist.as_ref(),
        )?;
        setup_flops += 2.0 * n_teacher * seqs.iter().map(|s| s.ids.len() as f64).sum::<f64>();
        seqs
    };
    let prompts = match (st.method, &st.prompts) {
        (Method::OnPolicy, Some(p)) => encode_prompts(p, &st.template, st.limit, &tk)?,
        _ => vec![],
    };
    // The teacher's top-k cache.
    let mut cache_info = serde_json::Value::Null;
    let cache = if st.method == Method::Kd && st.teacher_logprobs == TeacherLogprobs::Cache {
        let t = teacher.as_ref().unwrap();
        let dir = st.cache_dir.clone().unwrap_or_else(|| ctx.dir.join("teacher_cache"));
        let positions: i64 = sequences.iter().map(|s| cache::positions(s, st.train.max_len)).sum();
        let meta = CacheMeta {
            teacher: t.dir.display().to_string(),
            k: st.top_k.min(vocab),
            temperature: st.temperature,
            vocab,
            sequences: sequences.len(),
            positions,
            max_len: st.train.max_len,
            fingerprint: cache::fingerprint(&sequences),
            bytes_per_position: 8 * st.top_k.min(vocab) + 4,
        };
        // Rank 0 builds it (the others wait at the barrier), then every rank reads it.
        let built = match rank0 {
            true => match Cache::load(&dir, &meta).map_err(|e| anyhow!("{}: {e}", ctx.origin))? {
                Some(c) => Some(c),
                None => {
                    eprintln!("  building the teacher cache: top-{} log-probs at {positions} positions", meta.k);
                    Some(Cache::build(&dir, t, &sequences, &meta, st.train.batch_size)?)
                }
            },
            false => None,
        };
        barrier()?;
        let c = match built {
            Some(c) => c,
            None => Cache::load(&dir, &meta).map_err(|e| anyhow!("{}: {e}", ctx.origin))?.ok_or_else(|| {
                anyhow!(
                    "{}: rank 0 built the teacher cache in {}, but this rank cannot read it: is the run folder shared?",
                    ctx.origin,
                    dir.display()
                )
            })?,
        };
        setup_flops += 2.0 * n_teacher * sequences.iter().map(|s| s.ids.len().min(st.train.max_len) as f64).sum::<f64>();
        cache_info = json!({"dir": dir, "k": meta.k, "positions": positions, "bytes_per_position": meta.bytes_per_position, "file_bytes": Cache::file_bytes(&dir)});
        Some(c.to_device(device))
    } else {
        None
    };
    if let Some(e) = st.epochs {
        st.train.steps = ((e * sequences.len() as f64) / st.train.batch_size as f64).ceil().max(1.0) as usize;
    }
    // The student's rollout pool (on-policy samples, held-out measurement).
    let eval = match &st.eval {
        Some(e) => Some(HeldOut {
            examples: super::eval::load_limited(&e.data, &st.template, e.limit)?,
            prompts: encode_prompts(&e.data, &st.template, e.limit, &tk)?,
            template: st.template.clone(),
            rewards: if ctx.pipeline.eval_rewards.is_empty() { crate::eval::default_rewards() } else { ctx.pipeline.eval_rewards.clone() },
            every: e.every,
        }),
        None => None,
    };
    let pool = if st.method == Method::OnPolicy || eval.is_some() {
        Some(RolloutPool::from_dir(&student_dir, &[device], kind, tk.clone())?)
    } else {
        None
    };
    let resume_step = distill::latest_checkpoint(&ctx.dir)?.map(|(s, _)| s);
    let mut sinks = if rank0 { sinks(ctx, resume_step, st.train.steps)? } else { vec![] };
    if rank0 {
        eprintln!(
            "  {} ({}): student {:.3}M parameters{}, {} sequences, {} prompts, {} steps",
            match st.method {
                Method::Sft => "sft",
                Method::Kd => "kd",
                Method::OnPolicy => "on_policy",
            },
            if st.method == Method::Sft { "next-token loss".to_string() } else { st.divergence().name().to_string() },
            distill::param_count(&student) / 1e6,
            if n_teacher > 0.0 { format!(", teacher {:.3}M", n_teacher / 1e6) } else { String::new() },
            sequences.len(),
            prompts.len(),
            st.train.steps
        );
    }
    let settings = Settings {
        method: st.method,
        divergence: st.divergence(),
        beta: st.beta,
        temperature: st.temperature,
        tail: st.tail,
        lambda: st.lambda(),
        sampling: st.sampling.clone(),
        train: st.train.clone(),
        seed,
        vocab,
    };
    let job = Job {
        settings,
        student: &student,
        teacher: teacher.as_ref(),
        sequences: &sequences,
        cache: cache.as_ref(),
        prompts: &prompts,
        pool: pool.as_ref(),
        eval,
        setup_flops,
        dist: dist.as_ref(),
    };
    let ck = Checkpoints { dir: ctx.dir.clone(), side_files: student_dir.clone(), keep_last: st.keep_last };
    let out = distill::train(&job, &mut sinks, ctx.quiet, Some(&ck), ctx.stop)?;
    if out.interrupted {
        return Ok(StageOutcome::Interrupted);
    }
    if !rank0 {
        return Ok(StageOutcome::Done(Output { model: Some(ctx.dir.join("model")), data: None }));
    }
    let model_dir = ctx.dir.join("model");
    student.save_weights(&model_dir, kind, None)?;
    crate::checkpoint::copy_side_files(&student_dir, &model_dir)?;
    let summary = json!({
        "method": st.method,
        "divergence": (st.method != Method::Sft).then(|| st.divergence().name()),
        "student_parameters": distill::param_count(&student),
        "teacher_parameters": n_teacher,
        "sequences": sequences.len(),
        "steps": st.train.steps,
        "batch_size": st.train.batch_size,
        "flops": out.flops,
        "setup_flops": setup_flops,
        "cache": cache_info,
        "seconds_this_session": t_start.elapsed().as_secs_f64(),
    });
    crate::checkpoint::write_atomic(&ctx.dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(StageOutcome::Done(Output { model: Some(model_dir), data: None }))
}

/// `metrics.jsonl` (rows after the checkpoint being resumed from dropped) and, with a
/// pipeline `[wandb]`, a W&B run `<pipeline>/<stage>`.
fn sinks(ctx: &Ctx, resume_step: Option<u64>, steps: usize) -> Result<Vec<Box<dyn Sink>>> {
    if resume_step.is_none() {
        // A start without a checkpoint starts over: rows of an earlier attempt go.
        let _ = std::fs::remove_file(ctx.dir.join("metrics.jsonl"));
    }
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(JsonlSink::open(&ctx.dir, resume_step)?)];
    if let Some(w) = &ctx.pipeline.wandb {
        let w = crate::wandb_sink::stage_wandb(w, &ctx.pipeline.run.name, ctx.name);
        let config = serde_json::to_value(ctx.table)?;
        if let Some(sink) =
            crate::wandb_sink::WandbSink::open(Some(&w), ctx.name, &ctx.dir, config, resume_step.is_some(), None, steps as u64)?
        {
            sinks.push(Box::new(sink));
        }
    }
    Ok(sinks)
}
