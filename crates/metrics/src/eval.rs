//! The evaluation record: one JSON file per evaluation in a run directory, `eval_<step>[_<label>].json`,
//! read by `aha report` to plot held-out accuracy over training.
//!
//! Schema (JSON object; fields marked optional may be absent):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `step` | integer | training step of the evaluated weights (0 = before RL) |
//! | `label` | string, optional | free-form tag such as `"after_sft"` or `"after_rl"` |
//! | `k` | integer | samples per question |
//! | `questions` | integer | questions evaluated |
//! | `pass_at_1` | number | mean correctness over all k samples of all questions |
//! | `cons_at_k` | number | fraction of questions whose majority-vote answer is correct |
//! | `pass_at_k` | object, optional | unbiased pass@k by k, for example `{"4": 0.71, "8": 0.8}` |
//! | `mean_completion_tokens` | number | mean completion length in tokens |
//! | `median_completion_tokens` | number, optional | median completion length in tokens |
//! | `reflection_per_1k_words` | number, optional | reflection words per 1 000 words |
//! | `format_rate` | number, optional | fraction of samples that are well formed (`<think>…</think><answer>…</answer>`) |
//! | `extraction` | string, optional | how final answers were read: `r1` (the `<answer>` block) or `free` (free text) |
//! | `extraction_rate` | number, optional | fraction of samples from which a final answer was extracted |
//! | `per_task` | object, optional | task name → `{questions, pass_at_1, cons_at_k}` |

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};

/// One evaluation's results (see the module docs for the JSON schema).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Training step of the evaluated weights (0 = before RL).
    pub step: u64,
    /// A free-form tag such as `after_sft`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Samples per question.
    pub k: u32,
    /// Questions evaluated.
    pub questions: u64,
    /// Mean correctness over all samples.
    pub pass_at_1: f64,
    /// Fraction of questions whose majority-vote answer is correct.
    pub cons_at_k: f64,
    /// Unbiased pass@k by k.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pass_at_k: BTreeMap<u32, f64>,
    /// Mean completion length in tokens.
    pub mean_completion_tokens: f64,
    /// Median completion length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median_completion_tokens: Option<f64>,
    /// Reflection words per 1 000 words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reflection_per_1k_words: Option<f64>,
    /// Fraction of samples that are well formed (scored 1 by the format reward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_rate: Option<f64>,
    /// How final answers were extracted: `r1` or `free`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extraction: Option<String>,
    /// Fraction of samples from which a final answer was extracted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extraction_rate: Option<f64>,
    /// Per-task breakdown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_task: BTreeMap<String, TaskEval>,
}

/// One task's share of an evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskEval {
    /// Questions of this task.
    pub questions: u64,
    /// Mean correctness over this task's samples.
    pub pass_at_1: f64,
    /// Fraction of this task's questions whose majority-vote answer is correct.
    pub cons_at_k: f64,
}

/// Writes `record` to `run_dir/eval_<step, 8 digits>[_<label>].json` (through a temporary file and a
/// rename, so readers never see half a file) and returns the path.
pub fn write_eval(run_dir: &Path, record: &EvalRecord) -> Result<PathBuf> {
    let label = record.label.as_deref().map(|l| format!("_{}", sanitize(l))).unwrap_or_default();
    let path = run_dir.join(format!("eval_{:08}{label}.json", record.step));
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(record).map_err(|e| MetricsError::Parse {
        path: path.clone(),
        line: 0,
        message: e.to_string(),
    })?;
    fs::write(&tmp, text + "\n").map_err(|e| MetricsError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| MetricsError::io(&path, e))?;
    Ok(path)
}

/// Reads every `eval_*.json` in `run_dir`, sorted by step (then file name).
pub fn read_evals(run_dir: &Path) -> Result<Vec<EvalRecord>> {
    let entries = fs::read_dir(run_dir).map_err(|e| MetricsError::io(run_dir, e))?;
    let mut paths: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_eval_file(p)).collect();
    paths.sort();
    let mut records = paths.iter().map(|p| read_eval(p)).collect::<Result<Vec<_>>>()?;
    records.sort_by_key(|r| r.step);
    Ok(records)
}

fn read_eval(path: &Path) -> Result<EvalRecord> {
    let text = fs::read_to_string(path).map_err(|e| MetricsError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| MetricsError::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        message: e.to_string(),
    })
}

fn is_eval_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("eval_") && name.ends_with(".json") && path.is_file()
}

fn sanitize(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// A markdown table of evaluations: step, label, k, pass@1, cons@k, mean tokens, reflection rate,
/// format rate, extraction rate (with the extraction mode when it is not `r1`).
pub fn eval_table_markdown(records: &[EvalRecord]) -> String {
    let mut table = String::from(
        "| step | label | k | questions | pass@1 | cons@k | mean tokens | reflection /1k words | format | extracted |\n\
         | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in records {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.1} | {} | {} | {} |\n",
            r.step,
            r.label.as_deref().unwrap_or(""),
            r.k,
            r.questions,
            r.pass_at_1,
            r.cons_at_k,
            r.mean_completion_tokens,
            opt(r.reflection_per_1k_words, 2),
            opt(r.format_rate, 3),
            extraction_cell(r, 3),
        ));
    }
    table
}

/// The extraction rate with `digits` decimals, followed by the mode in parentheses when it is not
/// the default `r1` (`0.950 (free)`); an en dash when absent.
pub fn extraction_cell(r: &EvalRecord, digits: usize) -> String {
    let rate = opt(r.extraction_rate, digits);
    match r.extraction.as_deref() {
        Some(mode) if mode != "r1" => format!("{rate} ({mode})"),
        _ => rate,
    }
}

/// `v` with `digits` decimals, or an en dash when absent.
fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".into())
}

/// One evaluation as a two-column markdown table (every metric, pass@k by k), followed by the
/// per-task breakdown when there is one: what `aha eval` prints.
pub fn eval_summary_markdown(r: &EvalRecord) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("questions".into(), r.questions.to_string()),
        ("samples per question (k)".into(), r.k.to_string()),
        ("pass@1".into(), format!("{:.4}", r.pass_at_1)),
        (format!("cons@{}", r.k), format!("{:.4}", r.cons_at_k)),
    ];
    // pass@1 by the unbiased estimator equals the mean correctness above: not repeated.
    rows.extend(r.pass_at_k.iter().filter(|(k, _)| **k > 1).map(|(k, v)| (format!("pass@{k}"), format!("{v:.4}"))));
    rows.push(("mean completion tokens".into(), format!("{:.1}", r.mean_completion_tokens)));
    rows.push(("median completion tokens".into(), opt(r.median_completion_tokens, 1)));
    rows.push(("reflection words /1k words".into(), opt(r.reflection_per_1k_words, 2)));
    rows.push(("format rate".into(), opt(r.format_rate, 4)));
    rows.push(("answer extraction".into(), r.extraction.clone().unwrap_or_else(|| "–".into())));
    rows.push(("extraction rate".into(), opt(r.extraction_rate, 4)));
    let mut md = String::from("| metric | value |\n| --- | ---: |\n");
    for (name, value) in rows {
        md.push_str(&format!("| {name} | {value} |\n"));
    }
    if !r.per_task.is_empty() {
        md.push_str("\n| task | questions | pass@1 | cons@k |\n| --- | ---: | ---: | ---: |\n");
        for (task, t) in &r.per_task {
            md.push_str(&format!("| {task} | {} | {:.4} | {:.4} |\n", t.questions, t.pass_at_1, t.cons_at_k));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, label: Option<&str>, pass: f64) -> EvalRecord {
        EvalRecord {
            step,
            label: label.map(str::to_string),
            k: 8,
            questions: 50,
            pass_at_1: pass,
            cons_at_k: pass + 0.1,
            pass_at_k: [(8, 0.9)].into(),
            mean_completion_tokens: 42.0,
            ..EvalRecord::default()
        }
    }

    #[test]
    fn write_then_read_sorted_by_step() {
        let dir = tempfile::tempdir().unwrap();
        let late = write_eval(dir.path(), &record(200, Some("after rl"), 0.6)).unwrap();
        write_eval(dir.path(), &record(0, None, 0.2)).unwrap();
        fs::write(dir.path().join("metrics.jsonl"), "").unwrap();
        assert!(late.ends_with("eval_00000200_after_rl.json"));
        let back = read_evals(dir.path()).unwrap();
        assert_eq!(back, vec![record(0, None, 0.2), record(200, Some("after rl"), 0.6)]);
        let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(late).unwrap()).unwrap();
        assert_eq!(json["pass_at_k"]["8"], 0.9);
    }

    #[test]
    fn minimal_hand_written_file_parses_and_bad_one_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let minimal = r#"{"step": 5, "k": 4, "questions": 10, "pass_at_1": 0.5, "cons_at_k": 0.6,
                          "mean_completion_tokens": 30}"#;
        fs::write(dir.path().join("eval_a.json"), minimal).unwrap();
        assert_eq!(read_evals(dir.path()).unwrap()[0].step, 5);
        fs::write(dir.path().join("eval_b.json"), "{\"step\": 1}").unwrap();
        let err = read_evals(dir.path()).unwrap_err().to_string();
        assert!(err.contains("eval_b.json"), "{err}");
    }

    #[test]
    fn markdown_table_has_a_row_per_record() {
        let table = eval_table_markdown(&[record(0, None, 0.25), record(10, Some("x"), 0.5)]);
        assert_eq!(table.lines().count(), 4);
        assert!(table.contains("| 10 | x | 8 | 50 | 0.500 | 0.600 | 42.0 | – | – | – |"), "{table}");
        let mut free = record(20, None, 0.5);
        (free.extraction, free.extraction_rate) = (Some("free".into()), Some(0.95));
        let mut r1 = record(30, None, 0.5);
        (r1.extraction, r1.extraction_rate) = (Some("r1".into()), Some(0.5));
        let table = eval_table_markdown(&[free, r1]);
        assert!(table.contains("| – | 0.950 (free) |\n"), "{table}");
        assert!(table.contains("| – | 0.500 |\n"), "{table}");
    }

    #[test]
    fn summary_lists_pass_at_k_and_the_per_task_rows() {
        let mut r = record(3, None, 0.5);
        r.pass_at_k = [(1, 0.5), (4, 0.75)].into();
        r.format_rate = Some(0.25);
        (r.extraction, r.extraction_rate) = (Some("free".into()), Some(0.875));
        r.per_task.insert("gsm8k".into(), TaskEval { questions: 2, pass_at_1: 0.5, cons_at_k: 1.0 });
        let md = eval_summary_markdown(&r);
        for want in [
            "| pass@4 | 0.7500 |",
            "| cons@8 | 0.6000 |",
            "| format rate | 0.2500 |",
            "| answer extraction | free |",
            "| extraction rate | 0.8750 |",
            "| gsm8k | 2 | 0.5000 | 1.0000 |",
        ] {
            assert!(md.contains(want), "{want} missing from\n{md}");
        }
        assert!(md.contains("| median completion tokens | – |"), "{md}");
        assert_eq!(md.matches("\n| pass@1 |").count(), 1, "{md}");
    }
}
