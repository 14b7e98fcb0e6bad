//! AdamW written over the VarStore's tensors (tch's optimizers hide their state, and exact
//! resume needs it), learning-rate schedules, and global-norm gradient clipping.
//!
//! Mixed precision: a model held in bf16 or f16 trains through fp32 master weights kept
//! here. Forward and backward run on the half-precision weights; the update is computed
//! and applied in fp32 on the master copy, which is then rounded into the model. Without
//! it an Adam step of ~1e-6 on a bf16 weight of 0.01 (half an ulp ~3e-5) rounds to no
//! change at all, and weight decay's factor rounds to 1. f16 adds dynamic loss scaling
//! (torch.amp.GradScaler's defaults: 2^16, halved on overflow with the step skipped,
//! doubled after 2,000 clean steps), since its gradients underflow below ~6e-8.

use crate::config::{OptimCfg, Schedule};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

pub struct AdamW {
    /// Parameters by checkpoint name.
    params: BTreeMap<String, Tensor>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    /// fp32 master copies of the parameters that are not fp32 (empty for an fp32 model).
    master: BTreeMap<String, Tensor>,
    /// Dynamic loss scale, when any parameter is f16.
    scaler: Option<LossScale>,
    /// Optimizer steps taken.
    pub step: u64,
    cfg: OptimCfg,
    /// ZeRO-2 over data-parallel ranks: this rank's share of the state lives there, and the
    /// three maps above stay empty.
    zero: Option<crate::zero::Zero2>,
}

/// GradScaler's state: the current scale and the clean steps since it last changed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LossScale {
    scale: f64,
    clean: u64,
}

const INIT_SCALE: f64 = 65536.0;
const GROWTH_INTERVAL: u64 = 2000;

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warmup, then the schedule.
/// After warmup this is transformers' `get_{constant,linear,cosine}_schedule_with_warmup`;
/// during warmup ponder's first step already learns (lr x 1 / warmup, where transformers'
/// first step has lr 0). Checked against both in tests/optim_reference.rs.
pub fn lr_at(cfg: &OptimCfg, step: u64, total: u64) -> f64 {
    let w = cfg.warmup_steps as u64;
    if step < w {
        return cfg.lr * (step + 1) as f64 / w as f64;
    }
    let span = total.saturating_sub(w).max(1) as f64;
    let progress = ((step - w) as f64 / span).min(1.0);
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Linear => cfg.lr * (1.0 - progress),
        Schedule::Cosine => cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// The factor gradients are scaled by to bring their global norm `norm` to at most
/// `max_norm` (torch's clip_grad_norm_: max_norm / (norm + 1e-6), when below 1); 1 when
/// clipping is off (`max_norm` 0) or not needed.
pub(crate) fn clip_coef(norm: f64, max_norm: f64) -> f64 {
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        coef
    } else {
        1.0
    }
}

/// Adam's moment updates for gradient `g` (fp32) at optimizer step `step` (1-based), in
/// place, and the update to subtract from the fp32 weights (PyTorch's order and bias
/// corrections). One definition for the whole-tensor and the sharded (ZeRO-2) optimizer, so
/// they stay equal element for element.
pub(crate) fn adam_update(m: &mut Tensor, v: &mut Tensor, g: &Tensor, cfg: &OptimCfg, lr: f64, step: u64) -> Tensor {
    let [b1, b2] = cfg.betas;
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = 1.0 - b2.powi(step as i32);
    let _ = m.g_mul_scalar_(b1);
    let _ = m.g_add_(&(g * (1.0 - b1)));
    let _ = v.g_mul_scalar_(b2);
    let _ = v.g_add_(&(g.square() * (1.0 - b2)));
    let denom = v.sqrt() / bc2.sqrt() + cfg.eps;
    (&*m / denom) * (lr / bc1)
}

impl AdamW {
    pub fn new(params: BTreeMap<String, Tensor>, cfg: &OptimCfg) -> Self {
        let zeros = |p: &Tensor| Tensor::zeros_like(p).to_kind(Kind::Float);
        let m = params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect();
        let v = params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect();
        let master = params
            .iter()
            .filter(|(_, p)| p.kind() != Kind::Float)
            .map(|(k, p)| (k.clone(), tch::no_grad(|| p.detach().to_kind(Kind::Float))))
            .collect();
        let scaler = params.values().any(|p| p.kind() == Kind::Half).then_some(LossScale { scale: INIT_SCALE, clean: 0 });
        AdamW { params, m, v, master, scaler, step: 0, cfg: cfg.clone(), zero: None }
    }

    /// AdamW whose state is sharded over the ranks of a data-parallel launch (ZeRO-2):
    /// gradients go through [`reduce_grads`](Self::reduce_grads), updates through
    /// [`step_sharded`](Self::step_sharded).
    pub fn new_sharded(params: BTreeMap<String, Tensor>, cfg: &OptimCfg, rank: usize, world: usize) -> Self {
        let zero = crate::zero::Zero2::new(&params, rank, world);
        AdamW {
            params,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            master: BTreeMap::new(),
            scaler: None,
            step: 0,
            cfg: cfg.clone(),
            zero: Some(zero),
        }
    }

    pub fn is_sharded(&self) -> bool {
        self.zero.is_some()
    }

    /// Sharded: reduce-scatters the gradients over the ranks and returns the global norm of
    /// their sum (what [`grad_norm`](Self::grad_norm) gives after an all-reduce).
    pub fn reduce_grads(&mut self, pg: &ponder_dist::ProcessGroup) -> Result<f64> {
        let z = self.zero.as_mut().context("reduce_grads needs a sharded optimizer")?;
        z.reduce_grads(&self.params, pg)
    }

    /// Sharded: [`clip_grad_norm`](Self::clip_grad_norm) then [`step`](Self::step), on this
    /// rank's share, and the updated weights gathered from every rank.
    pub fn step_sharded(&mut self, norm: f64, lr: f64, pg: &ponder_dist::ProcessGroup) -> Result<()> {
        let coef = clip_coef(norm, self.cfg.max_grad_norm);
        let z = self.zero.as_mut().context("step_sharded needs a sharded optimizer")?;
        z.clip(coef);
        self.step += 1;
        z.step(&self.params, pg, &self.cfg, lr, self.step)
    }

    /// Sharded: the whole state, gathered from every rank (a collective), in the layout of
    /// [`state_tensors`](Self::state_tensors).
    pub fn gather_state(&self, pg: &ponder_dist::ProcessGroup) -> Result<BTreeMap<String, Tensor>> {
        let z = self.zero.as_ref().context("gather_state needs a sharded optimizer")?;
        z.gather_state(&self.params, pg)
    }

    /// Whether the model trains through fp32 master weights (a bf16 or f16 model).
    pub fn has_master_weights(&self) -> bool {
        !self.master.is_empty()
    }

    /// The factor the loss is multiplied by before backward (1 unless the model is f16).
    pub fn loss_scale(&self) -> f64 {
        self.scaler.map_or(1.0, |s| s.scale)
    }

    /// `loss.backward()`, with the loss scaled for an f16 model.
    pub fn backward(&self, loss: &Tensor) {
        match self.scaler {
            Some(s) => (loss * s.scale).backward(),
            None => loss.backward(),
        }
    }

    /// For an f16 model: when the (unscaled) gradient norm `norm` is not finite, the scaled
    /// gradients overflowed. Halves the scale, clears the gradients and returns true: the
    /// caller skips this update, as GradScaler does, without counting it as a bad step.
    /// Always false for fp32 and bf16, whose non-finite gradients are real failures.
    pub fn skip_overflow(&mut self, norm: f64) -> bool {
        match &mut self.scaler {
            Some(s) if !norm.is_finite() => {
                s.scale = (s.scale * 0.5).max(1.0);
                s.clean = 0;
                self.zero_grad();
                true
            }
            _ => false,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in self.params.values_mut() {
            p.zero_grad();
        }
    }

    /// Global L2 norm of all gradients (f32), as torch.nn.utils.clip_grad_norm_; for an f16
    /// model, of the unscaled gradients.
    pub fn grad_norm(&self) -> f64 {
        let mut sq = 0.0;
        for p in self.params.values() {
            let g = p.grad();
            if g.defined() {
                sq += f64::try_from(g.to_kind(Kind::Float).square().sum(Kind::Float)).unwrap_or(f64::NAN);
            }
        }
        sq.sqrt() / self.loss_scale()
    }

    /// Scales gradients so their global norm is at most `max_norm` (torch's formula:
    /// coef = max_norm / (norm + 1e-6), applied when < 1).
    pub fn clip_grad_norm(&mut self, norm: f64, max_norm: f64) {
        let coef = clip_coef(norm, max_norm);
        if coef < 1.0 {
            tch::no_grad(|| {
                for p in self.params.values() {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            });
        }
    }

    /// One AdamW step at learning rate `lr` (PyTorch's update order and bias corrections).
    /// Biases and norm weights (1-D tensors) get no weight decay. A half-precision
    /// parameter is updated through its fp32 master copy.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let unscale = 1.0 / self.loss_scale();
        tch::no_grad(|| {
            for (name, param) in &self.params {
                let g = param.grad();
                if !g.defined() {
                    continue;
                }
                let mut g = g.to_kind(Kind::Float);
                if unscale != 1.0 {
                    g = g * unscale;
                }
                let mut p = self.master.get(name).unwrap_or(param).shallow_clone();
                if self.cfg.weight_decay != 0.0 && p.dim() > 1 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.cfg.weight_decay);
                }
                let (m, v) = (self.m.get_mut(name).unwrap(), self.v.get_mut(name).unwrap());
                let update = adam_update(m, v, &g, &self.cfg, lr, self.step);
                let _ = p.g_sub_(&update.to_kind(p.kind()));
                if self.master.contains_key(name) {
                    // Round the master into the model (copy_ casts).
                    let mut param = param.shallow_clone();
                    param.copy_(&p);
                }
            }
        });
        if let Some(s) = &mut self.scaler {
            s.clean += 1;
            if s.clean >= GROWTH_INTERVAL {
                s.scale *= 2.0;
                s.clean = 0;
            }
        }
    }

    /// Moments, fp32 master weights and the loss scale, for checkpoints (exact resume of a
    /// half-precision run needs the master copy: the model's weights are its rounding).
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, t) in &self.m {
            out.insert(format!("exp_avg.{k}"), t.shallow_clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("exp_avg_sq.{k}"), t.shallow_clone());
        }
        for (k, t) in &self.master {
            out.insert(format!("master.{k}"), t.shallow_clone());
        }
        if let Some(s) = self.scaler {
            out.insert("loss_scale".into(), Tensor::from_slice(&[s.scale, s.clean as f64]));
        }
        out
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        rollout::model::weights::save_file(&self.state_tensors(), path)?;
        Ok(())
    }

    pub fn load(&mut self, path: &Path, step: u64) -> Result<()> {
        let tensors = rollout::model::weights::load_file(path).with_context(|| format!("reading optimizer state {}", path.display()))?;
        if let Some(z) = &mut self.zero {
            z.load(&tensors, &self.params, &path.display().to_string())?;
            self.step = step;
            return Ok(());
        }
        tch::no_grad(|| -> Result<()> {
            for (prefix, map) in [("exp_avg", &mut self.m), ("exp_avg_sq", &mut self.v)] {
                for (k, t) in map.iter_mut() {
                    let src =
                        tensors.get(&format!("{prefix}.{k}")).with_context(|| format!("{}: missing `{prefix}.{k}`", path.display()))?;
                    t.copy_(src);
                }
            }
            for (k, t) in self.master.iter_mut() {
                // A checkpoint written before master weights existed: start from the model.
                match tensors.get(&format!("master.{k}")) {
                    Some(src) => t.copy_(src),
                    None => t.copy_(&self.params[k]),
                }
            }
            if let (Some(s), Some(saved)) = (&mut self.scaler, tensors.get("loss_scale")) {
                let v = Vec::<f64>::try_from(saved.to_kind(Kind::Double))?;
                if let [scale, clean] = v[..] {
                    *s = LossScale { scale, clean: clean as u64 };
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}

/// Gives every parameter a gradient (zeros where none was computed yet), so that each
/// data-parallel rank's flat gradient has the same layout even if it ran no pass.
pub fn define_grads(params: &BTreeMap<String, Tensor>) {
    if params.values().any(|p| !p.grad().defined()) {
        let device = params.values().next().map_or(tch::Device::Cpu, |p| p.device());
        let zero = params.values().map(|p| p.sum(Kind::Float) * 0.0).fold(Tensor::zeros([], (Kind::Float, device)), |a, x| a + x);
        zero.backward();
    }
}

/// Sums the gradients over the data-parallel ranks (one flat fp32 all-reduce); every
/// parameter must have a gradient ([`define_grads`]).
pub fn all_reduce_grads(params: &BTreeMap<String, Tensor>, pg: &ponder_dist::ProcessGroup) -> Result<()> {
    let grads: Vec<Tensor> = params.values().map(|p| p.grad()).collect();
    let mut flat =
        Tensor::cat(&grads.iter().map(|g| g.to_kind(Kind::Float).to_device(tch::Device::Cpu).flatten(0, -1)).collect::<Vec<_>>(), 0);
    pg.all_reduce_sum(&mut flat)?;
    let mut off = 0;
    tch::no_grad(|| {
        for g in &grads {
            let n = g.numel() as i64;
            let mut g = g.shallow_clone();
            g.copy_(&flat.narrow(0, off, n).view_as(&g));
            off += n;
        }
    });
    Ok(())
}
