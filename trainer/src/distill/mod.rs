//! Distillation: a teacher's reasoning moved into a student, three ways (the `distill` stage
//! kind, `stages/distill.rs`, wires them to a pipeline):
//!
//! - `sft`: next-token loss on teacher-written sequences (R1-Distill's method);
//! - `kd`: a divergence between the teacher's and the student's next-token distributions at
//!   every completion position of teacher-generated sequences, the teacher's distribution
//!   computed online or read from a top-k cache (`cache.rs`);
//! - `on_policy`: each step the student samples completions, the teacher scores every token
//!   and the student minimises the per-token divergence (reverse KL by default: GKD with
//!   lambda = 1); `lambda` < 1 fills that share of each batch with teacher sequences instead.
//!
//! One optimizer step = `batch_size` sequences, the loss a mean over their completion
//! tokens. Data order is a pure function of (seed, step), and on-policy samples are seeded
//! by the step, so a run resumed from a checkpoint (weights + optimizer moments) reaches
//! bit-identical weights on CPU.

pub mod cache;
pub mod loss;

use crate::data::Cursor;
use crate::lm::{LmCfg, LmExample};
use crate::metrics::{Row, Sink};
use crate::optim::{lr_at, AdamW};
use anyhow::{bail, Context, Result};
use cache::Cache;
use loss::{Divergence, Tail, TeacherDist};
use rollout::folder::Policy;
use rollout::generate::SamplingParams;
use rollout::pool::{mix_seed, RolloutPool};
use rollout::CausalLm;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Sft,
    Kd,
    OnPolicy,
}

/// A right-padded batch and where its completion positions are.
pub struct Packed {
    pub input: Tensor,
    pub attn: Tensor,
    /// Flat indices (row * T + t) of the positions predicting completion tokens, in order.
    pub at: Tensor,
    /// The completion tokens they predict [P].
    pub targets: Tensor,
    /// Completion positions per row.
    pub counts: Vec<i64>,
    /// Real (non-padding) tokens in the batch.
    pub tokens: usize,
}

/// Packs sequences (cut at `max_len`) into a right-padded batch.
pub fn pack(seqs: &[&LmExample], max_len: usize, device: Device) -> Packed {
    let t = seqs.iter().map(|e| e.ids.len().min(max_len)).max().unwrap_or(1).max(2);
    let n = seqs.len();
    let mut ids = vec![0i64; n * t];
    let mut attn = vec![0i64; n * t];
    let (mut at, mut targets, mut counts) = (vec![], vec![], vec![]);
    let mut tokens = 0;
    for (r, e) in seqs.iter().enumerate() {
        let len = e.ids.len().min(max_len);
        tokens += len;
        let mut c = 0;
        for j in 0..len {
            ids[r * t + j] = e.ids[j];
            attn[r * t + j] = 1;
            // Token j is predicted at position j - 1.
            if j >= 1 && j >= e.loss_from {
                at.push((r * t + j - 1) as i64);
                targets.push(e.ids[j]);
                c += 1;
            }
        }
        counts.push(c);
    }
    Packed {
        input: Tensor::from_slice(&ids).view([n as i64, t as i64]).to_device(device),
        attn: Tensor::from_slice(&attn).view([n as i64, t as i64]).to_device(device),
        at: Tensor::from_slice(&at).to_device(device),
        targets: Tensor::from_slice(&targets).to_device(device),
        counts,
        tokens,
    }
}

/// Logits [P, vocab] of `model` at the completion positions of a packed batch (the first
/// `vocab` columns: padding rows some checkpoints carry beyond the tokenizer are left out).
pub fn completion_logits(model: &CausalLm, p: &Packed, vocab: i64) -> Tensor {
    let positions = rollout::model::positions_from_mask(&p.attn);
    let h = model.forward_hidden(&p.input, &positions, &p.attn.to_kind(Kind::Bool), None);
    let hs = h.size();
    let h = h.reshape([hs[0] * hs[1], hs[2]]).index_select(0, &p.at);
    model.logits(&h).narrow(1, 0, vocab)
}

/// Parameters of a model (a tied embedding counted once).
pub fn param_count(p: &Policy) -> f64 {
    p.named_tensors().values().map(|t| t.numel()).sum::<usize>() as f64
}

/// Sequences sampled from `pool`: `n` completions of every prompt (prompt ids + completion
/// ids, EOS included when it ended the sample), seeded by `seed`. Also the tokens processed.
pub fn sample_sequences(
    pool: &RolloutPool,
    prompts: &[Vec<i64>],
    n: usize,
    params: &SamplingParams,
    seed: u64,
) -> Result<(Vec<LmExample>, usize)> {
    sample_sequences_from(pool, prompts, 0, n, params, seed)
}

/// [`sample_sequences`] for prompts that are entries `first..` of a larger call (a
/// data-parallel rank's share): each sample gets the seed it has in the whole call.
pub fn sample_sequences_from(
    pool: &RolloutPool,
    prompts: &[Vec<i64>],
    first: usize,
    n: usize,
    params: &SamplingParams,
    seed: u64,
) -> Result<(Vec<LmExample>, usize)> {
    let (groups, _) = pool.generate_groups_from(prompts, first, n, params, seed, None)?;
    let mut out = vec![];
    let mut tokens = 0;
    for (p, g) in prompts.iter().zip(groups) {
        for c in g {
            let mut ids = p.clone();
            ids.extend(&c.token_ids);
            tokens += ids.len();
            out.push(LmExample { ids, loss_from: p.len() });
        }
    }
    Ok((out, tokens))
}

/// The distillation settings of a run (what the stage's config resolves to).
#[derive(Debug, Clone)]
pub struct Settings {
    pub method: Method,
    pub divergence: Divergence,
    pub beta: f64,
    pub temperature: f64,
    pub tail: Tail,
    /// Share of each on-policy batch sampled from the student.
    pub lambda: f64,
    pub sampling: SamplingParams,
    pub train: LmCfg,
    pub seed: u64,
    /// Compared distributions cover token ids 0..vocab.
    pub vocab: i64,
}

/// Held-out measurement during training, every `every` steps (and at step 0 and the end):
/// the student samples each prompt once (fixed seed, the stage's sampling) and the samples
/// are scored with `rewards` (accuracy, format, ...); with a teacher, the student samples
/// `prompts` again and the teacher scores each token (KL, argmax agreement).
pub struct HeldOut {
    pub examples: Vec<crate::data::Example>,
    pub prompts: Vec<Vec<i64>>,
    pub template: String,
    pub rewards: Vec<rewards::RewardSpec>,
    pub every: usize,
}

/// What a run trains on.
pub struct Job<'a> {
    pub settings: Settings,
    pub student: &'a Policy,
    pub teacher: Option<&'a Policy>,
    /// Teacher (or trace) sequences: all of a `sft` / `kd` batch, 1 - lambda of an
    /// `on_policy` one.
    pub sequences: &'a [LmExample],
    /// Teacher distributions of `sequences` from disk (`kd` only).
    pub cache: Option<&'a Cache>,
    /// Prompts the student samples (`on_policy`).
    pub prompts: &'a [Vec<i64>],
    /// The student's rollout pool (`on_policy`, held-out measurement): synced after every step.
    pub pool: Option<&'a RolloutPool>,
    pub eval: Option<HeldOut>,
    /// FLOPs already spent before training (teacher sampling, the cache), counted in the
    /// cumulative `flops/total` metric.
    pub setup_flops: f64,
    /// A data-parallel launch's process group: each rank trains on a contiguous share of
    /// every batch (its teacher sequences and its on-policy samples), each share's loss
    /// weighted by its part of the batch's positions, and the gradients are summed.
    pub dist: Option<&'a ponder_dist::ProcessGroup>,
}

/// Where checkpoints go: `<dir>/checkpoints/step-N/` in Hugging Face layout (the student's
/// config, weights and tokenizer files, plus optimizer moments and the step).
pub struct Checkpoints {
    pub dir: PathBuf,
    /// Model folder whose tokenizer and generation files are copied into each checkpoint.
    pub side_files: PathBuf,
    pub keep_last: usize,
}

/// What one step's forward and backward give the rest of the step.
struct Pass {
    lv: f64,
    stats: StepStats,
    has_teacher: bool,
    tokens: usize,
    gen_len: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
struct Counters {
    student_tokens: f64,
    teacher_tokens: f64,
    generated_tokens: f64,
    flops: f64,
}

const COUNTERS: &str = "distill_state.json";

/// How [`train`] ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub steps_done: usize,
    pub interrupted: bool,
    pub flops: f64,
}

/// Sums of one step's per-position figures.
struct StepStats {
    forward_kl: f64,
    reverse_kl: f64,
    agree: f64,
    positions: f64,
}

/// Mean per-token figures of the student's samples on held-out prompts, scored by the
/// teacher: the measured teacher-student gap.
#[derive(Debug, Clone, Serialize)]
pub struct KlReport {
    pub forward_kl: f64,
    pub reverse_kl: f64,
    pub agreement: f64,
    pub mean_length: f64,
    /// Mean reverse KL of each sequence (for paired comparisons).
    pub per_sequence_reverse_kl: Vec<f64>,
}

/// The student (through `pool`, which must hold its weights) samples one completion per
/// prompt with `params` and `seed`; the teacher scores each token at temperature `temp`.
pub fn measure_kl(
    teacher: &Policy,
    student: &Policy,
    pool: &RolloutPool,
    prompts: &[Vec<i64>],
    params: &SamplingParams,
    seed: u64,
    temp: f64,
    vocab: i64,
) -> Result<KlReport> {
    let (seqs, _) = sample_sequences(pool, prompts, 1, params, seed)?;
    let (mut f, mut r, mut a, mut n) = (0.0, 0.0, 0.0, 0.0);
    let mut per = vec![];
    for chunk in seqs.chunks(32) {
        let refs: Vec<&LmExample> = chunk.iter().collect();
        let p = pack(&refs, usize::MAX, student.model.device());
        let sc = tch::no_grad(|| {
            let t = (completion_logits(&teacher.model, &p, vocab).to_kind(Kind::Float) / temp).log_softmax(-1, Kind::Float);
            let zs = completion_logits(&student.model, &p, vocab);
            loss::score(&TeacherDist::Full(&t), &zs, temp, Divergence::ReverseKl, 0.0)
        });
        f += f64::try_from(sc.forward_kl.sum(Kind::Double))?;
        r += f64::try_from(sc.reverse_kl.sum(Kind::Double))?;
        a += f64::try_from(sc.agree.sum(Kind::Double))?;
        n += p.counts.iter().sum::<i64>() as f64;
        let rk: Vec<f64> = Vec::try_from(sc.reverse_kl.to_kind(Kind::Double))?;
        let mut off = 0;
        for &c in &p.counts {
            let c = c as usize;
            per.push(rk[off..off + c].iter().sum::<f64>() / c.max(1) as f64);
            off += c;
        }
    }
    let n = n.max(1.0);
    Ok(KlReport {
        forward_kl: f / n,
        reverse_kl: r / n,
        agreement: a / n,
        mean_length: seqs.iter().map(|s| (s.ids.len() - s.loss_from) as f64).sum::<f64>() / seqs.len().max(1) as f64,
        per_sequence_reverse_kl: per,
    })
}

/// The `k`-th element of an endless stream of epoch permutations of `n` items.
fn stream(seed: u64, n: usize, from: usize, k: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(k);
    let mut epoch = u64::MAX;
    let mut order = vec![];
    for g in from..from + k {
        let e = (g / n) as u64;
        if e != epoch {
            order = Cursor::order(seed, e, n);
            epoch = e;
        }
        out.push(order[g % n]);
    }
    out
}

fn save(ck: &Checkpoints, student: &Policy, opt: &AdamW, step: usize, counters: Counters) -> Result<PathBuf> {
    let state = crate::checkpoint::TrainerState {
        step: step as u64,
        cursor: Cursor::start(),
        optimizer_step: opt.step,
        bad_steps: 0,
        reference_saved: false,
        wandb_run_id: None,
        world_size: 1,
    };
    crate::checkpoint::write(&ck.dir, &state, ck.keep_last, |tmp| {
        student.save_weights(tmp, Kind::Float, None)?;
        crate::checkpoint::copy_side_files(&ck.side_files, tmp)?;
        opt.save(&crate::checkpoint::place(tmp, crate::checkpoint::OPTIMIZER)?)?;
        std::fs::write(tmp.join(COUNTERS), serde_json::to_string(&counters)?)?;
        Ok(())
    })
}

/// The newest checkpoint of a run folder (`<dir>/checkpoints/step-N`), if any.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    crate::checkpoint::latest(dir)
}

/// Trains `job.student` for `train.steps` steps, logging to `sinks`. With `ck`, resumes from
/// the newest checkpoint there, saves one every `train.save_every` steps and when `stop` is
/// raised.
pub fn train(job: &Job, sinks: &mut [Box<dyn Sink>], quiet: bool, ck: Option<&Checkpoints>, stop: &AtomicBool) -> Result<Outcome> {
    let s = &job.settings;
    let cfg = &s.train;
    let device = job.student.model.device();
    let mut opt = AdamW::new(job.student.named_tensors(), &cfg.optim());
    let n_student = if s.method == Method::OnPolicy { (s.lambda * cfg.batch_size as f64).round() as usize } else { 0 };
    let n_fixed = cfg.batch_size - n_student;
    if n_fixed > 0 && job.sequences.is_empty() {
        bail!("no teacher sequences to train on");
    }
    if n_student > 0 && (job.prompts.is_empty() || job.pool.is_none()) {
        bail!("on-policy distillation needs prompts and the student's rollout pool");
    }
    if s.method != Method::Sft && job.teacher.is_none() && job.cache.is_none() {
        bail!("{:?} needs a teacher", s.method);
    }
    let n_student_params = param_count(job.student);
    let n_teacher_params = job.teacher.map(param_count).unwrap_or(0.0);
    let mut counters = Counters { flops: job.setup_flops, ..Default::default() };
    let mut start = 0;
    if let Some((_, dir)) = ck.map(|c| latest_checkpoint(&c.dir)).transpose()?.flatten() {
        let st = crate::checkpoint::read_state(&dir)?;
        let w = rollout::model::weights::load_file(&dir.join("model.safetensors"))
            .with_context(|| format!("reading checkpoint {}", dir.display()))?;
        job.student.copy_from(&w)?;
        opt.load(&crate::checkpoint::find(&dir, crate::checkpoint::OPTIMIZER), st.optimizer_step)?;
        counters = serde_json::from_str(&std::fs::read_to_string(dir.join(COUNTERS))?)
            .with_context(|| format!("{}: corrupt {COUNTERS}", dir.display()))?;
        start = st.step as usize;
        if !quiet {
            eprintln!("  resuming at step {start} from {}", dir.display());
        }
    }
    let sync = |opt_pool: Option<&RolloutPool>| -> Result<()> {
        if let Some(p) = opt_pool {
            p.sync_weights(&job.student.named_tensors())?;
        }
        Ok(())
    };
    sync(job.pool)?;
    let t0 = Instant::now();
    let mut outcome = Outcome { steps_done: cfg.steps, interrupted: false, flops: 0.0 };
    let eval_row = |step: usize| -> Result<Option<Row>> {
        let (Some(ev), Some(pool)) = (&job.eval, job.pool) else { return Ok(None) };
        sync(Some(pool))?;
        let seed = mix_seed(s.seed, u64::MAX);
        let spec = crate::eval::EvalSpec {
            template: &ev.template,
            params: s.sampling.clone(),
            samples: 1,
            seed,
            rewards: ev.rewards.clone(),
            think: Default::default(),
            best_of: vec![],
            dist: job.dist,
        };
        let rep = crate::eval::evaluate(&job.student.dir, &ev.examples, &spec, Some(pool), device, Kind::Float)?;
        let mut row = Row::new();
        row.insert("eval/accuracy".into(), json!(rep.accuracy));
        row.insert("eval/format".into(), json!(rep.format_rate));
        row.insert("eval/language_consistency".into(), json!(rep.language_consistency_rate));
        row.insert("eval/length".into(), json!(rep.mean_completion_tokens));
        let mut line = format!("accuracy {:.3}", rep.accuracy);
        if let Some(teacher) = job.teacher {
            let r = measure_kl(teacher, job.student, pool, &ev.prompts, &s.sampling, seed, s.temperature, s.vocab)?;
            row.insert("eval/kl_reverse".into(), json!(r.reverse_kl));
            row.insert("eval/kl_forward".into(), json!(r.forward_kl));
            row.insert("eval/agreement".into(), json!(r.agreement));
            line += &format!(", reverse KL {:.4}, forward KL {:.4}, argmax agreement {:.3}", r.reverse_kl, r.forward_kl, r.agreement);
        }
        if !quiet {
            eprintln!("  held-out at step {step}: {line}");
        }
        Ok(Some(row))
    };
    if start == 0 {
        if let Some(row) = eval_row(0)? {
            for sk in sinks.iter_mut() {
                sk.log(0, &row)?;
            }
        }
    }
    let dist = job.dist;
    // Every rank resumes from the checkpoint; rank 0 alone writes them.
    let ck_w = ck.filter(|_| dist.is_none_or(|d| d.rank == 0));
    let share = |n: usize| crate::train::share(dist, n);
    for step in start..cfg.steps {
        if crate::train::stop_agreed(stop, dist)? {
            if let Some(c) = ck_w {
                opt.zero_grad();
                save(c, job.student, &opt, step, counters)?;
            }
            outcome.steps_done = step;
            outcome.interrupted = true;
            break;
        }
        // 1-3 run under a guard: nothing in them touches the weights (the update follows),
        // so a failure (libtorch's out-of-memory panics) leaves the student at the end of
        // the previous step, which is saved before the error is returned.
        let before = counters;
        opt.zero_grad();
        let pass = rollout::error::catch_quietly(|| -> Result<Pass> {
            // 1. The batch: teacher sequences, then the student's fresh samples.
            // In a data-parallel launch, this rank's contiguous share of both parts.
            let all_fixed = if n_fixed > 0 { stream(mix_seed(s.seed, 1), job.sequences.len(), step * n_fixed, n_fixed) } else { vec![] };
            let (a, b) = share(all_fixed.len());
            let fixed = all_fixed[a..b].to_vec();
            let sampled;
            let mut rows: Vec<&LmExample> = fixed.iter().map(|&i| &job.sequences[i]).collect();
            let mut gen_len = 0.0;
            if n_student > 0 {
                let pi = stream(mix_seed(s.seed, 2), job.prompts.len(), step * n_student, n_student);
                let (a, b) = share(pi.len());
                let prompts: Vec<Vec<i64>> = pi[a..b].iter().map(|&i| job.prompts[i].clone()).collect();
                let seed = mix_seed(s.seed, 0xD157 + step as u64);
                let (seqs, tok) = sample_sequences_from(job.pool.unwrap(), &prompts, a, 1, &s.sampling, seed)?;
                sampled = seqs;
                counters.generated_tokens += tok as f64;
                counters.flops += 2.0 * n_student_params * tok as f64;
                gen_len = sampled.iter().map(|e| (e.ids.len() - e.loss_from) as f64).sum::<f64>();
                rows.extend(sampled.iter());
            }
            if rows.is_empty() {
                // A rank with no rows this step (a batch smaller than the world) still joins
                // the collectives below.
                let none = StepStats { forward_kl: 0.0, reverse_kl: 0.0, agree: 0.0, positions: 0.0 };
                if let Some(pg) = dist {
                    // Its part of the positions count the other ranks sum before their loss.
                    pg.all_reduce_f64(&mut [0.0])?;
                }
                return Ok(Pass { lv: 0.0, stats: none, has_teacher: job.teacher.is_some() || job.cache.is_some(), tokens: 0, gen_len });
            }
            let packed = pack(&rows, cfg.max_len, device);
            // 2. Teacher distributions (no gradient), online or from the cache.
            let cached;
            let teacher_lp;
            let teacher = if s.method == Method::Sft && job.teacher.is_none() {
                None
            } else if let (Some(c), 0) = (job.cache, n_student) {
                cached = c.rows(&fixed);
                Some(TeacherDist::Cached(&cached, s.tail))
            } else {
                let t = job.teacher.unwrap();
                teacher_lp = tch::no_grad(|| {
                    (completion_logits(&t.model, &packed, s.vocab).to_kind(Kind::Float) / s.temperature).log_softmax(-1, Kind::Float)
                });
                counters.teacher_tokens += packed.tokens as f64;
                counters.flops += 2.0 * n_teacher_params * packed.tokens as f64;
                Some(TeacherDist::Full(&teacher_lp))
            };
            // 3. Student forward, loss, backward, update.
            if cfg.fail_alloc_at_step == Some(step + 1) {
                let _ = Tensor::empty([1i64 << 44], (Kind::Float, device));
            }
            let zs = completion_logits(&job.student.model, &packed, s.vocab);
            let st = step_loss(s, teacher.as_ref(), &zs, &packed.targets)?;
            // This rank's mean, weighted by its share of the batch's positions.
            let loss = match dist {
                Some(pg) => {
                    let mut v = [st.1.positions];
                    pg.all_reduce_f64(&mut v)?;
                    &st.0 * (st.1.positions / v[0].max(1.0))
                }
                None => st.0.shallow_clone(),
            };
            let lv = f64::try_from(&loss)?;
            if !lv.is_finite() {
                bail!("distillation loss is not finite at step {} ({lv}); lower the learning rate or check the teacher", step + 1);
            }
            loss.backward();
            Ok(Pass { lv, stats: st.1, has_teacher: teacher.is_some(), tokens: packed.tokens, gen_len })
        });
        let Pass { mut lv, mut stats, has_teacher, mut tokens, mut gen_len } = match pass {
            Ok(Ok(p)) => p,
            failed => {
                counters = before;
                let cause = crate::train::failure_cause(failed);
                let hint = crate::train::oom_hint(&cause, "train.batch_size or train.max_len");
                let saved = match ck_w {
                    Some(c) if step > start => {
                        opt.zero_grad();
                        match save(c, job.student, &opt, step, counters) {
                            Ok(_) => format!("saved checkpoint step-{step}, the last completed step; resuming the stage continues from it"),
                            Err(e) => format!("saving step {step} failed too: {e:#}"),
                        }
                    }
                    Some(_) if step > 0 => format!("checkpoint step-{step} holds the last completed step"),
                    _ => "no checkpoint was written".into(),
                };
                bail!("distillation step {} failed: {cause}\n{saved}{hint}", step + 1);
            }
        };
        if let Some(pg) = dist {
            // The batch's gradient, loss and statistics are the sums of the ranks' parts.
            let params = job.student.named_tensors();
            crate::optim::define_grads(&params);
            crate::optim::all_reduce_grads(&params, pg)?;
            let d = [
                counters.generated_tokens - before.generated_tokens,
                counters.teacher_tokens - before.teacher_tokens,
                counters.flops - before.flops,
            ];
            let mut v = [lv, stats.forward_kl, stats.reverse_kl, stats.agree, stats.positions, tokens as f64, gen_len, d[0], d[1], d[2]];
            pg.all_reduce_f64(&mut v)?;
            lv = v[0];
            stats = StepStats { forward_kl: v[1], reverse_kl: v[2], agree: v[3], positions: v[4] };
            tokens = v[5] as usize;
            gen_len = v[6];
            counters.generated_tokens = before.generated_tokens + v[7];
            counters.teacher_tokens = before.teacher_tokens + v[8];
            counters.flops = before.flops + v[9];
        }
        gen_len /= n_student.max(1) as f64;
        let gn = opt.grad_norm();
        opt.clip_grad_norm(gn, cfg.max_grad_norm);
        let lr = lr_at(&cfg.optim(), step as u64, cfg.steps as u64);
        opt.step(lr);
        opt.zero_grad();
        counters.student_tokens += tokens as f64;
        counters.flops += 6.0 * n_student_params * tokens as f64;
        if n_student > 0 {
            sync(job.pool)?;
        }
        // 4. Metrics, held-out measurement, checkpoint.
        let done = step + 1;
        let mut row = Row::new();
        if done % cfg.log_every.max(1) == 0 || done == cfg.steps {
            let np = stats.positions.max(1.0);
            row.insert("loss".into(), json!(lv));
            if has_teacher {
                row.insert("kl".into(), json!(stats.forward_kl / np));
                row.insert(
                    "kl_reverse".into(),
                    if (stats.reverse_kl / np).is_finite() { json!(stats.reverse_kl / np) } else { json!(null) },
                );
                row.insert("agreement".into(), json!(stats.agree / np));
            }
            row.insert("grad_norm".into(), json!(gn));
            row.insert("learning_rate".into(), json!(lr));
            row.insert("num_tokens".into(), json!(stats.positions));
            if n_student > 0 {
                row.insert("on_policy/sequences".into(), json!(n_student));
                row.insert("on_policy/mean_length".into(), json!(gen_len));
            }
            row.insert("tokens/student_train".into(), json!(counters.student_tokens));
            row.insert("tokens/teacher_forward".into(), json!(counters.teacher_tokens));
            row.insert("tokens/student_generated".into(), json!(counters.generated_tokens));
            row.insert("flops/total".into(), json!(counters.flops));
            row.insert("time/elapsed_s".into(), json!(t0.elapsed().as_secs_f64()));
            if !quiet && done % (cfg.log_every.max(1) * 10) == 0 {
                let kl =
                    if has_teacher { format!(" kl {:.4} agreement {:.3}", stats.forward_kl / np, stats.agree / np) } else { String::new() };
                eprintln!("  step {done}/{}: loss {lv:.4}{kl}", cfg.steps);
            }
        }
        if let Some(ev) = &job.eval {
            if ev.every > 0 && (done % ev.every == 0 || done == cfg.steps) {
                if let Some(r) = eval_row(done)? {
                    row.extend(r);
                }
            }
        }
        if !row.is_empty() {
            for sk in sinks.iter_mut() {
                sk.log(done as u64, &row)?;
            }
        }
        if let (Some(c), true) = (ck_w, cfg.save_every > 0 && done % cfg.save_every == 0 && done < cfg.steps) {
            save(c, job.student, &opt, done, counters)?;
        }
    }
    for sk in sinks.iter_mut() {
        sk.finish(0)?;
    }
    outcome.flops = counters.flops;
    Ok(outcome)
}

/// The mean loss over a batch's completion positions, and the step's statistics.
fn step_loss(s: &Settings, teacher: Option<&TeacherDist>, zs: &Tensor, targets: &Tensor) -> Result<(Tensor, StepStats)> {
    let positions = zs.size()[0] as f64;
    let nll = || -(zs.to_kind(Kind::Float).log_softmax(-1, Kind::Float).gather(-1, &targets.unsqueeze(-1), false)).mean(Kind::Float);
    let Some(t) = teacher else {
        let l = nll();
        return Ok((l, StepStats { forward_kl: 0.0, reverse_kl: 0.0, agree: 0.0, positions }));
    };
    let sc = loss::score(t, zs, s.temperature, s.divergence, s.beta);
    let l = if s.method == Method::Sft { nll() } else { sc.loss.mean(Kind::Float) };
    let sum = |x: &Tensor| f64::try_from(x.detach().sum(Kind::Double)).unwrap_or(f64::NAN);
    Ok((l, StepStats { forward_kl: sum(&sc.forward_kl), reverse_kl: sum(&sc.reverse_kl), agree: sum(&sc.agree), positions }))
}
