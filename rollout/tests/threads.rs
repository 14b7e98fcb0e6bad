//! A pool's per-worker intra-op thread count stays in its workers. libtorch keeps one
//! process-wide count that a thread adopts on its first parallel op; a worker's count once
//! leaked into the trainer's thread of a resumed pipeline and halved its training speed.
//! Its own test binary: no other test may touch the process-wide count meanwhile.

use rollout::pool::RolloutPool;
use rollout::tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind};

/// The count a new thread adopts now.
fn fresh_thread_count() -> i32 {
    std::thread::spawn(tch::get_num_threads).join().unwrap()
}

#[test]
fn worker_thread_count_does_not_leak_to_the_caller_or_later_threads() {
    let default = fresh_thread_count();
    let worker = default + 1; // differs from the default on any machine
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2-tied");
    let dir = fixture.clone();
    // The caller has run no parallel op before building the pool, as in a resumed pipeline.
    let caller = std::thread::spawn(move || {
        let tk = Arc::new(Tokenizer::from_dir(&dir).unwrap());
        let pool = RolloutPool::from_dir_threads(&dir, &[Device::Cpu], Kind::Float, tk, Some(worker as usize)).unwrap();
        let during = tch::get_num_threads();
        drop(pool);
        during
    })
    .join()
    .unwrap();
    assert_eq!(caller, default, "the caller adopted a worker's thread count");
    assert_eq!(fresh_thread_count(), default, "a later thread adopted a worker's thread count");

    // A pool whose worker fails to load (no weights) is an error, and still restores the
    // caller's count. In this one test: tests of a binary run side by side.
    let broken = tempfile::tempdir().unwrap();
    std::fs::copy(fixture.join("config.json"), broken.path().join("config.json")).unwrap();
    let broken_dir = broken.path().to_path_buf();
    let after_error = std::thread::spawn(move || {
        let tk = Arc::new(Tokenizer::from_dir(&fixture).unwrap());
        let r = RolloutPool::from_dir_threads(&broken_dir, &[Device::Cpu], Kind::Float, tk, Some(worker as usize));
        assert!(r.is_err(), "a model folder without weights must not load");
        tch::get_num_threads()
    })
    .join()
    .unwrap();
    assert_eq!(after_error, default, "a failed pool left the caller with a worker's thread count");
}
