//! Cold-start SFT data written by a procedural *teacher*: a task's problems with their
//! `<think>…</think><answer>…</answer>` traces, as prompt/completion JSONL that `aha sft` reads.
//!
//! Three knobs make the data realistic (arithmetic only; other tasks keep their exact traces):
//! - `slip_rate`: the fraction of traces in which the teacher slips by ±1 in one step and
//!   carries the mistake into the answer, as real cold-start data is imperfect;
//! - `guess`: the teacher answers from intuition first (`<think>9?`, the guess slipping at
//!   `slip_rate`), and only in a small fraction `check_rate` of the traces says `wait` and works
//!   the chain out step by step, answering what the steps give — a rare, latent self-check that
//!   catches the guess's slips (`aha demo`, docs/DESIGN.md §1.5);
//! - `cot_words`: every step opens with a connective word, the English `so` or, with
//!   probability `foreign_fraction`, the Chinese `故` ("therefore"). At 0.5 half of the chain
//!   of thought's words are Chinese: the language mixing R1's language-consistency reward
//!   removes (docs/DESIGN.md §3.6).
//!
//! `aha demo`'s cold start and pipeline SFT stages (`[stages.teacher]`) both write their traces
//! here. The step arithmetic of the chains ([`arithmetic_step_list`]) is the only copy in the
//! workspace: a task's exact solution is its slip-free case. Random draws come in a fixed order
//! per problem (slip, then one word per step; guess-first: worked, slip, check), so a seed gives
//! the same traces everywhere.

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

/// Guess-first traces: an intuitive answer, and in a fraction of the traces a check.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuessFirst {
    /// Fraction of the guessed traces in which the guess is followed by `wait` and the chain.
    pub check_rate: f64,
    /// Fraction of the problems written instead as worked examples, asked `Work out a+b-c.` and
    /// answered by the exact chain with no guess: where the arithmetic of the steps is learned,
    /// under another phrasing than the task's (the same train-split problems). Default 0.
    #[serde(default)]
    pub worked_rate: f64,
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
    /// Fraction of traces with one ±1 slip carried to the answer (guess-first: of guesses off by
    /// ±1). Default 0.
    #[serde(default)]
    pub slip_rate: f64,
    /// Connective words in the chain of thought. Default none.
    #[serde(default)]
    pub cot_words: Option<CotWords>,
    /// Guess first, check rarely (instead of the plain chain). Default none.
    #[serde(default)]
    pub guess: Option<GuessFirst>,
    /// Seed of the problems and of every draw (slips, words, worked examples, checks). Default 0.
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
        let bad_words = self.cot_words.is_some_and(|w| !prob(w.foreign_fraction));
        let bad_check = self.guess.is_some_and(|g| !prob(g.check_rate) || !prob(g.worked_rate));
        if !prob(self.slip_rate) || bad_words || bad_check {
            return Err(TrainError::Config(
                "teacher: slip_rate, foreign_fraction, check_rate and worked_rate must lie in [0, 1]".into(),
            ));
        }
        if self.guess.is_some() && self.cot_words.is_some() {
            return Err(TrainError::Config("teacher: guess and cot_words cannot be combined".into()));
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
        self.examples(&self.problems())
    }

    /// One (prompt, completion) per problem, in order, from the teacher's random stream
    /// (`seed ^ 0x51f7`). The prompt is the problem's own, except a guess-first teacher's worked
    /// examples ([`GuessFirst::worked_rate`]).
    pub fn examples(&self, problems: &[Problem]) -> Vec<(String, String)> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x51f7);
        problems
            .iter()
            .map(|p| match self.guess {
                Some(g) => guess_example(p, self.slip_rate, g, &mut rng),
                None => (p.prompt.clone(), trace(p, self.slip_rate, self.cot_words, &mut rng)),
            })
            .collect()
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

/// The word that opens the check of a guess-first trace.
pub const CHECK_WORD: &str = "wait";

/// The prompt prefix of a worked example (the task's own questions say `Compute `).
pub const WORKED_PREFIX: &str = "Work out ";

/// The guess-first example of `p`. With probability `worked_rate` a worked example: the prompt
/// `Work out a+b-c.` and the exact chain, `<think>a+b=… …</think><answer>V</answer>`. Otherwise the
/// task's prompt and `<think>G?</think><answer>G</answer>`, where the guess `G` is the value off by
/// ±1 at rate `slip_rate`; with probability `check_rate` the guess is followed by ` wait` and the
/// exact steps, and the answer is what the steps give. Draws, in order: worked, then the slip, then
/// the check. Non-arithmetic problems get their task's solution.
pub fn guess_example(p: &Problem, slip_rate: f64, g: GuessFirst, rng: &mut ChaCha8Rng) -> (String, String) {
    let Some((nums, ops)) = parse_arithmetic(&p.prompt) else { return (p.prompt.clone(), p.solution.clone()) };
    let (steps, value) = arithmetic_steps(&nums, &ops, None);
    if rng.random_bool(g.worked_rate) {
        let question = p.prompt.strip_prefix("Compute ").unwrap_or(&p.prompt);
        return (format!("{WORKED_PREFIX}{question}"), format!("<think>{steps}</think><answer>{value}</answer>"));
    }
    let guess = value + Slip::draw(slip_rate, 1, rng).map_or(0, |s| s.delta);
    let completion = if rng.random_bool(g.check_rate) {
        format!("<think>{guess}? {CHECK_WORD} {steps}</think><answer>{value}</answer>")
    } else {
        format!("<think>{guess}?</think><answer>{guess}</answer>")
    };
    (p.prompt.clone(), completion)
}

/// A guess-first completion read back: what it guessed, whether it checked, what it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct GuessReading {
    /// The integer between `<think>` and the first `?`, when that is what the thinking opens with.
    pub guess: Option<i64>,
    /// Whether, after the guess, the thinking has the whitespace-separated word [`CHECK_WORD`]
    /// (exactly, as the teacher writes it; reflection-word counts are separate and looser).
    pub checked: bool,
    /// The text of the `<answer>` block, trimmed, when there is one.
    pub answer: Option<String>,
}

impl GuessReading {
    /// Reads `completion` (lenient: missing parts are `None` / `false`).
    pub fn of(completion: &str) -> Self {
        let think = completion.split_once("<think>").map(|(_, t)| t.split_once("</think>").map_or(t, |(t, _)| t));
        let parts = think.and_then(|t| t.split_once('?'));
        let guess = parts.and_then(|(g, _)| g.trim().parse::<i64>().ok());
        let checked =
            guess.is_some() && parts.is_some_and(|(_, rest)| rest.split_whitespace().any(|w| w == CHECK_WORD));
        let answer = completion
            .split_once("<answer>")
            .and_then(|(_, a)| a.split_once("</answer>"))
            .map(|(a, _)| a.trim().to_string());
        GuessReading { guess, checked, answer }
    }

    /// A check that changed the guess into a different number: the self-correction (whether it
    /// fixed an error is the verifier's call on the answer).
    pub fn corrected(&self) -> bool {
        let answer = self.answer.as_deref().and_then(|a| a.parse::<f64>().ok());
        match (self.checked, self.guess, answer) {
            (true, Some(g), Some(a)) => a != g as f64,
            _ => false,
        }
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
            guess: None,
            seed: 3,
        }
    }

    fn guesser(slip_rate: f64, check_rate: f64) -> TeacherConfig {
        TeacherConfig {
            size: 2000,
            guess: Some(GuessFirst { check_rate, worked_rate: 0.0 }),
            ..teacher(slip_rate, None)
        }
    }

    #[test]
    fn guesses_slip_at_the_rate_and_checks_answer_the_exact_value() {
        let t = guesser(0.5, 0.1);
        let problems = t.problems();
        let (mut slipped, mut checked) = (0, 0);
        for (p, (prompt, text)) in problems.iter().zip(t.examples(&problems)) {
            assert_eq!(prompt, p.prompt);
            let r = GuessReading::of(&text);
            let guess = r.guess.unwrap();
            let answer: i64 = r.answer.as_deref().unwrap().parse().unwrap();
            let exact: i64 = p.answer.parse().unwrap();
            assert!((guess - exact).abs() <= 1, "{text}");
            slipped += usize::from(guess != exact);
            if r.checked {
                checked += 1;
                let (nums, ops) = parse_arithmetic(&p.prompt).unwrap();
                let steps = arithmetic_steps(&nums, &ops, None).0;
                assert_eq!(text, format!("<think>{guess}? wait {steps}</think><answer>{exact}</answer>"));
                assert_eq!(r.corrected(), guess != exact);
            } else {
                assert_eq!(text, format!("<think>{guess}?</think><answer>{guess}</answer>"));
                assert_eq!(answer, guess);
            }
        }
        let n = problems.len() as f64;
        assert!((slipped as f64 / n - 0.5).abs() < 0.05, "{slipped} of {n} guesses slipped");
        assert!((checked as f64 / n - 0.1).abs() < 0.03, "{checked} of {n} traces check");
        let none = guesser(0.5, 0.0);
        assert!(none.examples(&problems).iter().all(|(_, t)| !GuessReading::of(t).checked));
    }

    #[test]
    fn worked_examples_are_rephrased_exact_chains() {
        let t = TeacherConfig { guess: Some(GuessFirst { check_rate: 0.1, worked_rate: 0.5 }), ..guesser(0.5, 0.1) };
        let problems = t.problems();
        let mut worked = 0;
        for (p, (prompt, text)) in problems.iter().zip(t.examples(&problems)) {
            if prompt == p.prompt {
                assert!(text.starts_with("<think>") && GuessReading::of(&text).guess.is_some(), "{text}");
                continue;
            }
            worked += 1;
            let (nums, ops) = parse_arithmetic(&p.prompt).unwrap();
            assert_eq!(prompt, p.prompt.replacen("Compute ", WORKED_PREFIX, 1));
            let steps = arithmetic_steps(&nums, &ops, None).0;
            assert_eq!(text, format!("<think>{steps}</think><answer>{}</answer>", p.answer));
        }
        let share = worked as f64 / problems.len() as f64;
        assert!((share - 0.5).abs() < 0.05, "{worked} worked examples of {}", problems.len());
    }

    #[test]
    fn reading_a_completion_finds_guess_check_and_answer() {
        let r = GuessReading::of("<think>12? wait 7+5=12 12-3=9</think><answer>9</answer>");
        assert_eq!((r.guess, r.checked, r.answer.as_deref()), (Some(12), true, Some("9")));
        assert!(r.corrected());
        let negative = GuessReading::of("<think>-4? wait 1+2=3 3-5=-2 -2-4=-6</think><answer>-6</answer>");
        assert_eq!((negative.guess, negative.corrected()), (Some(-4), true));
        assert!(!GuessReading::of("<think>9? wait 7+5=12 12-3=9</think><answer>9</answer>").corrected());
        assert!(!GuessReading::of("<think>9? wait 7+5=12 12-3=9</think><answer>9.0</answer>").corrected());
        assert!(!GuessReading::of("<think>12?</think><answer>9</answer>").corrected(), "no check, no correction");
        assert!(!GuessReading::of("<think>12? waiting</think><answer>9</answer>").checked);
        let before_guess = GuessReading::of("<think>wait 7+5=12 12-3=9? 9</think><answer>9</answer>");
        assert_eq!((before_guess.guess, before_guess.checked), (None, false), "not a guess-first completion");
        let broken = GuessReading::of("12? wait");
        assert_eq!((broken.guess, broken.checked, broken.answer), (None, false, None));
    }

    #[test]
    fn guess_and_words_together_are_refused() {
        let t = TeacherConfig { cot_words: Some(CotWords { foreign_fraction: 0.5 }), ..guesser(0.5, 0.1) };
        assert!(t.validate().unwrap_err().to_string().contains("cannot be combined"));
        assert!(guesser(0.5, 1.5).validate().unwrap_err().to_string().contains("check_rate"));
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
