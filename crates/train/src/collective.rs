//! Collective communication for data-parallel training: the few operations the trainers need
//! (sum all-reduce of gradients and scalars, all-gather of a step's samples, broadcast, barrier)
//! behind one trait, with a single-process implementation (no communication) and an MPI one
//! (feature `mpi`, the `mpi` crate over the system's Open MPI).
//!
//! Which one runs is decided once, in [`from_env`]: a process started by `mpirun` with more than
//! one rank gets MPI (or a clear error when the binary was built without it); anything else runs
//! alone. NCCL on GPUs would be a third implementation of the same trait (see
//! `ARCHITECTURE.md`, "Data parallel").
//!
//! A rank that dies makes `mpirun` stop the whole job and name the rank; a rank that stops
//! answering (a hang inside a collective) is caught by a watchdog that ends the process with an
//! error naming the operation after `AHA_COLLECTIVE_TIMEOUT_S` seconds (default 600).

use std::time::Duration;

use candle_core::{DType, Tensor};

use crate::error::{Result, TrainError};
use crate::optim::{AdamW, Grads, NamedVar};

/// What every data-parallel rank can do with the others. Calls are collective: every rank makes
/// the same calls in the same order.
pub trait Collective {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// Element-wise sum over ranks, in place (every rank gets the sum).
    fn all_reduce_sum(&self, what: &str, buf: &mut [f64]) -> Result<()>;
    /// [`Collective::all_reduce_sum`] for f32 buffers (gradients).
    fn all_reduce_sum_f32(&self, what: &str, buf: &mut [f32]) -> Result<()>;
    /// Every rank's bytes, in rank order, on every rank.
    fn all_gather(&self, what: &str, local: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Rank 0's bytes on every rank (`buf` is replaced on the others).
    fn broadcast(&self, what: &str, buf: &mut Vec<u8>) -> Result<()>;
    /// Waits until every rank has arrived, without the timeout and without spinning: for ranks
    /// that wait while rank 0 alone runs something long (a pipeline's evaluation stages).
    fn wait_idle(&self, what: &str) -> Result<()>;
    /// Whether this rank writes checkpoints, metrics and plots (rank 0).
    fn is_writer(&self) -> bool {
        self.rank() == 0
    }
    /// Ends every rank of the job at once with `code` (a rank that failed must not leave the
    /// others waiting in a collective).
    fn abort(&self, code: i32) -> !;
}

/// One process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

/// The collective of a trainer that is not data parallel.
pub static ALONE: SingleProcess = SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _what: &str, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f32(&self, _what: &str, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, _what: &str, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![local.to_vec()])
    }
    fn broadcast(&self, _what: &str, _buf: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn wait_idle(&self, _what: &str) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The ranks `mpirun` (Open MPI, MPICH or a PMI launcher) says this process has, if any.
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .and_then(|v| v.parse().ok())
}

/// The collective this process should use: MPI when started by a launcher with more than one
/// rank, otherwise a single process. `timeout` bounds every collective (see the module doc).
pub fn from_env(timeout: Duration) -> Result<Box<dyn Collective>> {
    match launched_size() {
        Some(n) if n > 1 => multi_process(n, timeout),
        _ => Ok(Box::new(SingleProcess)),
    }
}

#[cfg(feature = "mpi")]
fn multi_process(_n: usize, timeout: Duration) -> Result<Box<dyn Collective>> {
    Ok(Box::new(mpi_impl::Mpi::init(timeout)?))
}

#[cfg(not(feature = "mpi"))]
fn multi_process(n: usize, _timeout: Duration) -> Result<Box<dyn Collective>> {
    Err(TrainError::Config(format!(
        "started by mpirun with {n} processes, but this aha was built without MPI: rebuild with \
         `cargo build --release -p aha --features mpi` (needs Open MPI's development files)"
    )))
}

/// Checks that every rank runs the same thing: `fingerprint` (the resolved config, the binary's
/// version) is gathered and compared with rank 0's, before any step runs.
pub fn check_same_run(c: &dyn Collective, fingerprint: &str) -> Result<()> {
    check_agree(
        c,
        "the config or binary",
        fingerprint,
        "every rank must run the same aha binary with the same config and flags",
    )
}

/// Gathers every rank's `value` and errors, naming the ranks, unless all equal rank 0's.
/// `what` names the value and `hint` says how to fix a mismatch.
pub fn check_agree(c: &dyn Collective, what: &str, value: &str, hint: &str) -> Result<()> {
    if c.size() == 1 {
        return Ok(());
    }
    let all = c.all_gather(what, value.as_bytes())?;
    let differing: Vec<usize> = (1..all.len()).filter(|&r| all[r] != all[0]).collect();
    if differing.is_empty() {
        return Ok(());
    }
    Err(TrainError::Config(format!(
        "data-parallel ranks disagree with rank 0 on {what}: rank(s) {differing:?} ({hint})"
    )))
}

/// The hint of a resume mismatch.
pub const RESUME_HINT: &str = "every rank must see the same run directory: use a shared filesystem across hosts";

/// Data parallel, after any resume: checks that every rank starts from the same optimiser step
/// (`steps_done`: the trainer's step counter and its optimiser's), then gives every rank rank 0's
/// parameters. Free in one process.
pub fn join_ranks(c: &dyn Collective, step: usize, opt: &AdamW) -> Result<()> {
    if c.size() == 1 {
        return Ok(());
    }
    let state = format!("step {step} (optimizer step {})", opt.steps_done());
    check_agree(c, "the step to start from", &state, RESUME_HINT)?;
    broadcast_params(c, opt.params())
}

/// Splits `n` items into `size` contiguous shares; rank `rank` gets `lo..hi`. The first `n %
/// size` ranks get one item more.
pub fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let base = n / size;
    let extra = n % size;
    let lo = rank * base + rank.min(extra);
    lo..lo + base + usize::from(rank < extra)
}

/// Sums gradients over ranks in place: afterwards every rank holds the gradient of the whole
/// batch. A parameter keeps `None` only when no rank has a gradient for it (as in one process).
/// One all-reduce of one flat f32 buffer (gradients, then one presence flag per parameter).
pub fn all_reduce_grads(c: &dyn Collective, grads: &mut Grads, params: &[NamedVar]) -> Result<()> {
    if c.size() == 1 {
        return Ok(());
    }
    let sizes: Vec<usize> = params.iter().map(|p| p.var.as_tensor().elem_count()).collect();
    let total: usize = sizes.iter().sum();
    let mut flat = Vec::with_capacity(total + params.len());
    for (i, &n) in sizes.iter().enumerate() {
        match grads.0.get(i).and_then(Option::as_ref) {
            Some(g) => flat.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => flat.extend(std::iter::repeat_n(0f32, n)),
        }
    }
    flat.extend((0..params.len()).map(|i| f32::from(u8::from(grads.0.get(i).is_some_and(Option::is_some)))));
    c.all_reduce_sum_f32("gradient all-reduce", &mut flat)?;
    let mut out = Vec::with_capacity(params.len());
    let mut at = 0;
    for (i, (p, &n)) in params.iter().zip(&sizes).enumerate() {
        let t = p.var.as_tensor();
        let present = flat[total + i] > 0.0;
        let g = Tensor::from_slice(&flat[at..at + n], t.shape(), t.device())?.to_dtype(t.dtype())?;
        out.push(present.then_some(g));
        at += n;
    }
    *grads = Grads(out);
    Ok(())
}

/// Makes every rank start from rank 0's parameter values (one broadcast of their bytes).
pub fn broadcast_params(c: &dyn Collective, params: &[NamedVar]) -> Result<()> {
    if c.size() == 1 {
        return Ok(());
    }
    let mut bytes = Vec::new();
    if c.rank() == 0 {
        for p in params {
            let v = p.var.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
    }
    c.broadcast("initial weights", &mut bytes)?;
    let mut at = 0;
    for p in params {
        let t = p.var.as_tensor();
        let n = t.elem_count();
        let chunk = bytes.get(at * 4..(at + n) * 4).ok_or_else(|| {
            TrainError::Other("initial weights: rank 0 sent fewer parameters than this rank has".into())
        })?;
        let vals: Vec<f32> = chunk.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        p.var.set(&Tensor::from_vec(vals, t.shape(), t.device())?.to_dtype(t.dtype())?)?;
        at += n;
    }
    Ok(())
}

/// Sums scalars over ranks (loss sums, token counts, flags): a convenience over
/// [`Collective::all_reduce_sum`].
pub fn sum_scalars<const N: usize>(c: &dyn Collective, what: &str, mut v: [f64; N]) -> Result<[f64; N]> {
    c.all_reduce_sum(what, &mut v)?;
    Ok(v)
}

#[cfg(feature = "mpi")]
mod mpi_impl {
    //! The MPI implementation (Open MPI through the `mpi` crate).

    use std::sync::mpsc;
    use std::time::Duration;

    use mpi::datatype::PartitionMut;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use mpi::Count;

    use super::Collective;
    use crate::error::{Result, TrainError};

    /// MPI_COMM_WORLD of an initialised MPI, and the watchdog that bounds each collective.
    pub struct Mpi {
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
        timeout: Duration,
    }

    impl Mpi {
        /// Initialises MPI (main thread only calls it: `Funneled`).
        pub fn init(timeout: Duration) -> Result<Self> {
            let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Funneled)
                .ok_or_else(|| TrainError::Other("MPI was already initialised".into()))?;
            let world = universe.world();
            Ok(Self { _universe: universe, world, timeout })
        }

        /// Runs `f` with a watchdog: if it has not returned after the timeout, the process
        /// exits with an error naming `what` (another rank died or hangs).
        fn guarded<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
            let (done, wait) = mpsc::channel::<()>();
            let (rank, timeout, what_owned) = (self.world.rank(), self.timeout, what.to_string());
            let dog = std::thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                    eprintln!(
                        "error: rank {rank}: `{what_owned}` waited {} s for the other ranks; one of them died or \
                         hangs — stopping",
                        timeout.as_secs()
                    );
                    std::process::exit(3);
                }
            });
            let out = f();
            let _ = done.send(());
            let _ = dog.join();
            out
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, what: &str, buf: &mut [f64]) -> Result<()> {
            let local = buf.to_vec();
            self.guarded(what, || self.world.all_reduce_into(&local[..], buf, mpi::collective::SystemOperation::sum()));
            Ok(())
        }
        fn all_reduce_sum_f32(&self, what: &str, buf: &mut [f32]) -> Result<()> {
            let local = buf.to_vec();
            self.guarded(what, || self.world.all_reduce_into(&local[..], buf, mpi::collective::SystemOperation::sum()));
            Ok(())
        }
        fn all_gather(&self, what: &str, local: &[u8]) -> Result<Vec<Vec<u8>>> {
            let size = self.size();
            let n = Count::try_from(local.len())
                .map_err(|_| TrainError::Other(format!("{what}: {} bytes are too many for MPI", local.len())))?;
            let mut counts = vec![0 as Count; size];
            self.guarded(what, || self.world.all_gather_into(&n, &mut counts[..]));
            let displs: Vec<Count> = counts
                .iter()
                .scan(0 as Count, |acc, &c| {
                    let d = *acc;
                    *acc += c;
                    Some(d)
                })
                .collect();
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut all = vec![0u8; total];
            {
                let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                self.guarded(what, || self.world.all_gather_varcount_into(local, &mut part));
            }
            Ok(counts.iter().zip(&displs).map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec()).collect())
        }
        fn broadcast(&self, what: &str, buf: &mut Vec<u8>) -> Result<()> {
            let root = self.world.process_at_rank(0);
            let mut len = buf.len() as u64;
            self.guarded(what, || root.broadcast_into(&mut len));
            buf.resize(len as usize, 0);
            self.guarded(what, || root.broadcast_into(&mut buf[..]));
            Ok(())
        }
        fn wait_idle(&self, _what: &str) -> Result<()> {
            // A non-blocking barrier polled every 20 ms: blocking MPI calls spin on a core.
            let mut req = self.world.immediate_barrier();
            loop {
                match req.test() {
                    Ok(_) => return Ok(()),
                    Err(r) => req = r,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_item_once_in_order() {
        for n in 0..20 {
            for size in 1..5 {
                let ranges: Vec<_> = (0..size).map(|r| share(n, r, size)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[size - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len());
                }
            }
        }
    }

    #[test]
    fn a_single_process_is_its_own_world() -> Result<()> {
        let c = SingleProcess;
        let mut v = vec![1.0, 2.0];
        c.all_reduce_sum("x", &mut v)?;
        assert_eq!(v, vec![1.0, 2.0]);
        assert_eq!(c.all_gather("x", b"ab")?, vec![b"ab".to_vec()]);
        check_same_run(&c, "cfg")?;
        Ok(())
    }
}
