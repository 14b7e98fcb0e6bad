//! Batched generation with a KV cache, and the samplers.
//!
//! Prompts are left-padded into one batch; rotary positions follow the mask, so each row
//! gives what it gives alone. Each row draws from its own seeded RNG (one uniform per token,
//! turned into a token by inverse-CDF sampling on the device), so a sample depends on its
//! seed only, not on which batch or worker it ran in.

use crate::error::{Result, RolloutError};
use crate::model::{positions_from_mask, CausalLm, KvCache};
use crate::tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};
use crate::SeededRng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Sampling settings. Filters apply in transformers' order: temperature, top-k, top-p, min-p.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = off.
    pub top_k: i64,
    /// 1.0 = off.
    pub top_p: f64,
    /// 0.0 = off.
    pub min_p: f64,
    pub max_new_tokens: usize,
    /// EOS is suppressed until this many tokens exist (as transformers' min_new_tokens).
    pub min_new_tokens: usize,
    /// Generation stops when the decoded completion contains one of these; the text is cut
    /// before it.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, max_new_tokens: 256, min_new_tokens: 0, stop: vec![] }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(RolloutError::Generation(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be >= 0 (0 = greedy), got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if self.top_k < 0 {
            return bad(format!("top_k must be >= 0 (0 = off), got {}", self.top_k));
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad(format!("min_new_tokens ({}) exceeds max_new_tokens ({})", self.min_new_tokens, self.max_new_tokens));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Eos,
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One sampled completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    /// Generated ids, including the EOS token when it ended the sequence.
    pub token_ids: Vec<i64>,
    /// log pi(token) under the temperature-scaled policy (before top-k/p filtering): the old
    /// log-probs the learner needs. Greedy decoding reports temperature-1 log-probs.
    pub logprobs: Vec<f32>,
    /// Decoded completion (EOS and anything from a stop string on are left out).
    pub text: String,
    pub finish_reason: FinishReason,
}

/// Applies temperature and the filters to f32 logits [B, V]; returns filtered logits where
/// removed tokens are -inf.
pub fn filter_logits(logits: &Tensor, p: &SamplingParams) -> Tensor {
    let mut l = logits / p.temperature;
    let v = l.size()[1];
    if p.top_k > 0 && p.top_k < v {
        let (kth, _) = l.topk(p.top_k, -1, true, true);
        let thresh = kth.narrow(1, p.top_k - 1, 1);
        l = l.masked_fill(&l.lt_tensor(&thresh), f64::NEG_INFINITY);
    }
    if p.top_p < 1.0 {
        // transformers: sort ascending, drop the tokens whose cumulative mass is <= 1 - top_p,
        // always keeping the most likely one.
        let (sorted, idx) = l.sort(-1, false);
        let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        let remove_sorted = cum.le(1.0 - p.top_p);
        let last = remove_sorted.size()[1] - 1;
        let _ = remove_sorted.narrow(1, last, 1).fill_(0);
        let remove = remove_sorted.scatter(1, &idx, &remove_sorted);
        l = l.masked_fill(&remove, f64::NEG_INFINITY);
    }
    if p.min_p > 0.0 {
        let probs = l.softmax(-1, Kind::Float);
        let top = probs.amax(&[-1i64][..], true);
        l = l.masked_fill(&probs.lt_tensor(&(top * p.min_p)), f64::NEG_INFINITY);
    }
    l
}

/// Picks one token per row. `uniforms` [B] in [0, 1) drive inverse-CDF sampling.
/// Returns (tokens [B] i64, log-probs [B] f32 under the temperature-scaled policy).
pub fn sample(logits: &Tensor, eos_mask: Option<&Tensor>, p: &SamplingParams, uniforms: &[f64]) -> (Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    let scale = if p.temperature > 0.0 { p.temperature } else { 1.0 };
    let logp = (&logits / scale).log_softmax(-1, Kind::Float);
    let allowed = match eos_mask {
        Some(m) => logits.masked_fill(m, f64::NEG_INFINITY),
        None => logits.shallow_clone(),
    };
    let tokens = if p.temperature == 0.0 {
        allowed.argmax(-1, false)
    } else {
        let probs = filter_logits(&allowed, p).softmax(-1, Kind::Float);
        let cdf = probs.cumsum(-1, Kind::Float);
        let total = cdf.narrow(1, cdf.size()[1] - 1, 1);
        let u = Tensor::from_slice(uniforms).to_kind(Kind::Float).to_device(logits.device()).unsqueeze(1);
        let idx = (u * total).searchsorted(&cdf, false, true, "right", None::<Tensor>).squeeze_dim(1);
        let idx = idx.clamp_max(probs.size()[1] - 1);
        // A rounding-edge draw that lands on a filtered-out token falls back to the mode.
        let chosen_p = probs.gather(1, &idx.unsqueeze(1), false).squeeze_dim(1);
        idx.where_self(&chosen_p.gt(0.0), &probs.argmax(-1, false))
    };
    let lp = logp.gather(1, &tokens.unsqueeze(1), false).squeeze_dim(1);
    (tokens, lp)
}

/// Generates one completion per prompt. `seeds[i]` drives row i's sampling.
pub fn generate(
    model: &CausalLm,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<i64>],
    seeds: &[u64],
    eos_ids: &[i64],
    p: &SamplingParams,
) -> Result<Vec<Completion>> {
    p.validate()?;
    if !p.stop.is_empty() && tokenizer.is_none() {
        return Err(RolloutError::Generation("stop strings need a tokenizer".into()));
    }
    if prompts.len() != seeds.len() {
        return Err(RolloutError::Generation("one seed per prompt is needed".into()));
    }
    if prompts.iter().any(|x| x.is_empty()) {
        return Err(RolloutError::Generation("empty prompt: a prompt needs at least one token".into()));
    }
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    let vocab = model.cfg.vocab_size;
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t < 0 || t >= vocab) {
        return Err(RolloutError::Generation(format!("token id {bad} is outside the vocabulary (size {vocab})")));
    }
    tch::no_grad(|| generate_inner(model, tokenizer, prompts, seeds, eos_ids, p))
}

fn generate_inner(
    model: &CausalLm,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<i64>],
    seeds: &[u64],
    eos_ids: &[i64],
    p: &SamplingParams,
) -> Result<Vec<Completion>> {
    let device = model.device();
    let b = prompts.len();
    let plen = prompts.iter().map(Vec::len).max().unwrap() as i64;
    let capacity = plen + p.max_new_tokens as i64;
    if capacity > model.cfg.max_position_embeddings {
        // Allowed (RoPE extrapolates) but worth knowing; transformers warns too.
        eprintln!("warning: prompt + max_new_tokens = {capacity} exceeds max_position_embeddings ({})", model.cfg.max_position_embeddings);
    }
    // Left padding: row i's prompt sits at the end of the first `plen` cache slots.
    let mut ids = vec![0i64; b * plen as usize];
    let mut valid = vec![false; b * capacity as usize];
    for (i, pr) in prompts.iter().enumerate() {
        let off = plen as usize - pr.len();
        ids[i * plen as usize + off..(i + 1) * plen as usize].copy_from_slice(pr);
        for j in off..plen as usize {
            valid[i * capacity as usize + j] = true;
        }
    }
    let input = Tensor::from_slice(&ids).view([b as i64, plen]).to_device(device);
    let mut key_valid = Tensor::from_slice(&valid).view([b as i64, capacity]).to_device(device);
    let mut cache = KvCache::new(&model.cfg, b as i64, capacity, model.kind(), device);
    let positions = positions_from_mask(&key_valid.narrow(1, 0, plen));
    let mut next_pos = positions.narrow(1, plen - 1, 1) + 1;
    let hidden = model.forward_hidden(&input, &positions, &key_valid, Some(&mut cache));
    let mut logits = model.logits(&hidden.narrow(1, plen - 1, 1).squeeze_dim(1));

    let eos_mask = if eos_ids.is_empty() || p.min_new_tokens == 0 {
        None
    } else {
        let mut m = vec![false; model.cfg.vocab_size as usize];
        for &e in eos_ids {
            if e >= 0 && (e as usize) < m.len() {
                m[e as usize] = true;
            }
        }
        Some(Tensor::from_slice(&m).to_device(device).unsqueeze(0))
    };
    let mut rngs: Vec<SeededRng> = seeds.iter().map(|&s| SeededRng::seed_from_u64(s)).collect();
    let mut out: Vec<Completion> =
        (0..b).map(|_| Completion { token_ids: vec![], logprobs: vec![], text: String::new(), finish_reason: FinishReason::Length }).collect();
    // `rows[r]` is the prompt index of batch row r. Finished rows leave the batch (see
    // below), so each row keeps its own RNG stream and its own output slot.
    let mut rows: Vec<usize> = (0..b).collect();
    let mut done = vec![false; b];
    for step in 0..p.max_new_tokens {
        let uniforms: Vec<f64> = rows.iter().map(|&i| rngs[i].random::<f64>()).collect();
        let suppress = if step < p.min_new_tokens { eos_mask.as_ref() } else { None };
        let (mut tokens, lps) = sample(&logits, suppress, p, &uniforms);
        let tok_v: Vec<i64> = Vec::try_from(&tokens.to_device(tch::Device::Cpu))?;
        let lp_v: Vec<f32> = Vec::try_from(&lps.to_device(tch::Device::Cpu))?;
        let mut keep = Vec::with_capacity(rows.len());
        for (r, &i) in rows.iter().enumerate() {
            if done[i] {
                continue; // finished, still in the batch until the next compaction
            }
            let c = &mut out[i];
            c.token_ids.push(tok_v[r]);
            c.logprobs.push(lp_v[r]);
            if eos_ids.contains(&tok_v[r]) {
                c.finish_reason = FinishReason::Eos;
                done[i] = true;
            } else if let (false, Some(tk)) = (p.stop.is_empty(), tokenizer) {
                let text = tk.decode(&c.token_ids, false)?;
                if p.stop.iter().any(|s| text.contains(s.as_str())) {
                    c.finish_reason = FinishReason::Stop;
                    done[i] = true;
                }
            }
            if !done[i] {
                keep.push(r as i64);
            }
        }
        if keep.is_empty() || step + 1 == p.max_new_tokens {
            break;
        }
        // Once an eighth of the rows have finished, drop them from the batch: a batch
        // otherwise decodes at full width until its longest row ends. The copy of the
        // cache costs about one decode step; dropping one row at a time would not pay.
        if (rows.len() - keep.len()) * 8 >= rows.len() {
            let idx = Tensor::from_slice(&keep).to_device(device);
            cache.retain_rows(&idx);
            key_valid = key_valid.index_select(0, &idx);
            next_pos = next_pos.index_select(0, &idx);
            tokens = tokens.index_select(0, &idx);
            rows = keep.iter().map(|&r| rows[r as usize]).collect();
        }
        let slot = plen + step as i64;
        let _ = key_valid.narrow(1, slot, 1).fill_(1);
        let hidden = model.forward_hidden(&tokens.unsqueeze(1), &next_pos, &key_valid, Some(&mut cache));
        next_pos += 1;
        logits = model.logits(&hidden.squeeze_dim(1));
    }
    if let Some(tk) = tokenizer {
        for c in &mut out {
            let body = match c.finish_reason {
                FinishReason::Eos => &c.token_ids[..c.token_ids.len() - 1],
                _ => &c.token_ids[..],
            };
            let mut text = tk.decode(body, false)?;
            if c.finish_reason == FinishReason::Stop {
                if let Some(cut) = p.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                    text.truncate(cut);
                }
            }
            c.text = text;
        }
    }
    Ok(out)
}
