//! The distillation losses, per completion position, on next-token distributions.
//!
//! p = teacher, q = student, both softmax(logits / T) with the distillation temperature T
//! (the same T for both; no T^2 factor):
//!
//! - forward KL  KL(p || q) = sum_v p_v (log p_v - log q_v)   (classic KD; mode covering)
//! - reverse KL  KL(q || p) = sum_v q_v (log q_v - log p_v)   (on-policy distillation; mode seeking)
//! - JSD(beta)   beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q (GKD's
//!   generalized Jensen-Shannon divergence; 0 < beta < 1)
//!
//! with 0 log 0 = 0. From a top-k cache (the teacher's k most likely tokens at temperature T,
//! their log-probs and the log of the remaining "tail" mass, see `cache.rs`) both
//! distributions live on k + 1 outcomes, the k cached tokens and "any other token":
//!
//! - `tail = "renormalize"` (default): the teacher's top-k probabilities are divided by their
//!   sum (its tail mass is spread over the k tokens in proportion), 0 on every other token;
//!   the divergence is taken against the student's full distribution. Outside the top-k the
//!   student's terms only depend on its tail mass, so the k + 1 outcome form is exact. Reverse
//!   KL is infinite whenever the student puts mass outside the teacher's top-k, so it needs
//!   `tail = "bucket"`.
//! - `tail = "bucket"`: both distributions are coarsened to the k tokens plus one bucket
//!   holding the rest of each one's mass; the divergence of the coarsened pair (a lower bound
//!   of the full one, equal to it when the student's tail is proportional to the teacher's).
//!
//! When k covers the vocabulary both forms are the full-vocabulary divergence.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Divergence {
    ForwardKl,
    ReverseKl,
    Jsd,
}

impl Divergence {
    pub fn name(self) -> &'static str {
        match self {
            Divergence::ForwardKl => "forward_kl",
            Divergence::ReverseKl => "reverse_kl",
            Divergence::Jsd => "jsd",
        }
    }
}

/// What a top-k cache does with the teacher's mass outside its k tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Tail {
    #[default]
    Renormalize,
    Bucket,
}

/// sum over the last axis of p (log p - log q), p = exp(lp), with 0 where p = 0. Both logs
/// are replaced by 0 where p = 0 before the product, so no 0 * inf appears in the value or
/// the gradient.
pub fn kl_terms(lp: &Tensor, lq: &Tensor) -> Tensor {
    let p = lp.exp();
    let on = p.gt(0.0);
    let zero = lp.zeros_like();
    let lp0 = lp.where_self(&on, &zero);
    let lq0 = lq.where_self(&on, &zero);
    (p * (lp0 - lq0)).sum_dim_intlist(&[-1i64][..], false, Kind::Float)
}

/// The divergence per position between teacher log-probs `t` and student log-probs `s`
/// over the same outcomes (last axis; each sums to 1).
pub fn per_token(div: Divergence, beta: f64, t: &Tensor, s: &Tensor) -> Tensor {
    match div {
        Divergence::ForwardKl => kl_terms(t, s),
        Divergence::ReverseKl => kl_terms(s, t),
        Divergence::Jsd => {
            let lm = Tensor::stack(&[t + beta.ln(), s + (1.0 - beta).ln()], 0).logsumexp(&[0i64][..], false);
            kl_terms(t, &lm) * beta + kl_terms(s, &lm) * (1.0 - beta)
        }
    }
}

/// Teacher rows of a top-k cache: ids [P, k] (i64), log-probs [P, k] and the log of the
/// mass outside the k tokens [P] (-inf when k covers the vocabulary), all at the cache's
/// temperature.
pub struct TopK {
    pub ids: Tensor,
    pub logp: Tensor,
    pub tail: Tensor,
}

impl TopK {
    /// The teacher's k most likely tokens (descending) of log-probs `t` [P, V].
    pub fn from_logprobs(t: &Tensor, k: i64) -> TopK {
        let k = k.min(t.size()[1]);
        let (logp, ids) = t.topk(k, -1, true, true);
        let tail = t.scatter_value(-1, &ids, f64::NEG_INFINITY).logsumexp(&[-1i64][..], false);
        TopK { ids, logp, tail }
    }

    pub fn k(&self) -> i64 {
        self.ids.size()[1]
    }
}

/// Teacher and student log-probs on the k + 1 outcomes of a top-k cache (k outcomes when k
/// covers the vocabulary): `s` is the student's log-softmax at the distillation temperature
/// [P, V].
pub fn cached_pair(top: &TopK, s: &Tensor, tail: Tail) -> (Tensor, Tensor) {
    let vocab = s.size()[1];
    let s_top = s.gather(-1, &top.ids, false);
    let t_top = match tail {
        Tail::Renormalize => &top.logp - top.logp.logsumexp(&[-1i64][..], true),
        Tail::Bucket => top.logp.shallow_clone(),
    };
    if top.k() >= vocab {
        return (t_top, s_top);
    }
    let s_tail = s.scatter_value(-1, &top.ids, f64::NEG_INFINITY).logsumexp(&[-1i64][..], true);
    let t_tail = match tail {
        Tail::Renormalize => s_tail.full_like(f64::NEG_INFINITY).detach(),
        Tail::Bucket => top.tail.unsqueeze(-1).to_kind(s.kind()),
    };
    (Tensor::cat(&[t_top, t_tail], -1), Tensor::cat(&[s_top, s_tail], -1))
}

/// Where the teacher's distribution comes from for one batch of positions.
pub enum TeacherDist<'a> {
    /// Full log-probs [P, V] at the distillation temperature.
    Full(&'a Tensor),
    /// Cached top-k rows at the distillation temperature.
    Cached(&'a TopK, Tail),
}

/// Per-position loss, forward and reverse KL (the metrics), and argmax agreement, for
/// student logits `zs` [P, V] (with gradient) at temperature `temp`.
pub struct Scored {
    pub loss: Tensor,
    pub forward_kl: Tensor,
    pub reverse_kl: Tensor,
    pub agree: Tensor,
}

pub fn score(teacher: &TeacherDist, zs: &Tensor, temp: f64, div: Divergence, beta: f64) -> Scored {
    let s = (zs.to_kind(Kind::Float) / temp).log_softmax(-1, Kind::Float);
    let (t, sp, t_argmax) = match teacher {
        TeacherDist::Full(t) => (t.shallow_clone(), s.shallow_clone(), t.argmax(-1, false)),
        TeacherDist::Cached(top, tail) => {
            let (t, sp) = cached_pair(top, &s, *tail);
            (t, sp, top.ids.select(1, 0))
        }
    };
    let loss = per_token(div, beta, &t, &sp);
    let (forward_kl, reverse_kl) = tch::no_grad(|| (kl_terms(&t, &sp.detach()), kl_terms(&sp.detach(), &t)));
    let agree = s.argmax(-1, false).eq_tensor(&t_argmax).to_kind(Kind::Float);
    Scored { loss, forward_kl, reverse_kl, agree }
}
