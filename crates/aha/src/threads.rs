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
//! environment and a machine busy at start, element-wise ops run single-threaded
//! (`CANDLE_NUM_THREADS=1`); otherwise candle's pool is kept. "Busy" is the 1-minute load
//! average above cores − 0.5 *and*, sampled over [`SAMPLE`] from `/proc/stat`, other processes
//! using more than cores − 0.5 cores right now (the load average alone lags by a minute, so a
//! benchmark started right after another measured itself). Matmuls and the hand-written training
//! path keep every core (rayon) either way. Set `CANDLE_NUM_THREADS` to decide yourself.

/// Machines with this many cores or fewer get single-threaded element-wise ops.
const SMALL_MACHINE_CORES: usize = 2;

/// How long the CPU use of other processes is sampled when the load average says "busy".
const SAMPLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Applies the policy; call first thing in `main`, before any thread exists.
pub fn init() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy = |x: f64| x > cores as f64 - 0.5;
    if cores <= SMALL_MACHINE_CORES && load_average().is_some_and(busy) && busy_cores(cores).is_none_or(busy) {
        // SAFETY: called at the start of `main`, before any other thread is spawned, so no
        // thread can read the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// The 1-minute load average (Linux `/proc/loadavg`), if readable.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Cores in use by other processes over [`SAMPLE`] (`/proc/stat`; this process sleeps
/// meanwhile), if readable.
fn busy_cores(cores: usize) -> Option<f64> {
    let before = cpu_times()?;
    std::thread::sleep(SAMPLE);
    let after = cpu_times()?;
    let (busy, total) = (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1));
    (total > 0).then(|| cores as f64 * busy as f64 / total as f64)
}

/// `(busy, total)` jiffies of all CPUs from the first line of `/proc/stat`.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some((busy, busy + get(3) + get(4)))
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
