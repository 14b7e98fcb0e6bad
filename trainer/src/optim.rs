//! AdamW written over the VarStore's tensors (tch's optimizers hide their state, and exact
//! resume needs it), learning-rate schedules, and global-norm gradient clipping.

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
    /// Optimizer steps taken.
    pub step: u64,
    cfg: OptimCfg,
}

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

impl AdamW {
    pub fn new(params: BTreeMap<String, Tensor>, cfg: &OptimCfg) -> Self {
        let zeros = |p: &Tensor| Tensor::zeros_like(p).to_kind(Kind::Float);
        let m = params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect();
        let v = params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect();
        AdamW { params, m, v, step: 0, cfg: cfg.clone() }
    }

    pub fn zero_grad(&mut self) {
        for p in self.params.values_mut() {
            p.zero_grad();
        }
    }

    /// Global L2 norm of all gradients (f32), as torch.nn.utils.clip_grad_norm_.
    pub fn grad_norm(&self) -> f64 {
        let mut sq = 0.0;
        for p in self.params.values() {
            let g = p.grad();
            if g.defined() {
                sq += f64::try_from(g.to_kind(Kind::Float).square().sum(Kind::Float)).unwrap_or(f64::NAN);
            }
        }
        sq.sqrt()
    }

    /// Scales gradients so their global norm is at most `max_norm` (torch's formula:
    /// coef = max_norm / (norm + 1e-6), applied when < 1).
    pub fn clip_grad_norm(&mut self, norm: f64, max_norm: f64) {
        if max_norm <= 0.0 {
            return;
        }
        let coef = max_norm / (norm + 1e-6);
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
    /// Biases and norm weights (1-D tensors) get no weight decay.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let [b1, b2] = self.cfg.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        tch::no_grad(|| {
            for (name, p) in &self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(Kind::Float);
                let mut p = p.shallow_clone();
                if self.cfg.weight_decay != 0.0 && p.dim() > 1 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.cfg.weight_decay);
                }
                let m = self.m.get_mut(name).unwrap();
                let _ = m.g_mul_scalar_(b1);
                let _ = m.g_add_(&(&g * (1.0 - b1)));
                let v = self.v.get_mut(name).unwrap();
                let _ = v.g_mul_scalar_(b2);
                let _ = v.g_add_(&(g.square() * (1.0 - b2)));
                let denom = v.sqrt() / bc2.sqrt() + self.cfg.eps;
                let update = (&*m / denom) * (lr / bc1);
                let _ = p.g_sub_(&update.to_kind(p.kind()));
            }
        });
    }

    /// Moments and step count, for checkpoints.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, t) in &self.m {
            out.insert(format!("exp_avg.{k}"), t.shallow_clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("exp_avg_sq.{k}"), t.shallow_clone());
        }
        out
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        rollout::model::weights::save_file(&self.state_tensors(), path)?;
        Ok(())
    }

    pub fn load(&mut self, path: &Path, step: u64) -> Result<()> {
        let tensors = rollout::model::weights::load_file(path).with_context(|| format!("reading optimizer state {}", path.display()))?;
        tch::no_grad(|| -> Result<()> {
            for (prefix, map) in [("exp_avg", &mut self.m), ("exp_avg_sq", &mut self.v)] {
                for (k, t) in map.iter_mut() {
                    let src =
                        tensors.get(&format!("{prefix}.{k}")).with_context(|| format!("{}: missing `{prefix}.{k}`", path.display()))?;
                    t.copy_(src);
                }
            }
            Ok(())
        })?;
        self.step = step;
        Ok(())
    }
}
