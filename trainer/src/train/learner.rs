//! The learner: a rollout [`Batch`] becomes passes (rows grouped by length, each shared
//! prompt computed once, under the token cap) and clipped-surrogate updates.

use super::Trainer;
use crate::grpo;
use crate::optim::lr_at;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// A rollout batch ready for the learner.
pub(super) struct Batch {
    /// The step's prompts (token ids), and which one each row continues.
    pub(super) prompts: Vec<Vec<i64>>,
    pub(super) row_prompt: Vec<usize>,
    /// [N, C] completion ids (0 where padded), real-token flags, loss mask, rollout log-probs.
    pub(super) targets: Tensor,
    pub(super) valid: Tensor,
    pub(super) mask: Tensor,
    pub(super) old: Tensor,
    pub(super) adv: Tensor,
    /// Per row: prompt and completion lengths (for planning the learner's passes).
    pub(super) prompt_lens: Vec<i64>,
    pub(super) comp_lens: Vec<i64>,
}

impl Batch {
    /// N, the rows (completions) in the batch.
    fn rows(&self) -> usize {
        self.adv.size()[0] as usize
    }
}

/// One forward/backward pass (a micro-batch): batch rows of similar completion length and
/// the prompts they continue, each prompt computed once for all its rows in the pass.
struct Pass {
    /// The rows (indices into the batch) in order of completion length: i64 [n].
    rows: Tensor,
    /// The distinct prompts (indices into `Batch::prompts`, ascending), and each row's index
    /// among them: i64 [n].
    prompts: Vec<usize>,
    row_prefix: Tensor,
    /// Longest prompt and completion in the pass (the two streams' widths); the completion
    /// width is at least 1.
    prompt_width: i64,
    completion_width: i64,
    /// The rows' prompt + completion tokens (a shared prompt counted once per row), and the
    /// real tokens the pass computes (a shared prompt once).
    tokens: usize,
    computed: usize,
}

impl Pass {
    /// The pass over batch rows `rows` (in the order given), its index tensors on `device`.
    fn new(b: &Batch, rows: &[usize], device: Device) -> Pass {
        let mut prompts: Vec<usize> = rows.iter().map(|&r| b.row_prompt[r]).collect();
        prompts.sort_unstable();
        prompts.dedup();
        let row_prefix: Vec<i64> = rows.iter().map(|&r| prompts.binary_search(&b.row_prompt[r]).unwrap() as i64).collect();
        let rows_i: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let completion_tokens: i64 = rows.iter().map(|&r| b.comp_lens[r]).sum();
        let prompt_tokens: i64 = rows.iter().map(|&r| b.prompt_lens[r]).sum();
        let distinct_prompt_tokens: usize = prompts.iter().map(|&g| b.prompts[g].len()).sum();
        Pass {
            rows: Tensor::from_slice(&rows_i).to_device(device),
            prompt_width: prompts.iter().map(|&g| b.prompts[g].len() as i64).max().unwrap_or(1),
            completion_width: rows.iter().map(|&r| b.comp_lens[r].max(1)).max().unwrap_or(1),
            tokens: (completion_tokens + prompt_tokens) as usize,
            computed: completion_tokens as usize + distinct_prompt_tokens,
            prompts,
            row_prefix: Tensor::from_slice(&row_prefix).to_device(device),
        }
    }

    /// Positions this pass computes, padding included.
    fn positions(&self) -> i64 {
        self.rows.size()[0] * self.completion_width + self.prompts.len() as i64 * self.prompt_width
    }

    /// This pass's rows of a per-token batch tensor [N, C], cut to its width: [n, completion_width].
    fn select(&self, t: &Tensor) -> Tensor {
        t.index_select(0, &self.rows).narrow(1, 0, self.completion_width)
    }
}

/// One optimizer update's share of the batch: rows `start..start + len`, and the passes whose
/// gradients accumulate into it.
struct Minibatch {
    start: usize,
    len: usize,
    passes: Vec<Pass>,
}

/// A pass's fixed cost in positions, when choosing how to group rows: small passes run
/// matmuls below their efficient size and add per-pass dispatches.
const PASS_OVERHEAD: i64 = 256;

/// Splits the batch into minibatches of `minibatch_size` rows (0 = the whole batch; the last
/// holds the rest) and plans each one's passes: at most ceil(rows / `grad_accumulation`) rows
/// a pass, under the token `budget` (see [`plan_passes`]).
fn plan_minibatches(b: &Batch, minibatch_size: usize, grad_accumulation: usize, budget: i64, device: Device) -> Vec<Minibatch> {
    let n = b.rows();
    let mb = if minibatch_size == 0 { n } else { minibatch_size.min(n) };
    let accum = grad_accumulation.max(1);
    (0..n)
        .step_by(mb)
        .map(|start| {
            let len = mb.min(n - start);
            Minibatch { start, len, passes: plan_passes(b, start, len, len.div_ceil(accum), budget, device) }
        })
        .collect()
}

/// Splits minibatch rows `start..start + len` into passes of at most `max_rows` rows. Rows
/// are sorted by completion length; a pass computes each distinct prompt among its rows once
/// (GRPO's G completions share one) and its completions cut to the longest. With a token
/// `budget` (> 0) the grouping of the sorted rows is the one that computes the fewest
/// positions (plus [`PASS_OVERHEAD`] a pass) with every pass under the budget (a row longer
/// than the budget goes alone); without one, consecutive runs of `max_rows` rows.
fn plan_passes(b: &Batch, start: usize, len: usize, max_rows: usize, budget: i64, device: Device) -> Vec<Pass> {
    group_rows(b, start, len, max_rows, budget).iter().map(|rows| Pass::new(b, rows, device)).collect()
}

/// The grouping of [`plan_passes`], before any tensor is built: each pass's rows (indices
/// into the batch), passes and rows in order of completion length.
fn group_rows(b: &Batch, start: usize, len: usize, max_rows: usize, budget: i64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (start..start + len).collect();
    order.sort_by_key(|&r| (b.comp_lens[r], r));
    let cl: Vec<i64> = order.iter().map(|&r| b.comp_lens[r].max(1)).collect();
    let m = order.len();
    // cut[j]: where the last pass of the best grouping of the first j sorted rows starts.
    let mut cut = vec![0usize; m + 1];
    if budget > 0 {
        let mut best = vec![i64::MAX; m + 1];
        best[0] = 0;
        let mut seen = vec![0u32; b.prompts.len()];
        for j in 1..=m {
            let (mut distinct, mut p) = (0i64, 0i64);
            for x in seen.iter_mut() {
                *x = 0;
            }
            for i in (0..j).rev() {
                let n = (j - i) as i64;
                let g = b.row_prompt[order[i]];
                if seen[g] == 0 {
                    distinct += 1;
                }
                seen[g] += 1;
                p = p.max(b.prompt_lens[order[i]]);
                // Completions are sorted, so the pass's width is its last row's.
                let positions = n * cl[j - 1] + distinct * p;
                if n as usize > max_rows || (n > 1 && positions > budget) {
                    break; // only grows as i moves left
                }
                let cost = best[i].saturating_add(positions + PASS_OVERHEAD);
                if cost < best[j] {
                    (best[j], cut[j]) = (cost, i);
                }
            }
        }
    } else {
        for (j, c) in cut.iter_mut().enumerate().skip(1) {
            *c = (j - 1) / max_rows * max_rows;
        }
    }
    let mut bounds = vec![m];
    while let Some(&j) = bounds.last() {
        if j == 0 {
            break;
        }
        bounds.push(cut[j]);
    }
    bounds.reverse();
    bounds.windows(2).map(|w| order[w[0]..w[1]].to_vec()).collect()
}

/// A model's scores of a pass's completion tokens: log-probs and (when asked) entropies,
/// [n, completion_width] each.
struct TokenScores {
    logp: Tensor,
    entropy: Option<Tensor>,
}

/// Sums over a step's passes: the passes' losses, and the per-token figures weighted by each
/// pass's loss tokens (divided by `tokens` at the end).
#[derive(Default)]
struct Sums {
    loss: f64,
    tokens: f64,
    kl: f64,
    entropy: f64,
    clip_low: f64,
    clip_high: f64,
}

impl Trainer {
    /// Completion-token log-probs (and entropies) of `model` for one pass.
    /// Each distinct prompt goes through the model once; its rows attend to it.
    fn logprobs(&self, model: &rollout::CausalLm, b: &Batch, m: &Pass, entropy: bool) -> TokenScores {
        let (u, tp, tc) = (m.prompts.len(), m.prompt_width, m.completion_width);
        let mut ids = vec![0i64; u * tp as usize];
        let mut on = vec![false; u * tp as usize];
        for (k, &g) in m.prompts.iter().enumerate() {
            let pr = &b.prompts[g];
            let off = k * tp as usize + tp as usize - pr.len(); // left-padded
            ids[off..off + pr.len()].copy_from_slice(pr);
            on[off..off + pr.len()].iter_mut().for_each(|x| *x = true);
        }
        let d = self.device;
        let prefix = Tensor::from_slice(&ids).view([u as i64, tp]).to_device(d);
        let prefix_valid = Tensor::from_slice(&on).view([u as i64, tp]).to_device(d);
        let (targets, valid) = (m.select(&b.targets), m.select(&b.valid));
        let (hp, hs) = model.forward_prefixed(&prefix, &prefix_valid, &m.row_prefix, &targets, &valid);
        // Completion token 0 is predicted from its prompt's last position, token j from j - 1.
        let first = hp.select(1, tp - 1).index_select(0, &m.row_prefix).unsqueeze(1);
        let h = Tensor::cat(&[first, hs.narrow(1, 0, tc - 1)], 1);
        let (logp, entropy) = grpo::chunked_logprobs(&h, &model.lm_head, &targets, self.recipe.rollout.temperature, self.recipe.grpo.logprob_chunk, entropy);
        TokenScores { logp, entropy }
    }

    pub(super) fn learn(&mut self, b: &Batch) -> Result<LearnStats> {
        let cfg = self.recipe.grpo.clone();
        let eps_high = cfg.epsilon_high.unwrap_or(cfg.epsilon);
        // Passes per minibatch: no more than ceil(rows / grad_accumulation) rows each, under
        // the token cap, rows grouped by length. Every loss type except bnpo is normalised by
        // minibatch totals, so the passes sum to the whole minibatch's loss whatever their sizes.
        let minibatches = plan_minibatches(b, cfg.minibatch_size, self.recipe.optim.grad_accumulation, cfg.max_tokens_per_micro_batch as i64, self.device);
        // Reference log-probs once per batch (no grad), pass by pass: [minibatch][pass].
        let ref_logp: Option<Vec<Vec<Tensor>>> = self.reference.as_ref().map(|r| {
            tch::no_grad(|| minibatches.iter().map(|mb| mb.passes.iter().map(|m| self.logprobs(&r.model, b, m, false).logp).collect()).collect())
        });
        let mut st = LearnStats::default();
        let mut sums = Sums::default();
        let mut norms = vec![];
        let total_updates = self.total_updates();
        for it in 0..cfg.num_iterations {
            for (mi, mb) in minibatches.iter().enumerate() {
                let norm = grpo::Norm {
                    tokens: f64::try_from(b.mask.narrow(0, mb.start as i64, mb.len as i64).sum(Kind::Double))?,
                    rows: mb.len as f64,
                    micro_batches: mb.passes.len(),
                    max_new_tokens: self.recipe.rollout.max_new_tokens,
                };
                st.micro_batches = st.micro_batches.max(mb.passes.len());
                self.opt.zero_grad();
                let mut finite = true;
                for (pi, m) in mb.passes.iter().enumerate() {
                    let TokenScores { logp, entropy } = self.logprobs(&self.policy.model, b, m, true);
                    let mask = m.select(&b.mask);
                    if it == 0 && mi == 0 {
                        // Before any update the learner scores the rollout's own weights: its
                        // log-probs must match what the sampler recorded (veRL logs the same
                        // check as rollout_probs_diff). A gap means the two paths disagree.
                        let valid = m.select(&b.valid).to_kind(Kind::Float);
                        let diff = (logp.detach() - m.select(&b.old)).abs() * &valid;
                        st.lp_diff_max = st.lp_diff_max.max(f64::try_from(diff.max())?);
                        st.lp_diff_sum += f64::try_from(diff.sum(Kind::Double))?;
                        st.lp_diff_n += f64::try_from(valid.sum(Kind::Double))?;
                    }
                    // mu = 1: old = current (ratio 1, no extra forward pass); else the
                    // rollout's log-probs.
                    let old = if cfg.num_iterations == 1 { logp.detach() } else { m.select(&b.old) };
                    let rl = ref_logp.as_ref().map(|r| &r[mi][pi]);
                    let tl = grpo::token_loss(&logp, &old, rl, &b.adv.index_select(0, &m.rows), cfg.epsilon, eps_high, cfg.beta);
                    let loss = grpo::aggregate(&tl.per_token, &mask, cfg.loss_type, &norm);
                    let lv = f64::try_from(&loss)?;
                    if !lv.is_finite() {
                        finite = false;
                        break;
                    }
                    loss.backward();
                    let ntok = f64::try_from(mask.sum(Kind::Double))?;
                    sums.loss += lv;
                    sums.tokens += ntok;
                    sums.kl += grpo::masked_mean(&tl.kl, &mask) * ntok;
                    sums.entropy += grpo::masked_mean(entropy.as_ref().unwrap(), &mask) * ntok;
                    sums.clip_low += grpo::masked_mean(&tl.low_clipped, &mask) * ntok;
                    sums.clip_high += grpo::masked_mean(&tl.high_clipped, &mask) * ntok;
                    st.positions += m.positions() as usize;
                    st.tokens_processed += m.tokens;
                    st.computed += m.computed;
                }
                let gn = if finite { self.opt.grad_norm() } else { f64::NAN };
                if !gn.is_finite() {
                    // Skip: never apply a non-finite update.
                    self.opt.zero_grad();
                    st.skipped += 1;
                    self.state.bad_steps += 1;
                    eprintln!("warning: step {}: non-finite loss or gradient; update skipped", self.state.step + 1);
                    continue;
                }
                self.state.bad_steps = 0;
                norms.push(gn);
                self.opt.clip_grad_norm(gn, self.recipe.optim.max_grad_norm);
                let lr = lr_at(&self.recipe.optim, self.opt.step, total_updates);
                self.opt.step(lr);
                self.opt.zero_grad();
            }
        }
        self.state.optimizer_step = self.opt.step;
        let t = sums.tokens.max(1.0);
        st.kl = sums.kl / t;
        st.entropy = sums.entropy / t;
        st.clip_low = sums.clip_low / t;
        st.clip_high = sums.clip_high / t;
        // Each pass's loss is normalised by its minibatch's totals, so the passes of one
        // minibatch sum to that minibatch's loss: the mean over minibatches and iterations.
        st.loss = sums.loss / (cfg.num_iterations * minibatches.len()).max(1) as f64;
        st.grad_norm = if norms.is_empty() { f64::NAN } else { norms.iter().sum::<f64>() / norms.len() as f64 };
        Ok(st)
    }
}

/// What [`Trainer::learn`] reports for the step's metrics row.
#[derive(Default, Debug)]
pub(super) struct LearnStats {
    pub(super) loss: f64,
    pub(super) kl: f64,
    pub(super) entropy: f64,
    pub(super) clip_low: f64,
    pub(super) clip_high: f64,
    pub(super) grad_norm: f64,
    pub(super) skipped: u64,
    /// Rows' prompt + completion tokens learned from (a shared prompt counts once per row).
    pub(super) tokens_processed: usize,
    /// Real tokens computed (a shared prompt once per pass) and positions computed, padding
    /// included.
    pub(super) computed: usize,
    pub(super) positions: usize,
    /// |learner - rollout| log-probs over the first minibatch, before its update.
    pub(super) lp_diff_max: f64,
    pub(super) lp_diff_sum: f64,
    pub(super) lp_diff_n: f64,
    /// Forward/backward passes per optimizer step (after accumulation and the token cap).
    pub(super) micro_batches: usize,
}
