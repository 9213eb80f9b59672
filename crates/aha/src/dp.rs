//! The data-parallel world of an `aha` process: one process, or one rank of the processes
//! `mpirun -np N` started (see `aha_train::collective`). Commands that train get their
//! collective here, check that every rank runs the same binary and config before step 1, and
//! end the whole job when one rank fails.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use aha_train::collective::{check_same_run, from_env, Collective};
use anyhow::Result;

/// Seconds a collective waits for the other ranks before the process gives up (a rank that
/// hangs); `AHA_COLLECTIVE_TIMEOUT_S` (a whole number ≥ 1) overrides the default of 600.
fn timeout() -> Result<Duration> {
    const VAR: &str = "AHA_COLLECTIVE_TIMEOUT_S";
    let Ok(v) = std::env::var(VAR) else { return Ok(Duration::from_secs(600)) };
    match v.trim().parse::<u64>() {
        Ok(secs) if secs >= 1 => Ok(Duration::from_secs(secs)),
        _ => anyhow::bail!("{VAR}={v:?}: must be a whole number of seconds, at least 1"),
    }
}

/// This process's collective, after checking that every rank runs the same binary with the same
/// resolved config (`config`).
fn world(config: &serde_json::Value) -> Result<Box<dyn Collective>> {
    let c = from_env(timeout()?)?;
    if c.size() > 1 {
        check_same_run(c.as_ref(), &fingerprint(config))?;
        if c.is_writer() {
            eprintln!("data parallel: {} ranks (rank 0 writes)", c.size());
        }
    }
    Ok(c)
}

/// What must agree across ranks: aha's version, a hash of the running executable and the
/// resolved config.
fn fingerprint(config: &serde_json::Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match std::env::current_exe().and_then(std::fs::read) {
        Ok(bytes) => bytes.hash(&mut h),
        Err(e) => e.to_string().hash(&mut h),
    }
    format!("aha {} exe {:016x} config {config}", env!("CARGO_PKG_VERSION"), h.finish())
}

/// Runs `f` as this process's rank of the job ([`world`] for `config`), ending every rank when
/// one fails ([`finish`]).
pub fn as_rank<T>(config: &serde_json::Value, f: impl FnOnce(&dyn Collective) -> Result<T>) -> Result<T> {
    let world = world(config)?;
    let result = f(world.as_ref());
    finish(world.as_ref(), result)
}

/// Passes `result` through; when a rank of a multi-process job failed, prints the error with
/// its rank and ends every rank (so none waits for it in a collective).
fn finish<T>(c: &dyn Collective, result: Result<T>) -> Result<T> {
    if let Err(e) = &result {
        if c.size() > 1 {
            eprintln!("error: rank {} of {}: {e:#}", c.rank(), c.size());
            c.abort(1);
        }
    }
    result
}
