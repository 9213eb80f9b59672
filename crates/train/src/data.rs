//! Prompt datasets and the deterministic data cursor.
//!
//! A dataset is a list of [`PromptRow`]s (prompt text, gold answer, verifier fields), from a
//! built-in task or a JSONL file with column mapping. The cursor walks a per-epoch permutation
//! derived from (seed, epoch), so its whole state is two integers and resume is exact, across
//! epoch boundaries too.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{io_err, Result, TrainError};
use crate::tasks::Problem;

/// One prompt with what its verifiers need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRow {
    /// The question (before any template is applied).
    pub prompt: String,
    /// The gold answer.
    pub answer: String,
    /// Verifier fields (`numbers`, `target`, `tests`, ...).
    #[serde(default)]
    pub fields: Map<String, Value>,
}

impl From<&Problem> for PromptRow {
    fn from(p: &Problem) -> Self {
        Self { prompt: p.prompt.clone(), answer: p.answer.clone(), fields: p.fields.clone() }
    }
}

/// Which JSONL columns hold the prompt and the answer; every other column becomes a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColumnMap {
    /// Prompt column (default `prompt`).
    pub prompt: String,
    /// Answer column (default `answer`).
    pub answer: String,
}

impl Default for ColumnMap {
    fn default() -> Self {
        Self { prompt: "prompt".into(), answer: "answer".into() }
    }
}

/// Rows that could not be used, with their 1-based line numbers and reasons.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Skipped(pub Vec<(usize, String)>);

/// Reads a JSONL (or `.parquet`) prompt file. Malformed rows are skipped and reported, not fatal; a file with
/// no usable row is an error naming the file.
pub fn read_jsonl(path: &Path, cols: &ColumnMap) -> Result<(Vec<PromptRow>, Skipped)> {
    read_jsonl_rows(path, |line| parse_row(line, cols))
}

/// Reads JSONL with `parse` per non-empty line: rows that fail are skipped with their 1-based
/// line number and reason; a file with no usable row is an error naming the file.
///
/// A `.parquet` path is read as Parquet: each row is handed to `parse` as a JSON object, and
/// "line" numbers are 1-based row numbers.
pub fn read_jsonl_rows<T>(
    path: &Path,
    mut parse: impl FnMut(&str) -> std::result::Result<T, String>,
) -> Result<(Vec<T>, Skipped)> {
    let mut rows = Vec::new();
    let mut skipped = Skipped::default();
    let mut take = |i: usize, line: std::result::Result<String, String>| match line.and_then(|l| parse(&l)) {
        Ok(r) => rows.push(r),
        Err(reason) => skipped.0.push((i + 1, reason)),
    };
    if crate::parquet::is_parquet(path) {
        for (i, row) in crate::parquet::json_rows(path)?.into_iter().enumerate() {
            take(i, row);
        }
    } else {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io_err(path))?;
            if !line.trim().is_empty() {
                take(i, Ok(line));
            }
        }
    }
    if rows.is_empty() {
        return Err(TrainError::Other(format!(
            "{}: no usable rows ({} skipped; first: {:?})",
            path.display(),
            skipped.0.len(),
            skipped.0.first()
        )));
    }
    Ok((rows, skipped))
}

fn parse_row(line: &str, cols: &ColumnMap) -> std::result::Result<PromptRow, String> {
    let mut obj: Map<String, Value> = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let take_str = |obj: &mut Map<String, Value>, key: &str| match obj.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(format!("column `{key}` is not a string: {other}")),
        None => Err(format!("missing column `{key}`")),
    };
    let prompt = take_str(&mut obj, &cols.prompt)?;
    let answer = take_str(&mut obj, &cols.answer)?;
    if prompt.trim().is_empty() {
        return Err(format!("column `{}` is empty", cols.prompt));
    }
    Ok(PromptRow { prompt, answer, fields: obj })
}

/// Where the cursor stands: everything needed to resume the data order exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CursorState {
    /// Completed passes over the data.
    pub epoch: u64,
    /// Position within the current epoch's permutation.
    pub index: usize,
}

/// Walks seeded per-epoch permutations of `0..len`.
#[derive(Debug, Clone)]
pub struct DataCursor {
    len: usize,
    seed: u64,
    state: CursorState,
    order: Vec<usize>,
}

impl DataCursor {
    /// A cursor at `state` over `len` rows.
    pub fn new(len: usize, seed: u64, state: CursorState) -> Self {
        let order = permutation(len, seed, state.epoch);
        Self { len, seed, state, order }
    }

    /// The state to checkpoint.
    pub fn state(&self) -> CursorState {
        self.state
    }

    /// The next `n` row indices, rolling into the next epoch (a fresh permutation) as needed.
    pub fn take(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && self.len > 0 {
            if self.state.index >= self.len {
                self.state = CursorState { epoch: self.state.epoch + 1, index: 0 };
                self.order = permutation(self.len, self.seed, self.state.epoch);
            }
            out.push(self.order[self.state.index]);
            self.state.index += 1;
        }
        out
    }
}

fn permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..len).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch);
    v.shuffle(&mut rng);
    v
}

/// Where the prompts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A built-in procedural task (exclusive with `path`).
    #[serde(default)]
    pub task: Option<crate::tasks::TaskSpec>,
    /// Number of training problems generated for a task (default 5000).
    #[serde(default = "default_task_size")]
    pub task_size: usize,
    /// Percentage of the task's problem space held out for evaluation (default 10).
    #[serde(default = "default_test_percent")]
    pub test_percent: u64,
    /// A JSONL prompt file (exclusive with `task`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Column mapping for `path`.
    #[serde(default)]
    pub columns: ColumnMap,
    /// How questions become prompt text (default `chat`).
    #[serde(default)]
    pub template: crate::template::PromptTemplate,
}

fn default_task_size() -> usize {
    5000
}
fn default_test_percent() -> u64 {
    10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_resumes_exactly_across_epochs() {
        let mut a = DataCursor::new(5, 7, CursorState::default());
        let first = a.take(3);
        let saved = a.state();
        let rest: Vec<usize> = a.take(9);
        let mut b = DataCursor::new(5, 7, saved);
        assert_eq!(b.take(9), rest);
        let mut sorted = [first, rest[..2].to_vec()].concat();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn malformed_rows_are_skipped_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"prompt\":\"a\",\"answer\":\"1\"}\nnot json\n{\"prompt\":\"b\"}\n\n{\"prompt\":\"c\",\"answer\":2,\"x\":1}\n").unwrap();
        let (rows, skipped) = read_jsonl(&p, &ColumnMap::default()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].answer, "2");
        assert_eq!(rows[1].fields["x"], 1);
        let lines: Vec<usize> = skipped.0.iter().map(|s| s.0).collect();
        assert_eq!(lines, vec![2, 3]);
        assert!(skipped.0[1].1.contains("answer"));
    }

    #[test]
    fn every_kind_of_malformed_row_is_counted_and_an_unusable_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        let text = "[1, 2]\n{\"prompt\":\"  \",\"answer\":\"1\"}\n{\"prompt\":[1],\"answer\":\"1\"}\n{\"q\":\"ok\",\"a\":\"3\"}\n{\"prompt\":\"x\",\"answer\":\"1\"\n";
        std::fs::write(&p, text).unwrap();
        let cols = ColumnMap { prompt: "q".into(), answer: "a".into() };
        let (rows, skipped) = read_jsonl(&p, &cols).unwrap();
        assert_eq!(rows.len(), 1);
        let lines: Vec<usize> = skipped.0.iter().map(|s| s.0).collect();
        assert_eq!(lines, vec![1, 2, 3, 5]);
        assert!(skipped.0.iter().all(|(_, reason)| !reason.is_empty()));
        let err = read_jsonl(&p, &ColumnMap::default()).unwrap_err().to_string();
        let named = err.contains("d.jsonl") && err.contains("no usable rows");
        assert!(named && err.contains("5 skipped"), "{err}");
    }
}
