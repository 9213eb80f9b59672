//! The code reward: a Python program run against tests in the OS sandbox ([`sandbox`]), with the
//! verdict decided outside the sandboxed process ([`harness`]).

pub mod harness;
#[cfg(target_os = "linux")]
mod linux;
pub mod sandbox;

pub use crate::extract::last_code_block;
use crate::extract::AnswerExtraction;
use crate::registry::Reward;
use crate::sample::{Sample, Score};
use sandbox::{Limits, Status};

/// Runs the sample's program against its `tests`; 1 when all pass, else 0.
///
/// Sample fields: `tests` (Python source with asserts, required) and `entry_point` (optional: the
/// function passed to the tests' `check`, HumanEval style). The program is
/// [`AnswerExtraction::program`]: under the default `r1` extraction the final answer (see
/// [`crate::extract`]), its last fenced code block when it holds one. A refused sandbox is
/// unscorable, never 0 or 1.
pub struct CodeReward {
    limits: Limits,
}

impl CodeReward {
    /// A code reward with a wall-clock limit (seconds) and a memory limit (MiB).
    pub fn new(timeout_s: f64, memory_mb: u64) -> Self {
        let wall = std::time::Duration::from_secs_f64(timeout_s.max(0.1));
        CodeReward {
            limits: Limits { wall, cpu_s: wall.as_secs().max(1), memory_bytes: memory_mb << 20, ..Limits::default() },
        }
    }
}

impl Reward for CodeReward {
    fn score(&self, sample: &Sample) -> Score {
        self.score_with(sample, AnswerExtraction::R1)
    }

    fn score_with(&self, sample: &Sample, extraction: AnswerExtraction) -> Score {
        let Some(tests) = sample.field("tests").and_then(|v| v.as_str()) else {
            return Score::unscorable("missing `tests`");
        };
        let entry = sample.field("entry_point").and_then(|v| v.as_str());
        let Some(program) = extraction.program(&sample.completion) else {
            return Score::Value(0.0);
        };
        let outcome = harness::run_tests(program, tests, entry, &self.limits);
        if outcome.run.status == Status::Refused {
            return Score::unscorable(format!("sandbox refused: {}", outcome.run.refused.unwrap_or_default()));
        }
        Score::from_bool(outcome.passed)
    }
}
