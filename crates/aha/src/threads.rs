//! The binary's CPU thread policy.
//!
//! candle runs element-wise ops on its own pool whose threads spin while they wait for each
//! other, and its matmuls on rayon. On a machine with few cores that also runs anything else
//! (a build, a second job, the reward sandbox), a spinning worker that loses its core stalls
//! every op: measured on the 2-core box under load, the demo's SFT stage ran ~7× faster with
//! element-wise ops on the calling thread (BENCHMARKS.md, "Thread policy"). On an idle 2-core
//! machine that costs ~20 % of training speed, a price worth paying for not collapsing.
//!
//! Policy: with at most [`SMALL_MACHINE_CORES`] cores and no `CANDLE_NUM_THREADS` in the
//! environment, element-wise ops run single-threaded (`CANDLE_NUM_THREADS=1`); matmuls keep
//! every core (`RAYON_NUM_THREADS`, candle's default). Set `CANDLE_NUM_THREADS` to override.

/// Machines with this many cores or fewer get single-threaded element-wise ops.
const SMALL_MACHINE_CORES: usize = 2;

/// Applies the policy; call first thing in `main`, before any thread exists.
pub fn init() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= SMALL_MACHINE_CORES {
        // SAFETY: called at the start of `main`, before any other thread is spawned, so no
        // thread can read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// One line describing the thread setup, for benchmark output.
pub fn describe() -> String {
    let get = |k: &str| std::env::var(k).unwrap_or_else(|_| "default".into());
    format!(
        "element-wise threads (CANDLE_NUM_THREADS): {}, matmul threads (RAYON_NUM_THREADS): {}",
        get("CANDLE_NUM_THREADS"),
        get("RAYON_NUM_THREADS")
    )
}
