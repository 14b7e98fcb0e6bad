//! Test-time-compute estimators over the n samples drawn for one problem: unbiased pass@k,
//! majority vote (maj@k), best-of-k by a scorer, and avg@n with its standard error.
//!
//! Each answers "what would k samples give", using all n >= k samples:
//! * pass@k = 1 - C(n - c, k) / C(n, k), the probability that a k-subset holds a correct
//!   sample (Chen et al. 2021), as the product 1 - prod_{i = n-c+1..n} (1 - k / i).
//! * best-of-k: the expected correctness of the sample a scorer ranks first in a uniformly
//!   random k-subset, computed exactly: the sample at rank r (0-based, scores descending,
//!   ties to the lower sample index) is the pick of C(n-1-r, k-1) of the C(n, k) subsets.
//! * maj@k: the mean over k-subsets of the majority vote's correctness (see [`maj_at_k`]).

use rand::{rngs::StdRng, seq::index::sample, SeedableRng};

/// Unbiased pass@k for `c` correct samples out of `n`. Needs `c <= n` and `1 <= k <= n`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(c <= n && (1..=n).contains(&k), "pass@k needs c <= n and 1 <= k <= n (n = {n}, c = {c}, k = {k})");
    if n - c < k {
        return 1.0;
    }
    // C(n-c, k) / C(n, k) = prod_{i = n-c+1..n} (1 - k / i): every factor is in [0, 1], so
    // nothing overflows at any n.
    let mut p = 1.0;
    for i in (n - c + 1)..=n {
        p *= 1.0 - k as f64 / i as f64;
    }
    1.0 - p
}

/// k = 1, 2, 4, ... up to n, and n itself when it is not a power of two.
pub fn k_ladder(n: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = std::iter::successors(Some(1usize), |k| k.checked_mul(2)).take_while(|&k| k <= n).collect();
    if n > 0 && ks.last() != Some(&n) {
        ks.push(n);
    }
    ks
}

/// Groups answers into clusters of equal value, in order of first appearance: an answer
/// joins the first cluster whose representative (its first answer) it is `same` as, else
/// opens a new one. Samples without an answer get `None`. Identical strings are compared
/// once.
pub fn cluster_answers<S: AsRef<str>>(answers: &[Option<S>], same: impl Fn(&str, &str) -> bool) -> Vec<Option<usize>> {
    let mut reps: Vec<&str> = vec![];
    let mut known: std::collections::HashMap<&str, usize> = Default::default();
    answers
        .iter()
        .map(|a| {
            let a = a.as_ref()?.as_ref();
            if let Some(&c) = known.get(a) {
                return Some(c);
            }
            let c = reps.iter().position(|r| same(a, r)).unwrap_or_else(|| {
                reps.push(a);
                reps.len() - 1
            });
            known.insert(a, c);
            Some(c)
        })
        .collect()
}

/// The majority vote of the samples `subset` (ascending sample indices): the cluster with
/// the most votes; a tie goes to the tied cluster whose first vote in the subset comes
/// first (lowest sample index). Samples without an answer do not vote; `None` when none has
/// one. `counts` is scratch space with a slot per cluster.
pub fn vote(clusters: &[Option<usize>], subset: impl Iterator<Item = usize>, counts: &mut [usize]) -> Option<usize> {
    counts.iter_mut().for_each(|x| *x = 0);
    let mut seen = vec![];
    for i in subset {
        if let Some(c) = clusters[i] {
            if counts[c] == 0 {
                seen.push(c);
            }
            counts[c] += 1;
        }
    }
    // `seen` is in order of first vote, so the first cluster reaching the top count wins.
    let mut best: Option<usize> = None;
    for c in seen {
        if best.is_none_or(|b| counts[c] > counts[b]) {
            best = Some(c);
        }
    }
    best
}

/// How [`maj_at_k`] averages over k-subsets.
#[derive(Debug, Clone, Copy)]
pub struct MajMethod {
    /// Every k-subset when there are at most this many ...
    pub max_exact: u64,
    /// ... else this many k-subsets drawn uniformly (each without repetition) from `seed`.
    pub draws: usize,
    pub seed: u64,
}

impl Default for MajMethod {
    fn default() -> Self {
        MajMethod { max_exact: 5000, draws: 1000, seed: 0 }
    }
}

/// C(n, k) as u64, saturating at u64::MAX.
pub fn binomial(n: usize, k: usize) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut r: u128 = 1;
    for i in 0..k {
        r = r * (n - i) as u128 / (i + 1) as u128;
        if r > u64::MAX as u128 {
            return u64::MAX;
        }
    }
    r as u64
}

/// maj@k for one problem: the mean, over k-subsets of its n samples, of whether the
/// majority vote of the subset ([`vote`]: equivalent answers count as one, ties to the
/// answer voted first) is correct. `cluster_correct[c]` says whether cluster c's answer is
/// correct. Exact over all k-subsets when there are at most `m.max_exact`, else the mean
/// over `m.draws` seeded uniform k-subsets. k = n is the vote of all samples.
pub fn maj_at_k(clusters: &[Option<usize>], cluster_correct: &[bool], k: usize, m: &MajMethod) -> f64 {
    let n = clusters.len();
    assert!((1..=n).contains(&k), "maj@k needs 1 <= k <= n (n = {n}, k = {k})");
    let nc = cluster_correct.len();
    let mut counts = vec![0; nc];
    let mut score =
        |subset: &[usize]| -> f64 { vote(clusters, subset.iter().copied(), &mut counts).is_some_and(|c| cluster_correct[c]) as u8 as f64 };
    let total = binomial(n, k);
    if total <= m.max_exact {
        // Lexicographic enumeration of k-subsets.
        let mut idx: Vec<usize> = (0..k).collect();
        let mut sum = 0.0;
        loop {
            sum += score(&idx);
            let Some(i) = (0..k).rev().find(|&i| idx[i] < n - k + i) else { break };
            idx[i] += 1;
            for j in i + 1..k {
                idx[j] = idx[j - 1] + 1;
            }
        }
        sum / total as f64
    } else {
        let mut rng = StdRng::seed_from_u64(m.seed);
        let mut sum = 0.0;
        for _ in 0..m.draws {
            let mut s = sample(&mut rng, n, k).into_vec();
            s.sort_unstable();
            sum += score(&s);
        }
        sum / m.draws as f64
    }
}

/// best-of-k for one problem: the expected correctness of the top-scored sample of a
/// uniformly random k-subset (higher score wins; equal scores go to the lower sample
/// index), computed exactly.
pub fn best_of_k(scores: &[f64], correct: &[bool], k: usize) -> f64 {
    let n = scores.len();
    assert!(correct.len() == n && (1..=n).contains(&k), "best-of-k needs one correctness per score and 1 <= k <= n");
    let mut order: Vec<usize> = (0..n).collect();
    // NaN scores rank last.
    let key = |i: usize| if scores[i].is_nan() { f64::NEG_INFINITY } else { scores[i] };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    // w_r = C(n-1-r, k-1) / C(n, k): w_0 = k/n, w_{r+1} = w_r (n-r-k) / (n-1-r).
    let mut w = k as f64 / n as f64;
    let mut sum = 0.0;
    for (r, &i) in order.iter().enumerate() {
        if w == 0.0 {
            break;
        }
        if correct[i] {
            sum += w;
        }
        if r + 1 < n {
            w *= (n - r - k) as f64 / (n - 1 - r) as f64;
        }
    }
    sum
}

/// Mean of `xs` and its standard error sd / sqrt(len) (sd with len - 1); `None` for the
/// error with fewer than two values.
pub fn mean_stderr(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len();
    if n == 0 {
        return (0.0, None);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, Some((var / n as f64).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Every k-subset of 0..n, by bitmask (independent of the lexicographic walk above).
    fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        (0u32..1 << n).filter(|m| m.count_ones() as usize == k).map(|m| (0..n).filter(|i| m >> i & 1 == 1).collect()).collect()
    }

    /// The vote written out plainly: counts per cluster; among the top counts, the cluster
    /// whose first member in the (ascending) subset comes first.
    fn brute_vote(clusters: &[Option<usize>], subset: &[usize]) -> Option<usize> {
        let mut tally: Vec<(usize, usize, usize)> = vec![]; // (cluster, votes, first index)
        for &i in subset {
            if let Some(c) = clusters[i] {
                match tally.iter_mut().find(|t| t.0 == c) {
                    Some(t) => t.1 += 1,
                    None => tally.push((c, 1, i)),
                }
            }
        }
        let top = tally.iter().map(|t| t.1).max()?;
        tally.iter().filter(|t| t.1 == top).min_by_key(|t| t.2).map(|t| t.0)
    }

    fn brute_maj(clusters: &[Option<usize>], correct: &[bool], k: usize) -> f64 {
        let all = subsets(clusters.len(), k);
        all.iter().filter(|s| brute_vote(clusters, s).is_some_and(|c| correct[c])).count() as f64 / all.len() as f64
    }

    #[test]
    fn pass_at_k_equals_enumeration_over_all_subsets() {
        for n in 1..=10 {
            for c in 0..=n {
                let correct: Vec<bool> = (0..n).map(|i| i < c).collect();
                for k in 1..=n {
                    let all = subsets(n, k);
                    let hit = all.iter().filter(|s| s.iter().any(|&i| correct[i])).count() as f64 / all.len() as f64;
                    assert!((pass_at_k(n, c, k) - hit).abs() < 1e-12, "n={n} c={c} k={k}: {} vs {hit}", pass_at_k(n, c, k));
                }
            }
        }
    }

    #[test]
    fn pass_at_k_is_stable_at_n_1000() {
        let n = 1000;
        // One correct sample: exactly k / n.
        for k in [1, 7, 64, 500, 999, 1000] {
            assert!((pass_at_k(n, 1, k) - k as f64 / n as f64).abs() < 1e-12, "k={k}");
        }
        // The naive ratio of binomials overflows here (C(1000, 500) ~ 2.7e299 and
        // C(1000, 600) = inf in f64), the product does not: compare with log-space sums.
        let ln_binom = |n: usize, k: usize| (0..k).map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln()).sum::<f64>();
        for (c, k) in [(3, 10), (50, 64), (100, 500), (400, 600), (10, 990)] {
            let want = if n - c < k { 1.0 } else { 1.0 - (ln_binom(n - c, k) - ln_binom(n, k)).exp() };
            let got = pass_at_k(n, c, k);
            assert!(got.is_finite() && (0.0..=1.0).contains(&got));
            assert!((got - want).abs() < 1e-9, "c={c} k={k}: {got} vs {want}");
        }
        // Monotone in k and in c.
        let mut prev = 0.0;
        for k in 1..=n {
            let p = pass_at_k(n, 5, k);
            assert!(p >= prev - 1e-15);
            prev = p;
        }
        assert!((1..n).all(|c| pass_at_k(n, c + 1, 10) >= pass_at_k(n, c, 10)));
        assert_eq!(pass_at_k(n, 0, 1000), 0.0);
        assert_eq!(pass_at_k(n, 1, 1000), 1.0);
    }

    #[test]
    fn maj_at_k_hand_computed_with_ties_to_the_first_vote() {
        // Answers A B A' C where A and A' are one answer (correct), B and C wrong.
        let clusters = [Some(0), Some(1), Some(0), Some(2)];
        let correct = [true, false, false];
        let m = MajMethod::default();
        // k = 1: each sample alone: A, B, A', C -> 2 of 4.
        assert_eq!(maj_at_k(&clusters, &correct, 1, &m), 0.5);
        // k = 2: {0,1} tie -> A (first) ok; {0,2} A; {0,3} tie -> A; {1,2} tie -> B (first)
        // wrong; {1,3} tie -> B wrong; {2,3} tie -> A' ok: 4 / 6.
        assert!((maj_at_k(&clusters, &correct, 2, &m) - 4.0 / 6.0).abs() < 1e-12);
        // k = 3: {0,1,2} A; {0,1,3} three-way tie -> A; {0,2,3} A; {1,2,3} tie -> B: 3 / 4.
        assert_eq!(maj_at_k(&clusters, &correct, 3, &m), 0.75);
        // k = 4: A has two votes.
        assert_eq!(maj_at_k(&clusters, &correct, 4, &m), 1.0);
        // The tie rule on its own: two answers one vote each, the first sample's wins.
        assert_eq!(maj_at_k(&[Some(0), Some(1)], &[false, true], 2, &m), 0.0);
        assert_eq!(maj_at_k(&[Some(0), Some(1)], &[true, false], 2, &m), 1.0);
        // Samples without an answer do not vote; with no answer at all the vote fails.
        assert_eq!(maj_at_k(&[None, Some(0), None], &[true], 3, &m), 1.0);
        assert_eq!(maj_at_k(&[None, None], &[], 2, &m), 0.0);
        assert_eq!(maj_at_k(&[None, Some(0)], &[true], 1, &m), 0.5);
    }

    #[test]
    fn maj_at_k_matches_brute_force_exactly_and_when_sampled() {
        let mut rng = StdRng::seed_from_u64(7);
        for trial in 0..40 {
            let n = rng.random_range(2..=12);
            let nc = rng.random_range(1..=4);
            let clusters: Vec<Option<usize>> =
                (0..n).map(|_| if rng.random_bool(0.15) { None } else { Some(rng.random_range(0..nc)) }).collect();
            // Renumber clusters by first appearance, as cluster_answers does.
            let mut order = vec![];
            let clusters: Vec<Option<usize>> = clusters
                .iter()
                .map(|c| {
                    c.map(|c| {
                        order.iter().position(|&x| x == c).unwrap_or_else(|| {
                            order.push(c);
                            order.len() - 1
                        })
                    })
                })
                .collect();
            let correct: Vec<bool> = (0..order.len()).map(|_| rng.random_bool(0.5)).collect();
            for k in 1..=n {
                let want = brute_maj(&clusters, &correct, k);
                let exact = maj_at_k(&clusters, &correct, k, &MajMethod { max_exact: u64::MAX, ..Default::default() });
                assert!((exact - want).abs() < 1e-12, "trial {trial} k={k}: {exact} vs {want}");
                // Forced onto seeded subsets: close to the exact mean (4000 draws: sd < 0.008).
                let sampled = maj_at_k(&clusters, &correct, k, &MajMethod { max_exact: 0, draws: 4000, seed: trial });
                assert!((sampled - want).abs() < 0.04, "trial {trial} k={k}: sampled {sampled} vs {want}");
            }
        }
    }

    #[test]
    fn best_of_k_matches_brute_force() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..40 {
            let n = rng.random_range(1..=11);
            // Few distinct scores, so ties happen; a NaN ranks last.
            let scores: Vec<f64> = (0..n).map(|_| if rng.random_bool(0.1) { f64::NAN } else { rng.random_range(0..4) as f64 }).collect();
            let correct: Vec<bool> = (0..n).map(|_| rng.random_bool(0.4)).collect();
            for k in 1..=n {
                let all = subsets(n, k);
                let key = |i: usize| if scores[i].is_nan() { f64::NEG_INFINITY } else { scores[i] };
                let hits = all
                    .iter()
                    .filter(|s| {
                        // Highest score; ties to the lowest index (s is ascending).
                        let best = s.iter().copied().fold(None, |b: Option<usize>, i| match b {
                            Some(b) if key(b) >= key(i) => Some(b),
                            _ => Some(i),
                        });
                        correct[best.unwrap()]
                    })
                    .count();
                let want = hits as f64 / all.len() as f64;
                let got = best_of_k(&scores, &correct, k);
                assert!((got - want).abs() < 1e-12, "n={n} k={k}: {got} vs {want} ({scores:?} {correct:?})");
            }
        }
        // At k = 1 best-of is the mean; at k = n the top-scored sample.
        assert!((best_of_k(&[0.1, 0.9, 0.5], &[true, false, true], 1) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(best_of_k(&[0.1, 0.9, 0.5], &[true, false, true], 3), 0.0);
    }

    #[test]
    fn clusters_follow_equivalence_in_order_of_first_appearance() {
        let same = |a: &str, b: &str| a.trim_start_matches('+') == b.trim_start_matches('+');
        let answers = [Some("3"), None, Some("+3"), Some("4"), Some("3"), Some("+4")];
        assert_eq!(cluster_answers(&answers, same), vec![Some(0), None, Some(0), Some(1), Some(0), Some(1)]);
    }

    #[test]
    fn ladder_mean_and_binomial() {
        assert_eq!(k_ladder(64), vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(k_ladder(12), vec![1, 2, 4, 8, 12]);
        assert_eq!(k_ladder(1), vec![1]);
        let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(m, 0.5);
        // sd (n - 1) = sqrt(1/3), / sqrt(4).
        assert!((se.unwrap() - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-12);
        assert_eq!(mean_stderr(&[0.3]).1, None);
        assert_eq!(binomial(64, 4), 635_376);
        assert_eq!(binomial(5, 7), 0);
        assert_eq!(binomial(1000, 500), u64::MAX);
    }
}
