//! ponder's AdamW, gradient clipping and learning-rate schedules against torch.optim.AdamW,
//! torch.nn.utils.clip_grad_norm_ and transformers' schedulers (fixture written by
//! scripts/make_optim_fixture.py).

use serde_json::Value;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};
use trainer::config::{OptimCfg, Schedule};
use trainer::optim::{lr_at, AdamW};

fn fixture() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn schedule(name: &str) -> Schedule {
    match name {
        "constant" => Schedule::Constant,
        "linear" => Schedule::Linear,
        "cosine" => Schedule::Cosine,
        other => panic!("{other}"),
    }
}

#[test]
fn schedules_match_transformers() {
    for case in fixture()["schedules"].as_array().unwrap() {
        let cfg = OptimCfg {
            lr: case["lr"].as_f64().unwrap(),
            schedule: schedule(case["schedule"].as_str().unwrap()),
            warmup_steps: case["warmup"].as_u64().unwrap() as usize,
            ..OptimCfg::default()
        };
        let (w, total) = (cfg.warmup_steps as u64, case["total"].as_u64().unwrap());
        let want: Vec<f64> = case["lrs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        for step in 0..total {
            // After warmup the schedules are the same function of the step. During warmup
            // transformers' first step has lr 0 (factor step / warmup); ponder's first step
            // already learns (factor (step + 1) / warmup), i.e. transformers one step later.
            let reference = if step < w { want.get(step as usize + 1).copied().unwrap_or(cfg.lr) } else { want[step as usize] };
            let got = lr_at(&cfg, step, total);
            assert!((got - reference).abs() <= 1e-12 * cfg.lr.max(1.0), "{case}: step {step}: ponder {got}, transformers {reference}");
        }
    }
}

#[test]
fn adamw_and_clipping_match_torch() {
    for case in fixture()["adamw"].as_array().unwrap() {
        let f = |k: &str| case[k].as_f64().unwrap();
        let betas = floats(&case["betas"]);
        let cfg = OptimCfg {
            lr: f("lr"),
            weight_decay: f("weight_decay"),
            betas: [betas[0] as f64, betas[1] as f64],
            eps: f("eps"),
            max_grad_norm: f("max_grad_norm"),
            ..OptimCfg::default()
        };
        let mut params = BTreeMap::new();
        for name in ["w", "b"] {
            let shape: Vec<i64> = case["shapes"][name].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            params.insert(name.to_string(), Tensor::from_slice(&floats(&case["init"][name])).reshape(&shape).set_requires_grad(true));
        }
        let handles: BTreeMap<String, Tensor> = params.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
        let mut opt = AdamW::new(params, &cfg);
        for (s, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            opt.zero_grad();
            // d/dp sum(p * g) = g: sets each gradient to the fixture's.
            let loss = handles
                .iter()
                .map(|(k, p)| (p * Tensor::from_slice(&floats(&step["grad"][k])).reshape(p.size())).sum(Kind::Float))
                .fold(Tensor::from(0f32), |a, b| a + b);
            loss.backward();
            let norm = opt.grad_norm();
            let want_norm = step["grad_norm"].as_f64().unwrap();
            assert!((norm - want_norm).abs() <= 1e-5 * want_norm, "step {s}: grad norm {norm} vs torch {want_norm}");
            opt.clip_grad_norm(norm, cfg.max_grad_norm);
            opt.step(step["lr"].as_f64().unwrap());
            for (k, p) in &handles {
                let got = Vec::<f32>::try_from(p.detach().flatten(0, -1)).unwrap();
                let want = floats(&step["after"][k]);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 1e-6 + 1e-5 * b.abs(), "{case_lr} step {s}: {k}[{i}] = {a}, torch {b}", case_lr = cfg.lr);
                }
            }
        }
        assert_eq!(opt.step, case["steps"].as_array().unwrap().len() as u64);
    }
}
