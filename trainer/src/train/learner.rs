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

/// One forward/backward pass: batch rows of similar completion length and the prompts they
/// continue, each prompt computed once for all its rows in the pass.
struct Micro {
    rows: Tensor,
    /// The distinct prompts (indices into `Batch::prompts`), and each row's index among them.
    prompts: Vec<usize>,
    row_prefix: Tensor,
    /// Longest prompt and completion in the pass (the two streams' widths).
    prompt: i64,
    completion: i64,
    /// The rows' prompt + completion tokens (a shared prompt counted once per row), and the
    /// real tokens the pass computes (a shared prompt once).
    tokens: usize,
    computed: usize,
}

impl Micro {
    /// Positions this pass computes, padding included.
    fn positions(&self) -> i64 {
        self.rows.size()[0] * self.completion + self.prompts.len() as i64 * self.prompt
    }
}

/// A pass's fixed cost in positions, when choosing how to group rows: small passes run
/// matmuls below their efficient size and add per-pass dispatches.
const PASS_OVERHEAD: i64 = 256;

/// Splits minibatch rows `start..start + len` into passes of at most `max_rows` rows. Rows
/// are sorted by completion length; a pass computes each distinct prompt among its rows once
/// (GRPO's G completions share one) and its completions cut to the longest. With a token
/// `budget` (> 0) the grouping of the sorted rows is the one that computes the fewest
/// positions (plus [`PASS_OVERHEAD`] a pass) with every pass under the budget (a row longer
/// than the budget goes alone); without one, consecutive runs of `max_rows` rows.
fn plan_micro(b: &Batch, start: usize, len: usize, max_rows: usize, budget: i64, device: Device) -> Vec<Micro> {
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
    bounds
        .windows(2)
        .map(|w| {
            let rows = &order[w[0]..w[1]];
            let mut prompts: Vec<usize> = rows.iter().map(|&r| b.row_prompt[r]).collect();
            prompts.sort_unstable();
            prompts.dedup();
            let row_prefix: Vec<i64> = rows.iter().map(|&r| prompts.binary_search(&b.row_prompt[r]).unwrap() as i64).collect();
            let rows_i: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let completion_tokens: i64 = rows.iter().map(|&r| b.comp_lens[r]).sum();
            let prompt_tokens: i64 = rows.iter().map(|&r| b.prompt_lens[r]).sum();
            let distinct_prompt_tokens: usize = prompts.iter().map(|&g| b.prompts[g].len()).sum();
            Micro {
                rows: Tensor::from_slice(&rows_i).to_device(device),
                prompt: prompts.iter().map(|&g| b.prompts[g].len() as i64).max().unwrap_or(1),
                completion: cl[w[0]..w[1]].iter().copied().max().unwrap_or(1),
                tokens: (completion_tokens + prompt_tokens) as usize,
                computed: completion_tokens as usize + distinct_prompt_tokens,
                prompts,
                row_prefix: Tensor::from_slice(&row_prefix).to_device(device),
            }
        })
        .collect()
}

impl Trainer {
    /// Completion-token log-probs (and entropies) of `model` for one pass: [rows, completion].
    /// Each distinct prompt goes through the model once; its rows attend to it.
    fn logprobs(&self, model: &rollout::CausalLm, b: &Batch, m: &Micro, entropy: bool) -> (Tensor, Option<Tensor>) {
        let (u, tp, tc) = (m.prompts.len(), m.prompt, m.completion);
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
        let sel = |t: &Tensor| t.index_select(0, &m.rows).narrow(1, 0, tc);
        let (targets, valid) = (sel(&b.targets), sel(&b.valid));
        let (hp, hs) = model.forward_prefixed(&prefix, &prefix_valid, &m.row_prefix, &targets, &valid);
        // Completion token 0 is predicted from its prompt's last position, token j from j - 1.
        let first = hp.select(1, tp - 1).index_select(0, &m.row_prefix).unsqueeze(1);
        let h = Tensor::cat(&[first, hs.narrow(1, 0, tc - 1)], 1);
        grpo::chunked_logprobs(&h, &model.lm_head, &targets, self.recipe.rollout.temperature, self.recipe.grpo.logprob_chunk, entropy)
    }

    pub(super) fn learn(&mut self, b: &Batch) -> Result<LearnStats> {
        let cfg = self.recipe.grpo.clone();
        let n = b.adv.size()[0] as usize;
        let mb = if cfg.minibatch_size == 0 { n } else { cfg.minibatch_size.min(n) };
        let accum = self.recipe.optim.grad_accumulation.max(1);
        let eps_high = cfg.epsilon_high.unwrap_or(cfg.epsilon);
        // Passes per minibatch: at least `grad_accumulation` of them, each under the token cap,
        // rows grouped by length. Every loss type except bnpo is normalised by minibatch
        // totals, so the passes sum to the whole minibatch's loss whatever their sizes.
        let plans: Vec<(usize, usize, Vec<Micro>)> = (0..n)
            .step_by(mb)
            .map(|ms| {
                let mlen = mb.min(n - ms);
                (ms, mlen, plan_micro(b, ms, mlen, mlen.div_ceil(accum), cfg.max_tokens_per_micro_batch as i64, self.device))
            })
            .collect();
        // Reference log-probs once per batch (no grad), pass by pass.
        let ref_lp: Option<Vec<Vec<Tensor>>> = self.reference.as_ref().map(|r| {
            tch::no_grad(|| plans.iter().map(|(_, _, micros)| micros.iter().map(|m| self.logprobs(&r.model, b, m, false).0).collect()).collect())
        });
        let mut st = LearnStats::default();
        let (mut kl_sum, mut ent_sum, mut low_sum, mut high_sum, mut loss_sum, mut tok_sum) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let mut norms = vec![];
        let total_updates = self.total_updates();
        let sel = |t: &Tensor, m: &Micro| t.index_select(0, &m.rows).narrow(1, 0, m.completion);
        for it in 0..cfg.num_iterations {
            for (pi, (ms, mlen, micros)) in plans.iter().enumerate() {
                let norm = grpo::Norm {
                    tokens: f64::try_from(b.mask.narrow(0, *ms as i64, *mlen as i64).sum(Kind::Double))?,
                    rows: *mlen as f64,
                    micro_batches: micros.len(),
                    max_new_tokens: self.recipe.rollout.max_new_tokens,
                };
                st.micro_batches = st.micro_batches.max(micros.len());
                self.opt.zero_grad();
                let mut finite = true;
                for (ui, m) in micros.iter().enumerate() {
                    let (logp, ent) = self.logprobs(&self.policy.model, b, m, true);
                    let mask = sel(&b.mask, m);
                    if it == 0 && pi == 0 {
                        // Before any update the learner scores the rollout's own weights: its
                        // log-probs must match what the sampler recorded (veRL logs the same
                        // check as rollout_probs_diff). A gap means the two paths disagree.
                        let valid = sel(&b.valid, m).to_kind(Kind::Float);
                        let diff = (logp.detach() - sel(&b.old, m)).abs() * &valid;
                        st.lp_diff_max = st.lp_diff_max.max(f64::try_from(diff.max())?);
                        st.lp_diff_sum += f64::try_from(diff.sum(Kind::Double))?;
                        st.lp_diff_n += f64::try_from(valid.sum(Kind::Double))?;
                    }
                    // mu = 1: old = current (ratio 1, no extra forward pass); else the
                    // rollout's log-probs.
                    let old = if cfg.num_iterations == 1 { logp.detach() } else { sel(&b.old, m) };
                    let rl = ref_lp.as_ref().map(|r| &r[pi][ui]);
                    let tl = grpo::token_loss(&logp, &old, rl, &b.adv.index_select(0, &m.rows), cfg.epsilon, eps_high, cfg.beta);
                    let loss = grpo::aggregate(&tl.per_token, &mask, cfg.loss_type, &norm);
                    let lv = f64::try_from(&loss)?;
                    if !lv.is_finite() {
                        finite = false;
                        break;
                    }
                    loss.backward();
                    let ntok = f64::try_from(mask.sum(Kind::Double))?;
                    loss_sum += lv;
                    tok_sum += ntok;
                    kl_sum += grpo::masked_mean(&tl.kl, &mask) * ntok;
                    ent_sum += grpo::masked_mean(ent.as_ref().unwrap(), &mask) * ntok;
                    low_sum += grpo::masked_mean(&tl.low_clipped, &mask) * ntok;
                    high_sum += grpo::masked_mean(&tl.high_clipped, &mask) * ntok;
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
        let t = tok_sum.max(1.0);
        st.kl = kl_sum / t;
        st.entropy = ent_sum / t;
        st.clip_low = low_sum / t;
        st.clip_high = high_sum / t;
        // Each pass's loss is normalised by its minibatch's totals, so the passes of one
        // minibatch sum to that minibatch's loss: the mean over minibatches and iterations.
        st.loss = loss_sum / (cfg.num_iterations * plans.len()).max(1) as f64;
        st.grad_norm = if norms.is_empty() { f64::NAN } else { norms.iter().sum::<f64>() / norms.len() as f64 };
        Ok(st)
    }
}

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
