//! Deterministic synthetic reward-model data on the arithmetic task (`aha rm make-data`).
//!
//! **Helpfulness pairs** `{prompt, chosen, rejected, kind}`: `chosen` is the task's correct,
//! well-formed `<think>steps</think><answer>v</answer>`; `rejected` is one of five kinds, so
//! no single surface feature separates them: `wrong_answer` (the same correct steps, but an
//! answer off by 1–3, which only comparing the answer with the last step reveals),
//! `no_reasoning` (the right answer with an empty or missing think block), `rambling` (filler
//! words instead of steps, shorter or longer than the chosen), `malformed` (broken tags, junk
//! after the answer, duplicated answer) and `truncated` (cut off before the answer).
//!
//! **Safety labels** `{prompt, response, label, kind}`: label 1 (safe) or 0 (unsafe). Unsafe
//! responses carry one harmful sentence **inside the reasoning only** (`unsafe_think`), in the
//! answer (`unsafe_answer`) or before the reasoning (`unsafe_prefix`); half of the safe ones
//! carry a benign sentence sharing words with a harmful one (`safe_distractor`) at the same
//! kinds of places, so neither position nor a shared word decides the label.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::checkpoint::write_atomic;
use crate::error::{Result, TrainError};
use crate::tasks::{arithmetic_steps, parse_arithmetic, Problem, Split, TaskSpec};

/// Which dataset to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynthKind {
    /// Preference pairs for a helpfulness model (pairwise).
    Helpful,
    /// Labelled responses for a safety model (pointwise).
    Safety,
}

/// Harmful sentences (label 0 wherever they appear).
pub const UNSAFE: [&str; 4] = [
    "here is how to build a bomb at home",
    "send me your bank password now",
    "mix bleach and ammonia to poison them",
    "run rm -rf / on their server",
];

/// Benign sentences that share words with [`UNSAFE`] ones.
pub const BENIGN: [&str; 4] = [
    "here is how to build a bridge at home",
    "never send anyone your bank password",
    "keep bleach and ammonia away from children",
    "run ls -la on your own server",
];

const FILLER: [&str; 6] = ["hmm", "well", "let me think", "so", "wait", "okay then"];

/// `n` rows of `kind`, deterministic in `seed` (the arithmetic task, 3–4 operands up to 9).
pub fn make_rows(kind: SynthKind, n: usize, seed: u64) -> Vec<Value> {
    let task = TaskSpec::Arithmetic { min_operands: 3, max_operands: 4, max_value: 9 };
    let problems = task.generate(seed, Split::Train, n, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0a11_ce5e);
    problems
        .iter()
        .map(|p| match kind {
            SynthKind::Helpful => helpful_pair(p, &mut rng),
            SynthKind::Safety => safety_row(p, &mut rng),
        })
        .collect()
}

/// Writes rows as JSONL, atomically.
pub fn write_jsonl(path: &Path, rows: &[Value]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text += &serde_json::to_string(r).map_err(|e| TrainError::Other(e.to_string()))?;
        text.push('\n');
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(crate::error::io_err(parent))?;
    }
    write_atomic(path, text.as_bytes())
}

fn steps_and_value(p: &Problem) -> (String, i64) {
    match parse_arithmetic(&p.prompt) {
        Some((nums, ops)) => arithmetic_steps(&nums, &ops, None),
        None => (String::new(), p.answer.parse().unwrap_or(0)),
    }
}

fn helpful_pair(p: &Problem, rng: &mut ChaCha8Rng) -> Value {
    let (steps, v) = steps_and_value(p);
    let (kind, rejected) = match rng.random_range(0..5) {
        0 => {
            let delta = rng.random_range(1..=3) * if rng.random_bool(0.5) { 1 } else { -1 };
            ("wrong_answer", format!("<think>{steps}</think><answer>{}</answer>", v + delta))
        }
        1 => {
            let r = if rng.random_bool(0.5) {
                format!("<think></think><answer>{v}</answer>")
            } else {
                format!("<answer>{v}</answer>")
            };
            ("no_reasoning", r)
        }
        2 => {
            let words: Vec<&str> =
                (0..rng.random_range(2..12)).map(|_| FILLER[rng.random_range(0..FILLER.len())]).collect();
            let answer = if rng.random_bool(0.5) { v } else { v + rng.random_range(1..=5) };
            ("rambling", format!("<think>{}</think><answer>{answer}</answer>", words.join(" ")))
        }
        3 => {
            let r = match rng.random_range(0..4) {
                0 => format!("<think>{steps}<answer>{v}</answer>"),
                1 => format!("<think>{steps}</think><answer>{v}</answer> and more text"),
                2 => format!("<think>{steps}</think><answer>{v}</answer><answer>{v}</answer>"),
                _ => format!("{steps} so the answer is {v}"),
            };
            ("malformed", r)
        }
        _ => {
            let cut = rng.random_range(1..=steps.len().max(1));
            let head: String = steps.chars().take(cut).collect();
            ("truncated", format!("<think>{head}"))
        }
    };
    json!({ "prompt": p.prompt, "chosen": p.solution, "rejected": rejected, "kind": kind })
}

/// Inserts `sentence` into a correct response at the place `slot` names.
fn with_sentence(steps: &str, v: i64, sentence: &str, slot: usize, rng: &mut ChaCha8Rng) -> String {
    match slot {
        0 => {
            let parts: Vec<&str> = steps.split(' ').collect();
            let at = rng.random_range(0..=parts.len());
            let mut out: Vec<&str> = parts[..at].to_vec();
            out.push(sentence);
            out.extend_from_slice(&parts[at..]);
            format!("<think>{}</think><answer>{v}</answer>", out.join(" "))
        }
        1 => format!("<think>{steps}</think><answer>{v}. Also, {sentence}.</answer>"),
        _ => format!("{sentence}. <think>{steps}</think><answer>{v}</answer>"),
    }
}

fn safety_row(p: &Problem, rng: &mut ChaCha8Rng) -> Value {
    let (steps, v) = steps_and_value(p);
    let slot = rng.random_range(0..3);
    let (kind, response, label) = if rng.random_bool(0.5) {
        let s = UNSAFE[rng.random_range(0..UNSAFE.len())];
        let kind = ["unsafe_think", "unsafe_answer", "unsafe_prefix"][slot];
        (kind, with_sentence(&steps, v, s, slot, rng), 0)
    } else if rng.random_bool(0.5) {
        let s = BENIGN[rng.random_range(0..BENIGN.len())];
        ("safe_distractor", with_sentence(&steps, v, s, slot, rng), 1)
    } else {
        ("safe", p.solution.clone(), 1)
    };
    json!({ "prompt": p.prompt, "response": response, "label": label, "kind": kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_deterministic_and_mixes_every_kind() {
        let a = make_rows(SynthKind::Helpful, 300, 4);
        assert_eq!(a, make_rows(SynthKind::Helpful, 300, 4));
        assert_ne!(a, make_rows(SynthKind::Helpful, 300, 5));
        let kinds: std::collections::BTreeSet<&str> = a.iter().map(|r| r["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert!(a.iter().all(|r| r["chosen"] != r["rejected"]));
    }

    #[test]
    fn unsafe_sentences_sit_inside_the_reasoning_only_for_unsafe_think() {
        let rows = make_rows(SynthKind::Safety, 400, 1);
        let think = rows.iter().filter(|r| r["kind"] == "unsafe_think").collect::<Vec<_>>();
        assert!(!think.is_empty());
        for r in think {
            let text = r["response"].as_str().unwrap();
            let inner = &text[text.find("<think>").unwrap()..text.find("</think>").unwrap()];
            assert!(UNSAFE.iter().any(|s| inner.contains(s)), "{text}");
            assert_eq!(r["label"], 0);
        }
        let labels: Vec<i64> = rows.iter().map(|r| r["label"].as_i64().unwrap()).collect();
        let pos = labels.iter().filter(|&&l| l == 1).count();
        assert!(pos > 150 && pos < 250, "{pos}");
    }
}
