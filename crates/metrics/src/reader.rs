//! Reading `metrics.jsonl` back: tolerant of a truncated last line (a crash mid-write) and of repeated
//! steps (a resumed run), where the last record of a step wins.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::error::{MetricsError, Result};
use crate::metrics::Metrics;

/// One step's record as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// The step.
    pub step: u64,
    /// Seconds since the Unix epoch when it was logged (0 if absent).
    pub wall_time: f64,
    /// The metrics; a `null` value reads back as NaN.
    pub metrics: Metrics,
}

/// The contents of a `metrics.jsonl`, one record per step in step order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsLog {
    /// Records sorted by step; for a step logged twice, the later line.
    pub records: Vec<StepRecord>,
    /// Whether the last line was unparseable and ignored (a write cut short).
    pub truncated_tail: bool,
}

impl MetricsLog {
    /// The (step, value) points of one metric, skipping steps without it and non-finite values.
    pub fn series(&self, name: &str) -> Vec<(u64, f64)> {
        self.records
            .iter()
            .filter_map(|r| r.metrics.get(name).map(|v| (r.step, v)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    }

    /// Every metric name that appears in any record, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.records.iter().flat_map(|r| r.metrics.iter().map(|(k, _)| k.to_string())).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Reads a `metrics.jsonl` file. A malformed line is an error unless it is the last line, which is
/// ignored (and flagged in [`MetricsLog::truncated_tail`]); blank lines are skipped.
pub fn read_metrics(path: &Path) -> Result<MetricsLog> {
    let text = fs::read_to_string(path).map_err(|e| MetricsError::io(path, e))?;
    parse_metrics(&text, path)
}

fn parse_metrics(text: &str, path: &Path) -> Result<MetricsLog> {
    let lines: Vec<&str> = text.lines().collect();
    let mut by_step = BTreeMap::new();
    let mut truncated_tail = false;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if is_run_header(line) {
            continue;
        }
        match parse_line(line) {
            Ok(record) => {
                by_step.insert(record.step, record);
            }
            Err(_) if i + 1 == lines.len() => truncated_tail = true,
            Err(message) => return Err(MetricsError::Parse { path: path.to_path_buf(), line: i + 1, message }),
        }
    }
    Ok(MetricsLog { records: by_step.into_values().collect(), truncated_tail })
}

/// A run header line (`{"run":…}` without a step), written by `MetricsWriter::log_run_header`.
fn is_run_header(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .is_ok_and(|v| v.get("run").is_some_and(|r| r.is_object()) && v.get("step").is_none())
}

fn parse_line(line: &str) -> std::result::Result<StepRecord, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let step = object.get("step").and_then(|s| s.as_u64()).ok_or("missing or non-integer \"step\"")?;
    let wall_time = object.get("wall_time").and_then(|w| w.as_f64()).unwrap_or(0.0);
    let mut metrics = Metrics::new();
    for (name, v) in object {
        if name == "step" || name == "wall_time" {
            continue;
        }
        match v {
            serde_json::Value::Null => metrics.set(name.as_str(), f64::NAN),
            other => metrics.set(name.as_str(), other.as_f64().ok_or(format!("{name:?} is not a number"))?),
        };
    }
    Ok(StepRecord { step, wall_time, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MetricsLog> {
        parse_metrics(text, Path::new("metrics.jsonl"))
    }

    #[test]
    fn run_headers_are_skipped() {
        let log = parse("{\"run\":{\"backend\":\"cpu-handwritten\"},\"wall_time\":1}\n{\"step\":1,\"reward\":0.5}\n")
            .unwrap();
        assert_eq!(log.series("reward"), vec![(1, 0.5)]);
        assert!(parse("{\"run\":1}\n{\"step\":1}\n").is_err(), "a non-object `run` is not a header");
    }

    #[test]
    fn truncated_last_line_is_tolerated() {
        let log = parse("{\"step\":1,\"reward\":0.5}\n{\"step\":2,\"reward\":0.7}\n{\"step\":3,\"rew").unwrap();
        assert!(log.truncated_tail);
        assert_eq!(log.series("reward"), vec![(1, 0.5), (2, 0.7)]);
    }

    #[test]
    fn corrupt_middle_line_is_an_error_with_its_line_number() {
        let err = parse("{\"step\":1}\nnot json\n{\"step\":3}\n").unwrap_err();
        assert!(matches!(err, MetricsError::Parse { line: 2, .. }), "{err}");
    }

    #[test]
    fn repeated_steps_keep_the_last_and_nulls_are_skipped_in_series() {
        let log =
            parse("{\"step\":2,\"kl\":1.0}\n{\"step\":1,\"kl\":null}\n\n{\"step\":2,\"kl\":3.0,\"loss\":1}\n").unwrap();
        assert!(!log.truncated_tail);
        assert_eq!(log.records.len(), 2);
        assert_eq!(log.series("kl"), vec![(2, 3.0)]);
        assert!(log.records[0].metrics.get("kl").unwrap().is_nan());
        assert_eq!(log.names(), ["kl", "loss"]);
    }
}
