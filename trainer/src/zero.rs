//! ZeRO-2 for a data-parallel launch (`optim.zero_stage = 2`). The gradients are
//! reduce-scattered, so each rank receives the summed gradient of its 1/world share of the
//! flat parameter vector (names in order, padded to a multiple of the world); it keeps fp32
//! master weights and AdamW moments for that share only, updates it with AdamW's formula
//! element for element, and the updated shares are all-gathered into every rank's model.
//! Checkpoints hold the whole state in the unsharded layout (gathered by rank 0), so a
//! sharded run's optimizer file reads like any other.

use crate::config::OptimCfg;
use anyhow::{Context, Result};
use ponder_dist::ProcessGroup;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

pub struct Zero2 {
    rank: usize,
    world: usize,
    /// Each parameter's name and element count, in the flat vector's order.
    layout: Vec<(String, i64)>,
    /// Elements per rank.
    shard: i64,
    /// This rank's share of the fp32 master weights and of AdamW's moments.
    master: Tensor,
    m: Tensor,
    v: Tensor,
    /// This rank's share: true where weight decay applies (tensors of 2+ dimensions).
    decay: Tensor,
    /// This rank's share of the summed gradient (after `reduce_grads`), and the clipping
    /// factor to apply to it.
    grad: Tensor,
    coef: f64,
}

/// The tensors as one flat fp32 CPU vector, zero-padded to `len`.
fn flatten<'a>(parts: impl Iterator<Item = &'a Tensor>, len: i64) -> Tensor {
    let mut v: Vec<Tensor> = parts.map(|t| t.detach().to_kind(Kind::Float).to_device(Device::Cpu).reshape([-1])).collect();
    let have: i64 = v.iter().map(|t| t.numel() as i64).sum();
    if len > have {
        v.push(Tensor::zeros([len - have], (Kind::Float, Device::Cpu)));
    }
    Tensor::cat(&v, 0)
}

impl Zero2 {
    pub fn new(params: &BTreeMap<String, Tensor>, rank: usize, world: usize) -> Zero2 {
        let layout: Vec<(String, i64)> = params.iter().map(|(k, p)| (k.clone(), p.numel() as i64)).collect();
        let total: i64 = layout.iter().map(|(_, n)| n).sum();
        let shard = (total.max(1) as u64).div_ceil(world as u64) as i64;
        let mine = |flat: Tensor| flat.narrow(0, rank as i64 * shard, shard).copy();
        let master = mine(flatten(params.values(), shard * world as i64));
        let masks: Vec<Tensor> = params
            .values()
            .map(|p| Tensor::full([p.numel() as i64], if p.dim() > 1 { 1.0 } else { 0.0 }, (Kind::Float, Device::Cpu)))
            .collect();
        let decay = mine(flatten(masks.iter(), shard * world as i64)).gt(0.5);
        let zeros = || Tensor::zeros([shard], (Kind::Float, Device::Cpu));
        Zero2 { rank, world, layout, shard, master, m: zeros(), v: zeros(), decay, grad: zeros(), coef: 1.0 }
    }

    fn padded(&self) -> i64 {
        self.shard * self.world as i64
    }

    /// Reduce-scatters the model's gradients (every one defined) and returns the global L2
    /// norm of the summed gradient.
    pub fn reduce_grads(&mut self, params: &BTreeMap<String, Tensor>, pg: &ProcessGroup) -> Result<f64> {
        let grads: Vec<Tensor> = params.values().map(|p| p.grad()).collect();
        let flat = flatten(grads.iter(), self.padded());
        let mut out = Tensor::zeros([self.shard], (Kind::Float, Device::Cpu));
        pg.reduce_scatter_sum(&mut out, &flat)?;
        let mut sq = [f64::try_from(out.square().sum(Kind::Double))?];
        pg.all_reduce_f64(&mut sq)?;
        self.grad = out;
        self.coef = 1.0;
        Ok(sq[0].sqrt())
    }

    /// Gradient clipping: the factor `clip_grad_norm` would scale every gradient by.
    pub fn clip(&mut self, coef: f64) {
        self.coef = coef;
    }

    /// AdamW on this rank's share (the step count `step` already includes this update), then
    /// the shares gathered into `params`.
    pub fn step(&mut self, params: &BTreeMap<String, Tensor>, pg: &ProcessGroup, cfg: &OptimCfg, lr: f64, step: u64) -> Result<()> {
        tch::no_grad(|| {
            let g = if self.coef < 1.0 { &self.grad * self.coef } else { self.grad.shallow_clone() };
            if cfg.weight_decay != 0.0 {
                let decayed = &self.master * (1.0 - lr * cfg.weight_decay);
                self.master = decayed.where_self(&self.decay, &self.master);
            }
            let update = crate::optim::adam_update(&mut self.m, &mut self.v, &g, cfg, lr, step);
            let _ = self.master.g_sub_(&update);
        });
        let mut full = Tensor::zeros([self.padded()], (Kind::Float, Device::Cpu));
        pg.all_gather(&mut full, &self.master)?;
        let mut off = 0;
        tch::no_grad(|| {
            for (p, (_, n)) in params.values().zip(&self.layout) {
                let mut p = p.shallow_clone();
                p.copy_(&full.narrow(0, off, *n).view_as(&p).to_device(p.device()));
                off += n;
            }
        });
        Ok(())
    }

    /// The whole optimizer state in [`crate::optim::AdamW::state_tensors`]' layout, gathered
    /// from every rank (a collective: every rank calls it).
    pub fn gather_state(&self, params: &BTreeMap<String, Tensor>, pg: &ProcessGroup) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (prefix, part) in [("exp_avg", &self.m), ("exp_avg_sq", &self.v), ("master", &self.master)] {
            let mut full = Tensor::zeros([self.padded()], (Kind::Float, Device::Cpu));
            pg.all_gather(&mut full, part)?;
            let mut off = 0;
            for ((name, n), p) in self.layout.iter().zip(params.values()) {
                // Master copies exist only for half-precision parameters, as unsharded.
                if prefix != "master" || p.kind() != Kind::Float {
                    out.insert(format!("{prefix}.{name}"), full.narrow(0, off, *n).view(p.size().as_slice()).copy());
                }
                off += n;
            }
        }
        Ok(out)
    }

    /// This rank's share of a saved (unsharded) state; parameters without a master copy in
    /// the file (fp32 ones) take the model's values.
    pub fn load(&mut self, tensors: &BTreeMap<String, Tensor>, params: &BTreeMap<String, Tensor>, origin: &str) -> Result<()> {
        let get = |prefix: &str| -> Result<Tensor> {
            let parts: Vec<Tensor> = self
                .layout
                .iter()
                .map(|(name, _)| {
                    let key = format!("{prefix}.{name}");
                    match (tensors.get(&key), prefix) {
                        (Some(t), _) => Ok(t.shallow_clone()),
                        (None, "master") => Ok(params[name].shallow_clone()),
                        (None, _) => None.with_context(|| format!("{origin}: missing `{key}`")),
                    }
                })
                .collect::<Result<_>>()?;
            Ok(flatten(parts.iter(), self.padded()).narrow(0, self.rank as i64 * self.shard, self.shard).copy())
        };
        let (m, v, master) = (get("exp_avg")?, get("exp_avg_sq")?, get("master")?);
        (self.m, self.v, self.master) = (m, v, master);
        Ok(())
    }
}
