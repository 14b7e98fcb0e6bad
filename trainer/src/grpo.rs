//! The GRPO maths, in small functions that tests hit directly.
//!
//! Notation: for completion i with tokens t, `logp` = log pi_theta(o_t | ...), `old` = the
//! log-prob when the sample was drawn, `ref` = under the frozen reference, A_i its advantage.
//!
//! per-token loss  l_t = -min(r_t A_i, clip(r_t, 1 - eps_low, 1 + eps_high) A_i) + beta k3_t
//! with r_t = exp(logp - old) and k3_t = exp(ref - logp) - (ref - logp) - 1 (DeepSeekMath's
//! unbiased KL estimator). Aggregation over tokens (m = completion mask) is `LossType`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How rewards are scaled into advantages (`[grpo] scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// (r - mean_group) / (std_group + eps): DeepSeekMath / TRL default.
    Group,
    /// (r - mean_group) / (std_batch + eps).
    Batch,
    /// r - mean_group (Dr. GRPO: no std scaling).
    None,
}

/// How per-token losses are reduced to one number (`[grpo] loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// mean_i( sum_t m l / sum_t m ): per-sequence mean, then mean over sequences (DeepSeekMath).
    Grpo,
    /// sum m l / sum m over the micro-batch's tokens.
    Bnpo,
    /// sum m l / sum m over all tokens of the optimizer step's minibatch (DAPO token-level).
    Dapo,
    /// sum m l / (sequences x max_new_tokens) (Dr. GRPO: constant normaliser).
    DrGrpo,
}

/// How the learner corrects for an inference engine's log-probs (`[grpo] engine_is`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineIs {
    /// w = min(pi_learner / pi_engine, cap) (TRL's default, veRL's TIS).
    Truncate,
    /// w = 1 where pi_learner / pi_engine <= cap, else 0 (the token is dropped).
    Mask,
    /// w = 1.
    Off,
}

/// The engine correction of each token, from the learner's log-probs at the rollout's
/// weights and the engine's: (weight w, mismatch r - ln r - 1 with r = pi_learner /
/// pi_engine (0 when they agree, the KL estimator peers log), whether r exceeded the cap).
pub fn engine_is_weights(learner: &Tensor, engine: &Tensor, mode: EngineIs, cap: f64) -> (Tensor, Tensor, Tensor) {
    let log_r = learner - engine;
    let r = log_r.exp();
    let mismatch = &r - &log_r - 1.0;
    let capped = r.gt(cap);
    let w = match mode {
        EngineIs::Truncate => r.clamp_max(cap),
        EngineIs::Mask => capped.logical_not().to_kind(r.kind()),
        EngineIs::Off => r.ones_like(),
    };
    (w, mismatch, capped)
}

/// Unbiased (N - 1) standard deviation, as torch.std; 0 for fewer than two values.
pub fn std_unbiased(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = x.iter().sum::<f64>() / x.len() as f64;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Group-relative advantages for rewards laid out group after group (`group_size` each).
/// Groups whose rewards are all equal get exactly zero.
pub fn advantages(rewards: &[f64], group_size: usize, scale: ScaleRewards, eps: f64) -> Vec<f64> {
    assert!(group_size > 0 && rewards.len() % group_size == 0, "rewards must hold whole groups");
    let batch_std = std_unbiased(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group_size) {
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let std = match scale {
            ScaleRewards::Group => std_unbiased(g),
            ScaleRewards::Batch => batch_std,
            ScaleRewards::None => 0.0,
        };
        for &r in g {
            let centred = r - mean;
            out.push(match scale {
                ScaleRewards::None => centred,
                _ => centred / (std + eps),
            });
        }
    }
    out
}

/// True when every reward in the group is the same (no learning signal).
pub fn zero_std_groups(rewards: &[f64], group_size: usize) -> Vec<bool> {
    rewards.chunks(group_size).map(|g| g.iter().all(|&r| r == g[0])).collect()
}

/// Per-token losses and the statistics TRL reports, for one micro-batch.
pub struct TokenLoss {
    /// [B, T] per-token loss (not yet masked or reduced).
    pub per_token: Tensor,
    /// [B, T] k3 KL per token (zeros when beta = 0).
    pub kl: Tensor,
    pub low_clipped: Tensor,
    pub high_clipped: Tensor,
}

/// `logp`, `old`, `ref_logp`: [B, T]; `adv`: [B].
pub fn token_loss(
    logp: &Tensor,
    old: &Tensor,
    ref_logp: Option<&Tensor>,
    adv: &Tensor,
    eps_low: f64,
    eps_high: f64,
    beta: f64,
) -> TokenLoss {
    let ratio = (logp - old).exp();
    let a = adv.unsqueeze(1);
    let unclipped = &ratio * &a;
    let clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * &a;
    let mut per_token = -unclipped.minimum(&clipped);
    let kl = match ref_logp {
        Some(r) if beta != 0.0 => {
            let d = r - logp;
            let kl = d.exp() - &d - 1.0;
            per_token = per_token + &kl * beta;
            kl
        }
        _ => logp.zeros_like(),
    };
    let low_clipped = ratio.lt(1.0 - eps_low).logical_and(&a.lt(0.0));
    let high_clipped = ratio.gt(1.0 + eps_high).logical_and(&a.gt(0.0));
    TokenLoss { per_token, kl, low_clipped, high_clipped }
}

/// What a micro-batch's loss is normalised by: totals of the optimizer step's minibatch, so
/// that micro-batches of any sizes and widths sum to the whole minibatch's loss.
#[derive(Debug, Clone, Copy)]
pub struct Norm {
    /// Unmasked completion tokens in the minibatch (`Dapo`).
    pub tokens: f64,
    /// Sequences in the minibatch (`Grpo`, `DrGrpo`).
    pub rows: f64,
    /// Micro-batches the minibatch is split into (`Bnpo` normalises each by its own tokens
    /// and averages them, as TRL does per device batch).
    pub micro_batches: usize,
    /// The generation budget (`DrGrpo`).
    pub max_new_tokens: usize,
}

impl Norm {
    /// The normaliser of a minibatch processed in one pass.
    pub fn whole(mask: &Tensor, max_new_tokens: usize) -> Norm {
        let tokens = f64::try_from(mask.sum(Kind::Double)).unwrap_or(0.0);
        Norm { tokens, rows: mask.size()[0] as f64, micro_batches: 1, max_new_tokens }
    }
}

/// Reduces the masked per-token losses of one micro-batch (rows x its own width):
/// `sum(per_token * loss_weights(..))`.
pub fn aggregate(per_token: &Tensor, mask: &Tensor, loss_type: LossType, n: &Norm) -> Tensor {
    (per_token * loss_weights(mask, loss_type, n, per_token.kind())).sum(per_token.kind())
}

/// Every loss type is linear in the per-token losses: the micro-batch's loss is
/// `sum_t w_t l_t` with these weights [rows, width] (0 on masked tokens). The learner uses
/// them to take the loss a chunk of positions at a time.
/// grpo: m / (the row's tokens) / rows; bnpo: m / (the pass's tokens) / passes;
/// dapo: m / (the minibatch's tokens); dr_grpo: m / (rows x max_new_tokens).
pub fn loss_weights(mask: &Tensor, loss_type: LossType, n: &Norm, kind: Kind) -> Tensor {
    let m = mask.to_kind(kind);
    match loss_type {
        LossType::Grpo => &m / m.sum_dim_intlist(&[1i64][..], true, kind).clamp_min(1.0) / n.rows.max(1.0),
        LossType::Bnpo => &m / m.sum(kind).clamp_min(1.0) / n.micro_batches.max(1) as f64,
        LossType::Dapo => m / n.tokens.max(1.0),
        LossType::DrGrpo => m / (n.rows.max(1.0) * n.max_new_tokens as f64),
    }
}

/// Mean of `x` over mask = 1 (0 when the mask is empty), as an f64.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> f64 {
    let m = mask.to_kind(Kind::Float);
    let n = f64::try_from(m.sum(Kind::Float)).unwrap_or(0.0);
    if n == 0.0 {
        return 0.0;
    }
    f64::try_from((x.to_kind(Kind::Float) * &m).sum(Kind::Float)).unwrap_or(f64::NAN) / n
}

/// Log-probabilities of `targets` [B, T] and entropies from hidden states [B, T, H], computing
/// logits `chunk` positions at a time so a full fp32 [B, T, V] never exists at once. Without
/// autograd (reference and old-policy scores) that bounds the memory; with autograd every
/// chunk's logits would stay alive until the backward, so the learner's own pass takes each
/// chunk's loss and backward in turn instead (see the learner's `policy_pass`).
/// Logits are divided by `temperature` (as the sampler did).
pub fn chunked_logprobs(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    temperature: f64,
    chunk: i64,
    with_entropy: bool,
) -> (Tensor, Option<Tensor>) {
    let mut lps = vec![];
    let mut ents = vec![];
    for (start, len) in spans(hidden.size()[1], chunk) {
        let (lp, ent) = head_logprobs(&hidden.narrow(1, start, len), lm_head, &targets.narrow(1, start, len), temperature, with_entropy);
        lps.push(lp);
        ents.extend(ent);
    }
    let lp = Tensor::cat(&lps, 1);
    let ent = with_entropy.then(|| Tensor::cat(&ents, 1));
    (lp, ent)
}

/// The backward of a loss that is a sum over chunks of positions, each chunk's share a
/// function of its own log-probs: for each chunk of `chunk` positions of `hidden` [n, t, H]
/// (the layers' output, with autograd history) the LM head's logits, the log-probs of
/// `targets` [n, t] (and entropies when asked), `chunk_loss(logp, entropy, start, len)` ->
/// that chunk's loss, and its backward (`backward`, which applies any loss scale) at once,
/// so one chunk's [n, len, vocab] fp32 logits are the most that live at a time. Stops at
/// the first chunk whose loss is `None` (not finite) and returns `None`.
///
/// The backward stops at a detached copy of `hidden` and of `lm_head`: returns their
/// gradients, summed over the chunks, for the caller to pass on to the layers (with
/// `CausalLm::backward_through`), so every weight gets the whole pass's gradient in one
/// accumulation, as one ordinary backward adds it (a tied head's and the embeddings' parts
/// together): passes then sum the same way on one process and over data-parallel ranks.
pub fn head_backward(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    temperature: f64,
    chunk: i64,
    with_entropy: bool,
    backward: impl Fn(&Tensor),
    mut chunk_loss: impl FnMut(&Tensor, Option<&Tensor>, i64, i64) -> anyhow::Result<Option<Tensor>>,
) -> anyhow::Result<Option<(Tensor, Tensor)>> {
    let h = hidden.detach().set_requires_grad(true);
    let w = lm_head.detach().set_requires_grad(lm_head.requires_grad());
    for (start, len) in spans(hidden.size()[1], chunk) {
        let (lp, ent) = head_logprobs(&h.narrow(1, start, len), &w, &targets.narrow(1, start, len), temperature, with_entropy);
        match chunk_loss(&lp, ent.as_ref(), start, len)? {
            Some(loss) => backward(&loss),
            None => return Ok(None),
        }
    }
    Ok(Some((h.grad(), w.grad())))
}

/// `(start, len)` of consecutive chunks of at most `chunk` positions covering `0..t`.
fn spans(t: i64, chunk: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..t).step_by(chunk.max(1) as usize).map(move |start| (start, chunk.min(t - start)))
}

/// One chunk of [`chunked_logprobs`]: log-probs of `targets` [B, T] under the logits of
/// `hidden` [B, T, H] (in fp32, divided by `temperature`), and their entropies (detached).
pub fn head_logprobs(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    temperature: f64,
    with_entropy: bool,
) -> (Tensor, Option<Tensor>) {
    let logits = hidden.matmul(&lm_head.tr()).to_kind(Kind::Float) / temperature;
    let logz = logits.logsumexp(&[-1i64][..], true);
    let lp = (logits.gather(-1, &targets.unsqueeze(-1), false) - &logz).squeeze_dim(-1);
    // Entropy needs no gradient: computed detached to spare memory.
    let ent = with_entropy.then(|| {
        let logp = logits.detach() - logz.detach();
        -(logp.exp() * &logp).sum_dim_intlist(&[-1i64][..], false, Kind::Float)
    });
    (lp, ent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_correction_by_hand() {
        // ratios pi_learner / pi_engine of 0.5, 1, 2.5 and 4
        let r = [0.5f64, 1.0, 2.5, 4.0];
        let engine = Tensor::from_slice(&[-1.0f32, -2.0, -0.5, -3.0]);
        let learner = &engine + Tensor::from_slice(&r.map(|x| x.ln() as f32));
        let v = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap();
        let close = |a: Vec<f64>, b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        let (w, mm, capped) = engine_is_weights(&learner, &engine, EngineIs::Truncate, 2.0);
        assert!(close(v(&w), &[0.5, 1.0, 2.0, 2.0]), "{:?}", v(&w));
        // r - ln r - 1: 0.5 + 0.693147 - 1, 0, 2.5 - 0.916291 - 1, 4 - 1.386294 - 1
        assert!(close(v(&mm), &[0.193147, 0.0, 0.583709, 1.613706]), "{:?}", v(&mm));
        assert_eq!(v(&capped), [0.0, 0.0, 1.0, 1.0]);
        let (w, _, _) = engine_is_weights(&learner, &engine, EngineIs::Mask, 3.0);
        assert!(close(v(&w), &[1.0, 1.0, 1.0, 0.0]), "{:?}", v(&w));
        let (w, _, _) = engine_is_weights(&learner, &engine, EngineIs::Off, 2.0);
        assert!(close(v(&w), &[1.0; 4]));
    }
}
