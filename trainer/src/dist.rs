//! Data-parallel training across pods: which rank this process is (the standard
//! `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`, or the `PET_*` variables a Kubeflow
//! TrainJob sets) and the collectives of libtorch's own process group (c10d's TCPStore and
//! ProcessGroupGloo, through csrc/dist.cpp; tch binds none).
//!
//! The rule (README, "Trials on several pods"): the recipe's batch size is the global batch
//! and the learning rate is the recipe's, whatever the number of ranks; each rank computes
//! the gradient of its contiguous share of every batch, and the shares' gradients, weighted by
//! their sizes, average to the whole batch's. N ranks train what one process trains, except
//! that batch norm normalises over each rank's share rather than the whole batch (as
//! PyTorch's DDP does without SyncBatchNorm), so the two differ slightly.

use anyhow::{Context, Result, bail};
use std::ffi::{CStr, CString, c_char, c_int};
use tch::Tensor;

/// How long a rank waits for the others: at the rendezvous (pods start at different times)
/// and in each collective, which includes rank 0's evaluation, report and checkpoint after
/// each epoch (a rank that dies is noticed at once: its connections close).
/// NASOP_DIST_TIMEOUT_SECONDS sets another.
const DEFAULT_TIMEOUT_SECONDS: u64 = 1800;
const ENV_TIMEOUT: &str = "NASOP_DIST_TIMEOUT_SECONDS";
/// torch.distributed's default port.
pub const DEFAULT_PORT: u16 = 29500;

/// Where rank 0 serves the rendezvous, and who this process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub addr: String,
    pub port: u16,
    pub rank: usize,
    pub world: usize,
}

impl Rendezvous {
    /// The rendezvous the environment describes; `None` for a run of one process
    /// (`WORLD_SIZE` unset or 1). `var` reads a variable (std::env::var in the trainer).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Rendezvous>> {
        let get = |names: &[&str]| -> Option<(String, String)> {
            names.iter().find_map(|n| {
                var(n)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (n.to_string(), v.trim().to_string()))
            })
        };
        let number = |(name, value): (String, String)| -> Result<usize> {
            value
                .parse::<usize>()
                .with_context(|| format!("{name}={value:?}: must be a whole number"))
        };
        // A TrainJob's runtime says `auto` when the node asks for GPUs: one process per GPU,
        // and a node of one GPU (the shape nasop-trainer runs in) is one process.
        if let Some((name, per_node)) = get(&["PET_NPROC_PER_NODE"])
            && per_node != "1"
            && per_node != "auto"
        {
            bail!(
                "{name}={per_node}: nasop-trainer runs one process per pod, on one device; set the TrainJob's numProcPerNode to 1 and ask for more nodes"
            );
        }
        let Some(world) = get(&["WORLD_SIZE", "PET_NNODES"]) else {
            return Ok(None);
        };
        let world_name = world.0.clone();
        let world = number(world)?;
        if world <= 1 {
            return Ok(None);
        }
        let rank = get(&["RANK", "PET_NODE_RANK"]).with_context(|| {
            format!(
                "{world_name}={world} but no RANK: give each process its rank, 0 to {}",
                world - 1
            )
        })?;
        let rank_name = rank.0.clone();
        let rank = number(rank)?;
        if rank >= world {
            bail!("{rank_name}={rank}: must be below {world_name}={world}");
        }
        let (_, addr) = get(&["MASTER_ADDR", "PET_MASTER_ADDR"]).with_context(|| {
            format!("{world_name}={world} but no MASTER_ADDR: give every rank rank 0's address")
        })?;
        let port = match get(&["MASTER_PORT", "PET_MASTER_PORT"]) {
            Some((name, value)) => value
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("{name}={value:?}: must be a port, 1 to 65535"))?,
            None => DEFAULT_PORT,
        };
        Ok(Some(Rendezvous {
            addr,
            port,
            rank,
            world,
        }))
    }
}

#[repr(C)]
struct RawGroup {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn nasop_dist_new(
        host: *const c_char,
        port: u16,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        error: *mut *mut c_char,
    ) -> *mut RawGroup;
    fn nasop_dist_free(group: *mut RawGroup);
    fn nasop_dist_free_error(error: *mut c_char);
    fn nasop_dist_average(
        group: *mut RawGroup,
        tensors: *const *mut torch_sys::C_tensor,
        n: usize,
        error: *mut *mut c_char,
    ) -> c_int;
    fn nasop_dist_broadcast(
        group: *mut RawGroup,
        tensors: *const *mut torch_sys::C_tensor,
        n: usize,
        root: c_int,
        error: *mut *mut c_char,
    ) -> c_int;
}

/// The error a shim call left, as a Rust string.
fn take_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "unknown error".into();
    }
    // SAFETY: the shim set it with strdup; we free it once, here.
    let text = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { nasop_dist_free_error(error) };
    text
}

/// This process's membership of the training's process group.
pub struct Group {
    raw: *mut RawGroup,
    pub rank: usize,
    pub world: usize,
}

// SAFETY: the group is used from one thread at a time (the training loop's); libtorch's
// process group is itself thread-safe.
unsafe impl Send for Group {}

impl Group {
    /// Joins the group: returns when all `world` ranks have, or fails after the timeout.
    pub fn join(r: &Rendezvous) -> Result<Group> {
        let timeout = std::env::var(ENV_TIMEOUT)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        let host = CString::new(r.addr.clone()).context("MASTER_ADDR holds a NUL byte")?;
        let mut error = std::ptr::null_mut();
        // SAFETY: valid C strings and an out-pointer; the shim catches every exception.
        let raw = unsafe {
            nasop_dist_new(
                host.as_ptr(),
                r.port,
                r.rank as c_int,
                r.world as c_int,
                timeout.saturating_mul(1000).min(i64::MAX as u64) as i64,
                &mut error,
            )
        };
        if raw.is_null() {
            bail!(
                "joining the process group of {} ranks at {}:{} as rank {} (waited up to {timeout} s; {ENV_TIMEOUT} sets longer): {}",
                r.world,
                r.addr,
                r.port,
                r.rank,
                take_error(error)
            );
        }
        Ok(Group {
            raw,
            rank: r.rank,
            world: r.world,
        })
    }

    fn call(
        &self,
        what: &str,
        tensors: &mut [Tensor],
        f: impl FnOnce(*const *mut torch_sys::C_tensor, usize, *mut *mut c_char) -> c_int,
    ) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let ptrs: Vec<*mut torch_sys::C_tensor> =
            tensors.iter_mut().map(|t| t.as_mut_ptr()).collect();
        let mut error = std::ptr::null_mut();
        if f(ptrs.as_ptr(), ptrs.len(), &mut error) != 0 {
            bail!(
                "{what} across {} ranks failed (a rank stopped answering?): {}",
                self.world,
                take_error(error)
            );
        }
        Ok(())
    }

    /// Replaces each tensor by its mean over the ranks, in place.
    pub fn average(&self, tensors: &mut [Tensor]) -> Result<()> {
        let raw = self.raw;
        self.call("averaging gradients", tensors, |ts, n, e| {
            // SAFETY: `ts` holds `n` live tensors for the call's length.
            unsafe { nasop_dist_average(raw, ts, n, e) }
        })
    }

    /// Replaces each tensor by rank 0's, in place.
    pub fn broadcast(&self, tensors: &mut [Tensor]) -> Result<()> {
        let raw = self.raw;
        self.call("broadcasting from rank 0", tensors, |ts, n, e| {
            // SAFETY: as above.
            unsafe { nasop_dist_broadcast(raw, ts, n, 0, e) }
        })
    }

    /// Rank 0's value of a small number (a decision every rank must share).
    pub fn share(&self, value: f64) -> Result<f64> {
        let mut t = [Tensor::from_slice(&[value as f32])];
        self.broadcast(&mut t)?;
        Ok(t[0].double_value(&[0]))
    }

    pub fn is_primary(&self) -> bool {
        self.rank == 0
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by nasop_dist_new, freed once.
        unsafe { nasop_dist_free(self.raw) }
    }
}

/// The contiguous share `[start, end)` of a batch of `len` items that `rank` of `world`
/// trains: sizes differ by at most one, and the shares cover the batch in order.
pub fn share(len: usize, rank: usize, world: usize) -> (usize, usize) {
    let base = len / world;
    let extra = len % world;
    let start = rank * base + rank.min(extra);
    let size = base + usize::from(rank < extra);
    (start, start + size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_rendezvous_comes_from_the_standard_or_the_trainjob_variables() {
        assert_eq!(Rendezvous::from_env(env(&[])).unwrap(), None);
        assert_eq!(
            Rendezvous::from_env(env(&[("WORLD_SIZE", "1")])).unwrap(),
            None
        );
        let standard = env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("MASTER_ADDR", "t-node-0-0.t"),
        ]);
        assert_eq!(
            Rendezvous::from_env(standard).unwrap(),
            Some(Rendezvous {
                addr: "t-node-0-0.t".into(),
                port: 29500,
                rank: 2,
                world: 4
            })
        );
        let trainjob = env(&[
            ("PET_NNODES", "2"),
            ("PET_NODE_RANK", "1"),
            ("PET_NPROC_PER_NODE", "auto"),
            ("PET_MASTER_ADDR", "tj-node-0-0.tj"),
            ("PET_MASTER_PORT", "29400"),
        ]);
        assert_eq!(
            Rendezvous::from_env(trainjob).unwrap(),
            Some(Rendezvous {
                addr: "tj-node-0-0.tj".into(),
                port: 29400,
                rank: 1,
                world: 2
            })
        );
    }

    #[test]
    fn a_bad_rendezvous_names_the_variable() {
        let message =
            |pairs: &[(&str, &str)]| format!("{:#}", Rendezvous::from_env(env(pairs)).unwrap_err());
        assert!(message(&[("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")]).contains("no RANK"));
        assert!(
            message(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "a")])
                .contains("RANK=2: must be below WORLD_SIZE=2")
        );
        assert!(message(&[("WORLD_SIZE", "2"), ("RANK", "1")]).contains("no MASTER_ADDR"));
        assert!(message(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE=\"two\""));
        assert!(
            message(&[
                ("WORLD_SIZE", "2"),
                ("RANK", "0"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "0")
            ])
            .contains("MASTER_PORT=\"0\"")
        );
        assert!(
            message(&[("PET_NPROC_PER_NODE", "4"), ("PET_NNODES", "2")])
                .contains("numProcPerNode to 1")
        );
    }

    #[test]
    fn shares_cover_a_batch_in_order() {
        for len in [1, 7, 128, 130] {
            for world in 1..=5 {
                let mut next = 0;
                for rank in 0..world {
                    let (start, end) = share(len, rank, world);
                    assert_eq!(start, next);
                    assert!(end - start >= len / world && end - start <= len / world + 1);
                    next = end;
                }
                assert_eq!(next, len);
            }
        }
    }

    /// A free port on loopback for a test's rendezvous.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Runs `body` as each of `world` ranks, each in its own thread with its own group.
    fn ranks<T: Send + 'static>(
        world: usize,
        body: impl Fn(Group) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<T> {
        let port = free_port();
        let threads: Vec<_> = (0..world)
            .map(|rank| {
                let body = body.clone();
                std::thread::spawn(move || {
                    let group = Group::join(&Rendezvous {
                        addr: "127.0.0.1".into(),
                        port,
                        rank,
                        world,
                    })
                    .unwrap();
                    body(group)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn ranks_average_and_broadcast_through_libtorchs_process_group() {
        let results = ranks(2, |g| {
            let r = g.rank as f32;
            let mut ts = [
                Tensor::from_slice(&[1.0 + r, 2.0 + r]),
                Tensor::from_slice(&[10.0 * (r + 1.0)]).reshape([1, 1]),
            ];
            g.average(&mut ts).unwrap();
            let averaged: Vec<f32> = ts
                .iter()
                .flat_map(|t| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
                .collect();
            let shared = g.share(if g.is_primary() { 3.0 } else { 0.0 }).unwrap();
            (averaged, shared, ts[1].size())
        });
        for (averaged, shared, size) in results {
            assert_eq!(averaged, vec![1.5, 2.5, 15.0]);
            assert_eq!(shared, 3.0);
            assert_eq!(size, vec![1, 1]);
        }
    }

    /// The sharding rule: shares' gradients, weighted by share size and averaged, are the
    /// whole batch's gradient, so N ranks take the step one process takes.
    #[test]
    fn weighted_shares_average_to_the_whole_batchs_gradient() {
        // A least-squares loss on 7 examples, its data made without a shared generator so
        // that each rank's thread builds the same.
        let data = |rows: std::ops::Range<usize>| {
            let x: Vec<f32> = rows
                .clone()
                .flat_map(|i| (0..5).map(move |j| ((i * 5 + j) as f32 * 0.37).sin()))
                .collect();
            let y: Vec<f32> = rows.clone().map(|i| (i as f32 * 0.9).cos()).collect();
            let n = rows.len() as i64;
            (
                Tensor::from_slice(&x).reshape([n, 5]),
                Tensor::from_slice(&y).reshape([n, 1]),
            )
        };
        let grad = move |rows: std::ops::Range<usize>, scale: f64| {
            let (x, y) = data(rows);
            let w = Tensor::from_slice(&[0.1f32, -0.2, 0.3, 0.05, -0.4])
                .reshape([5, 1])
                .set_requires_grad(true);
            let loss = (x.matmul(&w) - y).square().mean(None) * scale;
            loss.backward();
            Vec::<f32>::try_from(w.grad().flatten(0, -1)).unwrap()
        };
        let whole = grad(0..7, 1.0);
        let averaged = ranks(3, move |g| {
            let (start, end) = share(7, g.rank, g.world);
            let scale = (end - start) as f64 * g.world as f64 / 7.0;
            let mut gr = [Tensor::from_slice(&grad(start..end, scale))];
            g.average(&mut gr).unwrap();
            Vec::<f32>::try_from(&gr[0]).unwrap()
        });
        for a in averaged {
            for (x, y) in a.iter().zip(&whole) {
                assert!((x - y).abs() < 1e-5, "{a:?} vs {whole:?}");
            }
        }
    }
}
