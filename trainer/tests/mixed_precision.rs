//! Mixed precision: a bf16 or f16 model trains through fp32 master weights (and f16 through
//! dynamic loss scaling), so it tracks the fp32 run, takes updates far below half a bf16
//! ulp, and resumes exactly. The truth each test checks against is the same training done
//! in fp32, or the rounding of the master weights.

use rollout::folder::Policy;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use trainer::config::OptimCfg;
use trainer::lm::{batch_loss, LmExample};
use trainer::optim::AdamW;
use trainer::tiny::{self, TinyShape};

const SHAPE: TinyShape = TinyShape { hidden: 64, layers: 2, heads: 4, kv_heads: 2, intermediate: 128, vocab: 384 };

fn model(dir: &Path) -> std::path::PathBuf {
    let m = dir.join("model");
    tiny::create_random_model(&m, SHAPE, &tiny::default_corpus(1, 400), 11).unwrap();
    m
}

/// A fixed batch of 8 sequences of 24 tokens (deterministic, no tokenizer needed).
fn batch() -> Vec<LmExample> {
    (0..8).map(|r| LmExample { ids: (0..24).map(|j| ((r * 37 + j * 11 + j * j) % 200 + 2) as i64).collect(), loss_from: 4 }).collect()
}

fn optim(lr: f64) -> OptimCfg {
    OptimCfg { lr, weight_decay: 0.01, ..OptimCfg::default() }
}

/// `steps` AdamW steps on the fixed batch; the loss before each step (skipped f16
/// overflow steps included, as NaN-free losses of the weights they left unchanged).
fn train(policy: &Policy, opt: &mut AdamW, lr: f64, steps: usize, loss_factor: f64) -> (Vec<f64>, usize) {
    let b = batch();
    let refs: Vec<&LmExample> = b.iter().collect();
    let mut losses = vec![];
    let mut skipped = 0;
    for _ in 0..steps {
        opt.zero_grad();
        let (loss, _) = batch_loss(policy, &refs, 64);
        losses.push(f64::try_from(&loss).unwrap());
        opt.backward(&(loss * loss_factor));
        let gn = opt.grad_norm();
        if opt.skip_overflow(gn) {
            skipped += 1;
            continue;
        }
        assert!(gn.is_finite(), "gradient norm {gn}");
        opt.clip_grad_norm(gn, 1.0);
        opt.step(lr);
    }
    (losses, skipped)
}

fn load(dir: &Path, kind: Kind) -> (Policy, AdamW) {
    let p = Policy::load(dir, kind, Device::Cpu).unwrap();
    let opt = AdamW::new(p.named_tensors(), &optim(1e-3));
    (p, opt)
}

fn as_f32(t: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    t.iter().map(|(k, v)| (k.clone(), v.to_kind(Kind::Float))).collect()
}

/// Mean absolute difference over all tensors of two name -> tensor maps.
fn mean_abs_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    let (mut s, mut n) = (0.0, 0.0);
    for (k, x) in a {
        let d = (x.to_kind(Kind::Double) - b[k].to_kind(Kind::Double)).abs();
        s += f64::try_from(d.sum(Kind::Double)).unwrap();
        n += x.numel() as f64;
    }
    s / n
}

#[test]
fn half_precision_training_tracks_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let (p32, mut o32) = load(&m, Kind::Float);
    let (l32, _) = train(&p32, &mut o32, 3e-3, 40, 1.0);
    for kind in [Kind::BFloat16, Kind::Half] {
        let (p, mut o) = load(&m, kind);
        let (l, skipped) = train(&p, &mut o, 3e-3, 40, 1.0);
        // Learning happened in both (the fixed batch is memorised), and the half-precision
        // loss stays within 3 % of the fp32 loss at every step.
        assert!(l32[39] < 0.7 * l32[0], "fp32 did not learn: {} -> {}", l32[0], l32[39]);
        assert_eq!(skipped, 0, "{kind:?}: no overflow expected at this loss scale");
        let worst = l.iter().zip(&l32).map(|(a, b)| (a - b).abs() / b).fold(0.0, f64::max);
        eprintln!("{kind:?}: loss {:.4} -> {:.4} (fp32 {:.4} -> {:.4}), largest relative gap {worst:.4}", l[0], l[39], l32[0], l32[39]);
        for (i, (a, b)) in l.iter().zip(&l32).enumerate() {
            assert!((a - b).abs() <= 0.03 * b, "{kind:?} step {i}: loss {a} against fp32 {b}");
        }
        assert!(o.has_master_weights());
    }
}

#[test]
fn bf16_takes_updates_below_half_an_ulp() {
    // At lr 1e-6 an Adam step moves a weight by ~1e-6; half a bf16 ulp of a weight of 0.02
    // is ~6e-5, so updating bf16 weights directly rounds (almost) every step to nothing.
    // Through the master weights 200 steps add up to ~2e-4 and the bf16 model follows.
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let (p16, mut o16) = load(&m, Kind::BFloat16);
    let start = as_f32(&p16.named_tensors());
    // fp32 from the same starting point: the bf16 model's own values.
    let p32 = Policy::load(&m, Kind::Float, Device::Cpu).unwrap();
    p32.copy_from(&start).unwrap();
    let mut o32 = AdamW::new(p32.named_tensors(), &optim(1e-6));
    train(&p32, &mut o32, 1e-6, 200, 1.0);
    train(&p16, &mut o16, 1e-6, 200, 1.0);
    let w32 = p32.named_tensors();
    let w16 = as_f32(&p16.named_tensors());
    let moved = mean_abs_diff(&w32, &start);
    let (mut changed, mut total) = (0i64, 0i64);
    for (k, w) in &w16 {
        changed += i64::try_from(w.ne_tensor(&start[k]).sum(Kind::Int64)).unwrap();
        total += w.numel() as i64;
    }
    assert!(changed as f64 > 0.3 * total as f64, "only {changed} of {total} bf16 weights changed");
    // The bf16 model follows the fp32 run: its distance to it is a fraction of how far
    // the fp32 weights moved (updating bf16 directly leaves it near the start: ratio ~1).
    let lag = mean_abs_diff(&w16, &w32);
    eprintln!("bf16 at lr 1e-6: {changed} of {total} weights changed; fp32 moved {moved:.3e}, bf16 lags it by {lag:.3e}");
    assert!(lag < 0.3 * moved, "bf16 model {lag} away from the fp32 run, which moved {moved}");
    let master: BTreeMap<String, Tensor> =
        o16.state_tensors().into_iter().filter_map(|(k, v)| k.strip_prefix("master.").map(|n| (n.to_string(), v))).collect();
    assert_eq!(master.len(), w16.len(), "every bf16 parameter has a master copy");
    // The master copy follows the fp32 run (forward in bf16 perturbs the gradients a little).
    let gap = mean_abs_diff(&master, &w32);
    assert!(moved > 1e-4, "fp32 weights moved {moved}");
    assert!(gap < 0.1 * moved, "master weights {gap} away from the fp32 run, which moved {moved}");
    // The model is the master rounded to bf16, and most of it changed.
    for (k, w) in &w16 {
        assert!(w.equal(&master[k].to_kind(Kind::BFloat16).to_kind(Kind::Float)), "{k}: model is not the rounded master");
    }
}

#[test]
fn f16_loss_scaling_backs_off_on_overflow_and_keeps_learning() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let (p, mut o) = load(&m, Kind::Half);
    assert_eq!(o.loss_scale(), 65536.0);
    // A loss 1e3 times larger: its scaled gradients overflow f16 (max 65504) until the scale
    // has come down; those steps are skipped, then training goes on.
    let (l, skipped) = train(&p, &mut o, 3e-3, 30, 1e3);
    assert!(skipped >= 1, "no overflow was detected");
    assert!(o.loss_scale() < 65536.0 && o.loss_scale() >= 1.0, "scale {}", o.loss_scale());
    assert_eq!(o.step as usize, 30 - skipped, "skipped steps are not optimizer steps");
    assert!(l[29] < l[0], "f16 did not learn: {} -> {}", l[0], l[29]);
    for (k, w) in p.named_tensors() {
        assert!(bool::try_from(w.isfinite().all()).unwrap(), "{k} has non-finite weights");
    }
}

#[test]
fn half_precision_resume_is_exact() {
    // 10 steps, save weights and optimizer state, 10 more; against: load the saved state
    // into a fresh model and optimizer, 10 more. Bit-identical only if the master weights
    // and the loss scale are part of the optimizer state.
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    for kind in [Kind::BFloat16, Kind::Half] {
        let (p, mut o) = load(&m, kind);
        train(&p, &mut o, 1e-4, 10, 1.0);
        let ck = dir.path().join(format!("{kind:?}"));
        std::fs::create_dir_all(&ck).unwrap();
        rollout::model::weights::save_file(&p.named_tensors(), &ck.join("model.safetensors")).unwrap();
        o.save(&ck.join("optimizer.safetensors")).unwrap();
        let steps = o.step;
        train(&p, &mut o, 1e-4, 10, 1.0);

        let (q, _) = load(&m, kind);
        let mut r = AdamW::new(q.named_tensors(), &optim(1e-3));
        q.copy_from(&rollout::model::weights::load_file(&ck.join("model.safetensors")).unwrap()).unwrap();
        r.load(&ck.join("optimizer.safetensors"), steps).unwrap();
        train(&q, &mut r, 1e-4, 10, 1.0);
        let (a, b) = (p.named_tensors(), q.named_tensors());
        for (k, w) in &a {
            assert!(w.equal(&b[k]), "{kind:?} {k}: resumed weights differ");
        }
        assert_eq!(o.loss_scale(), r.loss_scale());
    }
}
