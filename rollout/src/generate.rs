//! Batched generation with a KV cache, and the samplers.
//!
//! Prompts are left-padded into one batch; rotary positions follow the mask, so each row
//! gives what it gives alone. Each row draws from its own seeded RNG (one uniform per token,
//! turned into a token by inverse-CDF sampling on the device), so a sample depends on its
//! seed only, not on which batch or worker it ran in.

use crate::error::{Result, RolloutError};
use crate::model::{positions_from_mask, CausalLm, KvCache};
use crate::tokenizer::Tokenizer;
use crate::SeededRng;
use rand::{Rng, SeedableRng};
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
    /// log-probs the learner needs. Greedy decoding reports temperature-1 log-probs. Tokens
    /// that a thinking budget forced in are reported with the policy's log-prob of them too.
    pub logprobs: Vec<f32>,
    /// Decoded completion (EOS and anything from a stop string on are left out).
    pub text: String,
    pub finish_reason: FinishReason,
    /// What a [`ThinkIds`] control saw (all zero / false without one).
    #[serde(default)]
    pub think: ThinkStats,
}

/// The thinking part of one completion, as a [`ThinkIds`] control tracked it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThinkStats {
    /// Whether a thinking part was opened (by the prompt or by the completion).
    pub opened: bool,
    /// Tokens inside the thinking part: after the open sequence, before the close sequence
    /// (continuation words included).
    pub think_tokens: usize,
    /// Tokens after the thinking part closed (EOS excluded); without a thinking part, every
    /// token; 0 while thinking never closed.
    pub answer_tokens: usize,
    /// Whether the budget ended the thinking part (the end-of-thinking string was forced in).
    pub budget_forced: bool,
    /// How often an early end of thinking was replaced by the continuation word.
    pub continuations: usize,
}

/// Budget forcing (s1, Muennighoff et al. 2025) at the token level. The thinking part starts
/// after `open` (the prompt may end with it) and ends with `close`; its tokens are counted.
/// * `max_think = Some(T)`: once T thinking tokens exist, `force_end` (e.g. `</think>
///   <answer>`) is fed in token by token instead of samples, and the model answers.
/// * `min_think = T`: while fewer than T thinking tokens exist, a `close` the model writes
///   (or an EOS) is taken back (its tokens leave the sequence and the KV cache) and
///   `continuation` (e.g. `Wait`) is fed in instead, so thinking goes on.
///
/// A thinking part opens at most once; after it closes, the completion is the answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThinkIds {
    pub open: Vec<i64>,
    pub close: Vec<i64>,
    pub force_end: Vec<i64>,
    pub continuation: Vec<i64>,
    pub max_think: Option<usize>,
    pub min_think: usize,
}

impl ThinkIds {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(RolloutError::Generation(m.to_string()));
        if self.open.is_empty() || self.close.is_empty() {
            return bad("the thinking control needs non-empty open and close token sequences");
        }
        if self.max_think.is_some() && self.force_end.is_empty() {
            return bad("a thinking budget needs a non-empty end-of-thinking sequence to force in");
        }
        if self.min_think > 0 && self.continuation.is_empty() {
            return bad("a minimum thinking length needs a non-empty continuation sequence");
        }
        if let Some(max) = self.max_think {
            if self.min_think > max {
                return bad(&format!("the minimum thinking length ({}) exceeds the thinking budget ({max})", self.min_think));
            }
        }
        Ok(())
    }
}

/// The thinking control as strings (what configs and the CLI give), turned into token
/// ids by [`ThinkParams::resolve`]. Defaults: `<think>` / `</think>`, the end-of-thinking
/// string `</think> <answer>` (the close plus the R1 answer opener), the continuation word
/// `Wait` (s1), no budget, no minimum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThinkParams {
    pub open: String,
    pub close: String,
    /// Forced in when the budget is reached.
    pub end: String,
    /// Fed in place of an early end of thinking under `min`.
    pub continuation: String,
    /// Thinking budget in tokens (`None` = unlimited).
    pub budget: Option<usize>,
    /// Minimum thinking tokens (0 = off).
    pub min: usize,
}

impl Default for ThinkParams {
    fn default() -> Self {
        ThinkParams {
            open: "<think>".into(),
            close: "</think>".into(),
            end: "</think> <answer>".into(),
            continuation: "Wait".into(),
            budget: None,
            min: 0,
        }
    }
}

impl ThinkParams {
    /// Token ids of the strings (encoded without special tokens), checked.
    pub fn resolve(&self, tk: &Tokenizer) -> Result<ThinkIds> {
        let enc = |what: &str, s: &str| -> Result<Vec<i64>> {
            let ids = tk.encode(s, false)?;
            if ids.is_empty() {
                return Err(RolloutError::Generation(format!(
                    "the thinking {what} string {s:?} encodes to no tokens; give a non-empty string"
                )));
            }
            Ok(ids)
        };
        let ids = ThinkIds {
            open: enc("open", &self.open)?,
            close: enc("close", &self.close)?,
            force_end: if self.budget.is_some() { enc("end", &self.end)? } else { vec![] },
            continuation: if self.min > 0 { enc("continuation", &self.continuation)? } else { vec![] },
            max_think: self.budget,
            min_think: self.min,
        };
        ids.validate()?;
        Ok(ids)
    }
}

/// Where a row is in its completion, for [`ThinkIds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Before,
    Thinking,
    /// Feeding `force_end`.
    Forcing,
    Answering,
}

/// One row's thinking state: a small machine that turns the sampled token into the token
/// to emit (and says how many earlier tokens to take back).
#[derive(Debug, Clone)]
pub struct ThinkTracker {
    phase: Phase,
    count: usize,
    queue: std::collections::VecDeque<i64>,
    /// Index in the completion where the answer starts (after the close sequence).
    answer_from: Option<usize>,
    stats: ThinkStats,
}

/// What a row emits this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emit {
    pub token: i64,
    /// Whether `token` was forced in rather than sampled.
    pub forced: bool,
    /// How many of the row's last generated tokens to take back before emitting `token`.
    pub take_back: usize,
}

impl ThinkTracker {
    /// The state after the prompt: thinking already when the prompt ends with `open`.
    pub fn new(ids: &ThinkIds, prompt: &[i64]) -> Self {
        let mut t =
            ThinkTracker { phase: Phase::Before, count: 0, queue: Default::default(), answer_from: None, stats: ThinkStats::default() };
        if prompt.ends_with(&ids.open) {
            t.open(ids);
        }
        t
    }

    fn open(&mut self, ids: &ThinkIds) {
        self.phase = Phase::Thinking;
        self.stats.opened = true;
        self.check_budget(ids);
    }

    fn check_budget(&mut self, ids: &ThinkIds) {
        if self.phase == Phase::Thinking && ids.max_think.is_some_and(|t| self.count >= t) {
            self.phase = Phase::Forcing;
            self.stats.budget_forced = true;
            self.queue = ids.force_end.iter().copied().collect();
        }
    }

    /// Decides the token of this step. `generated`: the row's tokens so far; `sampled`: the
    /// sampler's choice; `eos`: whether `sampled` is an end-of-sequence id.
    pub fn next(&mut self, ids: &ThinkIds, generated: &[i64], sampled: i64, eos: bool) -> Emit {
        let ends_with = |seq: &[i64], tok: i64| -> bool {
            let n = seq.len();
            n > 0 && seq[n - 1] == tok && generated.ends_with(&seq[..n - 1])
        };
        match self.phase {
            Phase::Forcing => {
                let token = self.queue.pop_front().expect("forcing with an empty queue");
                let at = generated.len() + 1;
                if self.answer_from.is_none() && ends_with(&ids.close, token) {
                    self.answer_from = Some(at);
                }
                if self.queue.is_empty() {
                    self.phase = Phase::Answering;
                    self.answer_from.get_or_insert(generated.len() + 1 - ids.force_end.len());
                }
                Emit { token, forced: true, take_back: 0 }
            }
            Phase::Thinking => {
                if let Some(token) = self.queue.pop_front() {
                    // The rest of a continuation word.
                    self.count += 1;
                    self.check_budget(ids);
                    return Emit { token, forced: true, take_back: 0 };
                }
                let closes = ends_with(&ids.close, sampled);
                if closes || eos {
                    let partial = if closes { ids.close.len() - 1 } else { 0 };
                    // Thinking tokens so far, without the close sequence's first tokens.
                    let thought = self.count - partial;
                    if thought < ids.min_think {
                        self.count = thought;
                        self.stats.continuations += 1;
                        self.queue = ids.continuation.iter().copied().collect();
                        let token = self.queue.pop_front().expect("validated: non-empty continuation");
                        self.count += 1;
                        self.check_budget(ids);
                        return Emit { token, forced: true, take_back: partial };
                    }
                    self.count = thought;
                    self.phase = Phase::Answering;
                    if closes {
                        self.answer_from = Some(generated.len() + 1);
                    }
                    return Emit { token: sampled, forced: false, take_back: 0 };
                }
                self.count += 1;
                self.check_budget(ids);
                Emit { token: sampled, forced: false, take_back: 0 }
            }
            Phase::Before => {
                if ends_with(&ids.open, sampled) {
                    self.open(ids);
                }
                Emit { token: sampled, forced: false, take_back: 0 }
            }
            Phase::Answering => Emit { token: sampled, forced: false, take_back: 0 },
        }
    }

    /// The figures for the finished completion `tokens` (`eos`: whether it ended with EOS).
    pub fn finish(&self, tokens: usize, eos: bool) -> ThinkStats {
        let body = tokens - eos as usize;
        let mut s = self.stats;
        s.think_tokens = self.count;
        s.answer_tokens = match (self.phase, self.answer_from) {
            (Phase::Before, _) => body,
            (_, Some(a)) => body.saturating_sub(a),
            _ => 0,
        };
        s
    }
}

/// Counts of what a generation call computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Distinct prompts prefilled (each once, however many rows continue it).
    pub prompts_prefilled: usize,
    /// Real (unpadded) prompt tokens computed in the prefill.
    pub prefill_tokens: usize,
    /// Rows generated.
    pub rows: usize,
}

impl GenStats {
    pub fn add(&mut self, o: &GenStats) {
        self.prompts_prefilled += o.prompts_prefilled;
        self.prefill_tokens += o.prefill_tokens;
        self.rows += o.rows;
    }
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
    generate_with(model, tokenizer, prompts, seeds, eos_ids, p, None).map(|(c, _)| c)
}

/// [`generate`] with an optional thinking control, also returning what was computed.
///
/// Rows with the same prompt share it: each distinct prompt is prefilled once and its KV
/// cache copied to every row that continues it (G samples of one prompt, N samples in
/// evaluation). A row's sample still depends on its seed only.
pub fn generate_with(
    model: &CausalLm,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<i64>],
    seeds: &[u64],
    eos_ids: &[i64],
    p: &SamplingParams,
    think: Option<&ThinkIds>,
) -> Result<(Vec<Completion>, GenStats)> {
    p.validate()?;
    if let Some(t) = think {
        t.validate()?;
    }
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
        return Ok((vec![], GenStats::default()));
    }
    let vocab = model.cfg.vocab_size;
    let forced = think.iter().flat_map(|t| t.open.iter().chain(&t.close).chain(&t.force_end).chain(&t.continuation));
    if let Some(bad) = prompts.iter().flatten().chain(forced).find(|&&t| t < 0 || t >= vocab) {
        return Err(RolloutError::Generation(format!("token id {bad} is outside the vocabulary (size {vocab})")));
    }
    tch::no_grad(|| generate_inner(model, tokenizer, prompts, seeds, eos_ids, p, think))
}

/// The distinct prompts in order of first appearance, and each row's index among them.
pub fn distinct_prompts(prompts: &[Vec<i64>]) -> (Vec<&[i64]>, Vec<i64>) {
    let mut seen: std::collections::HashMap<&[i64], i64> = Default::default();
    let mut uniq = vec![];
    let rows = prompts
        .iter()
        .map(|pr| {
            *seen.entry(pr.as_slice()).or_insert_with(|| {
                uniq.push(pr.as_slice());
                uniq.len() as i64 - 1
            })
        })
        .collect();
    (uniq, rows)
}

/// Log-probs [B] of `tokens` under the temperature-scaled policy, as [`sample`] reports them.
fn token_logprobs(logits: &Tensor, tokens: &Tensor, p: &SamplingParams) -> Tensor {
    let scale = if p.temperature > 0.0 { p.temperature } else { 1.0 };
    (logits.to_kind(Kind::Float) / scale).log_softmax(-1, Kind::Float).gather(1, &tokens.unsqueeze(1), false).squeeze_dim(1)
}

fn generate_inner(
    model: &CausalLm,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<i64>],
    seeds: &[u64],
    eos_ids: &[i64],
    p: &SamplingParams,
    think: Option<&ThinkIds>,
) -> Result<(Vec<Completion>, GenStats)> {
    let device = model.device();
    let b = prompts.len();
    let (uniq, row_prompt) = distinct_prompts(prompts);
    let u = uniq.len();
    let plen = uniq.iter().map(|x| x.len()).max().unwrap() as i64;
    let capacity = plen + p.max_new_tokens as i64;
    if capacity > model.cfg.max_position_embeddings {
        // Allowed (RoPE extrapolates) but worth knowing; transformers warns too.
        eprintln!("warning: prompt + max_new_tokens = {capacity} exceeds max_position_embeddings ({})", model.cfg.max_position_embeddings);
    }
    // Left padding: prompt i sits at the end of the first `plen` cache slots.
    let mut ids = vec![0i64; u * plen as usize];
    let mut valid = vec![false; u * capacity as usize];
    for (i, pr) in uniq.iter().enumerate() {
        let off = plen as usize - pr.len();
        ids[i * plen as usize + off..(i + 1) * plen as usize].copy_from_slice(pr);
        for j in off..plen as usize {
            valid[i * capacity as usize + j] = true;
        }
    }
    let stats = GenStats { prompts_prefilled: u, prefill_tokens: uniq.iter().map(|x| x.len()).sum(), rows: b };
    // Prefill each distinct prompt once, then give every row a copy of its prompt's cache.
    let input = Tensor::from_slice(&ids).view([u as i64, plen]).to_device(device);
    let mut key_valid = Tensor::from_slice(&valid).view([u as i64, capacity]).to_device(device);
    let mut cache = KvCache::new(&model.cfg, u as i64, capacity, model.kind(), device);
    let positions = positions_from_mask(&key_valid.narrow(1, 0, plen));
    let mut next_pos = positions.narrow(1, plen - 1, 1) + 1;
    let hidden = model.forward_hidden(&input, &positions, &key_valid, Some(&mut cache));
    let mut logits = model.logits(&hidden.narrow(1, plen - 1, 1).squeeze_dim(1));
    if u < b {
        let idx = Tensor::from_slice(&row_prompt).to_device(device);
        cache.retain_rows(&idx);
        key_valid = key_valid.index_select(0, &idx);
        next_pos = next_pos.index_select(0, &idx);
        logits = logits.index_select(0, &idx);
    }

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
    let mut out: Vec<Completion> = (0..b)
        .map(|_| Completion {
            token_ids: vec![],
            logprobs: vec![],
            text: String::new(),
            finish_reason: FinishReason::Length,
            think: ThinkStats::default(),
        })
        .collect();
    let mut trackers: Vec<Option<ThinkTracker>> = prompts.iter().map(|pr| think.map(|t| ThinkTracker::new(t, pr))).collect();
    // The cache slot each generated token was fed at (for taking tokens back).
    let mut slots: Vec<Vec<i64>> = vec![vec![]; b];
    // `rows[r]` is the prompt index of batch row r. Finished rows leave the batch (see
    // below), so each row keeps its own RNG stream and its own output slot.
    let mut rows: Vec<usize> = (0..b).collect();
    let mut done = vec![false; b];
    for step in 0..p.max_new_tokens {
        let slot = plen + step as i64;
        let uniforms: Vec<f64> = rows.iter().map(|&i| rngs[i].random::<f64>()).collect();
        let suppress = if step < p.min_new_tokens { eos_mask.as_ref() } else { None };
        let (mut tokens, lps) = sample(&logits, suppress, p, &uniforms);
        let mut tok_v: Vec<i64> = Vec::try_from(&tokens.to_device(tch::Device::Cpu))?;
        let mut lp_v: Vec<f32> = Vec::try_from(&lps.to_device(tch::Device::Cpu))?;
        if let Some(t) = think {
            // Budget forcing: some rows emit a forced token instead of the sampled one, and
            // may take back their last tokens (out of the sequence and out of attention).
            let mut any_forced = false;
            for (r, &i) in rows.iter().enumerate() {
                if done[i] {
                    continue;
                }
                let tr = trackers[i].as_mut().expect("a tracker per row");
                let e = tr.next(t, &out[i].token_ids, tok_v[r], eos_ids.contains(&tok_v[r]));
                if e.take_back > 0 {
                    let c = &mut out[i];
                    let keep = c.token_ids.len() - e.take_back;
                    c.token_ids.truncate(keep);
                    c.logprobs.truncate(keep);
                    for s in slots[i].drain(keep..) {
                        let _ = key_valid.get(r as i64).narrow(0, s, 1).fill_(0);
                    }
                    let _ = next_pos.get(r as i64).g_sub_scalar_(e.take_back as i64);
                }
                any_forced |= e.forced;
                tok_v[r] = e.token;
            }
            if any_forced {
                tokens = Tensor::from_slice(&tok_v).to_device(device);
                lp_v = Vec::try_from(&token_logprobs(&logits, &tokens, p).to_device(tch::Device::Cpu))?;
            }
        }
        let mut keep = Vec::with_capacity(rows.len());
        for (r, &i) in rows.iter().enumerate() {
            if done[i] {
                continue; // finished, still in the batch until the next compaction
            }
            let c = &mut out[i];
            c.token_ids.push(tok_v[r]);
            c.logprobs.push(lp_v[r]);
            slots[i].push(slot);
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
        let _ = key_valid.narrow(1, slot, 1).fill_(1);
        let hidden = model.forward_hidden(&tokens.unsqueeze(1), &next_pos, &key_valid, Some(&mut cache));
        next_pos += 1;
        logits = model.logits(&hidden.squeeze_dim(1));
    }
    for (c, tr) in out.iter_mut().zip(&trackers) {
        if let Some(tr) = tr {
            c.think = tr.finish(c.token_ids.len(), c.finish_reason == FinishReason::Eos);
        }
    }
    if let Some(tk) = tokenizer {
        for c in &mut out {
            c.text = completion_text(tk, &c.token_ids, c.finish_reason, &p.stop)?;
        }
    }
    Ok((out, stats))
}

/// A completion's text: its tokens decoded without the EOS token that ended it, cut before
/// the first stop string when one ended it (whoever sampled it: the local pool or an engine).
pub fn completion_text(tk: &Tokenizer, token_ids: &[i64], finish: FinishReason, stop: &[String]) -> Result<String> {
    let body = match finish {
        FinishReason::Eos => &token_ids[..token_ids.len().saturating_sub(1)],
        _ => token_ids,
    };
    let mut text = tk.decode(body, false)?;
    if finish == FinishReason::Stop {
        if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: i64 = 1;
    const CLOSE: i64 = 2;
    const EOS: i64 = 0;

    fn ids(max: Option<usize>, min: usize) -> ThinkIds {
        ThinkIds {
            open: vec![OPEN],
            close: vec![CLOSE],
            force_end: vec![CLOSE, 7, 8],
            continuation: vec![5, 6],
            max_think: max,
            min_think: min,
        }
    }

    /// Runs the tracker over a stream of sampled tokens, applying take-backs as generation
    /// does; returns the completion and the tracker.
    fn run(ids: &ThinkIds, prompt: &[i64], sampled: &[i64]) -> (Vec<i64>, ThinkStats) {
        let mut t = ThinkTracker::new(ids, prompt);
        let mut out: Vec<i64> = vec![];
        for &s in sampled {
            let e = t.next(ids, &out, s, s == EOS);
            out.truncate(out.len() - e.take_back);
            out.push(e.token);
            if e.token == EOS {
                break;
            }
        }
        let eos = out.last() == Some(&EOS);
        (out.clone(), t.finish(out.len(), eos))
    }

    #[test]
    fn budget_forces_the_end_after_exactly_t_thinking_tokens() {
        // The prompt opens thinking; the sampler never closes it.
        let (out, st) = run(&ids(Some(3), 0), &[9, OPEN], &[10, 11, 12, 13, 14, 15, 16, EOS]);
        assert_eq!(out, vec![10, 11, 12, CLOSE, 7, 8, 16, EOS]);
        assert_eq!(st, ThinkStats { opened: true, think_tokens: 3, answer_tokens: 3, budget_forced: true, continuations: 0 });
        // Opened by the completion: thinking counts from after the open token.
        let (out, st) = run(&ids(Some(2), 0), &[9], &[20, OPEN, 10, 11, 12, 13, 14, 15]);
        assert_eq!(out, vec![20, OPEN, 10, 11, CLOSE, 7, 8, 15]);
        assert_eq!((st.think_tokens, st.answer_tokens, st.budget_forced), (2, 3, true));
        // A close before the budget ends thinking on its own; nothing is forced.
        let (out, st) = run(&ids(Some(5), 0), &[OPEN], &[10, CLOSE, 11, EOS]);
        assert_eq!(out, vec![10, CLOSE, 11, EOS]);
        assert_eq!(st, ThinkStats { opened: true, think_tokens: 1, answer_tokens: 1, budget_forced: false, continuations: 0 });
        // Budget 0 forces the end at once.
        let (out, _) = run(&ids(Some(0), 0), &[OPEN], &[10, 11, 12, 13]);
        assert_eq!(out, vec![CLOSE, 7, 8, 13]);
        // No thinking part: every token is an answer token.
        let (_, st) = run(&ids(Some(1), 0), &[9], &[10, 11, EOS]);
        assert_eq!(st, ThinkStats { opened: false, think_tokens: 0, answer_tokens: 2, budget_forced: false, continuations: 0 });
    }

    #[test]
    fn min_think_replaces_early_ends_by_the_continuation() {
        // Closes at 1 and 4 thinking tokens are replaced (the continuation counts as
        // thinking); the close at 6 stands.
        let (out, st) = run(&ids(None, 6), &[OPEN], &[10, CLOSE, 99, 11, CLOSE, 99, 12, CLOSE, 13, EOS]);
        // 10, [5 6] (99 was dropped for the continuation's 2nd token), 11, then the second
        // close at 4 thinking tokens -> [5 6] again; 12 is the 7th thinking token; close.
        assert_eq!(out, vec![10, 5, 6, 11, 5, 6, 12, CLOSE, 13, EOS]);
        assert_eq!((st.think_tokens, st.continuations, st.answer_tokens), (7, 2, 1));
        // EOS while thinking counts as an early end too.
        let (out, st) = run(&ids(None, 3), &[OPEN], &[EOS, 99, 10, EOS, 11]);
        assert_eq!(out, vec![5, 6, 10, EOS]);
        assert_eq!((st.think_tokens, st.continuations, st.answer_tokens), (3, 1, 0));
        // With a budget too: the continuation is cut off by the forced end.
        let (out, st) = run(&ids(Some(2), 2), &[OPEN], &[10, CLOSE, 99, 11, 12]);
        assert_eq!(out, vec![10, 5, CLOSE, 7, 8]);
        assert_eq!((st.think_tokens, st.budget_forced), (2, true));
    }

    #[test]
    fn multi_token_close_is_taken_back_whole() {
        let ids = ThinkIds {
            open: vec![OPEN],
            close: vec![3, 4],
            force_end: vec![3, 4, 8],
            continuation: vec![5],
            max_think: None,
            min_think: 4,
        };
        // 10, 3, 4 closes after one thinking token (3 was counted, then is taken back).
        let (out, st) = run(&ids, &[OPEN], &[10, 3, 4, 11, 12, 3, 4, 13, EOS]);
        assert_eq!(out, vec![10, 5, 11, 12, 3, 4, 13, EOS]);
        assert_eq!((st.think_tokens, st.continuations, st.answer_tokens), (4, 1, 1));
        // Budget forcing with a two-token close: the answer starts after it.
        let ids = ThinkIds { max_think: Some(2), min_think: 0, ..ids };
        let (out, st) = run(&ids, &[OPEN], &[10, 11, 12, 13, 14, 15]);
        assert_eq!(out, vec![10, 11, 3, 4, 8, 15]);
        assert_eq!((st.think_tokens, st.answer_tokens), (2, 2));
    }

    #[test]
    fn bad_think_controls_are_refused() {
        let ok = ids(Some(4), 2);
        assert!(ok.validate().is_ok());
        assert!(ThinkIds { close: vec![], ..ok.clone() }.validate().unwrap_err().to_string().contains("close"));
        assert!(ThinkIds { force_end: vec![], ..ok.clone() }.validate().unwrap_err().to_string().contains("end-of-thinking"));
        assert!(ThinkIds { continuation: vec![], ..ok.clone() }.validate().unwrap_err().to_string().contains("continuation"));
        assert!(ThinkIds { min_think: 5, ..ok }.validate().unwrap_err().to_string().contains("exceeds"));
    }

    #[test]
    fn distinct_prompts_in_order() {
        let p = vec![vec![1, 2], vec![3], vec![1, 2], vec![3], vec![4]];
        let (u, rows) = distinct_prompts(&p);
        assert_eq!(u, vec![&[1i64, 2][..], &[3][..], &[4][..]]);
        assert_eq!(rows, vec![0, 1, 0, 1, 2]);
    }
}
