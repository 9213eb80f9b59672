//! Running a program against tests with the verdict decided outside the candidate's process.
//!
//! The parent writes `solution.py` (the candidate), `tests.py` (the tests) and `main.py` (the
//! harness, `harness.py` beside this file) into the sandbox's work dir, and sends a fresh random
//! nonce as the first line of stdin. Inside the sandbox the harness forks: the child runs the
//! candidate and answers function calls with plain literal values only (exact built-in types, so an
//! always-true `__eq__` or an `int` subclass never leaves it); the parent makes itself non-dumpable,
//! reads the nonce and the tests (deleting `tests.py` before any candidate code runs), runs the tests
//! against proxies of the candidate's functions (never those shadowing builtins such as `abs`) with
//! `==`/`!=` rewritten to a strict, type-checked comparison, and only then prints `<nonce> PASS`.
//! The supervisor counts the tests as passed only when the run's status is `ok` and the last line of
//! stdout is exactly that line. So `sys.exit(0)`/`os._exit(0)` before or during the tests, a crash, a
//! timeout, an always-true `__eq__`, a shadowed builtin, reading the tests or printing a fake verdict
//! all fail: the candidate never runs in the process that holds the nonce and judges the tests.
//!
//! Limitation: arguments and results cross the process boundary as Python literals, so tests must
//! call the candidate with literal-representable arguments (true of HumanEval and MBPP).

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
pub fn run_tests(solution: &str, tests: &str, entry_point: Option<&str>, limits: &Limits) -> TestOutcome {
    let nonce = match fresh_nonce() {
        Ok(n) => n,
        Err(e) => {
            let mut run = run_python("", &[], b"", &Limits { wall: std::time::Duration::ZERO, ..limits.clone() });
            run.status = Status::Refused;
            run.refused = Some(format!("no randomness for the nonce: {e}"));
            return TestOutcome { passed: false, run };
        }
    };
    let entry = entry_point.unwrap_or("");
    if !entry.chars().all(|c| c.is_alphanumeric() || c == '_') {
        let mut run = run_python("", &[], b"", &Limits { wall: std::time::Duration::ZERO, ..limits.clone() });
        run.status = Status::Refused;
        run.refused = Some("entry point is not an identifier".into());
        return TestOutcome { passed: false, run };
    }
    let header = format!("import os as _o\n_o.environ['AHA_ENTRY_POINT'] = {entry:?}\n");
    let main = format!("{header}{HARNESS}");
    let stdin = format!("{nonce}\n");
    let run = run_python(&main, &[("solution.py", solution), ("tests.py", tests)], stdin.as_bytes(), limits);
    let expected = format!("{nonce} PASS");
    let passed = run.status == Status::Ok && run.stdout.trim_end().lines().last() == Some(expected.as_str());
    TestOutcome { passed, run }
}

/// 128 random bits as hex, from the kernel.
fn fresh_nonce() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
