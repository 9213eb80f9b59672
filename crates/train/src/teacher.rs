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
//!
//! `aha demo`'s cold start and pipeline SFT stages (`[stages.teacher]`) both write their traces
//! here. The step arithmetic of the chains ([`arithmetic_step_list`]) is the only copy in the
//! workspace: a task's exact solution is its slip-free case. Random draws come in a fixed order
//! per problem (slip, then one word per step), so a seed gives the same traces everywhere.

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

    /// The task's train-split problems the teacher writes traces for.
    pub fn problems(&self) -> Vec<Problem> {
        self.task.generate(self.seed, Split::Train, self.size, self.test_percent)
    }

    /// The (prompt, completion) pairs, deterministic in the seed.
    pub fn rows(&self) -> Vec<(String, String)> {
        let problems = self.problems();
        problems.iter().map(|p| p.prompt.clone()).zip(self.traces(&problems)).collect()
    }

    /// One trace per problem, in order, from the teacher's random stream (`seed ^ 0x51f7`).
    pub fn traces(&self, problems: &[Problem]) -> Vec<String> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x51f7);
        problems.iter().map(|p| trace(p, self.slip_rate, self.cot_words, &mut rng)).collect()
    }
}

/// One slip of the teacher: the result of step `step` (0-based) is off by `delta`, and the
/// wrong value is carried on to the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slip {
    /// The step that goes wrong.
    pub step: usize,
    /// How far its result is off (±1 when drawn).
    pub delta: i64,
}

impl Slip {
    /// With probability `rate` a slip in one of `steps` steps (uniform), by +1 or −1 (even odds).
    ///
    /// The draws, in order: whether it slips, then (only if so) the step and the sign. A chain
    /// without steps never slips.
    pub fn draw(rate: f64, steps: usize, rng: &mut ChaCha8Rng) -> Option<Slip> {
        if !rng.random_bool(rate) || steps == 0 {
            return None;
        }
        let step = rng.random_range(0..steps);
        Some(Slip { step, delta: if rng.random_bool(0.5) { 1 } else { -1 } })
    }
}

/// The steps `a+b=c`, `c-d=e`, … of a left-to-right `+`/`-` chain and its final value, with at
/// most one slip carried to the end. The single implementation of the chain's arithmetic: the
/// tasks' exact solutions, the teacher's traces and the synthetic reward-model data use it.
pub fn arithmetic_step_list(nums: &[i64], ops: &[char], slip: Option<Slip>) -> (Vec<String>, i64) {
    let Some(&first) = nums.first() else { return (Vec::new(), 0) };
    let mut acc = first;
    let mut parts = Vec::with_capacity(ops.len());
    for (i, (op, n)) in ops.iter().zip(&nums[1..]).enumerate() {
        let mut next = if *op == '+' { acc + n } else { acc - n };
        if let Some(s) = slip.filter(|s| s.step == i) {
            next += s.delta;
        }
        parts.push(format!("{acc}{op}{n}={next}"));
        acc = next;
    }
    (parts, acc)
}

/// [`arithmetic_step_list`] with the steps joined by spaces: `7+5=12 12-3=9`.
pub fn arithmetic_steps(nums: &[i64], ops: &[char], slip: Option<Slip>) -> (String, i64) {
    let (parts, value) = arithmetic_step_list(nums, ops, slip);
    (parts.join(" "), value)
}

/// The teacher's trace of `p`: the task's own solution for non-arithmetic problems; for
/// arithmetic, its steps with a slip at rate `slip_rate` ([`Slip::draw`]) and, with `words`,
/// each step opened by a connective word (one draw per step, after the slip's).
pub fn trace(p: &Problem, slip_rate: f64, words: Option<CotWords>, rng: &mut ChaCha8Rng) -> String {
    let Some((nums, ops)) = parse_arithmetic(&p.prompt) else { return p.solution.clone() };
    let slip = Slip::draw(slip_rate, ops.len(), rng);
    let (steps, value) = arithmetic_step_list(&nums, &ops, slip);
    let steps: Vec<String> = match words {
        Some(w) => steps
            .into_iter()
            .map(|s| format!("{} {s}", if rng.random_bool(w.foreign_fraction) { ZH_WORD } else { EN_WORD }))
            .collect(),
        None => steps,
    };
    format!("<think>{}</think><answer>{value}</answer>", steps.join(" "))
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
    fn a_slip_is_carried_to_the_answer() {
        let (steps, v) = arithmetic_steps(&[7, 5, 3], &['+', '-'], Some(Slip { step: 0, delta: 1 }));
        assert_eq!((steps.as_str(), v), ("7+5=13 13-3=10", 10));
        let (steps, v) = arithmetic_steps(&[7, 5, 3], &['+', '-'], Some(Slip { step: 1, delta: -1 }));
        assert_eq!((steps.as_str(), v), ("7+5=12 12-3=8", 8));
        assert_eq!(arithmetic_steps(&[4], &[], Some(Slip { step: 0, delta: 1 })), (String::new(), 4));
    }

    #[test]
    fn draws_come_slip_first_then_one_word_per_step() {
        let p =
            TaskSpec::Arithmetic { min_operands: 4, max_operands: 4, max_value: 9 }.generate(1, Split::Train, 1, 10);
        let words = CotWords { foreign_fraction: 0.5 };
        for seed in 0..20 {
            let got = trace(&p[0], 0.5, Some(words), &mut ChaCha8Rng::seed_from_u64(seed));
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let slipped = rng.random_bool(0.5);
            let slip = slipped.then(|| (rng.random_range(0..3), if rng.random_bool(0.5) { 1 } else { -1 }));
            let (nums, ops) = parse_arithmetic(&p[0].prompt).unwrap();
            let mut acc = nums[0];
            let mut parts = Vec::new();
            for i in 0..3 {
                let next = if ops[i] == '+' { acc + nums[i + 1] } else { acc - nums[i + 1] }
                    + slip.filter(|s| s.0 == i).map_or(0, |s| s.1);
                let word = if rng.random_bool(0.5) { ZH_WORD } else { EN_WORD };
                parts.push(format!("{word} {acc}{}{}={next}", ops[i], nums[i + 1]));
                acc = next;
            }
            assert_eq!(got, format!("<think>{}</think><answer>{acc}</answer>", parts.join(" ")), "seed {seed}");
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
