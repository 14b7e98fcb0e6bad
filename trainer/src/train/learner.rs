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
    /// Rows sampled with older weights than the learner's (one-step-off overlap): the PPO
    /// ratio's old policy is then the sampler's log-probs even at mu = 1.
    pub(super) rollout_old: bool,
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
    engine_mismatch: f64,
    engine_capped: f64,
    engine_tokens: f64,
}

/// The hidden states that predict a pass's completion tokens [n, completion_width, H]:
/// completion token 0 is predicted from its prompt's last position, token j from j - 1.
fn completion_hidden(hp: &Tensor, hs: &Tensor, m: &Pass) -> Tensor {
    let first = hp.select(1, m.prompt_width - 1).index_select(0, &m.row_prefix).unsqueeze(1);
    Tensor::cat(&[first, hs.narrow(1, 0, m.completion_width - 1)], 1)
}

impl Trainer {
    /// A pass's model inputs: the distinct prompts, left-padded [u, prompt_width], with
    /// their real-token flags; the rows' completions [n, completion_width] with theirs.
    fn pass_inputs(&self, b: &Batch, m: &Pass) -> (Tensor, Tensor, Tensor, Tensor) {
        let (u, tp) = (m.prompts.len(), m.prompt_width);
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
        (prefix, prefix_valid, m.select(&b.targets), m.select(&b.valid))
    }

    /// Completion-token log-probs [n, completion_width] of `model` for one pass, without
    /// gradients. Each distinct prompt goes through the model once; its rows attend to it.
    fn logprobs(&self, model: &rollout::CausalLm, b: &Batch, m: &Pass) -> Tensor {
        let (prefix, prefix_valid, targets, valid) = self.pass_inputs(b, m);
        let (hp, hs) = model.forward_prefixed(&prefix, &prefix_valid, &m.row_prefix, &targets, &valid);
        let h = completion_hidden(&hp, &hs, m);
        grpo::chunked_logprobs(&h, &model.lm_head, &targets, self.recipe.rollout.temperature, self.recipe.grpo.logprob_chunk, false).0
    }

    /// The policy's pass with gradients. The layers run (with activation checkpointing when
    /// `grpo.gradient_checkpointing` is set); then the LM head and the loss go a chunk of
    /// `grpo.logprob_chunk` positions at a time (`grpo::head_backward`):
    /// `chunk_loss(logp, entropy, start, len)` turns the chunk's log-probs [n, len] into its
    /// share of the pass's loss (or `None`: not finite, the pass stops and this returns
    /// false), whose backward runs at once; then the gradient gathered at the final hidden
    /// states goes back through the layers. Every loss type is a weighted sum of per-token
    /// losses (`grpo::loss_weights`), so the chunks' losses add up to the pass's and the
    /// gradients equal one backward of it.
    fn policy_pass(
        &self,
        b: &Batch,
        m: &Pass,
        chunk_loss: impl FnMut(&Tensor, Option<&Tensor>, i64, i64) -> Result<Option<Tensor>>,
    ) -> Result<bool> {
        let model = &self.policy.model;
        let (prefix, prefix_valid, targets, valid) = self.pass_inputs(b, m);
        let (hp, hs, checkpointed) =
            model.forward_prefixed_train(&prefix, &prefix_valid, &m.row_prefix, &targets, &valid, self.recipe.grpo.gradient_checkpointing);
        let h = completion_hidden(&hp, &hs, m);
        let grads = grpo::head_backward(
            &h,
            &model.lm_head,
            &targets,
            self.recipe.rollout.temperature,
            self.recipe.grpo.logprob_chunk,
            true,
            |loss| self.opt.backward(loss),
            chunk_loss,
        )?;
        let Some((gh, gw)) = grads else { return Ok(false) };
        model.backward_through(checkpointed, &[(&h, &gh)], &[(&model.lm_head, &gw)]);
        Ok(true)
    }

    pub(super) fn learn(&mut self, b: &Batch) -> Result<LearnStats> {
        let cfg = self.recipe.grpo.clone();
        let eps_high = cfg.epsilon_high.unwrap_or(cfg.epsilon);
        // Passes per minibatch: no more than ceil(rows / grad_accumulation) rows each, under
        // the token cap, rows grouped by length. Every loss type except bnpo is normalised by
        // minibatch totals, so the passes sum to the whole minibatch's loss whatever their sizes.
        // In a data-parallel launch each rank runs every world-th pass of a minibatch; the
        // gradients are summed over ranks before the update, so every rank applies the
        // update of the whole minibatch. A minibatch then has at least `world` passes
        // (grad_accumulation rounded up to a multiple of world): the update one process
        // makes with that grad_accumulation.
        let (rank, world) = self.dist.as_ref().map_or((0, 1), |d| (d.rank, d.world));
        let minibatches = plan_minibatches(
            b,
            cfg.minibatch_size,
            self.recipe.optim.grad_accumulation.div_ceil(world) * world,
            cfg.max_tokens_per_micro_batch as i64,
            self.device,
        );
        let mine = |pi: usize| pi % world == rank;
        if self.dist.is_some() {
            crate::optim::define_grads(&self.policy.named_tensors());
        }
        // Reference log-probs once per batch.
        // Log-probs of `model` without gradients for this rank's passes, [minibatch][pass]
        // (undefined for another rank's passes).
        let frozen_logprobs = |model: &rollout::CausalLm| -> Vec<Vec<Tensor>> {
            tch::no_grad(|| {
                minibatches
                    .iter()
                    .map(|mb| {
                        mb.passes
                            .iter()
                            .enumerate()
                            .map(|(pi, m)| if mine(pi) { self.logprobs(model, b, m) } else { Tensor::new() })
                            .collect()
                    })
                    .collect()
            })
        };
        let ref_logp = self.reference.as_ref().map(|r| frozen_logprobs(&r.model));
        // With an engine sampling, the learner's own log-probs at the rollout's weights, once
        // per batch before any update: the PPO ratio's old policy, and (against the engine's)
        // the correction weights. In process, the rollout's log-probs are the learner's.
        let engine = self.rollouts.is_engine();
        let learner_old = engine.then(|| frozen_logprobs(&self.policy.model));
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
                    if !mine(pi) {
                        continue;
                    }
                    let mask = m.select(&b.mask);
                    let valid = m.select(&b.valid).to_kind(Kind::Float);
                    // mu = 1: old = current (ratio 1, no extra forward pass); else, or when
                    // the rows were sampled a step behind, the rollout's log-probs (the
                    // learner's own with an engine, whose correction weights carry the lag).
                    let old = match &learner_old {
                        Some(lo) => Some(lo[mi][pi].shallow_clone()),
                        None if cfg.num_iterations == 1 && !b.rollout_old => None,
                        None => Some(m.select(&b.old)),
                    };
                    let engine_w = learner_old.as_ref().map(|lo| {
                        let (w, mismatch, capped) =
                            grpo::engine_is_weights(&lo[mi][pi], &m.select(&b.old), cfg.engine_is, cfg.engine_is_cap);
                        if it == 0 {
                            let n = f64::try_from(valid.sum(Kind::Double)).unwrap_or(0.0);
                            sums.engine_mismatch += grpo::masked_mean(&mismatch, &valid) * n;
                            sums.engine_capped += grpo::masked_mean(&capped, &valid) * n;
                            sums.engine_tokens += n;
                        }
                        w
                    });
                    let weights = grpo::loss_weights(&mask, cfg.loss_type, &norm, Kind::Float);
                    let adv = b.adv.index_select(0, &m.rows);
                    let rl = ref_logp.as_ref().map(|r| &r[mi][pi]);
                    let sampled = m.select(&b.old);
                    let mf = mask.to_kind(Kind::Float);
                    // This pass's sums, kept only if every chunk's loss is finite.
                    let mut pass = Sums::default();
                    let (mut diff_max, mut diff_sum) = (st.lp_diff_max, 0.0);
                    let done = self.policy_pass(b, m, |logp, entropy, start, len| {
                        let entropy = entropy.expect("the learner asks for entropies");
                        let cut = |t: &Tensor| t.narrow(1, start, len);
                        let msum = |x: &Tensor| f64::try_from((x.to_kind(Kind::Float) * cut(&mf)).sum(Kind::Double));
                        if it == 0 && mi == 0 {
                            // Before any update the learner scores the rollout's own weights:
                            // its log-probs must match what the sampler recorded (veRL logs
                            // the same check as rollout_probs_diff). A gap means the two
                            // paths disagree.
                            let diff = (logp.detach() - cut(&sampled)).abs() * cut(&valid);
                            diff_max = diff_max.max(f64::try_from(diff.max())?);
                            diff_sum += f64::try_from(diff.sum(Kind::Double))?;
                        }
                        let old_c = old.as_ref().map_or_else(|| logp.detach(), cut);
                        let ref_c = rl.map(cut);
                        let tl = grpo::token_loss(logp, &old_c, ref_c.as_ref(), &adv, cfg.epsilon, eps_high, cfg.beta);
                        let per_token = match &engine_w {
                            Some(w) => &tl.per_token * cut(w),
                            None => tl.per_token.shallow_clone(),
                        };
                        let loss = (per_token * cut(&weights)).sum(Kind::Float);
                        let lv = f64::try_from(&loss)?;
                        if !lv.is_finite() {
                            return Ok(None);
                        }
                        pass.loss += lv;
                        pass.kl += msum(&tl.kl)?;
                        pass.entropy += msum(entropy)?;
                        pass.clip_low += msum(&tl.low_clipped)?;
                        pass.clip_high += msum(&tl.high_clipped)?;
                        Ok(Some(loss))
                    })?;
                    if it == 0 && mi == 0 {
                        st.lp_diff_max = diff_max;
                        st.lp_diff_sum += diff_sum;
                        st.lp_diff_n += f64::try_from(valid.sum(Kind::Double))?;
                    }
                    if !done {
                        finite = false;
                        break;
                    }
                    sums.loss += pass.loss;
                    sums.tokens += f64::try_from(mask.sum(Kind::Double))?;
                    sums.kl += pass.kl;
                    sums.entropy += pass.entropy;
                    sums.clip_low += pass.clip_low;
                    sums.clip_high += pass.clip_high;
                    st.positions += m.positions() as usize;
                    st.tokens_processed += m.tokens;
                    st.computed += m.computed;
                }
                if let Some(pg) = &self.dist {
                    // A non-finite pass on any rank skips the update on all of them.
                    let mut bad = [if finite { 0.0 } else { 1.0 }];
                    pg.all_reduce_f64(&mut bad)?;
                    finite = bad[0] == 0.0;
                    if finite && !self.opt.is_sharded() {
                        if let Some(pg) = &self.dist {
                            crate::optim::all_reduce_grads(&self.policy.named_tensors(), pg)?;
                        }
                    }
                }
                // ZeRO-2: each rank receives its share of the summed gradient instead.
                let sharded = self.dist.as_ref().filter(|_| self.opt.is_sharded());
                let gn = match (finite, sharded) {
                    (false, _) => f64::NAN,
                    (true, Some(pg)) => self.opt.reduce_grads(pg)?,
                    (true, None) => self.opt.grad_norm(),
                };
                if finite && self.opt.skip_overflow(gn) {
                    // f16: the scaled gradients overflowed; the scale was halved.
                    st.skipped += 1;
                    continue;
                }
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
                if self.fail_alloc_at_step == Some(self.state.step + 1) {
                    let _ = Tensor::empty([1i64 << 44], (Kind::Float, self.device));
                    // 64 TiB
                }
                self.updated = true;
                let lr = lr_at(&self.recipe.optim, self.opt.step, total_updates);
                match self.dist.as_ref().filter(|_| self.opt.is_sharded()) {
                    Some(pg) => self.opt.step_sharded(gn, lr, pg)?,
                    None => {
                        self.opt.clip_grad_norm(gn, self.recipe.optim.max_grad_norm);
                        self.opt.step(lr);
                    }
                }
                self.opt.zero_grad();
            }
        }
        self.state.optimizer_step = self.opt.step;
        if let Some(pg) = &self.dist {
            // The statistics of every rank's passes.
            let mut v = [
                sums.loss,
                sums.tokens,
                sums.kl,
                sums.entropy,
                sums.clip_low,
                sums.clip_high,
                st.positions as f64,
                st.tokens_processed as f64,
                st.computed as f64,
                st.lp_diff_sum,
                st.lp_diff_n,
            ];
            pg.all_reduce_f64(&mut v)?;
            [sums.loss, sums.tokens, sums.kl, sums.entropy, sums.clip_low, sums.clip_high] = [v[0], v[1], v[2], v[3], v[4], v[5]];
            (st.positions, st.tokens_processed, st.computed) = (v[6] as usize, v[7] as usize, v[8] as usize);
            (st.lp_diff_sum, st.lp_diff_n) = (v[9], v[10]);
            let mut mx = Tensor::zeros([world as i64], (Kind::Double, Device::Cpu));
            pg.all_gather(&mut mx, &Tensor::from_slice(&[st.lp_diff_max]))?;
            st.lp_diff_max = Vec::<f64>::try_from(&mx)?.into_iter().fold(0.0, f64::max);
        }
        let t = sums.tokens.max(1.0);
        st.kl = sums.kl / t;
        st.entropy = sums.entropy / t;
        st.clip_low = sums.clip_low / t;
        st.clip_high = sums.clip_high / t;
        if engine {
            st.engine_mismatch = Some(sums.engine_mismatch / sums.engine_tokens.max(1.0));
            st.engine_capped = Some(sums.engine_capped / sums.engine_tokens.max(1.0));
        }
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
    /// With an engine: mean r - ln r - 1 (r = pi_learner / pi_engine at the rollout's
    /// weights) and the share of tokens whose r exceeded `grpo.engine_is_cap`.
    pub(super) engine_mismatch: Option<f64>,
    pub(super) engine_capped: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch by hand: prompt g has `prompt_lens[g]` tokens; row r continues prompt `rows[r].0`
    /// with `rows[r].1` completion tokens. Targets are `100 r + j` at real tokens (0 after).
    fn batch(prompt_lens: &[usize], rows: &[(usize, i64)]) -> Batch {
        let prompts: Vec<Vec<i64>> =
            prompt_lens.iter().enumerate().map(|(g, &n)| (0..n as i64).map(|t| 1000 * g as i64 + t).collect()).collect();
        let n = rows.len() as i64;
        let c = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1);
        let lens = Tensor::from_slice(&rows.iter().map(|r| r.1).collect::<Vec<i64>>());
        let valid = Tensor::arange(c, (Kind::Int64, Device::Cpu)).unsqueeze(0).lt_tensor(&lens.unsqueeze(1));
        let ids =
            Tensor::arange(n, (Kind::Int64, Device::Cpu)).unsqueeze(1) * 100 + Tensor::arange(c, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        Batch {
            row_prompt: rows.iter().map(|r| r.0).collect(),
            prompt_lens: rows.iter().map(|r| prompt_lens[r.0] as i64).collect(),
            comp_lens: rows.iter().map(|r| r.1).collect(),
            targets: ids * valid.to_kind(Kind::Int64),
            mask: valid.to_kind(Kind::Float),
            old: Tensor::zeros([n, c], (Kind::Float, Device::Cpu)),
            adv: Tensor::zeros([n], (Kind::Float, Device::Cpu)),
            valid,
            prompts,
            rollout_old: false,
        }
    }

    fn ints(t: &Tensor) -> Vec<usize> {
        Vec::<i64>::try_from(t).unwrap().into_iter().map(|x| x as usize).collect()
    }

    fn plan(b: &Batch, start: usize, len: usize, max_rows: usize, budget: i64) -> Vec<Pass> {
        plan_passes(b, start, len, max_rows, budget, Device::Cpu)
    }

    /// Everything a plan of rows `start..start + len` must satisfy, whatever the grouping.
    fn check_invariants(b: &Batch, start: usize, len: usize, max_rows: usize, budget: i64, passes: &[Pass]) {
        // Every row of the minibatch in exactly one pass, and only those rows: read in pass
        // order, the rows are the minibatch's sorted by completion length (ties by index),
        // so each pass is a run of similar lengths.
        let mut sorted: Vec<usize> = (start..start + len).collect();
        sorted.sort_by_key(|&r| (b.comp_lens[r], r));
        let planned: Vec<usize> = passes.iter().flat_map(|p| ints(&p.rows)).collect();
        assert_eq!(planned, sorted, "rows of the passes, in order");
        for p in passes {
            let rows = ints(&p.rows);
            assert!(!rows.is_empty() && rows.len() <= max_rows, "pass of {} rows, max {max_rows}", rows.len());
            if budget > 0 && rows.len() > 1 {
                assert!(p.positions() <= budget, "pass of {rows:?} computes {} positions, budget {budget}", p.positions());
            }
            // Cut to its own longest completion (at least one position).
            let longest = rows.iter().map(|&r| b.comp_lens[r]).max().unwrap();
            assert_eq!(p.completion_width, longest.max(1));
            assert_eq!(p.completion_width, b.comp_lens[*rows.last().unwrap()].max(1), "the last row is the longest");
            // Each distinct prompt once; each row points at its own.
            let mut want: Vec<usize> = rows.iter().map(|&r| b.row_prompt[r]).collect();
            want.sort();
            want.dedup();
            assert_eq!(p.prompts, want);
            let prefix = ints(&p.row_prefix);
            assert_eq!(prefix.len(), rows.len());
            for (k, &r) in rows.iter().enumerate() {
                assert_eq!(p.prompts[prefix[k]], b.row_prompt[r]);
            }
            assert_eq!(p.prompt_width, p.prompts.iter().map(|&g| b.prompts[g].len() as i64).max().unwrap());
            assert_eq!(p.positions(), rows.len() as i64 * p.completion_width + p.prompts.len() as i64 * p.prompt_width);
            let comp: i64 = rows.iter().map(|&r| b.comp_lens[r]).sum();
            let per_row_prompts: i64 = rows.iter().map(|&r| b.prompt_lens[r]).sum();
            let distinct_prompts: usize = p.prompts.iter().map(|&g| b.prompts[g].len()).sum();
            assert_eq!(p.tokens, (comp + per_row_prompts) as usize);
            assert_eq!(p.computed, comp as usize + distinct_prompts);
        }
        if budget <= 0 {
            // No budget: runs of max_rows sorted rows, the last holding the remainder.
            let sizes: Vec<usize> = passes.iter().map(|p| p.rows.size()[0] as usize).collect();
            let mut want = vec![max_rows; len / max_rows];
            if len % max_rows > 0 {
                want.push(len % max_rows);
            }
            assert_eq!(sizes, want);
        }
    }

    /// A pass as plain values, to compare with hand-computed ones.
    #[derive(Debug, PartialEq)]
    struct Seen {
        rows: Vec<usize>,
        prompts: Vec<usize>,
        row_prefix: Vec<usize>,
        prompt_width: i64,
        completion_width: i64,
        tokens: usize,
        computed: usize,
        positions: i64,
    }

    fn seen(passes: &[Pass]) -> Vec<Seen> {
        passes
            .iter()
            .map(|p| Seen {
                rows: ints(&p.rows),
                prompts: p.prompts.clone(),
                row_prefix: ints(&p.row_prefix),
                prompt_width: p.prompt_width,
                completion_width: p.completion_width,
                tokens: p.tokens,
                computed: p.computed,
                positions: p.positions(),
            })
            .collect()
    }

    /// Prompts of 4 and 2 tokens; six rows. Sorted by completion: r5 (0 tokens), r3 (1),
    /// r0 (3), r2 (3), r4 (6), r1 (7). One pass of all six computes 6 x 7 + 2 x 4 = 50
    /// positions. Under a budget of 24 or 49 the cheapest grouping (positions + 256 a pass)
    /// is two passes: [r5 r3 r0 r2] (4 x 3 + 2 prompts x 4 = 20) and [r4 r1] (2 x 7 + 4 = 18),
    /// 20 + 18 + 2 x 256 = 550; under 49, [r5 .. r4] [r1] would cost 38 + 11 + 512 = 561, and
    /// every other split more. Worked out by hand from the planner's table.
    #[test]
    fn hand_computed_grouping_under_a_token_budget() {
        let b = batch(&[4, 2], &[(0, 3), (0, 7), (1, 3), (1, 1), (0, 6), (1, 0)]);
        for budget in [24, 49] {
            let passes = plan(&b, 0, 6, 6, budget);
            check_invariants(&b, 0, 6, 6, budget, &passes);
            assert_eq!(
                seen(&passes),
                vec![
                    // r5 r3 r2 continue prompt 1, r0 prompt 0: tokens 7 + (2 + 2 + 4 + 2), computed 7 + 4 + 2.
                    Seen {
                        rows: vec![5, 3, 0, 2],
                        prompts: vec![0, 1],
                        row_prefix: vec![1, 1, 0, 1],
                        prompt_width: 4,
                        completion_width: 3,
                        tokens: 17,
                        computed: 13,
                        positions: 20
                    },
                    // Both continue prompt 0: tokens 13 + 8, computed 13 + 4.
                    Seen {
                        rows: vec![4, 1],
                        prompts: vec![0],
                        row_prefix: vec![0, 0],
                        prompt_width: 4,
                        completion_width: 7,
                        tokens: 21,
                        computed: 17,
                        positions: 18
                    },
                ],
                "budget {budget}"
            );
        }
        // A pass exactly at the budget is allowed: 50 positions fit a budget of 50.
        let one = plan(&b, 0, 6, 6, 50);
        check_invariants(&b, 0, 6, 6, 50, &one);
        assert_eq!(
            seen(&one),
            vec![Seen {
                rows: vec![5, 3, 0, 2, 4, 1],
                prompts: vec![0, 1],
                row_prefix: vec![1, 1, 0, 1, 0, 0],
                prompt_width: 4,
                completion_width: 7,
                tokens: 38,
                computed: 26,
                positions: 50
            }]
        );
    }

    /// Budget 5, one 2-token prompt, completions 1, 8, 2: r0 and r2 together would compute
    /// 2 x 2 + 2 = 6 positions, so each goes alone (3 and 4); r1 alone computes 8 + 2 = 10,
    /// over the budget, but a single row always makes a pass.
    #[test]
    fn a_row_longer_than_the_budget_goes_alone() {
        let b = batch(&[2], &[(0, 1), (0, 8), (0, 2)]);
        let passes = plan(&b, 0, 3, 3, 5);
        check_invariants(&b, 0, 3, 3, 5, &passes);
        let got: Vec<(Vec<usize>, i64)> = passes.iter().map(|p| (ints(&p.rows), p.positions())).collect();
        assert_eq!(got, vec![(vec![0], 3), (vec![2], 4), (vec![1], 10)]);
    }

    /// Without a budget (0): runs of `max_rows` rows in order of completion length, the last
    /// holding the remainder. Completions 5 1 4 1 0 9 2 sort to r4 r1 r3 | r6 r2 r0 | r5; a
    /// 0-token completion still gets a width of 1.
    #[test]
    fn without_a_budget_passes_are_runs_of_max_rows_and_the_last_holds_the_rest() {
        let b = batch(&[3, 5], &[(0, 5), (0, 1), (1, 4), (1, 1), (0, 0), (1, 9), (0, 2)]);
        let passes = plan(&b, 0, 7, 3, 0);
        check_invariants(&b, 0, 7, 3, 0, &passes);
        let got: Vec<(Vec<usize>, i64, i64)> = passes.iter().map(|p| (ints(&p.rows), p.completion_width, p.prompt_width)).collect();
        assert_eq!(got, vec![(vec![4, 1, 3], 1, 5), (vec![6, 2, 0], 5, 5), (vec![5], 9, 5)]);
    }

    /// Budget 0 with room for every row (what `learn` asks for with no accumulation): one
    /// pass, all rows, cut to the longest completion.
    #[test]
    fn budget_zero_is_one_pass() {
        let b = batch(&[3, 5], &[(0, 5), (0, 1), (1, 4), (1, 1), (0, 0), (1, 9), (0, 2)]);
        let passes = plan(&b, 0, 7, 7, 0);
        check_invariants(&b, 0, 7, 7, 0, &passes);
        assert_eq!(passes.len(), 1);
        assert_eq!((passes[0].completion_width, passes[0].prompt_width, passes[0].positions()), (9, 5, 7 * 9 + 2 * 5));
        let mbs = plan_minibatches(&b, 0, 1, 0, Device::Cpu);
        assert_eq!(mbs.len(), 1);
        assert_eq!((mbs[0].start, mbs[0].len, mbs[0].passes.len()), (0, 7, 1));
    }

    /// `max_rows` bounds a pass even when the budget would let more rows in.
    #[test]
    fn max_rows_caps_a_pass_under_a_large_budget() {
        let b = batch(&[2, 2], &[(0, 3), (1, 3), (0, 4), (1, 4), (0, 5)]);
        let passes = plan(&b, 0, 5, 2, 10_000);
        check_invariants(&b, 0, 5, 2, 10_000, &passes);
        assert_eq!(passes.len(), 3, "5 rows at most 2 a pass: 3 passes (each pass costs {PASS_OVERHEAD})");
    }

    /// Minibatches cover the batch in order (the last holds the rest); each is planned on
    /// its own rows only, at most ceil(rows / grad_accumulation) rows a pass.
    #[test]
    fn minibatches_cover_the_batch_and_accumulation_bounds_rows_per_pass() {
        let rows: Vec<(usize, i64)> = (0..10).map(|r| (r / 4, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3][r])).collect();
        let b = batch(&[2, 3, 4], &rows);
        let mbs = plan_minibatches(&b, 4, 2, 0, Device::Cpu);
        let got: Vec<(usize, usize, Vec<usize>)> =
            mbs.iter().map(|m| (m.start, m.len, m.passes.iter().map(|p| p.rows.size()[0] as usize).collect())).collect();
        assert_eq!(got, vec![(0, 4, vec![2, 2]), (4, 4, vec![2, 2]), (8, 2, vec![1, 1])]);
        for m in &mbs {
            check_invariants(&b, m.start, m.len, m.len.div_ceil(2), 0, &m.passes);
        }
        // Accumulation bounds the rows of a pass, not the count: 4 rows with accumulation 3
        // are passes of at most 2 rows, so 2 passes.
        let mbs = plan_minibatches(&b, 4, 3, 0, Device::Cpu);
        assert_eq!(mbs[0].passes.len(), 2);
        // A minibatch larger than the batch is the whole batch.
        let mbs = plan_minibatches(&b, 64, 1, 0, Device::Cpu);
        assert_eq!(mbs.iter().map(|m| (m.start, m.len)).collect::<Vec<_>>(), vec![(0, 10)]);
        // With a token cap, every minibatch's passes still respect it.
        for m in plan_minibatches(&b, 4, 1, 12, Device::Cpu) {
            check_invariants(&b, m.start, m.len, m.len, 12, &m.passes);
        }
    }

    /// `Pass::select` takes the pass's rows, in its order, cut to its width.
    #[test]
    fn select_takes_the_pass_rows_cut_to_its_width() {
        let b = batch(&[2], &[(0, 4), (0, 2), (0, 1), (0, 3)]);
        let passes = plan(&b, 0, 4, 2, 0);
        assert_eq!(passes.len(), 2);
        let t = passes[0].select(&b.targets);
        // Rows r2 (1 token) and r1 (2): width 2, targets 100 r + j, 0 past the end.
        assert_eq!(t.size(), vec![2, 2]);
        assert_eq!(Vec::<i64>::try_from(t.flatten(0, 1)).unwrap(), vec![200, 0, 100, 101]);
        let v = passes[1].select(&b.valid);
        assert_eq!(v.size(), vec![2, 4]);
        assert_eq!(Vec::<bool>::try_from(v.flatten(0, 1)).unwrap(), vec![true, true, true, false, true, true, true, true]);
    }

    /// Against brute force on small random batches: the plan satisfies every invariant and
    /// its cost (positions + PASS_OVERHEAD a pass) is the least over all groupings of the
    /// sorted rows into consecutive runs that respect `max_rows` and the budget.
    #[test]
    fn the_grouping_is_the_cheapest_allowed() {
        let mut state = 0x2545f4914f6cdd1du64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        for case in 0..300 {
            let n_prompts = 1 + next(3) as usize;
            let prompt_lens: Vec<usize> = (0..n_prompts).map(|_| 1 + next(8) as usize).collect();
            let n = 1 + next(9) as usize;
            // Long completions now and then, so that some cases use the overhead trade-off.
            let rows: Vec<(usize, i64)> =
                (0..n).map(|_| (next(n_prompts as u64) as usize, if next(4) == 0 { next(400) as i64 } else { next(12) as i64 })).collect();
            let b = batch(&prompt_lens, &rows);
            let start = next(n as u64) as usize;
            let len = 1 + next((n - start) as u64) as usize;
            let max_rows = 1 + next(len as u64 + 1) as usize;
            let budget = [0, 1, 8, 20, 40, 100, 600][next(7) as usize];
            let passes = plan(&b, start, len, max_rows, budget);
            check_invariants(&b, start, len, max_rows, budget, &passes);
            if budget == 0 {
                continue;
            }
            let cost: i64 = passes.iter().map(|p| p.positions() + PASS_OVERHEAD).sum();
            let mut sorted: Vec<usize> = (start..start + len).collect();
            sorted.sort_by_key(|&r| (b.comp_lens[r], r));
            let positions = |run: &[usize]| {
                let mut ps: Vec<usize> = run.iter().map(|&r| b.row_prompt[r]).collect();
                ps.sort();
                ps.dedup();
                let width = run.iter().map(|&r| b.comp_lens[r].max(1)).max().unwrap();
                run.len() as i64 * width + ps.len() as i64 * ps.iter().map(|&g| prompt_lens[g] as i64).max().unwrap()
            };
            let mut best = i64::MAX;
            // Bit k of `cuts` set: a pass ends after sorted row k.
            for cuts in 0u32..1 << (len - 1) {
                let (mut total, mut from, mut ok) = (0, 0, true);
                for k in 0..len {
                    if k == len - 1 || cuts >> k & 1 == 1 {
                        let run = &sorted[from..=k];
                        let p = positions(run);
                        ok &= run.len() <= max_rows && (run.len() == 1 || p <= budget);
                        total += p + PASS_OVERHEAD;
                        from = k + 1;
                    }
                }
                if ok {
                    best = best.min(total);
                }
            }
            assert_eq!(
                cost, best,
                "case {case}: rows {rows:?} prompts {prompt_lens:?} start {start} len {len} max_rows {max_rows} budget {budget}"
            );
        }
    }
}
