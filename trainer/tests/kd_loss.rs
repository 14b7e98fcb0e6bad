//! The distillation losses against NumPy values computed in float64 from the definitions
//! (forward KL, reverse KL, JSD at three betas, at two temperatures, online and from a top-k
//! cache with both tail treatments), values and gradients to 1e-5.
//! Regenerate the fixture with `python3 scripts/make_kd_fixture.py` (numpy only).

use serde_json::Value;
use tch::{Kind, Tensor};
use trainer::distill::loss::{score, Divergence, Tail, TeacherDist, TopK};

fn fixture() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kd_loss.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn t2(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    Tensor::from_slice2(&rows).to_kind(Kind::Float)
}

fn v1(t: &Tensor) -> Vec<f64> {
    Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn close(got: &[f64], want: &Value, what: &str) {
    let want: Vec<f64> = serde_json::from_value(want.clone()).unwrap_or_else(|_| {
        want.as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap())).collect()
    });
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}[{i}]: {a} vs reference {b}");
    }
}

#[test]
fn every_divergence_matches_the_numpy_reference_online_and_from_a_cache() {
    let f = fixture();
    let zt = t2(&f["teacher_logits"]);
    let zs0 = t2(&f["student_logits"]);
    let mask: Vec<f64> = serde_json::from_value(f["mask"].clone()).unwrap();
    let maskt = Tensor::from_slice(&mask).to_kind(Kind::Float);
    let vocab = f["vocab"].as_i64().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for case in f["cases"].as_array().unwrap() {
        let div: Divergence = serde_json::from_value(case["divergence"].clone()).unwrap();
        let beta = case["beta"].as_f64().unwrap_or(0.0);
        let temp = case["temperature"].as_f64().unwrap();
        let k = case["top_k"].as_i64();
        let what = format!("{div:?} beta={beta} T={temp} k={k:?} tail={}", case["tail"]);
        let zs = zs0.copy().set_requires_grad(true);
        let t_full = (&zt / temp).log_softmax(-1, Kind::Float);
        let top;
        let teacher = match k {
            None => TeacherDist::Full(&t_full),
            Some(k) => {
                let tail: Tail = serde_json::from_value(case["tail"].clone()).unwrap();
                top = TopK::from_logprobs(&t_full, k);
                assert_eq!(top.k(), k.min(vocab));
                TeacherDist::Cached(&top, tail)
            }
        };
        let sc = score(&teacher, &zs, temp, div, beta);
        close(&v1(&sc.loss), &case["per_position"], &format!("{what} per position"));
        let mean = (&sc.loss * &maskt).sum(Kind::Float) / maskt.sum(Kind::Float);
        close(&[f64::try_from(&mean).unwrap()], &Value::from(vec![case["loss"].clone()]), &format!("{what} mean"));
        mean.backward();
        close(&v1(&zs.grad()), &case["grad"], &format!("{what} gradient"));
        // The forward-KL metric is the forward-KL case's value.
        if div == Divergence::ForwardKl {
            close(&v1(&sc.forward_kl), &case["per_position"], &format!("{what} forward KL metric"));
        }
        seen.insert(format!("{div:?}-{beta}-{}-{}", k.is_some(), case["tail"]));
    }
    // 2 temperatures x (forward + reverse + 3 JSD betas) x (online + 2 caches x 2 k), less
    // reverse KL with a renormalised k < V (infinite).
    assert_eq!(f["cases"].as_array().unwrap().len(), 48);
    assert!(seen.len() >= 5 * 3, "every divergence with and without a cache: {seen:?}");
}

#[test]
fn the_cache_rows_match_the_reference_top_k_and_tail() {
    let f = fixture();
    let t = (t2(&f["teacher_logits"]) / 2.0).log_softmax(-1, Kind::Float);
    let top = TopK::from_logprobs(&t, 3);
    let c = &f["cache_t2_k3"];
    let ids: Vec<Vec<i64>> = serde_json::from_value(c["ids"].clone()).unwrap();
    assert_eq!(Vec::<i64>::try_from(top.ids.flatten(0, -1)).unwrap(), ids.concat());
    close(&v1(&top.logp), &c["logprobs"], "cached log-probs");
    close(&v1(&top.tail), &c["tail_logmass"], "tail log-mass");
    // The tail is the log of what the top-k leaves: logsumexp(top-k, tail) = 0.
    let total = Tensor::cat(&[top.logp.shallow_clone(), top.tail.unsqueeze(-1)], -1).logsumexp(&[-1i64][..], false);
    assert!(f64::try_from(total.abs().max()).unwrap() < 1e-6);
}

#[test]
fn agreement_counts_positions_where_the_argmaxes_match() {
    // Teacher prefers token 0 everywhere; the student agrees at rows 0 and 2 only.
    let zt = Tensor::from_slice2(&[[3.0f32, 0.0, 0.0], [3.0, 0.0, 0.0], [3.0, 0.0, 0.0]]);
    let zs = Tensor::from_slice2(&[[1.0f32, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.4, 0.0]]);
    let t = zt.log_softmax(-1, Kind::Float);
    for teacher in [TeacherDist::Full(&t), TeacherDist::Cached(&TopK::from_logprobs(&t, 2), Tail::Bucket)] {
        let sc = score(&teacher, &zs, 1.0, Divergence::ForwardKl, 0.0);
        assert_eq!(v1(&sc.agree), vec![1.0, 0.0, 1.0]);
    }
}
