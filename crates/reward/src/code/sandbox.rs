//! An OS sandbox for untrusted Python programs (Linux). It fails closed: when a mechanism it relies
//! on is missing it returns [`Status::Refused`] and runs nothing.
//!
//! What one run gets, and the kernel mechanism behind each (all set up in the forked child before
//! `exec`, so the program never runs unconfined):
//! - a fresh private temp dir (mode 0700) as its working directory, `HOME` and `TMPDIR`; a cleared
//!   environment (`PATH`, `LANG` only); the interpreter in isolated mode (`python3 -I -B`);
//! - isolation from the caller's identity ([`Isolation`]): as root, a fresh, unique unprivileged
//!   uid/gid per run (no supplementary groups): root is never kept, so `RLIMIT_NPROC` is enforced
//!   (the kernel exempts uid 0) and counts only this run's processes, and `/proc/1/environ` or other
//!   users' files are out of reach by ordinary permissions; as an ordinary user, new user and pid
//!   namespaces: `RLIMIT_NPROC` is set inside the new user namespace (so it counts this run only),
//!   the program is the namespace's init (its end kills every process it started), and Landlock's
//!   ptrace scoping keeps it from reading the caller's `/proc/<pid>/environ`;
//! - Landlock (every filesystem right of the kernel's ABI, 7 here): read/execute-only everywhere,
//!   read-write only in the work dir (plus `/dev/null`);
//!   writes to `/etc`, `..` or through a symlink pointing outside are denied by the kernel;
//! - network: a new, empty network namespace (`unshare(CLONE_NEWNET)`: only a down loopback), and a
//!   seccomp filter denying `socket()` for every family but `AF_UNIX` plus `ptrace`, `mount`,
//!   `unshare`, `setns`, `bpf`, `keyctl`, `perf_event_open`;
//! - rlimits: CPU seconds, address space, processes, file size, open files, no core dumps;
//! - a new session (`setsid`): at the end (normal exit, timeout or output cap) the process group is
//!   killed, then (run-uid isolation) every process of the run's uid is killed with
//!   `kill(-1, SIGKILL)` from a helper running as that uid, or (user-namespace isolation) the pid
//!   namespace dies with its init; both reach double-forked daemons that left the group; the run
//!   also gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies if the supervising thread dies;
//! - stdout/stderr read by the parent through pipes, each capped at [`Limits::output_bytes`]; going
//!   over the cap kills the run (`output_limit`).
//!
//! Requirements (else `refused`, nothing runs): Linux, Landlock ABI ≥ 1, seccomp, and either root
//! (run-uid isolation, as in CI) or unprivileged user namespaces (user-namespace isolation).

use serde::Serialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Resource limits of one run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock limit.
    pub wall: Duration,
    /// CPU-time limit in seconds (`RLIMIT_CPU`).
    pub cpu_s: u64,
    /// Address-space limit in bytes (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Process/thread limit for the run's uid (`RLIMIT_NPROC`).
    pub nproc: u64,
    /// Largest file the run may write (`RLIMIT_FSIZE`).
    pub fsize_bytes: u64,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub nofile: u64,
    /// Bytes kept of stdout and of stderr each; more kills the run.
    pub output_bytes: usize,
    /// How the run is isolated from the caller's uid (default: automatic).
    pub isolation: Isolation,
}

/// How a run is separated from the caller's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// `RunUid` when running as root, else `UserNamespace`.
    #[default]
    Auto,
    /// A fresh unprivileged uid per run (needs root): the uid sweep kills every process.
    RunUid,
    /// Unprivileged: new user + pid namespaces (the caller's uid mapped to itself); the program is
    /// the pid namespace's init, so when it ends the kernel kills everything it started.
    /// Refused as root (uid 0 would be exempt from `RLIMIT_NPROC`).
    UserNamespace,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall: Duration::from_secs(10),
            cpu_s: 10,
            memory_bytes: 1 << 30,
            nproc: 32,
            fsize_bytes: 16 << 20,
            nofile: 64,
            output_bytes: 1 << 20,
            isolation: Isolation::Auto,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exit code 0.
    Ok,
    /// Exit code other than 0.
    NonzeroExit,
    /// Wall-clock or CPU-time limit.
    Timeout,
    /// The address-space limit was hit (the interpreter reported it).
    Memory,
    /// stdout or stderr went over the cap.
    OutputLimit,
    /// Killed by a signal.
    Killed,
    /// The sandbox could not be set up; nothing ran.
    Refused,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutput {
    /// How the run ended.
    pub status: Status,
    /// Exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Terminating signal, when killed.
    pub signal: Option<i32>,
    /// Captured stdout (capped, lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (capped, lossy UTF-8).
    pub stderr: String,
    /// Wall-clock time in milliseconds.
    pub wall_ms: u64,
    /// User + system CPU time of the main process (and reaped children) in milliseconds.
    pub cpu_ms: u64,
    /// Peak resident set size in KiB.
    pub max_rss_kb: u64,
    /// Why the run was refused.
    pub refused: Option<String>,
    /// The run's uid in `RunUid` isolation (to check afterwards that none of its processes
    /// survived); `None` otherwise.
    pub uid: Option<u32>,
}

impl RunOutput {
    pub(crate) fn refused(reason: impl Into<String>) -> Self {
        RunOutput {
            status: Status::Refused,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            wall_ms: 0,
            cpu_ms: 0,
            max_rss_kb: 0,
            refused: Some(reason.into()),
            uid: None,
        }
    }
}

/// The Python interpreter used: `/usr/bin/python3` if present, else `python3` from `PATH`.
pub fn python() -> PathBuf {
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        return system.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("python3")).find(|p| p.exists()))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Runs `main.py` = `source` (plus `extra_files` beside it) with `stdin`, under `limits`.
pub fn run_python(source: &str, extra_files: &[(&str, &str)], stdin: &[u8], limits: &Limits) -> RunOutput {
    #[cfg(target_os = "linux")]
    {
        super::linux::run(source, extra_files, stdin, limits)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (source, extra_files, stdin, limits);
        RunOutput::refused("the sandbox needs Linux")
    }
}

/// Pids of live (non-zombie) processes owned by `uid`, from `/proc`.
pub fn live_processes_of(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let uid_line = format!("Uid:\t{uid}\t");
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|s| s.contains(&uid_line) && !s.contains("State:\tZ") && !s.contains("State:\tX"))
        })
        .collect()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A uid no other concurrent run of this process uses (and, with high probability, of any process).
pub(crate) fn run_uid() -> u32 {
    let slot = COUNTER.fetch_add(1, Ordering::Relaxed) % 1024;
    200_000 + (std::process::id() % 200_000) * 1024 + slot
}

/// Reads `pipe` keeping at most `cap` bytes; sets `over` when more arrived.
pub(crate) fn capped_reader<R: Read + Send + 'static>(
    mut pipe: R,
    cap: usize,
    over: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                    if n > room {
                        over.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        kept
    })
}

pub(crate) fn stdin_writer<W: Write + Send + 'static>(mut pipe: W, data: Vec<u8>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    })
}

pub(crate) fn classify(
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    over: bool,
    stderr: &str,
) -> Status {
    if over {
        Status::OutputLimit
    } else if timed_out || signal == Some(libc::SIGXCPU) {
        Status::Timeout
    } else if stderr.contains("MemoryError") || stderr.contains("Cannot allocate memory") {
        Status::Memory
    } else if signal.is_some() {
        Status::Killed
    } else if exit_code == Some(0) {
        Status::Ok
    } else {
        Status::NonzeroExit
    }
}
