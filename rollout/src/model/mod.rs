//! The policy model: a pre-norm decoder with RMSNorm, rotary embeddings, grouped-query
//! attention and a SwiGLU MLP. Qwen2 and Llama differ only in biases and rope scaling,
//! which [`ModelConfig`] carries, so both families share these modules. Variables are
//! named exactly like the Hugging Face checkpoint tensors (`model.layers.0.self_attn.q_proj.weight`),
//! so loading and saving need no renaming table.

pub mod rope;
pub mod weights;

use crate::config::ModelConfig;
use rope::Rope;
use tch::{nn, Device, Kind, Tensor};

/// How fresh variables are filled before (optionally) loading a checkpoint.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Zeros (cheap): weights come from a checkpoint right after.
    Empty,
    /// Hugging Face's init: normal(0, std) matrices, unit norms, zero biases.
    Random { std: f64 },
}

fn matrix(p: &nn::Path, name: &str, dims: &[i64], init: Init) -> Tensor {
    match init {
        Init::Empty => p.var(name, dims, nn::Init::Const(0.0)),
        Init::Random { std } => p.var(name, dims, nn::Init::Randn { mean: 0.0, stdev: std }),
    }
}

/// `y = x W^T + b`, as torch.nn.Linear.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    fn new(p: nn::Path, in_dim: i64, out_dim: i64, bias: bool, init: Init) -> Self {
        let weight = matrix(&p, "weight", &[out_dim, in_dim], init);
        let bias = bias.then(|| p.var("bias", &[out_dim], nn::Init::Const(0.0)));
        Linear { weight, bias }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// RMSNorm computed in f32 and cast back before the weight multiply, as transformers does.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        RmsNorm { weight: p.var("weight", &[dim], nn::Init::Const(1.0)), eps }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        let normed = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
}

/// Per-layer key/value cache, preallocated for the whole generation.
#[derive(Debug)]
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Number of positions already written.
    pub len: i64,
    pub capacity: i64,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig, batch: i64, capacity: i64, kind: Kind, device: Device) -> Self {
        let shape = [batch, cfg.num_key_value_heads, capacity, cfg.head_dim];
        let n = cfg.num_hidden_layers as usize;
        KvCache {
            k: (0..n).map(|_| Tensor::zeros(shape, (kind, device))).collect(),
            v: (0..n).map(|_| Tensor::zeros(shape, (kind, device))).collect(),
            len: 0,
            capacity,
        }
    }

    /// Keeps only the batch rows `rows` (i64 indices, in the new order): finished sequences
    /// leave the batch so later decode steps stop paying for them.
    pub fn retain_rows(&mut self, rows: &Tensor) {
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = t.index_select(0, rows);
        }
    }
}

#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_heads: i64,
    n_kv: i64,
    head_dim: i64,
    /// `[q; k; v]` weight (and bias) in one tensor, when fused for inference: the three
    /// projection weights are then views into it (see [`CausalLm::fuse_for_inference`]).
    qkv: Option<(Tensor, Option<Tensor>)>,
}

impl Attention {
    fn new(p: nn::Path, cfg: &ModelConfig, init: Init) -> Self {
        let (h, hd, nh, nkv) = (cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads);
        Attention {
            q_proj: Linear::new(&p / "q_proj", h, nh * hd, cfg.qkv_bias, init),
            k_proj: Linear::new(&p / "k_proj", h, nkv * hd, cfg.qkv_bias, init),
            v_proj: Linear::new(&p / "v_proj", h, nkv * hd, cfg.qkv_bias, init),
            o_proj: Linear::new(&p / "o_proj", nh * hd, h, cfg.o_bias, init),
            n_heads: nh,
            n_kv: nkv,
            head_dim: hd,
            qkv: None,
        }
    }

    /// Rotated queries and keys, and values: [B, heads, T, head_dim] each.
    fn qkv(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, t, _) = x.size3().expect("attention input is [B, T, H]");
        let (nh, nkv, hd) = (self.n_heads, self.n_kv, self.head_dim);
        match &self.qkv {
            // One matmul instead of three, and one rotary pass over the q and k heads
            // together (fused weights are frozen: no gradients wanted).
            Some((w, bias)) => {
                let qkv = x.linear(w, bias.as_ref()).view([b, t, nh + 2 * nkv, hd]).transpose(1, 2);
                let qk = rope::apply(&qkv.narrow(1, 0, nh + nkv), cos, sin);
                (qk.narrow(1, 0, nh), qk.narrow(1, nh, nkv), qkv.narrow(1, nh + nkv, nkv))
            }
            None => {
                let q = self.q_proj.forward(x).view([b, t, nh, hd]).transpose(1, 2);
                let k = self.k_proj.forward(x).view([b, t, nkv, hd]).transpose(1, 2);
                let v = self.v_proj.forward(x).view([b, t, nkv, hd]).transpose(1, 2);
                (rope::apply(&q, cos, sin), rope::apply(&k, cos, sin), v)
            }
        }
    }

    /// Attention of queries `q` [B, heads, T, hd] over keys/values [B, kv_heads, S, hd] under
    /// `mask` (bool [B, 1, T, S], true = may attend), then the output projection: [B, T, H].
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
        let (b, _, t, _) = q.size4().expect("queries are [B, heads, T, head_dim]");
        let (nh, nkv, hd) = (self.n_heads, self.n_kv, self.head_dim);
        let y = if t == 1 && b >= 16 && self.qkv.is_some() {
            // Decoding one token for a large batch: two batched matmuls over [B, kv, G, S]
            // (the G query heads that share a kv head side by side) beat SDPA's kernel at
            // q_len 1 (0.17 vs 0.30 ms a layer at B = 64 here), with no repeat of the cache
            // for GQA. At small batches the extra dispatches cost more than they save.
            let g = nh / nkv;
            let s_len = k.size()[2];
            let qg = q.reshape([b, nkv, g, hd]);
            let scores = qg.matmul(&k.transpose(-1, -2)) * (1.0 / (hd as f64).sqrt());
            let scores = scores.masked_fill(&mask.view([b, 1, 1, s_len]).logical_not(), f64::NEG_INFINITY);
            let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
            probs.matmul(v).reshape([b, nh, 1, hd])
        } else {
            // Explicit mask: SDPA's is_causal is anchored top-left, wrong once a cache is used.
            Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, None, nkv != nh)
        };
        self.o_proj.forward(&y.transpose(1, 2).reshape([b, t, nh * hd]))
    }

    /// `x`: [B, T, H]; `cos`/`sin`: [B, 1, T, head_dim]; `mask`: bool [B, 1, T, S] where
    /// S = cached + T (true = may attend). With a cache, the new keys/values are written at
    /// positions `[cache.len, cache.len + T)` of layer `layer`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor, cache: Option<(&mut KvCache, usize)>) -> Tensor {
        let t = x.size()[1];
        let (q, k, v) = self.qkv(x, cos, sin);
        let (k, v) = match cache {
            Some((cache, layer)) => {
                let start = cache.len;
                cache.k[layer].narrow(2, start, t).copy_(&k);
                cache.v[layer].narrow(2, start, t).copy_(&v);
                (cache.k[layer].narrow(2, 0, start + t), cache.v[layer].narrow(2, 0, start + t))
            }
            None => (k, v),
        };
        self.attend(&q, &k, &v, mask)
    }
}

#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// `[gate; up]` weight (and bias) when fused for inference.
    gate_up: Option<(Tensor, Option<Tensor>)>,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &ModelConfig, init: Init) -> Self {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Mlp {
            gate_proj: Linear::new(&p / "gate_proj", h, i, b, init),
            up_proj: Linear::new(&p / "up_proj", h, i, b, init),
            down_proj: Linear::new(&p / "down_proj", i, h, b, init),
            gate_up: None,
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        match &self.gate_up {
            Some((w, bias)) => {
                let gu = x.linear(w, bias.as_ref());
                let i = gu.size()[gu.dim() - 1] / 2;
                self.down_proj.forward(&(gu.narrow(-1, 0, i).silu() * gu.narrow(-1, i, i)))
            }
            None => self.down_proj.forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x))),
        }
    }
}

#[derive(Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(p: nn::Path, cfg: &ModelConfig, init: Init) -> Self {
        DecoderLayer {
            self_attn: Attention::new(&p / "self_attn", cfg, init),
            mlp: Mlp::new(&p / "mlp", cfg, init),
            input_layernorm: RmsNorm::new(&p / "input_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
            post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
        }
    }

    /// The layer over `x` [B, T, H]: `x + attn(norm(x))`, then [`mlp_residual`](Self::mlp_residual).
    /// `at` holds the rotary tables and mask for `x`'s positions; with a cache `(cache, i)`, the
    /// new keys and values go to its layer `i` (see [`Attention::forward`]).
    fn forward(&self, x: &Tensor, at: &AttnInputs, cache: Option<(&mut KvCache, usize)>) -> Tensor {
        let h = self.input_layernorm.forward(x);
        let h = self.self_attn.forward(&h, &at.cos, &at.sin, &at.mask, cache);
        self.mlp_residual(&(x + h))
    }

    /// The layer over a shared-prefix stream `xp` [U, Tp, H] and the rows continuing it, `xs`
    /// [N, Tc, H] (row n continues prefix `row_prefix[n]`): the prefixes attend among
    /// themselves, each row attends to its prefix's keys then its own; then each stream
    /// goes through [`mlp_residual`](Self::mlp_residual). Returns the new `(xp, xs)`.
    fn forward_prefixed(&self, xp: &Tensor, xs: &Tensor, prefix: &AttnInputs, rows: &AttnInputs, row_prefix: &Tensor) -> (Tensor, Tensor) {
        let a = &self.self_attn;
        let (qp, kp, vp) = a.qkv(&self.input_layernorm.forward(xp), &prefix.cos, &prefix.sin);
        let (qs, ks, vs) = a.qkv(&self.input_layernorm.forward(xs), &rows.cos, &rows.sin);
        let k = Tensor::cat(&[kp.index_select(0, row_prefix), ks], 2);
        let v = Tensor::cat(&[vp.index_select(0, row_prefix), vs], 2);
        let xs = xs + a.attend(&qs, &k, &v, &rows.mask);
        let xp = xp + a.attend(&qp, &kp, &vp, &prefix.mask);
        let xp = self.mlp_residual(&xp);
        let xs = self.mlp_residual(&xs);
        (xp, xs)
    }

    /// The second half of every layer: `x + mlp(post_attention_layernorm(x))`.
    fn mlp_residual(&self, x: &Tensor) -> Tensor {
        x + self.mlp.forward(&self.post_attention_layernorm.forward(x))
    }
}

/// What attention needs about a stream of positions: rotary `cos`/`sin` [B, 1, T, head_dim]
/// and the bool `mask` [B, 1, T, S] (true = may attend).
struct AttnInputs {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

/// Starts one backward pass from several tensors at once: `sum_i sum(t_i * g_i)` has
/// gradient `g_i` at `t_i`, so its backward carries every given gradient in a single pass
/// (a weight reached from several of them gets their sum added once). Pairs whose gradient
/// is undefined are left out; returns false when none is left (nothing to run).
pub fn backward_from(pairs: &[(&Tensor, &Tensor)]) -> bool {
    let terms: Vec<Tensor> = pairs.iter().filter(|(_, g)| g.defined()).map(|(t, g)| (*t * *g).sum(Kind::Float)).collect();
    match terms.split_first() {
        Some((first, rest)) => {
            rest.iter().fold(first.shallow_clone(), |acc, t| acc + t).backward();
            true
        }
        None => false,
    }
}

/// How a checkpointed pass's streams go through a layer.
enum Layout {
    /// [`CausalLm::forward_prefixed`]'s two streams: shared prefixes and the rows after them.
    Prefixed { at_p: AttnInputs, at_s: AttnInputs, row_prefix: Tensor },
    /// [`CausalLm::forward_hidden`]'s one stream (no cache).
    Plain { at: AttnInputs },
}

/// What a checkpointed forward ([`CausalLm::forward_prefixed_checkpointed`],
/// [`CausalLm::forward_hidden_checkpointed`]) kept to finish the backward pass: each
/// layer's input streams (no autograd history), the last layer's outputs (leaves that
/// gather the caller's gradient), the token ids of each stream and the attention inputs.
pub struct Checkpointed {
    inputs: Vec<Vec<Tensor>>,
    last: Vec<Tensor>,
    ids: Vec<Tensor>,
    layout: Layout,
}

impl Checkpointed {
    fn layer(&self, layer: &DecoderLayer, x: &[Tensor]) -> Vec<Tensor> {
        match &self.layout {
            Layout::Prefixed { at_p, at_s, row_prefix } => {
                let (p, s) = layer.forward_prefixed(&x[0], &x[1], at_p, at_s, row_prefix);
                vec![p, s]
            }
            Layout::Plain { at } => vec![layer.forward(&x[0], at, None)],
        }
    }

    /// Runs `model`'s layers over the embedded `ids` streams without autograd, keeping each
    /// layer's inputs; returns the final-norm outputs (with autograd from the last layer on).
    fn run(model: &CausalLm, ids: Vec<Tensor>, layout: Layout) -> (Vec<Tensor>, Checkpointed) {
        let mut ck = Checkpointed { inputs: Vec::with_capacity(model.layers.len()), last: vec![], ids, layout };
        let mut x: Vec<Tensor> =
            tch::no_grad(|| ck.ids.iter().map(|i| Tensor::embedding(&model.embed_tokens, i, -1, false, false)).collect());
        tch::no_grad(|| {
            for layer in &model.layers {
                let next = ck.layer(layer, &x);
                ck.inputs.push(std::mem::replace(&mut x, next));
            }
        });
        ck.last = x.into_iter().map(|t| t.set_requires_grad(true)).collect();
        let out = ck.last.iter().map(|t| model.norm.forward(t)).collect();
        (out, ck)
    }

    /// Once the caller's backward has filled the gradients of the last layer's outputs:
    /// recomputes each layer with autograd, last first, backpropagates the gradient of its
    /// outputs through it (its parameters' gradients accumulate once), frees it, and ends
    /// at the embeddings, where `extra` (tensor, gradient) pairs join the last backward
    /// call: a tied LM head's gradient then reaches the shared weight together with the
    /// embeddings', in one accumulation, as one ordinary backward would add it. A stream
    /// that received no gradient (a prefix whose positions no loss used) carries zeros.
    pub fn backward(self, model: &CausalLm, extra: &[(&Tensor, &Tensor)]) {
        fn grad_of(t: &Tensor) -> Tensor {
            let g = t.grad();
            if g.defined() {
                g
            } else {
                t.zeros_like()
            }
        }
        let mut g: Vec<Tensor> = self.last.iter().map(grad_of).collect();
        for (layer, x) in model.layers.iter().zip(&self.inputs).rev() {
            let x: Vec<Tensor> = x.iter().map(|t| t.shallow_clone().set_requires_grad(true)).collect();
            let y = self.layer(layer, &x);
            let pairs: Vec<(&Tensor, &Tensor)> = y.iter().zip(&g).collect();
            backward_from(&pairs);
            g = x.iter().map(grad_of).collect();
        }
        let e: Vec<Tensor> = self.ids.iter().map(|i| Tensor::embedding(&model.embed_tokens, i, -1, false, false)).collect();
        let mut pairs: Vec<(&Tensor, &Tensor)> = if model.embed_tokens.requires_grad() { e.iter().zip(&g).collect() } else { vec![] };
        pairs.extend_from_slice(extra);
        backward_from(&pairs);
    }
}

/// The causal language model (`*ForCausalLM`).
#[derive(Debug)]
pub struct CausalLm {
    pub cfg: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `lm_head.weight`; the same tensor as `embed_tokens` when embeddings are tied.
    pub lm_head: Tensor,
    rope: Rope,
}

impl CausalLm {
    /// Creates the variables under `root` (the VarStore root) with checkpoint names.
    pub fn new(root: &nn::Path, cfg: &ModelConfig, init: Init) -> Self {
        let m = root / "model";
        let embed_tokens = matrix(&(&m / "embed_tokens"), "weight", &[cfg.vocab_size, cfg.hidden_size], init);
        let layers = (0..cfg.num_hidden_layers).map(|i| DecoderLayer::new(&m / "layers" / i, cfg, init)).collect();
        let norm = RmsNorm::new(&m / "norm", cfg.hidden_size, cfg.rms_norm_eps);
        // Tied: one tensor serves both ends (a second variable would be renamed by tch).
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            matrix(&(root / "lm_head"), "weight", &[cfg.vocab_size, cfg.hidden_size], init)
        };
        let rope = Rope::new(cfg, root.device());
        CausalLm { cfg: cfg.clone(), embed_tokens, layers, norm, lm_head, rope }
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// For rollout copies that only generate: q/k/v and gate/up become one weight each
    /// (a decode step then dispatches 2 matmuls where it dispatched 5). The separate weights
    /// become views into the fused ones, so memory does not grow and weight syncs (which copy
    /// into the separate variables) update the fused path too. Only for frozen models: the
    /// fused weights carry no gradients to the named variables.
    pub fn fuse_for_inference(&mut self) {
        fn fuse(parts: &[&Linear]) -> (Tensor, Option<Tensor>) {
            let w = Tensor::cat(&parts.iter().map(|l| l.weight.detach()).collect::<Vec<_>>(), 0);
            let b = parts
                .iter()
                .all(|l| l.bias.is_some())
                .then(|| Tensor::cat(&parts.iter().map(|l| l.bias.as_ref().unwrap().detach()).collect::<Vec<_>>(), 0));
            let mut off = 0;
            for l in parts {
                let n = l.weight.size()[0];
                let mut wv = l.weight.shallow_clone();
                wv.set_data(&w.narrow(0, off, n));
                if let (Some(bv), Some(fb)) = (&l.bias, &b) {
                    let mut bv = bv.shallow_clone();
                    bv.set_data(&fb.narrow(0, off, n));
                }
                off += n;
            }
            (w, b)
        }
        tch::no_grad(|| {
            for layer in &mut self.layers {
                let a = &mut layer.self_attn;
                if a.qkv.is_none() {
                    a.qkv = Some(fuse(&[&a.q_proj, &a.k_proj, &a.v_proj]));
                }
                let m = &mut layer.mlp;
                if m.gate_up.is_none() {
                    m.gate_up = Some(fuse(&[&m.gate_proj, &m.up_proj]));
                }
            }
        });
    }

    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Final hidden states [B, T, H] (after the last norm).
    ///
    /// `input_ids`: [B, T] i64. `positions`: [B, T] i64 rotary positions. `key_valid`: bool
    /// [B, S] over all keys (cached + new; false = padding). With a cache, new keys go to
    /// positions `[cache.len, cache.len + T)` and `cache.len` advances by T.
    pub fn forward_hidden(&self, input_ids: &Tensor, positions: &Tensor, key_valid: &Tensor, mut cache: Option<&mut KvCache>) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids is [B, T]");
        let past = cache.as_ref().map_or(0, |c| c.len);
        let mask = attention_mask(key_valid, past, t);
        let (cos, sin) = self.rope.cos_sin(positions, self.kind());
        let at = AttnInputs { cos, sin, mask };
        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &at, cache.as_deref_mut().map(|c| (c, i)));
        }
        if let Some(c) = cache {
            c.len += t;
        }
        self.norm.forward(&x)
    }

    /// Final hidden states for rows that continue shared prefixes, each prefix computed
    /// once: GRPO's G completions of one prompt share it. Prefixes `prefix_ids` [U, Tp]
    /// (left-padded, `prefix_valid` bool [U, Tp]); row n continues prefix `row_prefix[n]`
    /// (i64 [N]) with `ids` [N, Tc] (right-padded, `valid` bool [N, Tc]). Returns the
    /// prefixes' hidden states [U, Tp, H] and the rows' [N, Tc, H]: the same values as
    /// [`forward_hidden`](Self::forward_hidden) over each row's prefix + continuation, with
    /// gradients reaching the prefix through every row that attends to it.
    pub fn forward_prefixed(
        &self,
        prefix_ids: &Tensor,
        prefix_valid: &Tensor,
        row_prefix: &Tensor,
        ids: &Tensor,
        valid: &Tensor,
    ) -> (Tensor, Tensor) {
        let (at_p, at_s) = self.prefixed_attn_inputs(prefix_valid, row_prefix, valid);
        let mut xp = Tensor::embedding(&self.embed_tokens, prefix_ids, -1, false, false);
        let mut xs = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        for layer in &self.layers {
            (xp, xs) = layer.forward_prefixed(&xp, &xs, &at_p, &at_s, row_prefix);
        }
        (self.norm.forward(&xp), self.norm.forward(&xs))
    }

    /// [`forward_prefixed`](Self::forward_prefixed) with activation checkpointing: the
    /// layers run without autograd, keeping only each layer's input streams, so the
    /// activations that autograd would hold for every layer (attention scores, MLP
    /// intermediates: most of a training pass's memory) never exist for more than one layer
    /// at a time. The returned hidden states carry gradients back to the last layer's
    /// output only; after the caller's backward has reached them,
    /// [`Checkpointed::backward`] recomputes each layer with autograd, last first, and
    /// carries the gradient down to the embeddings. The gradients equal an ordinary
    /// backward's; the price is a second forward pass through the layers.
    pub fn forward_prefixed_checkpointed(
        &self,
        prefix_ids: &Tensor,
        prefix_valid: &Tensor,
        row_prefix: &Tensor,
        ids: &Tensor,
        valid: &Tensor,
    ) -> (Tensor, Tensor, Checkpointed) {
        let (at_p, at_s) = self.prefixed_attn_inputs(prefix_valid, row_prefix, valid);
        let layout = Layout::Prefixed { at_p, at_s, row_prefix: row_prefix.shallow_clone() };
        let (mut out, ck) = Checkpointed::run(self, vec![prefix_ids.shallow_clone(), ids.shallow_clone()], layout);
        let hs = out.pop().unwrap();
        (out.pop().unwrap(), hs, ck)
    }

    /// [`forward_hidden`](Self::forward_hidden) without a cache, with activation
    /// checkpointing (see [`forward_prefixed_checkpointed`](Self::forward_prefixed_checkpointed)).
    pub fn forward_hidden_checkpointed(&self, input_ids: &Tensor, positions: &Tensor, key_valid: &Tensor) -> (Tensor, Checkpointed) {
        let (_, t) = input_ids.size2().expect("input_ids is [B, T]");
        let (cos, sin) = self.rope.cos_sin(positions, self.kind());
        let at = AttnInputs { cos, sin, mask: attention_mask(key_valid, 0, t) };
        let (mut out, ck) = Checkpointed::run(self, vec![input_ids.shallow_clone()], Layout::Plain { at });
        (out.pop().unwrap(), ck)
    }

    /// [`forward_prefixed`](Self::forward_prefixed) for a training pass: checkpointed when
    /// `checkpoint` (then with the [`Checkpointed`] to hand to
    /// [`backward_through`](Self::backward_through)).
    pub fn forward_prefixed_train(
        &self,
        prefix_ids: &Tensor,
        prefix_valid: &Tensor,
        row_prefix: &Tensor,
        ids: &Tensor,
        valid: &Tensor,
        checkpoint: bool,
    ) -> (Tensor, Tensor, Option<Checkpointed>) {
        if checkpoint {
            let (hp, hs, ck) = self.forward_prefixed_checkpointed(prefix_ids, prefix_valid, row_prefix, ids, valid);
            (hp, hs, Some(ck))
        } else {
            let (hp, hs) = self.forward_prefixed(prefix_ids, prefix_valid, row_prefix, ids, valid);
            (hp, hs, None)
        }
    }

    /// [`forward_hidden`](Self::forward_hidden) (no cache) for a training pass: checkpointed
    /// when `checkpoint`.
    pub fn forward_hidden_train(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
        checkpoint: bool,
    ) -> (Tensor, Option<Checkpointed>) {
        if checkpoint {
            let (h, ck) = self.forward_hidden_checkpointed(input_ids, positions, key_valid);
            (h, Some(ck))
        } else {
            (self.forward_hidden(input_ids, positions, key_valid, None), None)
        }
    }

    /// The backward of a training pass whose loss was taken apart from the layers: the
    /// gradients of the pass's outputs (`outputs`: tensors computed from the layers'
    /// hidden states, with theirs) go back through the layers (recomputed first when the
    /// pass was `checkpointed`), and `extra` (a detached LM head's gradient) joins the call
    /// that reaches the embeddings, so a tied weight gets both parts in one accumulation.
    pub fn backward_through(&self, checkpointed: Option<Checkpointed>, outputs: &[(&Tensor, &Tensor)], extra: &[(&Tensor, &Tensor)]) {
        match checkpointed {
            None => {
                backward_from(&[outputs, extra].concat());
            }
            Some(ck) => {
                backward_from(outputs);
                ck.backward(self, extra);
            }
        }
    }

    /// Rotary tables and masks of a prefixed pass: the prefixes attend among themselves
    /// (left-padded); a row's queries see its prefix's real keys, then its own causally.
    fn prefixed_attn_inputs(&self, prefix_valid: &Tensor, row_prefix: &Tensor, valid: &Tensor) -> (AttnInputs, AttnInputs) {
        let (tp, tc) = (prefix_valid.size()[1], valid.size()[1]);
        let pos_p = positions_from_mask(prefix_valid);
        let prefix_len = prefix_valid.to_kind(Kind::Int64).sum_dim_intlist(&[1i64][..], true, Kind::Int64);
        let pos_s = (positions_from_mask(valid) + prefix_len.index_select(0, row_prefix)) * valid.to_kind(Kind::Int64);
        let mask_p = attention_mask(prefix_valid, 0, tp);
        let see_prefix = prefix_valid.index_select(0, row_prefix).unsqueeze(1).unsqueeze(1).expand([-1, 1, tc, tp], false);
        let mask_s = Tensor::cat(&[see_prefix, attention_mask(valid, 0, tc)], 3);
        let (cos_p, sin_p) = self.rope.cos_sin(&pos_p, self.kind());
        let (cos_s, sin_s) = self.rope.cos_sin(&pos_s, self.kind());
        (AttnInputs { cos: cos_p, sin: sin_p, mask: mask_p }, AttnInputs { cos: cos_s, sin: sin_s, mask: mask_s })
    }

    /// Logits for hidden states: [.., H] -> [.., V], in the model's dtype.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.lm_head.tr())
    }

    /// Full forward with right or left padding: `attention_mask` [B, T] (1 = token).
    /// Positions follow the cumulative sum of the mask, as transformers does.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let positions = positions_from_mask(attention_mask);
        let hidden = self.forward_hidden(input_ids, &positions, &attention_mask.to_kind(Kind::Bool), None);
        self.logits(&hidden)
    }
}

/// Position ids of a (left- or right-) padded batch: cumsum(mask) - 1, padding at 0.
pub fn positions_from_mask(mask: &Tensor) -> Tensor {
    let m = mask.to_kind(Kind::Int64);
    (m.cumsum(1, Kind::Int64) - 1).clamp_min(0) * &m
}

/// Bool mask [B, 1, T, S] for T new queries after `past` cached positions: a query at cache
/// index `past + i` sees valid keys at indices `<= past + i`. Rows of padding queries would
/// see nothing (NaN in SDPA, which then leaks into real rows through 0 * NaN); they are let
/// see every key instead, harmless since their outputs are never used.
pub fn attention_mask(key_valid: &Tensor, past: i64, t: i64) -> Tensor {
    let device = key_valid.device();
    let s = past + t;
    let q_idx = Tensor::arange_start(past, s, (Kind::Int64, device)).unsqueeze(1);
    let k_idx = Tensor::arange(s, (Kind::Int64, device)).unsqueeze(0);
    let causal = k_idx.le_tensor(&q_idx); // [T, S]
    let kv = key_valid.narrow(1, 0, s).unsqueeze(1).unsqueeze(1); // [B, 1, 1, S]
    let allowed = causal.unsqueeze(0).unsqueeze(0).logical_and(&kv); // [B, 1, T, S]
    let q_valid = key_valid.narrow(1, past, t).unsqueeze(1).unsqueeze(3); // [B, 1, T, 1]
    allowed.logical_or(&q_valid.logical_not())
}
