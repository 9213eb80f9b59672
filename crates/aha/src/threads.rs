//! The binary's CPU thread policy.
//!
//! candle runs element-wise ops on its own pool whose threads spin while they wait for each
//! other, and its matmuls on rayon. On a machine with few cores that also runs anything else
//! (a build, a second job, the reward sandbox), a spinning worker that loses its core stalls
//! every op: measured on the 2-core box under load, the demo's SFT stage ran ~9× faster with
//! element-wise ops on the calling thread (BENCHMARKS.md, "Thread policy"). On an idle 2-core
//! machine the pool wins instead (the GRPO bench step: 2.34 s pooled vs 3.44 s single-threaded).
//!
//! Policy: with at most [`SMALL_MACHINE_CORES`] cores, no `CANDLE_NUM_THREADS` in the
//! environment and a machine already busy at start (1-minute load average above cores − 0.5),
//! element-wise ops run single-threaded (`CANDLE_NUM_THREADS=1`); otherwise candle's pool is
//! kept. Matmuls keep every core (`RAYON_NUM_THREADS`, candle's default) either way. Set
//! `CANDLE_NUM_THREADS` to decide yourself.

/// Machines with this many cores or fewer get single-threaded element-wise ops.
const SMALL_MACHINE_CORES: usize = 2;

/// Applies the policy; call first thing in `main`, before any thread exists.
pub fn init() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= SMALL_MACHINE_CORES && load_average().is_some_and(|l| l > cores as f64 - 0.5) {
        // SAFETY: called at the start of `main`, before any other thread is spawned, so no
        // thread can read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// The 1-minute load average (Linux `/proc/loadavg`), if readable.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
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
