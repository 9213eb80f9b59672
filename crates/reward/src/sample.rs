//! The data the registry consumes and produces: a sample in, scores out.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One completion to score: the shape of one line of `aha reward score`'s input.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// The model's completion text (everything the model generated).
    pub completion: String,
    /// The gold answer (may be empty for rewards that do not need one); a JSON number is accepted
    /// and kept as written.
    #[serde(default, deserialize_with = "string_or_number")]
    pub answer: String,
    /// Task fields, e.g. `numbers` and `target` (Countdown), `tests` (code); kept as JSON.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(serde::de::Error::custom(format!("`answer` must be a string or a number, not {other}"))),
    }
}

impl Sample {
    /// A sample with no task fields.
    pub fn new(completion: impl Into<String>, answer: impl Into<String>) -> Self {
        Sample { completion: completion.into(), answer: answer.into(), fields: Map::new() }
    }

    /// Adds one task field (builder style).
    pub fn with_field(mut self, key: &str, value: Value) -> Self {
        self.fields.insert(key.to_string(), value);
        self
    }

    /// A task field, if present.
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_jsonl_line() {
        let s: Sample =
            serde_json::from_str(r#"{"completion": "c", "answer": 42, "numbers": [1, 2], "target": 3}"#).unwrap();
        assert_eq!(s.answer, "42");
        assert_eq!(s.field("target"), Some(&serde_json::json!(3)));
        assert!(s.field("answer").is_none());
    }
}

/// The verdict of one reward on one sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Score {
    /// A score (usually in [0, 1]).
    Value(f64),
    /// The reward cannot judge this sample; the reason is reported, never turned into 0.
    Unscorable {
        /// Why the sample could not be judged.
        reason: String,
    },
}

impl Score {
    /// Shorthand for an unscorable verdict.
    pub fn unscorable(reason: impl Into<String>) -> Self {
        Score::Unscorable { reason: reason.into() }
    }

    /// 1.0 when `ok`, else 0.0.
    pub fn from_bool(ok: bool) -> Self {
        Score::Value(if ok { 1.0 } else { 0.0 })
    }
}

/// The scores of one sample under every reward of the registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScoredSample {
    /// Per reward name: the score, or `None` when unscorable.
    pub rewards: BTreeMap<String, Option<f64>>,
    /// The weighted total over the scorable rewards; `None` when none was scorable.
    pub reward: Option<f64>,
    /// Per unscorable reward name: the reason.
    pub unscorable: BTreeMap<String, String>,
}
