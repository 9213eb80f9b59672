//! The binary's allocator policy.
//!
//! candle allocates a fresh buffer for every tensor op. With glibc's defaults, buffers above the
//! mmap threshold are mapped and unmapped each time, so a training step spends much of its time
//! in page faults (docs/DESIGN.md §6: 70 of 168 CPU-seconds were system time on a 125 M model). The
//! policy, measured in `BENCHMARKS.md` ("Rollout and training speed"):
//! - with the `mimalloc` feature, mimalloc is the global allocator;
//! - otherwise, on glibc, [`init`] keeps freed memory in the heap for reuse: no mmap for large
//!   blocks (`M_MMAP_MAX = 0`) and no trimming (`M_TRIM_THRESHOLD` at its maximum), the same as
//!   `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=…` in the environment.
//!
//! `AHA_ALLOC=system` skips the tuning (to measure its effect). An explicit `MALLOC_MMAP_MAX_` or
//! `MALLOC_TRIM_THRESHOLD_` in the environment also wins over it.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Applies the allocator policy; call first thing in `main`.
pub fn init() {
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    if tuning_wanted() {
        // SAFETY: `mallopt` only changes glibc malloc parameters; it is called before any other
        // thread exists, and the values are within the documented ranges.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    }
}

/// Whether the glibc tuning applies (not disabled, not overridden by the environment).
#[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
fn tuning_wanted() -> bool {
    let disabled = std::env::var("AHA_ALLOC").is_ok_and(|v| v == "system");
    let overridden = ["MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"].iter().any(|k| std::env::var_os(k).is_some());
    !disabled && !overridden
}

/// One line naming the allocator in use, for benchmark output.
pub fn describe() -> &'static str {
    #[cfg(feature = "mimalloc")]
    return "mimalloc";
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    return if tuning_wanted() {
        "glibc, no mmap/trim (M_MMAP_MAX=0, M_TRIM_THRESHOLD=max)"
    } else {
        "glibc (defaults or environment)"
    };
    #[cfg(all(not(feature = "mimalloc"), not(all(target_os = "linux", target_env = "gnu"))))]
    return "system";
}
