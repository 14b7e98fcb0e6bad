//! Collectives for a data-parallel learner, on libtorch's own distributed layer (c10d): a
//! `TCPStore` rendezvous and a `ProcessGroupGloo` (CPU), reached through a small C++ shim
//! (`src/shim.cpp`) compiled against the libtorch ponder installs. No scheduler of our own:
//! [`Launch::from_env`] reads what `torchrun` or Slurm set (rank, world size, master address).
//!
//! Every call waits at most the group's timeout: a rank that died makes the others fail with
//! an error, never hang.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;
use tch::Tensor;

extern "C" {
    fn ponder_dist_has_gloo() -> c_int;
    fn ponder_dist_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        iface: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn ponder_dist_free(g: *mut c_void);
    fn ponder_dist_free_str(s: *mut c_char);
    fn ponder_dist_all_reduce_sum(g: *mut c_void, t: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn ponder_dist_broadcast(g: *mut c_void, t: *mut c_void, root: c_int, err: *mut *mut c_char) -> c_int;
    fn ponder_dist_all_gather(g: *mut c_void, out: *mut c_void, input: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn ponder_dist_reduce_scatter_sum(g: *mut c_void, out: *mut c_void, input: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn ponder_dist_barrier(g: *mut c_void, err: *mut *mut c_char) -> c_int;
}

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("{0}")]
    Launch(String),
    #[error("rank {rank} of {world}: {op} failed: {message}")]
    Collective { rank: usize, world: usize, op: &'static str, message: String },
    #[error("rank {rank} of {world}: cannot join the process group at {addr}: {message}")]
    Rendezvous { rank: usize, world: usize, addr: String, message: String },
    #[error("{op}: {what}")]
    Shape { op: &'static str, what: String },
}

pub type Result<T> = std::result::Result<T, DistError>;

/// Whether this build has Gloo (the setup script fetched its headers).
pub fn has_gloo() -> bool {
    unsafe { ponder_dist_has_gloo() == 1 }
}

/// Where this process sits in a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Launch {
    /// The launch described by `torchrun` (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
    /// `MASTER_PORT`) or Slurm (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, with
    /// `MASTER_ADDR` / `MASTER_PORT` set by the batch script); `None` outside a launcher or
    /// for a world of one.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |k: &str| -> Result<Option<usize>> {
            match var(k) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| DistError::Launch(format!("{k}={v:?} is not a number"))),
            }
        };
        let (rank, world, local) = match (num("RANK")?, num("WORLD_SIZE")?) {
            (Some(r), Some(w)) => (r, w, num("LOCAL_RANK")?.unwrap_or(r)),
            (None, None) => match (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
                (Some(r), Some(w)) => (r, w, num("SLURM_LOCALID")?.unwrap_or(r)),
                _ => return Ok(None),
            },
            _ => return Err(DistError::Launch("RANK and WORLD_SIZE must be set together (torchrun sets both)".into())),
        };
        if world <= 1 {
            return Ok(None);
        }
        if rank >= world {
            return Err(DistError::Launch(format!("rank {rank} is not below the world size {world}")));
        }
        let addr = var("MASTER_ADDR").ok_or_else(|| {
            DistError::Launch(
                "MASTER_ADDR is not set: torchrun sets it; under Slurm export it (e.g. the first host of $SLURM_NODELIST)".into(),
            )
        })?;
        let port = match var("MASTER_PORT") {
            Some(p) => p.trim().parse().map_err(|_| DistError::Launch(format!("MASTER_PORT={p:?} is not a port number")))?,
            None => return Err(DistError::Launch("MASTER_PORT is not set: torchrun sets it; under Slurm export one (e.g. 29500)".into())),
        };
        Ok(Some(Launch { rank, world, local_rank: local, master_addr: addr, master_port: port }))
    }
}

/// A process group over Gloo. Collectives work on contiguous CPU tensors in place.
pub struct ProcessGroup {
    ptr: *mut c_void,
    pub rank: usize,
    pub world: usize,
}

// The shim's group is used from one thread at a time (the learner's).
unsafe impl Send for ProcessGroup {}

fn take(err: *mut c_char) -> String {
    if err.is_null() {
        return "no message".into();
    }
    let s = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { ponder_dist_free_str(err) };
    s
}

impl ProcessGroup {
    /// Joins the group of `launch.world` processes whose store rank 0 serves at
    /// `master_addr:master_port`; every rank must call this within `timeout`. Gloo binds to
    /// the interface named by `GLOO_SOCKET_IFNAME` if set, else this host's address.
    pub fn join(launch: &Launch, timeout: Duration) -> Result<ProcessGroup> {
        let host = CString::new(launch.master_addr.clone()).map_err(|_| DistError::Launch("MASTER_ADDR holds a NUL byte".into()))?;
        let iface = CString::new(std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default()).unwrap_or_default();
        let mut err: *mut c_char = std::ptr::null_mut();
        let ptr = unsafe {
            ponder_dist_new(
                host.as_ptr(),
                launch.master_port as c_int,
                launch.rank as c_int,
                launch.world as c_int,
                timeout.as_millis() as i64,
                iface.as_ptr(),
                &mut err,
            )
        };
        if ptr.is_null() {
            return Err(DistError::Rendezvous {
                rank: launch.rank,
                world: launch.world,
                addr: format!("{}:{}", launch.master_addr, launch.master_port),
                message: take(err),
            });
        }
        Ok(ProcessGroup { ptr, rank: launch.rank, world: launch.world })
    }

    fn check(&self, op: &'static str, rc: c_int, err: *mut c_char) -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(DistError::Collective { rank: self.rank, world: self.world, op, message: take(err) })
        }
    }

    fn usable(op: &'static str, t: &Tensor) -> Result<()> {
        if t.device() != tch::Device::Cpu || !t.is_contiguous() {
            return Err(DistError::Shape { op, what: "Gloo needs contiguous CPU tensors".into() });
        }
        Ok(())
    }

    /// `t` = the sum of every rank's `t`.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        Self::usable("all_reduce", t)?;
        let mut err = std::ptr::null_mut();
        let rc = unsafe { ponder_dist_all_reduce_sum(self.ptr, t.as_mut_ptr() as *mut c_void, &mut err) };
        self.check("all_reduce", rc, err)
    }

    /// `t` = rank `root`'s `t`.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        Self::usable("broadcast", t)?;
        let mut err = std::ptr::null_mut();
        let rc = unsafe { ponder_dist_broadcast(self.ptr, t.as_mut_ptr() as *mut c_void, root as c_int, &mut err) };
        self.check("broadcast", rc, err)
    }

    /// `out` (world x the elements of `input`, along dim 0) = every rank's `input`, rank r's at r.
    pub fn all_gather(&self, out: &mut Tensor, input: &Tensor) -> Result<()> {
        Self::usable("all_gather", out)?;
        Self::usable("all_gather", input)?;
        if out.numel() != input.numel() * self.world {
            return Err(DistError::Shape {
                op: "all_gather",
                what: format!("output holds {} elements, not world x {}", out.numel(), input.numel()),
            });
        }
        let mut input = input.shallow_clone();
        let mut err = std::ptr::null_mut();
        let rc = unsafe { ponder_dist_all_gather(self.ptr, out.as_mut_ptr() as *mut c_void, input.as_mut_ptr() as *mut c_void, &mut err) };
        self.check("all_gather", rc, err)
    }

    /// `out` = the sum over ranks of part `rank` of `input` (world equal parts along dim 0).
    pub fn reduce_scatter_sum(&self, out: &mut Tensor, input: &Tensor) -> Result<()> {
        Self::usable("reduce_scatter", out)?;
        Self::usable("reduce_scatter", input)?;
        if input.numel() != out.numel() * self.world {
            return Err(DistError::Shape {
                op: "reduce_scatter",
                what: format!("input holds {} elements, not world x {}", input.numel(), out.numel()),
            });
        }
        let mut input = input.shallow_clone();
        let mut err = std::ptr::null_mut();
        let rc = unsafe {
            ponder_dist_reduce_scatter_sum(self.ptr, out.as_mut_ptr() as *mut c_void, input.as_mut_ptr() as *mut c_void, &mut err)
        };
        self.check("reduce_scatter", rc, err)
    }

    /// Every rank's `bytes` (of any lengths), in rank order.
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let cpu = tch::Device::Cpu;
        let mut lens = Tensor::zeros([self.world as i64], (tch::Kind::Int64, cpu));
        self.all_gather(&mut lens, &Tensor::from_slice(&[bytes.len() as i64]))?;
        let lens: Vec<i64> =
            Vec::try_from(&lens).map_err(|e: tch::TchError| DistError::Shape { op: "all_gather_bytes", what: e.to_string() })?;
        let width = lens.iter().copied().max().unwrap_or(0).max(1) as usize;
        let mut mine = vec![0u8; width];
        mine[..bytes.len()].copy_from_slice(bytes);
        let mut all = Tensor::zeros([(self.world * width) as i64], (tch::Kind::Uint8, cpu));
        self.all_gather(&mut all, &Tensor::from_slice(&mine))?;
        let all: Vec<u8> =
            Vec::try_from(&all).map_err(|e: tch::TchError| DistError::Shape { op: "all_gather_bytes", what: e.to_string() })?;
        Ok((0..self.world).map(|r| all[r * width..r * width + lens[r] as usize].to_vec()).collect())
    }

    /// `xs` = the elementwise sum over ranks (statistics, token counts).
    pub fn all_reduce_f64(&self, xs: &mut [f64]) -> Result<()> {
        let mut t = Tensor::from_slice(xs);
        self.all_reduce_sum(&mut t)?;
        let v: Vec<f64> = Vec::try_from(&t).map_err(|e: tch::TchError| DistError::Shape { op: "all_reduce", what: e.to_string() })?;
        xs.copy_from_slice(&v);
        Ok(())
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        let rc = unsafe { ponder_dist_barrier(self.ptr, &mut err) };
        self.check("barrier", rc, err)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        unsafe { ponder_dist_free(self.ptr) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn launch_from_torchrun_and_slurm() {
        assert_eq!(Launch::from_env(env(&[])).unwrap(), None);
        let t = [("RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")];
        assert_eq!(
            Launch::from_env(env(&t)).unwrap(),
            Some(Launch { rank: 1, world: 4, local_rank: 1, master_addr: "10.0.0.1".into(), master_port: 29500 })
        );
        let s = [("SLURM_PROCID", "3"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1"), ("MASTER_ADDR", "n1"), ("MASTER_PORT", "6000")];
        assert_eq!(Launch::from_env(env(&s)).unwrap().unwrap().local_rank, 1);
        // A world of one is no launch.
        assert_eq!(Launch::from_env(env(&[("RANK", "0"), ("WORLD_SIZE", "1")])).unwrap(), None);
        for (bad, needle) in [
            (vec![("RANK", "0")], "together"),
            (vec![("RANK", "x"), ("WORLD_SIZE", "2")], "not a number"),
            (vec![("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")], "not below"),
            (vec![("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")], "MASTER_ADDR"),
            (vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")], "MASTER_PORT"),
        ] {
            let e = Launch::from_env(env(&bad)).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
        }
    }
}
