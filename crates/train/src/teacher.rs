//! Cold-start SFT data written by a procedural *teacher*: a task's problems with their
//! `<think>…</think><answer>…</answer>` traces, as prompt/completion JSONL that `aha sft` reads.
//!
//! Two knobs make the data realistic (arithmetic only; other tasks keep their exact traces):
//! - `slip_rate`: the fraction of traces in which the teacher slips by ±1 in one step and
//!   carries the mistake into the answer, as real cold-start data is imperfect (`aha demo`);
//! - `cot_words`: every step opens with a connective word, the English `so` or, with
//!   probability `foreign_fraction`, the Chinese `故` ("therefore"). At 0.5 half of the chain
//!   of thought's words are Chinese: the language mixing R1's language-consistency reward
//!   removes (docs/DESIGN.md §3.6).

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Result, TrainError};
use crate::tasks::{parse_arithmetic, Problem, Split, TaskSpec};

/// The English connective.
pub const EN_WORD: &str = "so";
/// The Chinese connective (one Han character: one word for the language reward).
pub const ZH_WORD: &str = "故";

/// Words opening each step of the chain of thought.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CotWords {
    /// Probability that a step opens with the Chinese word instead of the English one.
    pub foreign_fraction: f64,
}

/// What the teacher writes (`[stages.teacher]` of a pipeline SFT stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// The task whose train split is written.
    pub task: TaskSpec,
    /// Problems written. Default 8000.
    #[serde(default = "default_size")]
    pub size: usize,
    /// Percentage of the problem space held out (must match evaluation's). Default 10.
    #[serde(default = "default_test_percent")]
    pub test_percent: u64,
    /// Fraction of traces with one ±1 slip carried to the answer. Default 0.
    #[serde(default)]
    pub slip_rate: f64,
    /// Connective words in the chain of thought. Default none.
    #[serde(default)]
    pub cot_words: Option<CotWords>,
    /// Seed of the problems, slips and words. Default 0.
    #[serde(default)]
    pub seed: u64,
}

fn default_size() -> usize {
    8000
}
fn default_test_percent() -> u64 {
    10
}

impl TeacherConfig {
    /// Checks the numbers once.
    pub fn validate(&self) -> Result<()> {
        let prob = |v: f64| (0.0..=1.0).contains(&v);
        if self.size == 0 || self.test_percent >= 100 {
            return Err(TrainError::Config("teacher: size must be positive and test_percent below 100".into()));
        }
        if !prob(self.slip_rate) || self.cot_words.is_some_and(|w| !prob(w.foreign_fraction)) {
            return Err(TrainError::Config("teacher: slip_rate and foreign_fraction must lie in [0, 1]".into()));
        }
        Ok(())
    }

    /// The (prompt, completion) pairs, deterministic in the seed.
    pub fn rows(&self) -> Vec<(String, String)> {
        let problems = self.task.generate(self.seed, Split::Train, self.size, self.test_percent);
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x51f7);
        problems.iter().map(|p| (p.prompt.clone(), self.trace(p, &mut rng))).collect()
    }

    /// Writes the rows as prompt/completion JSONL; returns how many.
    pub fn write(&self, path: &Path) -> Result<usize> {
        self.validate()?;
        let rows = self.rows();
        let mut text = String::new();
        for (prompt, completion) in &rows {
            text += &json!({ "prompt": prompt, "completion": completion }).to_string();
            text.push('\n');
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
        }
        crate::checkpoint::write_atomic(path, text.as_bytes())?;
        Ok(rows.len())
    }

    /// One trace: the task's solution, or for arithmetic the steps with an optional slip and
    /// connective words.
    fn trace(&self, p: &Problem, rng: &mut ChaCha8Rng) -> String {
        let Some((nums, ops)) = parse_arithmetic(&p.prompt) else { return p.solution.clone() };
        let slip = rng.random_bool(self.slip_rate).then(|| {
            let step = rng.random_range(0..ops.len());
            (step, if rng.random_bool(0.5) { 1 } else { -1 })
        });
        let mut acc = nums[0];
        let mut parts = Vec::with_capacity(ops.len());
        for (i, (op, n)) in ops.iter().zip(&nums[1..]).enumerate() {
            let mut next = if *op == '+' { acc + n } else { acc - n };
            if slip.is_some_and(|(s, _)| s == i) {
                next += slip.map_or(0, |(_, d)| d);
            }
            let step = format!("{acc}{op}{n}={next}");
            parts.push(match self.cot_words {
                Some(w) => format!("{} {step}", if rng.random_bool(w.foreign_fraction) { ZH_WORD } else { EN_WORD }),
                None => step,
            });
            acc = next;
        }
        format!("<think>{}</think><answer>{acc}</answer>", parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aha_reward::language::{consistency, Language};

    fn teacher(slip_rate: f64, words: Option<f64>) -> TeacherConfig {
        TeacherConfig {
            task: TaskSpec::Arithmetic { min_operands: 3, max_operands: 4, max_value: 3 },
            size: 400,
            test_percent: 10,
            slip_rate,
            cot_words: words.map(|f| CotWords { foreign_fraction: f }),
            seed: 3,
        }
    }

    #[test]
    fn plain_traces_are_the_task_solutions() {
        let t = teacher(0.0, None);
        let problems = t.task.generate(3, Split::Train, 400, 10);
        let rows = t.rows();
        assert!(rows.iter().zip(&problems).all(|((_, c), p)| *c == p.solution));
    }

    #[test]
    fn slips_change_the_answer_at_about_the_rate() {
        let t = teacher(0.5, None);
        let problems = t.task.generate(3, Split::Train, 400, 10);
        let wrong = t
            .rows()
            .iter()
            .zip(&problems)
            .filter(|((_, c), p)| !c.ends_with(&format!(">{}</answer>", p.answer)))
            .count();
        assert!((150..250).contains(&wrong), "{wrong} of 400 slipped");
    }

    #[test]
    fn mixed_words_give_the_measured_language_fraction() {
        let rows = teacher(0.0, Some(0.5)).rows();
        let mean = |lang| {
            rows.iter().map(|(_, c)| consistency(aha_reward::extract::thought(c).unwrap_or(""), lang)).sum::<f64>()
                / rows.len() as f64
        };
        let en = mean(Language::En);
        assert!((0.4..0.6).contains(&en), "English fraction {en}");
        assert!((mean(Language::Zh) + en - 1.0).abs() < 1e-9, "every word is one of the two");
        let pure = teacher(0.0, Some(0.0)).rows();
        assert!(pure.iter().all(|(_, c)| c.contains("so ") && !c.contains(ZH_WORD)));
    }
}
