//! Reward-model datasets: preference pairs `{prompt, chosen, rejected}` (the common shape of
//! preference data) for the pairwise objective, labelled responses `{prompt, response, label}`
//! (label 0/1 or false/true) for the pointwise one. An optional `kind` column names the row's
//! category (e.g. the rejection kind of a synthetic pair) for a per-kind held-out breakdown.
//!
//! Rows are split into train and held-out by a stable hash of the prompt (so one prompt never
//! lands on both sides), unless a held-out file is given.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::data::{read_jsonl_rows, Skipped};
use crate::error::Result;
use crate::tasks::{split_of, Split};

/// The training objective, which also fixes the row shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Bradley–Terry on preference pairs: −log σ(r_chosen − r_rejected).
    #[default]
    Pairwise,
    /// Binary cross-entropy of σ(r) against a 0/1 label.
    Pointwise,
}

/// One preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRow {
    /// The question.
    pub prompt: String,
    /// The preferred response.
    pub chosen: String,
    /// The dispreferred response.
    pub rejected: String,
    /// Optional category for the breakdown.
    pub kind: Option<String>,
}

/// One labelled response.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRow {
    /// The question.
    pub prompt: String,
    /// The response (reasoning included).
    pub response: String,
    /// True for the positive class (e.g. safe).
    pub label: bool,
    /// Optional category for the breakdown.
    pub kind: Option<String>,
}

/// Rows of either objective.
#[derive(Debug, Clone, PartialEq)]
pub enum RmRows {
    /// Pairwise rows.
    Pairs(Vec<PairRow>),
    /// Pointwise rows.
    Points(Vec<PointRow>),
}

impl RmRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            RmRows::Pairs(r) => r.len(),
            RmRows::Points(r) => r.len(),
        }
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (train, held-out) by the hash of each row's prompt: `test_percent` % of prompts held out.
    pub fn split(self, test_percent: u64) -> (RmRows, RmRows) {
        fn part<T: Clone>(rows: Vec<T>, prompt: impl Fn(&T) -> &str, pct: u64) -> (Vec<T>, Vec<T>) {
            rows.into_iter().partition(|r| split_of(prompt(r), pct) == Split::Train)
        }
        match self {
            RmRows::Pairs(r) => {
                let (a, b) = part(r, |r| &r.prompt, test_percent);
                (RmRows::Pairs(a), RmRows::Pairs(b))
            }
            RmRows::Points(r) => {
                let (a, b) = part(r, |r| &r.prompt, test_percent);
                (RmRows::Points(a), RmRows::Points(b))
            }
        }
    }
}

/// Reads a JSONL file of `objective`'s shape; malformed rows are skipped with line numbers.
pub fn read_rm_jsonl(path: &Path, objective: Objective) -> Result<(RmRows, Skipped)> {
    Ok(match objective {
        Objective::Pairwise => {
            let (rows, skipped) = read_jsonl_rows(path, parse_pair)?;
            (RmRows::Pairs(rows), skipped)
        }
        Objective::Pointwise => {
            let (rows, skipped) = read_jsonl_rows(path, parse_point)?;
            (RmRows::Points(rows), skipped)
        }
    })
}

fn object(line: &str) -> std::result::Result<Map<String, Value>, String> {
    serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))
}

fn text(obj: &Map<String, Value>, key: &str) -> std::result::Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("column `{key}` is not a string: {other}")),
        None => Err(format!("missing column `{key}`")),
    }
}

fn kind(obj: &Map<String, Value>) -> Option<String> {
    obj.get("kind").and_then(Value::as_str).map(str::to_string)
}

/// `{prompt, chosen, rejected}`.
pub fn parse_pair(line: &str) -> std::result::Result<PairRow, String> {
    let obj = object(line)?;
    Ok(PairRow {
        prompt: text(&obj, "prompt")?,
        chosen: text(&obj, "chosen")?,
        rejected: text(&obj, "rejected")?,
        kind: kind(&obj),
    })
}

/// `{prompt, response, label}` with label 0/1 or false/true.
pub fn parse_point(line: &str) -> std::result::Result<PointRow, String> {
    let obj = object(line)?;
    let label = match obj.get("label") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => true,
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => false,
        Some(other) => return Err(format!("column `label` must be 0, 1, false or true, got {other}")),
        None => return Err("missing column `label`".into()),
    };
    Ok(PointRow { prompt: text(&obj, "prompt")?, response: text(&obj, "response")?, label, kind: kind(&obj) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_ints_or_bools_and_bad_rows_are_named() {
        assert!(parse_point(r#"{"prompt":"p","response":"r","label":1}"#).unwrap().label);
        assert!(!parse_point(r#"{"prompt":"p","response":"r","label":false}"#).unwrap().label);
        assert!(parse_point(r#"{"prompt":"p","response":"r","label":2}"#).unwrap_err().contains("label"));
        assert!(parse_pair(r#"{"prompt":"p","chosen":"a"}"#).unwrap_err().contains("rejected"));
        let p = parse_pair(r#"{"prompt":"p","chosen":"a","rejected":"b","kind":"x"}"#).unwrap();
        assert_eq!(p.kind.as_deref(), Some("x"));
    }

    #[test]
    fn the_split_keeps_each_prompt_on_one_side() {
        let rows: Vec<PairRow> = (0..200)
            .flat_map(|i| {
                (0..2).map(move |j| PairRow {
                    prompt: format!("q{i}"),
                    chosen: format!("c{j}"),
                    rejected: "r".into(),
                    kind: None,
                })
            })
            .collect();
        let (RmRows::Pairs(train), RmRows::Pairs(test)) = RmRows::Pairs(rows).split(20) else { panic!() };
        assert_eq!(train.len() + test.len(), 400);
        assert!(test.len() > 40 && test.len() < 140, "{}", test.len());
        assert!(test.iter().all(|t| train.iter().all(|r| r.prompt != t.prompt)));
    }
}
