//! GRPO advantages and losses against NumPy values computed from the published formulas.
//! Regenerate the fixture with `.venv/bin/python scripts/make_grpo_fixture.py`.

use serde_json::Value;
use tch::{Kind, Tensor};
use trainer::grpo::{advantages, aggregate, masked_mean, token_loss, LossType, ScaleRewards};

fn fixture() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grpo_loss.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn t2(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    Tensor::from_slice2(&rows)
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-9 + 1e-9 * b.abs().max(1.0), "{what}: {a} vs reference {b}");
}

#[test]
fn advantages_and_every_loss_type_match_reference() {
    let f = fixture();
    let g = f["group_size"].as_u64().unwrap() as usize;
    let max_new = f["max_new_tokens"].as_u64().unwrap() as usize;
    let eps = f["eps"].as_f64().unwrap();
    let rewards: Vec<f64> = serde_json::from_value(f["rewards"].clone()).unwrap();
    let (mask, logp, old, refl) = (t2(&f["mask"]), t2(&f["logp"]), t2(&f["old"]), t2(&f["ref"]));
    let ntok = f64::try_from(mask.sum(Kind::Double)).unwrap();
    let mut checked = 0;
    for case in f["cases"].as_array().unwrap() {
        let scale: ScaleRewards = serde_json::from_value(case["scale_rewards"].clone()).unwrap();
        let want_adv: Vec<f64> = serde_json::from_value(case["advantages"].clone()).unwrap();
        let adv = advantages(&rewards, g, scale, eps);
        for (i, (a, b)) in adv.iter().zip(&want_adv).enumerate() {
            close(*a, *b, &format!("{scale:?} advantage {i}"));
        }
        // The zero-variance group (second) gets exactly zero.
        assert!(adv[g..2 * g].iter().all(|&a| a == 0.0));
        let (el, eh, beta) = (case["epsilon"].as_f64().unwrap(), case["epsilon_high"].as_f64().unwrap(), case["beta"].as_f64().unwrap());
        let advt = Tensor::from_slice(&adv);
        let tl = token_loss(&logp, &old, Some(&refl), &advt, el, eh, beta);
        for (name, lt) in [("grpo", LossType::Grpo), ("bnpo", LossType::Bnpo), ("dapo", LossType::Dapo), ("dr_grpo", LossType::DrGrpo)] {
            let got = f64::try_from(aggregate(&tl.per_token, &mask, lt, ntok, 1, max_new)).unwrap();
            close(got, case["loss"][name].as_f64().unwrap(), &format!("{name} {scale:?} eps=({el},{eh}) beta={beta}"));
            checked += 1;
        }
        close(masked_mean(&tl.low_clipped, &mask), case["clip_low"].as_f64().unwrap(), "clip low");
        close(masked_mean(&tl.high_clipped, &mask), case["clip_high"].as_f64().unwrap(), "clip high");
        if beta > 0.0 {
            let kl = masked_mean(&tl.kl, &mask);
            assert!((kl - case["kl_mean"].as_f64().unwrap()).abs() < 1e-6);
        }
    }
    assert_eq!(checked, 48);
    // Both clip sides really occur in the fixture, or the test would prove little.
    let c = &f["cases"][1];
    assert!(c["clip_low"].as_f64().unwrap() > 0.0 && c["clip_high"].as_f64().unwrap() > 0.0);
}

#[test]
fn micro_batches_sum_to_the_whole_batch_loss() {
    // Gradient accumulation: splitting a minibatch into micro-batches and summing their
    // losses gives the whole-batch value for token-normalised and constant-normalised types,
    // and for grpo when micro-batches have equal row counts.
    let f = fixture();
    let (mask, logp, old) = (t2(&f["mask"]), t2(&f["logp"]), t2(&f["old"]));
    let rewards: Vec<f64> = serde_json::from_value(f["rewards"].clone()).unwrap();
    let adv = Tensor::from_slice(&advantages(&rewards, 4, ScaleRewards::Group, 1e-4));
    let tl = token_loss(&logp, &old, None, &adv, 0.2, 0.28, 0.0);
    let ntok = f64::try_from(mask.sum(Kind::Double)).unwrap();
    for lt in [LossType::Grpo, LossType::Dapo, LossType::DrGrpo] {
        let whole = f64::try_from(aggregate(&tl.per_token, &mask, lt, ntok, 1, 9)).unwrap();
        let parts: f64 = (0..2)
            .map(|k| f64::try_from(aggregate(&tl.per_token.narrow(0, 6 * k, 6), &mask.narrow(0, 6 * k, 6), lt, ntok, 2, 9)).unwrap())
            .sum();
        close(parts, whole, &format!("{lt:?} accumulated"));
    }
}

#[test]
fn ratio_one_gives_plain_policy_gradient_value() {
    // With logp == old (num_iterations = 1), the loss value is -mean(A) per token (grpo).
    let logp = Tensor::from_slice2(&[[-1.0f64, -2.0], [-0.5, -0.7]]);
    let adv = Tensor::from_slice(&[1.5f64, -0.5]);
    let mask = Tensor::from_slice2(&[[1.0f64, 1.0], [1.0, 0.0]]);
    let tl = token_loss(&logp, &logp, None, &adv, 0.2, 0.2, 0.0);
    let l = f64::try_from(aggregate(&tl.per_token, &mask, LossType::Grpo, 3.0, 1, 2)).unwrap();
    close(l, -(1.5 + -0.5) / 2.0, "grpo at ratio 1");
}
