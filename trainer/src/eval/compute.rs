//! Inference compute, so that curves from models of different sizes share an x axis.
//!
//! A forward pass over one token costs 2 FLOPs per weight of every matrix multiply it runs
//! (the decoder layers' projections and, where logits are needed, the LM head; the
//! embedding lookup is free) plus attention: 2 x head_dim FLOPs for the query-key scores
//! and 2 x head_dim for the weighted values, per query head and attended key, in every
//! layer. So a token that attends to `ctx` keys (itself included) costs
//!
//! ```text
//! 2 (P_layers + V H) + 4 L n_heads head_dim ctx
//! ```
//!
//! with P_layers the decoder layers' matmul weights, V H the LM head and L the layers
//! (norms, rotary embeddings, activations and sampling are left out: a few FLOPs per hidden
//! unit). A problem's cost is its prompt, prefilled once for all its samples (logits at the
//! last position only), plus, per sample of T tokens, the T - 1 decode passes that produce
//! tokens 2..T (the first comes from the prefill's logits). Tokens that `--min-think` takes
//! back were computed too; they are not counted.

use rollout::ModelConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ComputeModel {
    /// Matmul weights of the decoder layers.
    pub layer_params: f64,
    /// LM head weights (vocab x hidden).
    pub head_params: f64,
    /// 4 x layers x heads x head_dim: attention FLOPs per query token per attended key.
    pub attn_per_key: f64,
}

impl ComputeModel {
    pub fn from_config(c: &ModelConfig) -> Self {
        let (h, i, hd) = (c.hidden_size as f64, c.intermediate_size as f64, c.head_dim as f64);
        let (nh, nkv, l) = (c.num_attention_heads as f64, c.num_key_value_heads as f64, c.num_hidden_layers as f64);
        let attn = h * nh * hd + 2.0 * h * nkv * hd + nh * hd * h;
        let mlp = 3.0 * h * i;
        ComputeModel { layer_params: l * (attn + mlp), head_params: c.vocab_size as f64 * h, attn_per_key: 4.0 * l * nh * hd }
    }

    /// Parameters that count for compute (matmul weights, LM head included).
    pub fn params(&self) -> f64 {
        self.layer_params + self.head_params
    }

    /// Prefill of a `len`-token prompt, logits at its last position.
    pub fn prompt_flops(&self, len: usize) -> f64 {
        let l = len as f64;
        2.0 * self.layer_params * l + 2.0 * self.head_params + self.attn_per_key * l * (l + 1.0) / 2.0
    }

    /// Generating `tokens` tokens after a `prompt_len`-token prompt (the prefill excluded):
    /// decode passes for tokens 2..=tokens, pass j attending to prompt_len + j keys.
    pub fn sample_flops(&self, prompt_len: usize, tokens: usize) -> f64 {
        if tokens < 2 {
            return 0.0;
        }
        let passes = (tokens - 1) as f64;
        // sum over j = 1..tokens-1 of (prompt_len + j) keys.
        let keys = passes * prompt_len as f64 + passes * (passes + 1.0) / 2.0;
        2.0 * self.params() * passes + self.attn_per_key * keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny::{qwen2_config, TinyShape};

    #[test]
    fn flops_by_hand() {
        // hidden 8, intermediate 16, 2 layers, 2 heads of 4, 1 kv head, vocab 10.
        let shape = TinyShape { hidden: 8, layers: 2, heads: 2, kv_heads: 1, intermediate: 16, vocab: 10 };
        let cfg = ModelConfig::from_value(qwen2_config(shape, 10, 0, 64), std::path::Path::new("config.json")).unwrap();
        let m = ComputeModel::from_config(&cfg);
        // Per layer: q 8x8, k and v 8x4 each, o 8x8, mlp 3 x 8x16 = 64 + 64 + 64 + 384 = 576.
        assert_eq!(m.layer_params, 1152.0);
        assert_eq!(m.head_params, 80.0);
        assert_eq!(m.params(), 1232.0);
        // 4 x 2 layers x 2 heads x 4 = 64 FLOPs per query per key.
        assert_eq!(m.attn_per_key, 64.0);
        // Prompt of 3: 2 x 1152 x 3 + 2 x 80 (last logits) + 64 x (1 + 2 + 3) keys.
        assert_eq!(m.prompt_flops(3), 6912.0 + 160.0 + 384.0);
        // 4 tokens after it: passes for tokens 2..4 see 4, 5 and 6 keys.
        assert_eq!(m.sample_flops(3, 4), 3.0 * 2.0 * 1232.0 + 64.0 * 15.0);
        assert_eq!(m.sample_flops(3, 1), 0.0);
        // The closed form equals the sum of per-pass costs.
        let by_pass: f64 = (1..40).map(|j| 2.0 * m.params() + m.attn_per_key * (7 + j) as f64).sum();
        assert_eq!(m.sample_flops(7, 40), by_pass);
    }
}
