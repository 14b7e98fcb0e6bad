//! `cargo bench -p rewards`: samples/s of each reward module on 10,000 completions of
//! ~2,000 characters, on one thread and on all cores, and the accuracy module's
//! agreement with the labelled truth. Writes the sample set to
//! `$PONDER_BENCH_SAMPLES` (default: `<tmp>/ponder-rewards-bench.jsonl`) for
//! `scripts/bench_math_verify.py`.
//!
//! Options (after `--`): `--n N` (default 10000); `--only KIND` (one module, e.g.
//! `accuracy`); `--rounds R` (best of R timed rounds, default 3; more rounds give steadier
//! figures on a shared machine).

use rewards::bench_data::{labelled_samples, to_json};
use rewards::{RewardSet, Sample};
use std::io::Write;
use std::time::Instant;

fn rate(set: &RewardSet, samples: &[Sample], parallel: bool, rounds: usize) -> f64 {
    // best of `rounds`
    let mut best = f64::INFINITY;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let out = if parallel { set.score_batch(samples) } else { set.score_batch_sequential(samples) };
        std::hint::black_box(&out);
        best = best.min(t.elapsed().as_secs_f64());
    }
    samples.len() as f64 / best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args.iter().position(|a| a == "--n").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let only = opt("--only");
    let rounds: usize = opt("--rounds").and_then(|v| v.parse().ok()).unwrap_or(3);
    let labelled = labelled_samples(n, 42);
    let samples: Vec<Sample> = labelled.iter().map(|(s, _)| s.clone()).collect();
    let avg_len = samples.iter().map(|s| s.completion.len()).sum::<usize>() as f64 / n as f64;

    let path = std::env::var("PONDER_BENCH_SAMPLES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("ponder-rewards-bench.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create samples file"));
    for (s, l) in &labelled {
        serde_json::to_writer(&mut f, &to_json(s, *l)).unwrap();
        f.write_all(b"\n").unwrap();
    }
    f.flush().unwrap();

    let threads = rayon::current_num_threads();
    println!("rewards bench: {n} completions, mean {avg_len:.0} bytes; {threads} rayon threads");
    println!("samples written to {}", path.display());
    println!("{:<24} {:>14} {:>14}", "module", "1 thread/s", "all cores/s");
    let kinds = [
        ("accuracy", "kind = \"accuracy\""),
        ("format", "kind = \"format\""),
        ("language_consistency", "kind = \"language_consistency\""),
        ("countdown", "kind = \"countdown\""),
        ("cosine_length", "kind = \"cosine_length\""),
        ("overlong_penalty", "kind = \"overlong_penalty\"\nmax_length = 4096"),
        ("repetition", "kind = \"repetition\""),
    ];
    for (name, body) in kinds {
        if only.as_ref().is_some_and(|o| o != name) {
            continue;
        }
        let set = RewardSet::from_toml_str(&format!("[[rewards]]\n{body}\n")).unwrap();
        println!("{:<24} {:>14.0} {:>14.0}", name, rate(&set, &samples, false, rounds), rate(&set, &samples, true, rounds));
    }
    if only.is_none() {
        let all: String = kinds.iter().map(|(_, b)| format!("[[rewards]]\n{b}\n")).collect();
        let set = RewardSet::from_toml_str(&all).unwrap();
        println!("{:<24} {:>14.0} {:>14.0}", "all seven together", rate(&set, &samples, false, rounds), rate(&set, &samples, true, rounds));
    }

    let acc = RewardSet::from_toml_str("[[rewards]]\nkind = \"accuracy\"\n").unwrap();
    let out = acc.score_batch(&samples);
    let agree = out.scores.iter().zip(&labelled).filter(|(s, (_, l))| (s.total == 1.0) == *l).count();
    println!(
        "accuracy agreement with labels: {agree}/{n} = {:.2}% (unparseable references: {}, no answer: {})",
        100.0 * agree as f64 / n as f64,
        out.counts.unparseable_references,
        out.counts.no_answer
    );
}
