//! The rollout pool: worker threads, each owning a device and its own copy of the policy,
//! turning a batch of prompts x G into completions grouped per prompt.
//!
//! Tensors are `Send` but not `Sync`, so each worker's model lives on its own thread and
//! receives jobs over a channel. Samples are seeded per (step seed, prompt, sample index),
//! so results do not depend on how rows were split across workers.

use crate::error::{Result, RolloutError};
use crate::folder::Policy;
use crate::generate::{generate_with, Completion, GenStats, SamplingParams, ThinkIds};
use crate::tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

enum Job {
    Generate {
        prompts: Vec<Vec<i64>>,
        seeds: Vec<u64>,
        params: SamplingParams,
        think: Option<ThinkIds>,
        reply: mpsc::Sender<Result<(Vec<Completion>, GenStats)>>,
    },
    Sync {
        tensors: BTreeMap<String, Tensor>,
        reply: mpsc::Sender<Result<()>>,
    },
    /// Returns a copy of the worker's weights (used by tests to check the copies differ).
    Snapshot {
        reply: mpsc::Sender<BTreeMap<String, Tensor>>,
    },
}

struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    device: Device,
}

pub struct RolloutPool {
    workers: Vec<Worker>,
    tokenizer: Arc<Tokenizer>,
    eos_ids: Vec<i64>,
    /// Rows per forward pass on one worker (bounds KV-cache memory).
    pub max_batch: usize,
}

/// A 64-bit mix (splitmix64) so nearby seeds give unrelated streams.
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of sample `j` of prompt `i` in a generation call seeded with `seed`.
pub fn sample_seed(seed: u64, prompt: usize, sample: usize) -> u64 {
    mix_seed(mix_seed(seed, prompt as u64 + 1), sample as u64 + 1)
}

impl RolloutPool {
    /// Starts one worker per device, each loading the model folder `dir` itself.
    pub fn from_dir(dir: &Path, devices: &[Device], kind: Kind, tokenizer: Arc<Tokenizer>) -> Result<Self> {
        Self::from_dir_threads(dir, devices, kind, tokenizer, None)
    }

    /// [`from_dir`](Self::from_dir), each worker using `threads` intra-op CPU threads (None:
    /// libtorch's default). Small models decode faster as several one-thread workers than as
    /// one worker whose tiny ops are split across threads (see the README's test-time
    /// compute section).
    pub fn from_dir_threads(dir: &Path, devices: &[Device], kind: Kind, tokenizer: Arc<Tokenizer>, threads: Option<usize>) -> Result<Self> {
        // libtorch keeps one process-wide intra-op thread count: `set_num_threads` overwrites
        // it, and a thread adopts it on its first parallel op. A worker's count must not leak
        // into the caller (a trainer that had not run a parallel op yet, e.g. a resumed
        // pipeline, ran single-threaded after an eval pool of one-thread workers: 2x slower)
        // or into a later pool: pin the caller's count now, restore it once the workers are up.
        let caller_threads = tch::get_num_threads();
        let mut workers = vec![];
        let mut eos_ids = vec![];
        let (ready_tx, ready_rx) = mpsc::channel();
        for (w, &device) in devices.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Job>();
            let dir = dir.to_path_buf();
            let tk = tokenizer.clone();
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("rollout-{w}"))
                .spawn(move || {
                    // Per thread from here on (OpenMP's count is per calling thread).
                    tch::set_num_threads(threads.map_or(caller_threads, |t| t as i32));
                    match Policy::load(&dir, kind, device) {
                        Ok(mut policy) => {
                            policy.fuse_for_inference();
                            let _ = ready.send((w, Ok(policy.eos_token_ids())));
                            worker_loop(policy, tk, rx)
                        }
                        Err(e) => {
                            let _ = ready.send((w, Err(e)));
                        }
                    }
                })
                .map_err(|e| RolloutError::Generation(format!("cannot start rollout worker: {e}")))?;
            workers.push(Worker { tx: Some(tx), thread: Some(thread), device });
        }
        drop(ready_tx);
        // Every worker reports before anything is propagated, so a failed load cannot skip
        // restoring the caller's thread count.
        let mut loaded = Ok(());
        for _ in 0..devices.len() {
            match ready_rx.recv() {
                Ok((_, Ok(ids))) => eos_ids = ids,
                Ok((_, Err(e))) => loaded = loaded.and(Err(e)),
                Err(_) => loaded = loaded.and(Err(RolloutError::Generation("a rollout worker died while loading".into()))),
            }
        }
        tch::set_num_threads(caller_threads);
        loaded?;
        Ok(RolloutPool { workers, tokenizer, eos_ids, max_batch: 256 })
    }

    pub fn num_workers(&self) -> usize {
        self.workers.len()
    }

    pub fn devices(&self) -> Vec<Device> {
        self.workers.iter().map(|w| w.device).collect()
    }

    pub fn eos_ids(&self) -> &[i64] {
        &self.eos_ids
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// `group_size` samples for each prompt, grouped per prompt in order.
    pub fn generate_groups(
        &self,
        prompts: &[Vec<i64>],
        group_size: usize,
        params: &SamplingParams,
        seed: u64,
    ) -> Result<Vec<Vec<Completion>>> {
        self.generate_groups_with(prompts, group_size, params, seed, None).map(|(g, _)| g)
    }

    /// [`generate_groups`](Self::generate_groups) with an optional thinking control, also
    /// returning what was computed. A group's rows go to the workers in order, so the rows
    /// of one prompt mostly share one batch and its prompt is prefilled once there.
    pub fn generate_groups_with(
        &self,
        prompts: &[Vec<i64>],
        group_size: usize,
        params: &SamplingParams,
        seed: u64,
        think: Option<&ThinkIds>,
    ) -> Result<(Vec<Vec<Completion>>, GenStats)> {
        self.generate_groups_from(prompts, 0, group_size, params, seed, think)
    }

    /// [`generate_groups_with`](Self::generate_groups_with) for prompts that are entries
    /// `first..first + prompts.len()` of a larger call: each sample gets the seed it has
    /// there, so a call split into parts (over data-parallel ranks) draws the same samples.
    pub fn generate_groups_from(
        &self,
        prompts: &[Vec<i64>],
        first: usize,
        group_size: usize,
        params: &SamplingParams,
        seed: u64,
        think: Option<&ThinkIds>,
    ) -> Result<(Vec<Vec<Completion>>, GenStats)> {
        let rows: Vec<(usize, usize)> = (0..prompts.len()).flat_map(|i| (0..group_size).map(move |j| (i, j))).collect();
        let n = self.workers.len().max(1);
        let per = rows.len().div_ceil(n).max(1);
        let mut pending = vec![];
        for (w, chunk) in rows.chunks(per).enumerate() {
            for sub in chunk.chunks(self.max_batch.max(1)) {
                let (reply, rx) = mpsc::channel();
                let job = Job::Generate {
                    prompts: sub.iter().map(|&(i, _)| prompts[i].clone()).collect(),
                    seeds: sub.iter().map(|&(i, j)| sample_seed(seed, first + i, j)).collect(),
                    params: params.clone(),
                    think: think.cloned(),
                    reply,
                };
                self.send(w, job)?;
                pending.push((sub.to_vec(), rx));
            }
        }
        let mut groups: Vec<Vec<Option<Completion>>> = (0..prompts.len()).map(|_| vec![None; group_size]).collect();
        let mut stats = GenStats::default();
        for (sub, rx) in pending {
            let (got, st) = rx.recv().map_err(|_| RolloutError::Generation("a rollout worker died".into()))??;
            stats.add(&st);
            for ((i, j), c) in sub.into_iter().zip(got) {
                groups[i][j] = Some(c);
            }
        }
        Ok((groups.into_iter().map(|g| g.into_iter().map(|c| c.expect("every row answered")).collect()).collect(), stats))
    }

    /// Pushes new weights (by checkpoint name) to every worker and waits until all have them.
    pub fn sync_weights(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut replies = vec![];
        for (w, worker) in self.workers.iter().enumerate() {
            // Each worker gets its own copy on its device; copies happen on this thread.
            let copy: BTreeMap<String, Tensor> =
                tch::no_grad(|| tensors.iter().map(|(k, t)| (k.clone(), t.to_device(worker.device).copy())).collect());
            let (reply, rx) = mpsc::channel();
            self.send(w, Job::Sync { tensors: copy, reply })?;
            replies.push(rx);
        }
        for rx in replies {
            rx.recv().map_err(|_| RolloutError::Generation("a rollout worker died".into()))??;
        }
        Ok(())
    }

    /// A CPU copy of worker `w`'s weights.
    pub fn snapshot(&self, w: usize) -> Result<BTreeMap<String, Tensor>> {
        let (reply, rx) = mpsc::channel();
        self.send(w, Job::Snapshot { reply })?;
        rx.recv().map_err(|_| RolloutError::Generation("a rollout worker died".into()))
    }

    fn send(&self, w: usize, job: Job) -> Result<()> {
        self.workers[w]
            .tx
            .as_ref()
            .expect("live worker")
            .send(job)
            .map_err(|_| RolloutError::Generation(format!("rollout worker {w} has stopped")))
    }
}

fn worker_loop(policy: Policy, tokenizer: Arc<Tokenizer>, rx: mpsc::Receiver<Job>) {
    let eos = policy.eos_token_ids();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Generate { prompts, seeds, params, think, reply } => {
                // A libtorch failure (out of memory above all) panics: report it as this
                // job's error, with its message, instead of a worker that silently died.
                let r = crate::error::catch_quietly(|| {
                    generate_with(&policy.model, Some(&tokenizer), &prompts, &seeds, &eos, &params, think.as_ref())
                })
                .unwrap_or_else(|p| Err(RolloutError::Generation(format!("generation failed: {}", crate::error::panic_message(&*p)))));
                let _ = reply.send(r);
            }
            Job::Sync { tensors, reply } => {
                let _ = reply.send(policy.copy_from(&tensors));
            }
            Job::Snapshot { reply } => {
                let snap = tch::no_grad(|| policy.named_tensors().into_iter().map(|(k, t)| (k, t.to_device(Device::Cpu).copy())).collect());
                let _ = reply.send(snap);
            }
        }
    }
}

impl Drop for RolloutPool {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.tx.take();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}
