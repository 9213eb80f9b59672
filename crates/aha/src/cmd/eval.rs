//! `aha eval --model M (--data D.jsonl | --task NAME) [--k K] …`: evaluation as the R1 paper
//! does it (T 0.6, top-p 0.95, k samples per question): pass@1, cons@k, unbiased pass@k,
//! completion length (mean, median), reflection words per 1 000 words, format rate, extraction
//! rate and a per-task breakdown, printed as a markdown table; with `--out DIR`, `eval.json` and
//! `samples.jsonl` (every completion, its extracted answer, rewards and verdicts). `--extract free`
//! reads answers from free text, for base and instruct models that do not write the R1 format.
//!
//! The model, data, reward and sampling flags ([`SamplingArgs`]) are shared with `aha sample`.

use std::path::PathBuf;

use aha_metrics::{eval_summary_markdown, TrainProgress};
use aha_model::{LoadedModel, ModelSpec};
use aha_reward::extract::AnswerExtraction;
use aha_reward::{RewardSpec, RewardsConfig};
use aha_train::data::ColumnMap;
use aha_train::eval::{run_eval, EvalJob, EvalSettings, VoteRule};
use aha_train::samples::GenSettings;
use aha_train::source::PromptSource;
use aha_train::tasks::{Split, TaskSpec};
use aha_train::template::PromptTemplate;
use anyhow::{bail, Context, Result};

use crate::exec_args::ExecArgs;

/// Model, questions, rewards and sampling: the flags `aha eval` and `aha sample` share.
#[derive(clap::Args, Debug)]
pub struct SamplingArgs {
    /// Model: Hugging Face directory, `.gguf` file, checkpoint directory or hub repo id (downloaded when missing).
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA adapter directory applied on top of `--model` (`adapter_config.json` +
    /// `adapter_model.safetensors`, from an aha LoRA run or Python `peft`).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// A JSONL file of questions (`prompt`, `answer` and any verifier fields; see the column flags).
    #[arg(long, conflicts_with = "task", required_unless_present = "task")]
    pub data: Option<PathBuf>,
    /// A built-in task instead of `--data`: `arithmetic`, `countdown`, or an inline TOML table
    /// such as `{ name = "arithmetic", max_value = 3 }` (see `--split`).
    #[arg(long, value_parser = parse_task)]
    pub task: Option<TaskSpec>,
    /// The prompt column of `--data`.
    #[arg(long, default_value = "prompt")]
    pub prompt_column: String,
    /// The answer column of `--data`.
    #[arg(long, default_value = "answer")]
    pub answer_column: String,
    /// How questions become prompts: `chat`, `r1_zero` or `raw`.
    #[arg(long, default_value = "chat", value_parser = parse_template)]
    pub template: PromptTemplate,
    /// Most questions (the first rows of `--data`, or how many task problems); 0 = the whole file.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Which split of a `--task`: `test` (held out) or `train`; default `test` for `aha eval`,
    /// `train` for `aha sample` (rejection sampling draws from the RL prompts).
    #[arg(long, value_parser = parse_split)]
    pub split: Option<Split>,
    /// Percentage of a task's problem space held out (must match training's `test_percent`).
    #[arg(long, default_value_t = 10)]
    pub test_percent: u64,
    /// Seed of task generation.
    #[arg(long, default_value_t = 0)]
    pub task_seed: u64,
    /// A TOML file of `[[rewards]]` tables (as `aha reward score` reads); default: `accuracy`
    /// (math equivalence for `--data`, the task's verifier for `--task`) and `format`.
    #[arg(long)]
    pub rewards: Option<PathBuf>,
    /// The reward that decides correctness (score ≥ 1).
    #[arg(long, default_value = "accuracy")]
    pub correct_reward: String,
    /// The reward that decides well-formedness (the strict format check when no reward has this name).
    #[arg(long, default_value = "format")]
    pub format_reward: String,
    /// How final answers are read, for the extracted answer and the rewards: `r1` (the
    /// `<answer>` block after `</think>`) or `free` (free text, as benchmark harnesses read base
    /// and instruct models: the last `\boxed{}`, "the answer is X", `#### X`, else the last number).
    #[arg(long, default_value = "r1", value_parser = parse_extract)]
    pub extract: AnswerExtraction,
    /// Samples per question.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Sampling temperature (the paper evaluates at 0.6).
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f64,
    /// Nucleus threshold, 1 disables (the paper evaluates at 0.95).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// Maximum completion tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// Questions decoded together (results do not depend on it).
    #[arg(long, default_value_t = 8)]
    pub batch_prompts: usize,
    /// Device, dtype and backend.
    #[command(flatten)]
    pub exec: ExecArgs,
}

impl SamplingArgs {
    /// The questions these flags name; a task's split is `default_split` unless `--split` is given.
    pub fn source(&self, default_split: Split) -> PromptSource {
        PromptSource {
            task: self.task.clone(),
            path: self.data.clone(),
            columns: ColumnMap { prompt: self.prompt_column.clone(), answer: self.answer_column.clone() },
            template: self.template,
            limit: self.limit,
            split: self.split.unwrap_or(default_split),
            test_percent: self.test_percent,
            seed: self.task_seed,
        }
    }

    /// The `--rewards` file's rewards, or none (the source's defaults then apply).
    pub fn rewards(&self) -> Result<Vec<RewardSpec>> {
        let Some(path) = &self.rewards else { return Ok(Vec::new()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config = RewardsConfig::from_toml_str(&text).with_context(|| format!("{}", path.display()))?;
        Ok(config.rewards)
    }

    /// Sampling and judging settings.
    pub fn generation(&self) -> GenSettings {
        GenSettings {
            k: self.k,
            temperature: self.temperature,
            top_p: self.top_p,
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            batch_prompts: self.batch_prompts,
            correct_reward: self.correct_reward.clone(),
            format_reward: self.format_reward.clone(),
            extract: self.extract,
            ..GenSettings::default()
        }
    }

    /// Loads the model where `--device`/`--dtype`/`--backend` say.
    pub fn load_model(&self) -> Result<LoadedModel> {
        aha_model::load_with_adapter(&ModelSpec::parse(&self.model), self.adapter.as_deref(), &self.exec.request())
            .with_context(|| format!("loading {}", self.model))
    }

    /// A one-line description for stderr.
    pub fn describe(&self) -> String {
        let data = match (&self.data, &self.task) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(t)) => format!("task {t:?}"),
            (None, None) => "?".into(),
        };
        format!(
            "{} on {data}: k {}, T {}, top-p {}, ≤ {} new tokens, {} answer extraction",
            self.model, self.k, self.temperature, self.top_p, self.max_new_tokens, self.extract
        )
    }
}

/// `--task NAME` or `--task '{ name = "…", … }'`.
fn parse_task(s: &str) -> std::result::Result<TaskSpec, String> {
    #[derive(serde::Deserialize)]
    struct Wrap {
        task: TaskSpec,
    }
    let table = if s.trim_start().starts_with('{') { s.to_string() } else { format!("{{ name = {s:?} }}") };
    toml::from_str::<Wrap>(&format!("task = {table}")).map(|w| w.task).map_err(|e| e.to_string())
}

/// `chat`, `r1_zero` (or `r1-zero`) or `raw`.
fn parse_template(s: &str) -> std::result::Result<PromptTemplate, String> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_"))).map_err(|e| e.to_string())
}

/// `train` or `test`.
fn parse_split(s: &str) -> std::result::Result<Split, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

/// `r1` or `free`.
fn parse_extract(s: &str) -> std::result::Result<AnswerExtraction, String> {
    s.parse()
}

/// `math` or `exact`.
fn parse_vote(s: &str) -> std::result::Result<VoteRule, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

/// Arguments of `aha eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The k' of pass@k', comma-separated (each ≤ k); default the powers of two up to k.
    #[arg(long, value_delimiter = ',')]
    pub pass_at: Vec<usize>,
    /// How final answers are grouped for cons@k: `math` (equivalent answers vote together) or `exact`.
    #[arg(long, default_value = "math", value_parser = parse_vote)]
    pub vote: VoteRule,
    /// Write `eval.json` and `samples.jsonl` into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `aha eval`.
pub fn run(args: Args) -> Result<()> {
    let s = &args.sampling;
    let job = EvalJob {
        data: s.source(Split::Test),
        sampling: EvalSettings { generation: s.generation(), pass_at: args.pass_at.clone(), vote: args.vote },
        rewards: s.rewards()?,
        out_dir: args.out.clone(),
    };
    job.sampling.pass_at_list()?;
    let lm = s.load_model()?;
    eprintln!("eval: {}", s.describe());
    let mut bar = TrainProgress::new(0);
    let out = run_eval(&lm, &job, &mut bar)?;
    if out.record.questions == 0 {
        bail!("no question was evaluated");
    }
    println!("{}", eval_summary_markdown(&out.record));
    if let Some(dir) = &args.out {
        eprintln!("wrote {}/eval.json and {}/samples.jsonl", dir.display(), dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_and_template_flags_parse() {
        assert!(matches!(parse_task("arithmetic"), Ok(TaskSpec::Arithmetic { max_value: 9, .. })));
        let t = parse_task("{ name = \"countdown\", numbers = 4 }").unwrap();
        assert_eq!(t, TaskSpec::Countdown { numbers: 4, max_value: 20 });
        assert!(parse_task("sudoku").is_err());
        assert_eq!(parse_template("r1-zero"), Ok(PromptTemplate::R1Zero));
        assert!(parse_template("nope").is_err());
        assert_eq!(parse_vote("exact"), Ok(VoteRule::Exact));
        assert_eq!(parse_split("train"), Ok(Split::Train));
        assert_eq!(parse_extract("free"), Ok(AnswerExtraction::Free));
        assert!(parse_extract("R1-strict").is_err());
    }
}
