//! Two processes over Gloo on 127.0.0.1: each test runs this binary again as ranks 0 and 1
//! (the torchrun variables set by the test), checks every collective against its definition,
//! a data-parallel step against one process accumulating the same micro-batches, a sharded
//! (ZeRO-2 style) update against the unsharded one, and a rank that dies.

use ponder_dist::{Launch, ProcessGroup};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

const CHILD: &str = "PONDER_DIST_TEST_CHILD";

/// This process's launch when it is one of the spawned ranks.
fn child() -> Option<Launch> {
    std::env::var(CHILD).ok()?;
    Launch::from_env(|k| std::env::var(k).ok()).unwrap()
}

/// Runs test `name` of this binary as ranks 0 and 1 of a world of 2 and returns their outputs
/// (killed after `limit`).
fn world_of_two(name: &str, limit: Duration) -> Vec<Output> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut kids: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    while kids.iter_mut().any(|k| k.try_wait().unwrap().is_none()) {
        if start.elapsed() > limit {
            for k in &mut kids {
                let _ = k.kill();
            }
            panic!("the ranks of {name} did not finish within {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kids.into_iter().map(|k| k.wait_with_output().unwrap()).collect()
}

fn check(outs: &[Output], want: &str) {
    for (rank, o) in outs.iter().enumerate() {
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "rank {rank} failed:\n{out}\n{err}");
        assert!(out.contains(&format!("rank {rank}: {want}")), "rank {rank}:\n{out}\n{err}");
    }
}

fn vals(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

/// Rank r's data: distinct values per rank and position.
fn data(rank: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| (rank * 100 + i) as f32 * 0.37 - 5.0).collect()
}

#[test]
fn collectives_against_their_definitions() {
    let Some(l) = child() else {
        if !ponder_dist::has_gloo() {
            panic!("this build has no Gloo: scripts/setup-libtorch.sh fetches its headers");
        }
        check(&world_of_two("collectives_against_their_definitions", Duration::from_secs(120)), "collectives ok");
        return;
    };
    let pg = ProcessGroup::join(&l, Duration::from_secs(30)).unwrap();
    let (r, w) = (l.rank, l.world);
    let n = 6;

    // all_reduce: the elementwise sum of every rank's tensor.
    let mut t = Tensor::from_slice(&data(r, n));
    pg.all_reduce_sum(&mut t).unwrap();
    let want: Vec<f32> = (0..n).map(|i| (0..w).map(|k| data(k, n)[i]).sum()).collect();
    assert_eq!(vals(&t), want);

    // broadcast from rank 1: everyone holds rank 1's tensor.
    let mut t = Tensor::from_slice(&data(r, n));
    pg.broadcast(&mut t, 1).unwrap();
    assert_eq!(vals(&t), data(1, n));

    // all_gather: rank k's tensor at block k.
    let mut out = Tensor::zeros([(w * n) as i64], (Kind::Float, tch::Device::Cpu));
    pg.all_gather(&mut out, &Tensor::from_slice(&data(r, n))).unwrap();
    assert_eq!(vals(&out), (0..w).flat_map(|k| data(k, n)).collect::<Vec<_>>());

    // reduce_scatter: rank r gets the sum over ranks of block r.
    let mut mine = Tensor::zeros([n as i64], (Kind::Float, tch::Device::Cpu));
    pg.reduce_scatter_sum(&mut mine, &Tensor::from_slice(&data(r, w * n))).unwrap();
    let want: Vec<f32> = (0..n).map(|i| (0..w).map(|k| data(k, w * n)[r * n + i]).sum()).collect();
    assert_eq!(vals(&mine), want);

    // Byte strings of different lengths (rank 1's longer), and f64 sums.
    let mine: Vec<u8> = (0..(3 + 5 * r)).map(|i| (i * 7 + r) as u8).collect();
    let all = pg.all_gather_bytes(&mine).unwrap();
    assert_eq!(all, (0..w).map(|k| (0..(3 + 5 * k)).map(|i| (i * 7 + k) as u8).collect::<Vec<u8>>()).collect::<Vec<_>>());
    let mut xs = [r as f64 + 0.25, 1e-3 * r as f64];
    pg.all_reduce_f64(&mut xs).unwrap();
    assert_eq!(xs, [(0..w).map(|k| k as f64 + 0.25).sum::<f64>(), (0..w).map(|k| 1e-3 * k as f64).sum::<f64>()]);

    // A wrong shape is an error, not a crash.
    let mut bad = Tensor::zeros([5], (Kind::Float, tch::Device::Cpu));
    assert!(pg.all_gather(&mut bad, &Tensor::from_slice(&data(r, n))).unwrap_err().to_string().contains("world x"));
    pg.barrier().unwrap();

    // A data-parallel step: each rank the gradient of its own micro-batch, summed over ranks,
    // gives bit-identical fp32 weights to one process accumulating both micro-batches.
    let w0 = Tensor::from_slice(&data(7, 12)).view([4, 3]);
    let micro = |k: usize| Tensor::from_slice(&data(10 + k, 20)).view([5, 4]);
    let lr = 0.05;
    // One process: backward of micro-batch 0 then 1 accumulate into one gradient.
    let single = {
        let wv = w0.copy().set_requires_grad(true);
        (micro(0).matmul(&wv).tanh().pow_tensor_scalar(2)).sum(Kind::Float).backward();
        (micro(1).matmul(&wv).tanh().pow_tensor_scalar(2)).sum(Kind::Float).backward();
        &w0 - wv.grad() * lr
    };
    let mut g = {
        let wv = w0.copy().set_requires_grad(true);
        (micro(r).matmul(&wv).tanh().pow_tensor_scalar(2)).sum(Kind::Float).backward();
        wv.grad().contiguous()
    };
    pg.all_reduce_sum(&mut g).unwrap();
    let dp = &w0 - &g * lr;
    assert!(dp.equal(&single), "data-parallel step differs from accumulation");

    // Sharded update (ZeRO-2): gradients reduce-scattered, each rank updates its half of the
    // flat weights, the halves all-gathered: the same weights as the unsharded update.
    let local = {
        let wv = w0.copy().set_requires_grad(true);
        (micro(r).matmul(&wv).tanh().pow_tensor_scalar(2)).sum(Kind::Float).backward();
        wv.grad().flatten(0, -1).contiguous()
    };
    let mut shard_g = Tensor::zeros([6], (Kind::Float, tch::Device::Cpu));
    pg.reduce_scatter_sum(&mut shard_g, &local).unwrap();
    let shard_w = w0.flatten(0, -1).narrow(0, 6 * r as i64, 6) - &shard_g * lr;
    let mut full = Tensor::zeros([12], (Kind::Float, tch::Device::Cpu));
    pg.all_gather(&mut full, &shard_w.contiguous()).unwrap();
    assert!(full.view([4, 3]).equal(&single), "sharded update differs from the unsharded one");
    println!("rank {r}: collectives ok");
}

#[test]
fn a_dead_rank_is_an_error_not_a_hang() {
    let Some(l) = child() else {
        check(&world_of_two("a_dead_rank_is_an_error_not_a_hang", Duration::from_secs(120)), "done");
        return;
    };
    let pg = ProcessGroup::join(&l, Duration::from_secs(3)).unwrap();
    if l.rank == 1 {
        // Dies right after joining, without a word to the others.
        println!("rank 1: done");
        drop(pg);
        std::process::exit(0);
    }
    let t0 = Instant::now();
    let mut t = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
    let err = pg.all_reduce_sum(&mut t).unwrap_err().to_string();
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
    assert!(err.contains("rank 0 of 2") && err.contains("all_reduce"), "{err}");
    println!("rank 0: done ({err})");
}
