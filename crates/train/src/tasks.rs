//! Built-in procedural reasoning tasks, generated from a seed, with a held-out split that can
//! never overlap training: a problem belongs to the test split iff a stable hash of its canonical
//! text falls below `test_percent`, so the two splits partition the problem space itself.
//!
//! Each task also writes `<think>…</think><answer>…</answer>` traces for cold-start SFT.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The step arithmetic of the `+`/`-` chains lives with the teacher, which also writes them
/// with slips; the exact solutions here are its slip-free case.
pub use crate::teacher::arithmetic_steps;

/// Which half of the problem space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training problems.
    Train,
    /// Held-out problems (disjoint from training by construction).
    Test,
}

/// A procedural task and its size knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSpec {
    /// Multi-step integer arithmetic evaluated left to right, e.g. `Compute 7+5-3.`
    Arithmetic {
        /// Minimum number of operands (default 3).
        #[serde(default = "three")]
        min_operands: usize,
        /// Maximum number of operands (default 4).
        #[serde(default = "four")]
        max_operands: usize,
        /// Largest operand (default 9); operands are drawn from 1..=max_value.
        #[serde(default = "nine")]
        max_value: i64,
    },
    /// Countdown: combine every given number once with + − × ÷ to reach the target.
    Countdown {
        /// How many numbers (default 3).
        #[serde(default = "three")]
        numbers: usize,
        /// Largest number (default 20).
        #[serde(default = "twenty")]
        max_value: i64,
    },
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn nine() -> i64 {
    9
}
fn twenty() -> i64 {
    20
}

/// One generated problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// The question shown to the model.
    pub prompt: String,
    /// The gold final answer.
    pub answer: String,
    /// Task fields the verifier needs (`numbers`, `target` for Countdown).
    pub fields: Map<String, Value>,
    /// A correct reasoning trace, `<think>…</think><answer>…</answer>`.
    pub solution: String,
    /// The canonical text the split hash is taken of.
    pub key: String,
}

/// FNV-1a 64: a stable hash (std's hasher is randomised per process).
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The split a problem key belongs to.
pub fn split_of(key: &str, test_percent: u64) -> Split {
    if stable_hash(key) % 100 < test_percent {
        Split::Test
    } else {
        Split::Train
    }
}

impl TaskSpec {
    /// The reward kinds that verify this task's answers (besides `format`).
    pub fn verifier_kind(&self) -> &'static str {
        match self {
            TaskSpec::Arithmetic { .. } => "numeric",
            TaskSpec::Countdown { .. } => "countdown",
        }
    }

    /// `n` distinct problems of `split`, deterministic in `seed`.
    ///
    /// Gives up (returning fewer) only if the problem space is too small to supply `n`.
    pub fn generate(&self, seed: u64, split: Split, n: usize, test_percent: u64) -> Vec<Problem> {
        let salt = match split {
            Split::Train => 0x5eed_0001,
            Split::Test => 0x5eed_0002,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n);
        let mut attempts = 0usize;
        while out.len() < n && attempts < n * 200 + 10_000 {
            attempts += 1;
            let p = self.sample(&mut rng);
            if split_of(&p.key, test_percent) == split && seen.insert(p.key.clone()) {
                out.push(p);
            }
        }
        out
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> Problem {
        match *self {
            TaskSpec::Arithmetic { min_operands, max_operands, max_value } => {
                let k = rng.random_range(min_operands.max(2)..=max_operands.max(min_operands.max(2)));
                arithmetic(rng, k, max_value.max(1))
            }
            TaskSpec::Countdown { numbers, max_value } => countdown(rng, numbers.max(2), max_value.max(2)),
        }
    }
}

/// A left-to-right `+`/`-` chain with its step-by-step trace.
fn arithmetic(rng: &mut ChaCha8Rng, k: usize, max_value: i64) -> Problem {
    let nums: Vec<i64> = (0..k).map(|_| rng.random_range(1..=max_value)).collect();
    let ops: Vec<char> = (1..k).map(|_| if rng.random_bool(0.5) { '+' } else { '-' }).collect();
    let mut expr = nums[0].to_string();
    for (op, n) in ops.iter().zip(&nums[1..]) {
        expr.push(*op);
        expr.push_str(&n.to_string());
    }
    let (steps, value) = arithmetic_steps(&nums, &ops, None);
    Problem {
        prompt: format!("Compute {expr}."),
        answer: value.to_string(),
        fields: Map::new(),
        solution: format!("<think>{steps}</think><answer>{value}</answer>"),
        key: expr,
    }
}

/// Parses `Compute a+b-c.` back into operands and operators.
pub fn parse_arithmetic(prompt: &str) -> Option<(Vec<i64>, Vec<char>)> {
    let expr = prompt.strip_prefix("Compute ")?.strip_suffix('.')?;
    let mut nums = Vec::new();
    let mut ops = Vec::new();
    let mut cur = String::new();
    for c in expr.chars() {
        if (c == '+' || c == '-') && !cur.is_empty() {
            nums.push(cur.parse().ok()?);
            ops.push(c);
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    nums.push(cur.parse().ok()?);
    Some((nums, ops))
}

/// A solvable Countdown instance: the target is the value of a random expression over the numbers.
fn countdown(rng: &mut ChaCha8Rng, k: usize, max_value: i64) -> Problem {
    loop {
        let mut nums: Vec<i64> = (0..k).map(|_| rng.random_range(1..=max_value)).collect();
        let mut expr = nums[0].to_string();
        let mut value = nums[0];
        for &n in &nums[1..] {
            let (op, v) = match rng.random_range(0..3) {
                0 => ('+', value + n),
                1 if value - n > 0 => ('-', value - n),
                _ => ('*', value * n),
            };
            expr =
                if op == '*' && expr.contains(['+', '-']) { format!("({expr})*{n}") } else { format!("{expr}{op}{n}") };
            value = v;
        }
        if value <= 0 || value > 1000 {
            continue;
        }
        nums.sort_unstable();
        let list = nums.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let mut fields = Map::new();
        fields.insert("numbers".into(), json!(nums));
        fields.insert("target".into(), json!(value));
        return Problem {
            prompt: format!("Using the numbers [{list}], make {value}. Use each number once with + - * /."),
            answer: expr.clone(),
            fields,
            solution: format!("<think>{expr}={value}</think><answer>{expr}</answer>"),
            key: format!("{list}->{value}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_never_overlap_and_are_deterministic() {
        let t = TaskSpec::Arithmetic { min_operands: 3, max_operands: 4, max_value: 9 };
        let train = t.generate(1, Split::Train, 2000, 10);
        let test = t.generate(1, Split::Test, 200, 10);
        assert_eq!(train.len(), 2000);
        assert_eq!(test.len(), 200);
        let keys: std::collections::HashSet<_> = train.iter().map(|p| &p.key).collect();
        assert!(test.iter().all(|p| !keys.contains(&p.key)));
        assert_eq!(t.generate(1, Split::Test, 200, 10), test);
        assert_ne!(t.generate(2, Split::Train, 50, 10), train[..50].to_vec());
    }

    #[test]
    fn arithmetic_trace_is_correct_and_parses_back() {
        let (steps, v) = arithmetic_steps(&[7, 5, 3], &['+', '-'], None);
        assert_eq!(steps, "7+5=12 12-3=9");
        assert_eq!(v, 9);
        assert_eq!(parse_arithmetic("Compute 7+5-3."), Some((vec![7, 5, 3], vec!['+', '-'])));
    }

    #[test]
    fn countdown_target_is_reachable_by_its_solution() {
        let t = TaskSpec::Countdown { numbers: 3, max_value: 20 };
        for p in t.generate(3, Split::Train, 50, 10) {
            assert!(p.solution.contains(&p.answer));
            assert_eq!(p.fields["numbers"].as_array().map(Vec::len), Some(3));
        }
    }
}
