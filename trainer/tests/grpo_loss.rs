//! GRPO advantages and losses against NumPy values computed from the published formulas.
//! Regenerate the fixture with `.venv/bin/python scripts/make_grpo_fixture.py`.

use serde_json::Value;
use tch::{Kind, Tensor};
use trainer::grpo::{advantages, aggregate, masked_mean, token_loss, LossType, Norm, ScaleRewards};

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
    let _ntok = f64::try_from(mask.sum(Kind::Double)).unwrap();
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
            let got = f64::try_from(aggregate(&tl.per_token, &mask, lt, &Norm::whole(&mask, max_new))).unwrap();
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
    // Gradient accumulation: micro-batches of unequal sizes, each cut to its own width (the
    // learner groups rows of similar length), sum to the whole-batch loss for every loss
    // type normalised by minibatch totals (all but bnpo, which is per micro-batch by
    // definition; its equal halves average to the whole only when token counts match).
    let f = fixture();
    let (mask, logp, old) = (t2(&f["mask"]), t2(&f["logp"]), t2(&f["old"]));
    let rewards: Vec<f64> = serde_json::from_value(f["rewards"].clone()).unwrap();
    let adv = Tensor::from_slice(&advantages(&rewards, 4, ScaleRewards::Group, 1e-4));
    let tl = token_loss(&logp, &old, None, &adv, 0.2, 0.28, 0.0);
    let rows = mask.size()[0];
    let whole_norm = Norm::whole(&mask, 9);
    let split = Norm { micro_batches: 3, ..whole_norm };
    // Rows [0, 2), [2, 7), [7, rows): the widths keep only columns some row of the part uses.
    let cuts = [0, 2, 7, rows];
    for lt in [LossType::Grpo, LossType::Dapo, LossType::DrGrpo] {
        let whole = f64::try_from(aggregate(&tl.per_token, &mask, lt, &whole_norm)).unwrap();
        let parts: f64 = cuts
            .windows(2)
            .map(|w| {
                let (pt, m) = (tl.per_token.narrow(0, w[0], w[1] - w[0]), mask.narrow(0, w[0], w[1] - w[0]));
                let used = m.sum_dim_intlist(&[0i64][..], false, Kind::Double).gt(0.0).nonzero().max();
                let width = i64::try_from(used).unwrap() + 1;
                f64::try_from(aggregate(&pt.narrow(1, 0, width), &m.narrow(1, 0, width), lt, &split)).unwrap()
            })
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
    let l = f64::try_from(aggregate(&tl.per_token, &mask, LossType::Grpo, &Norm::whole(&mask, 2))).unwrap();
    close(l, -(1.5 + -0.5) / 2.0, "grpo at ratio 1");
}
