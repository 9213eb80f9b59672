//! Where evaluation and rejection-sampling questions come from: a JSONL file (with the same
//! column mapping as `aha grpo`'s `[data]`) or a built-in task's split, plus the template, and
//! the rewards that verify them by default.

use std::path::PathBuf;

use aha_reward::{RewardKind, RewardSpec};
use serde::{Deserialize, Serialize};

use crate::data::{read_jsonl, ColumnMap, PromptRow, Skipped};
use crate::error::{Result, TrainError};
use crate::tasks::{Split, TaskSpec};
use crate::template::PromptTemplate;

/// A set of questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSource {
    /// A built-in procedural task (exclusive with `path`).
    #[serde(default)]
    pub task: Option<TaskSpec>,
    /// A JSONL prompt file (exclusive with `task`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Column mapping for `path`. Default `prompt`, `answer`.
    #[serde(default)]
    pub columns: ColumnMap,
    /// How questions become prompt text. Default `chat`.
    #[serde(default)]
    pub template: PromptTemplate,
    /// The most questions used (the first rows of a file; the number generated for a task);
    /// 0 = the whole file. Default 100.
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// Which split of a task. Default `test` (held out from training).
    #[serde(default = "default_split")]
    pub split: Split,
    /// Percentage of a task's problem space that is the test split; must match training's
    /// `[data].test_percent` for the splits to stay disjoint. Default 10.
    #[serde(default = "default_test_percent")]
    pub test_percent: u64,
    /// Seed of task generation. Default 0.
    #[serde(default)]
    pub seed: u64,
}

fn default_limit() -> usize {
    100
}
fn default_split() -> Split {
    Split::Test
}
fn default_test_percent() -> u64 {
    10
}

impl PromptSource {
    /// A source reading the JSONL file `path` with default columns and template.
    pub fn jsonl(path: impl Into<PathBuf>) -> Self {
        Self::with(None, Some(path.into()))
    }

    /// A source generating `task`'s test split.
    pub fn task(task: TaskSpec) -> Self {
        Self::with(Some(task), None)
    }

    fn with(task: Option<TaskSpec>, path: Option<PathBuf>) -> Self {
        Self {
            task,
            path,
            columns: ColumnMap::default(),
            template: PromptTemplate::default(),
            limit: default_limit(),
            split: default_split(),
            test_percent: default_test_percent(),
            seed: 0,
        }
    }

    /// Checks that exactly one of `task` and `path` is given and the numbers make sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        match (&self.task, &self.path) {
            (Some(_), Some(_)) => return bad("data: give either a task or a JSONL path, not both"),
            (None, None) => return bad("data: give a task or a JSONL path"),
            _ => {}
        }
        if self.task.is_some() && self.limit == 0 {
            return bad("data: a task needs limit > 0 (the number of questions to generate)");
        }
        if self.test_percent >= 100 {
            return bad("data: test_percent must be below 100");
        }
        Ok(())
    }

    /// The questions, and the file's malformed rows (skipped, with line numbers).
    pub fn load(&self) -> Result<(Vec<PromptRow>, Skipped)> {
        self.validate()?;
        if let Some(task) = &self.task {
            let problems = task.generate(self.seed, self.split, self.limit, self.test_percent);
            return Ok((problems.iter().map(PromptRow::from).collect(), Skipped::default()));
        }
        let path = self.path.as_deref().ok_or_else(|| TrainError::Config("data: no path".into()))?;
        let (mut rows, skipped) = read_jsonl(path, &self.columns)?;
        if self.limit > 0 {
            rows.truncate(self.limit);
        }
        Ok((rows, skipped))
    }

    /// The rewards that judge these questions unless the caller names others: `accuracy` (the
    /// task's verifier, or math equivalence for a file) and the strict `format` reward, each
    /// with weight 1.
    pub fn default_rewards(&self) -> Vec<RewardSpec> {
        let accuracy = match &self.task {
            Some(TaskSpec::Arithmetic { .. }) => RewardKind::Numeric { tolerance: 0.0 },
            Some(TaskSpec::Countdown { .. }) => RewardKind::Countdown,
            None => RewardKind::Math { precision: 6 },
        };
        vec![
            RewardSpec { name: Some("accuracy".into()), weight: 1.0, kind: accuracy },
            RewardSpec {
                name: Some("format".into()),
                weight: 1.0,
                kind: RewardKind::Format { think_in_prompt: false },
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_source_gives_the_test_split_and_its_verifier() {
        let t = TaskSpec::Countdown { numbers: 3, max_value: 20 };
        let src = PromptSource { limit: 5, ..PromptSource::task(t.clone()) };
        let (rows, _) = src.load().unwrap();
        assert_eq!(rows.len(), 5);
        let test = t.generate(0, Split::Test, 5, 10);
        assert_eq!(rows[0].prompt, test[0].prompt);
        let kinds: Vec<&str> = src.default_rewards().iter().map(|r| r.kind.kind_name()).collect();
        assert_eq!(kinds, ["countdown", "format"]);
    }

    #[test]
    fn jsonl_source_truncates_and_defaults_to_math() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.jsonl");
        std::fs::write(&p, "{\"q\":\"a\",\"a\":\"1\"}\n{\"q\":\"b\",\"a\":\"2\"}\n{\"q\":\"c\",\"a\":\"3\"}\n")
            .unwrap();
        let cols = ColumnMap { prompt: "q".into(), answer: "a".into() };
        let src = PromptSource { limit: 2, columns: cols, ..PromptSource::jsonl(&p) };
        assert_eq!(src.load().unwrap().0.len(), 2);
        assert_eq!(PromptSource { limit: 0, ..src.clone() }.load().unwrap().0.len(), 3);
        assert_eq!(src.default_rewards()[0].kind.kind_name(), "math");
        let both = PromptSource { task: Some(TaskSpec::Countdown { numbers: 3, max_value: 9 }), ..src };
        assert!(both.load().unwrap_err().to_string().contains("not both"));
    }
}
