//! Running a program against tests with the verdict decided outside the sandboxed process.
//!
//! The parent writes `solution.py` (the candidate), `tests.py` (the tests) and `main.py` (the
//! harness, `harness.py` beside this file) into the sandbox's work dir, and sends a fresh random
//! nonce as the first line of stdin. The harness reads the nonce and closes stdin before the
//! candidate's code runs, executes the candidate, restores the builtins it may have patched, runs
//! the tests with `==`/`!=` rewritten to a strict, type-checked comparison, and only then prints
//! `<nonce> PASS`. The parent counts the tests as passed only when the run's status is `ok` and the
//! last line of stdout is exactly that. So `sys.exit(0)`/`os._exit(0)` before the tests, a crash, a
//! timeout and an always-true `__eq__` all fail.
//!
//! Limitation (documented, not hidden): the candidate runs in the harness's process, so a program
//! written to attack this harness (walking interpreter frames to read the nonce) could forge the
//! line; the nonce defeats accidental and cheap hacks, not a deliberate in-process exploit.

use super::sandbox::{run_python, Limits, RunOutput, Status};

const HARNESS: &str = include_str!("harness.py");

/// The outcome of a test run.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    /// Every test passed (decided by the parent from the nonce line and the status).
    pub passed: bool,
    /// The underlying run.
    pub run: RunOutput,
}

/// Runs `solution` against `tests` (Python source; with `entry_point`, `check(entry_point)` is
/// appended, as in HumanEval).
pub fn run_tests(
    solution: &str,
    tests: &str,
    entry_point: Option<&str>,
    limits: &Limits,
) -> TestOutcome {
    let nonce = match fresh_nonce() {
        Ok(n) => n,
        Err(e) => {
            let mut run = run_python(
                "",
                &[],
                b"",
                &Limits {
                    wall: std::time::Duration::ZERO,
                    ..limits.clone()
                },
            );
            run.status = Status::Refused;
            run.refused = Some(format!("no randomness for the nonce: {e}"));
            return TestOutcome { passed: false, run };
        }
    };
    let entry = entry_point.unwrap_or("");
    if !entry.chars().all(|c| c.is_alphanumeric() || c == '_') {
        let mut run = run_python(
            "",
            &[],
            b"",
            &Limits {
                wall: std::time::Duration::ZERO,
                ..limits.clone()
            },
        );
        run.status = Status::Refused;
        run.refused = Some("entry point is not an identifier".into());
        return TestOutcome { passed: false, run };
    }
    let header = format!("import os as _o\n_o.environ['AHA_ENTRY_POINT'] = {entry:?}\n");
    let main = format!("{header}{HARNESS}");
    let stdin = format!("{nonce}\n");
    let run = run_python(
        &main,
        &[("solution.py", solution), ("tests.py", tests)],
        stdin.as_bytes(),
        limits,
    );
    let expected = format!("{nonce} PASS");
    let passed =
        run.status == Status::Ok && run.stdout.trim_end().lines().last() == Some(expected.as_str());
    TestOutcome { passed, run }
}

/// 128 random bits as hex, from the kernel.
fn fresh_nonce() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
