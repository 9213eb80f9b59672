//! The code reward: a Python program run against tests in the OS sandbox ([`sandbox`]), with the
//! verdict decided outside the sandboxed process ([`harness`]).

pub mod harness;
#[cfg(target_os = "linux")]
mod linux;
pub mod sandbox;

use crate::extract::final_answer;
use crate::registry::Reward;
use crate::sample::{Sample, Score};
use sandbox::{Limits, Status};

/// Runs the sample's program against its `tests`; 1 when all pass, else 0.
///
/// Sample fields: `tests` (Python source with asserts, required) and `entry_point` (optional: the
/// function passed to the tests' `check`, HumanEval style). The program is the final answer (see
/// [`crate::extract`]); when it holds a fenced code block, the last block. A refused sandbox is
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
        let Some(tests) = sample.field("tests").and_then(|v| v.as_str()) else {
            return Score::unscorable("missing `tests`");
        };
        let entry = sample.field("entry_point").and_then(|v| v.as_str());
        let Ok(answer) = final_answer(&sample.completion) else {
            return Score::Value(0.0);
        };
        let program = last_code_block(answer).unwrap_or(answer);
        let outcome = harness::run_tests(program, tests, entry, &self.limits);
        if outcome.run.status == Status::Refused {
            return Score::unscorable(format!("sandbox refused: {}", outcome.run.refused.unwrap_or_default()));
        }
        Score::from_bool(outcome.passed)
    }
}

/// The content of the last fenced code block (```` ```python … ``` ````) in `text`.
pub fn last_code_block(text: &str) -> Option<&str> {
    let end = text.rfind("```")?;
    let start = text[..end].rfind("```")?;
    let block = &text[start + 3..end];
    let body = block.split_once('\n').map_or(block, |(_lang, rest)| rest);
    Some(body)
}
