//! Evaluation as the R1 paper does it: k samples per question at T 0.6 / top-p 0.95, pass@1 =
//! mean correctness over the samples, cons@k = correctness of the majority-vote final answer,
//! unbiased pass@k (Chen et al. 2021), completion lengths (mean, median), reflection-word
//! frequency, format rate (share of samples in the R1 format), extraction rate (share of samples
//! with an extracted final answer, under [`GenSettings::extract`]) and a per-task breakdown.
//!
//! Sampling and judging are [`crate::samples`]'s: a sample is correct when the reward named
//! `correct_reward` scores it ≥ 1. **Majority vote** is over the extracted final answers;
//! samples with no extractable answer do not vote. Under [`VoteRule::Math`] (the default) two
//! answers vote together when `math_equal(first, other)` holds, the group's first member being
//! compared with each later answer; under [`VoteRule::Exact`] the trimmed strings must be equal.
//! **Ties** go to the answer seen first (lowest sample index), see [`aha_metrics::majority_vote`];
//! the majority is correct when that group's first sample is correct. A question whose samples
//! all lack an answer has no majority and counts as wrong for cons@k.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aha_metrics::{
    majority_vote_by, mean, median, pass_at_k, reflection_frequency, EvalRecord, TaskEval, TrainProgress,
};
use aha_model::{LoadedModel, Transformer};
use aha_reward::math::math_equal;
use aha_reward::{Registry, RewardSpec, RewardsConfig};
use serde::{Deserialize, Serialize};

use crate::data::PromptRow;
use crate::error::{io_err, Result, TrainError};
use crate::grpo::TextCodec;
use crate::samples::{generate_scored, GenSettings, SampleRecord};
use crate::source::PromptSource;
use crate::template::{encode_prompts, EncodedPrompts};

/// How final answers are grouped for the majority vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VoteRule {
    /// Answers vote together when they are mathematically equivalent (`1/2` and `0.5`). Default.
    #[default]
    Math,
    /// Answers vote together when their trimmed text is equal.
    Exact,
}

/// How to sample and what to report. Defaults are the paper's: T 0.6, top-p 0.95.
///
/// The sampling and judging keys (`k`, `temperature`, `top_p`, `max_new_tokens`, `seed`,
/// `batch_prompts`, `correct_reward`, `format_reward`, `task_fields`, `extract`) are [`GenSettings`]'s,
/// flattened into the same table; evaluation adds `pass_at` and `vote`. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// Sampling and judging (see [`GenSettings`] for each key and its default).
    #[serde(flatten)]
    pub generation: GenSettings,
    /// The k' of pass@k' (each ≤ k); empty: the powers of two up to k. Default empty.
    pub pass_at: Vec<usize>,
    /// How answers are grouped for cons@k. Default `math`.
    pub vote: VoteRule,
}

impl EvalSettings {
    /// The k' reported as pass@k': `pass_at` when given, else 1, 2, 4, … up to k.
    pub fn pass_at_list(&self) -> Result<Vec<usize>> {
        let k = self.generation.k;
        if let Some(&bad) = self.pass_at.iter().find(|&&x| x == 0 || x > k) {
            return Err(TrainError::Config(format!("pass_at {bad} must lie in 1..=k (k = {k})")));
        }
        if !self.pass_at.is_empty() {
            let mut list = self.pass_at.clone();
            list.sort_unstable();
            list.dedup();
            return Ok(list);
        }
        Ok(std::iter::successors(Some(1usize), |x| x.checked_mul(2)).take_while(|&x| x <= k).collect())
    }
}

/// Per-question outcome, kept for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionEval {
    /// Correct samples out of k.
    pub correct: usize,
    /// Whether the majority answer is correct.
    pub majority_correct: bool,
    /// The row's task, when it names one.
    pub task: Option<String>,
}

/// Everything one evaluation produced.
#[derive(Debug, Clone)]
pub struct EvalOutput {
    /// The summary (step 0, no label: the caller sets them).
    pub record: EvalRecord,
    /// Per question.
    pub questions: Vec<QuestionEval>,
    /// Every sample, grouped by question.
    pub samples: Vec<Vec<SampleRecord>>,
}

/// Evaluates `model` on `rows` (prompts already tokenised in `prompt_ids`), without a progress
/// bar: the form the GRPO loop uses.
pub fn evaluate(
    model: &Transformer,
    rows: &[PromptRow],
    prompt_ids: &[Vec<u32>],
    codec: &dyn TextCodec,
    registry: &Registry,
    settings: &EvalSettings,
) -> Result<(EvalRecord, Vec<QuestionEval>)> {
    let set = EncodedPrompts { rows: rows.to_vec(), ids: prompt_ids.to_vec(), too_long: 0 };
    let mut bar = TrainProgress::hidden(rows.len() as u64);
    let out = evaluate_set(model, &set, codec, registry, settings, &mut bar)?;
    Ok((out.record, out.questions))
}

/// Samples, scores and summarises `set`; `progress` advances by one per question.
pub fn evaluate_set(
    model: &Transformer,
    set: &EncodedPrompts,
    codec: &dyn TextCodec,
    registry: &Registry,
    settings: &EvalSettings,
    progress: &mut TrainProgress,
) -> Result<EvalOutput> {
    let pass_at = settings.pass_at_list()?;
    let samples = generate_scored(model, set, codec, registry, &settings.generation, progress)?;
    let questions: Vec<QuestionEval> = samples.iter().map(|g| judge(g, settings.vote)).collect();
    let mut record = summarise(&questions, &samples, settings.generation.k, &pass_at)?;
    record.extraction = Some(settings.generation.extract.name().to_string());
    Ok(EvalOutput { record, questions, samples })
}

/// One question's outcome from its judged samples.
pub fn judge(group: &[SampleRecord], vote: VoteRule) -> QuestionEval {
    let answers: Vec<Option<&str>> = group.iter().map(|s| s.extracted.as_deref()).collect();
    let winner = match vote {
        VoteRule::Exact => majority_vote_by(&answers, |a, b| a == b),
        VoteRule::Math => majority_vote_by(&answers, |a, b| a == b || math_equal(a, b).as_bool() == Some(true)),
    };
    QuestionEval {
        correct: group.iter().filter(|s| s.correct).count(),
        majority_correct: winner.is_some_and(|v| group[v.index].correct),
        task: group.first().and_then(|s| s.task.clone()),
    }
}

/// The evaluation record of judged questions and their samples (k per question); the caller
/// names the extraction mode (`extraction`).
pub fn summarise(
    questions: &[QuestionEval],
    samples: &[Vec<SampleRecord>],
    k: usize,
    pass_at: &[usize],
) -> Result<EvalRecord> {
    let flat: Vec<&SampleRecord> = samples.iter().flatten().collect();
    let lens: Vec<f64> = flat.iter().map(|s| s.completion_tokens as f64).collect();
    let texts: Vec<&str> = flat.iter().map(|s| s.completion.as_str()).collect();
    let formed = flat.iter().filter(|s| s.well_formed).count();
    let extracted = flat.iter().filter(|s| s.extracted.is_some()).count();
    Ok(EvalRecord {
        k: k as u32,
        questions: questions.len() as u64,
        pass_at_1: pass_at_1(questions, k),
        cons_at_k: cons_at_k(questions),
        pass_at_k: pass_at_k_table(questions, k, pass_at)?,
        mean_completion_tokens: mean(&lens).unwrap_or(0.0),
        median_completion_tokens: median(&lens),
        reflection_per_1k_words: Some(reflection_frequency(&texts)),
        format_rate: Some(formed as f64 / flat.len().max(1) as f64),
        extraction_rate: Some(extracted as f64 / flat.len().max(1) as f64),
        per_task: per_task(questions, k),
        ..Default::default()
    })
}

fn pass_at_1(questions: &[QuestionEval], k: usize) -> f64 {
    let n = questions.len().max(1) as f64;
    questions.iter().map(|q| q.correct as f64 / k.max(1) as f64).sum::<f64>() / n
}

fn cons_at_k(questions: &[QuestionEval]) -> f64 {
    questions.iter().filter(|q| q.majority_correct).count() as f64 / questions.len().max(1) as f64
}

/// Mean over questions of the unbiased pass@k' estimate, for each k'.
fn pass_at_k_table(questions: &[QuestionEval], k: usize, pass_at: &[usize]) -> Result<BTreeMap<u32, f64>> {
    let n = questions.len().max(1) as f64;
    let mut table = BTreeMap::new();
    for &kk in pass_at {
        let mut total = 0.0;
        for q in questions {
            total += pass_at_k(k as u64, q.correct as u64, kk as u64).map_err(|e| TrainError::Other(e.to_string()))?;
        }
        table.insert(kk as u32, total / n);
    }
    Ok(table)
}

/// pass@1 and cons@k per task, for questions that name one; empty when none does.
fn per_task(questions: &[QuestionEval], k: usize) -> BTreeMap<String, TaskEval> {
    let mut groups: BTreeMap<String, Vec<QuestionEval>> = BTreeMap::new();
    for q in questions {
        if let Some(task) = &q.task {
            groups.entry(task.clone()).or_default().push(q.clone());
        }
    }
    groups
        .into_iter()
        .map(|(task, qs)| {
            let t = TaskEval { questions: qs.len() as u64, pass_at_1: pass_at_1(&qs, k), cons_at_k: cons_at_k(&qs) };
            (task, t)
        })
        .collect()
}

/// A whole evaluation as the pipeline and `aha eval` run it: data, rewards, sampling, output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalJob {
    /// The questions.
    pub data: PromptSource,
    /// Sampling and reporting (`[sampling]`).
    #[serde(default)]
    pub sampling: EvalSettings,
    /// Rewards (`[[rewards]]`); empty: the data's accuracy verifier named `accuracy` plus
    /// `format` (see [`PromptSource::default_rewards`]). Default empty.
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
    /// Where to write `eval.json` and `samples.jsonl`; none writes nothing. Default none.
    #[serde(default)]
    pub out_dir: Option<PathBuf>,
}

/// The file names `run_eval` writes into `out_dir`.
pub const EVAL_JSON: &str = "eval.json";
/// Per-sample JSONL (one [`SampleRecord`] per line).
pub const EVAL_SAMPLES: &str = "samples.jsonl";

/// Runs `job` on a loaded model: loads and encodes the questions (dropping, and reporting on
/// stderr, prompts too long for the context), builds the rewards, evaluates, and writes
/// `eval.json` and `samples.jsonl` when `out_dir` is set.
pub fn run_eval(lm: &LoadedModel, job: &EvalJob, progress: &mut TrainProgress) -> Result<EvalOutput> {
    let set = load_questions(lm, &job.data, job.sampling.generation.max_new_tokens)?;
    let registry = build_registry(&job.data, &job.rewards)?;
    let out = evaluate_set(&lm.model, &set, &lm.tokenizer, &registry, &job.sampling, progress)?;
    if let Some(dir) = &job.out_dir {
        write_outputs(dir, &out)?;
    }
    Ok(out)
}

/// The source's rows, templated and tokenised, leaving room for `max_new_tokens`.
pub fn load_questions(lm: &LoadedModel, data: &PromptSource, max_new_tokens: usize) -> Result<EncodedPrompts> {
    let ctx = lm.config.max_position_embeddings;
    if max_new_tokens >= ctx {
        return Err(TrainError::Config(format!(
            "max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's context of {ctx} tokens"
        )));
    }
    let (rows, skipped) = data.load()?;
    if !skipped.0.is_empty() {
        eprintln!("skipped {} malformed row(s); first: {:?}", skipped.0.len(), skipped.0.first());
    }
    let set = encode_prompts(rows, &lm.tokenizer, data.template, ctx - max_new_tokens)?;
    if set.too_long > 0 {
        eprintln!("dropped {} prompt(s) too long for the context; {} kept", set.too_long, set.rows.len());
    }
    Ok(set)
}

/// The registry of `rewards`, or of the source's default rewards when `rewards` is empty.
pub fn build_registry(data: &PromptSource, rewards: &[RewardSpec]) -> Result<Registry> {
    let rewards = if rewards.is_empty() { data.default_rewards() } else { rewards.to_vec() };
    Registry::build(&RewardsConfig { rewards, max_panics: 16 }).map_err(|e| TrainError::Config(format!("rewards: {e}")))
}

/// Writes `eval.json` (the record) and `samples.jsonl` into `dir`.
pub fn write_outputs(dir: &Path, out: &EvalOutput) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let json = dir.join(EVAL_JSON);
    let text = serde_json::to_string_pretty(&out.record).map_err(|e| TrainError::Other(e.to_string()))?;
    std::fs::write(&json, text + "\n").map_err(io_err(&json))?;
    crate::rejection::write_samples(&dir.join(EVAL_SAMPLES), out.samples.iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aha_reward::extract::AnswerExtraction;

    fn sample(answer: Option<&str>, correct: bool) -> SampleRecord {
        SampleRecord {
            prompt_index: 0,
            sample_index: 0,
            prompt: "q".into(),
            answer: "g".into(),
            fields: Default::default(),
            task: None,
            completion: String::new(),
            extracted: answer.map(str::to_string),
            rewards: BTreeMap::new(),
            reward: None,
            correct,
            well_formed: answer.is_some(),
            completion_tokens: 0,
            finish_reason: "eos".into(),
        }
    }

    #[test]
    fn cons_at_k_follows_the_majority_not_any_correct_sample() {
        // Two wrong "3"s outvote one correct "4".
        let g = [sample(Some("3"), false), sample(Some("4"), true), sample(Some("3"), false)];
        let q = judge(&g, VoteRule::Exact);
        assert_eq!((q.correct, q.majority_correct), (1, false));
        // Missing answers do not vote: the single "4" wins.
        let g = [sample(None, false), sample(Some("4"), true), sample(None, false)];
        assert!(judge(&g, VoteRule::Exact).majority_correct);
        // No answers at all: no majority, wrong.
        assert!(!judge(&[sample(None, false), sample(None, false)], VoteRule::Math).majority_correct);
    }

    #[test]
    fn ties_go_to_the_answer_seen_first() {
        let g = [sample(Some("7"), true), sample(Some("8"), false), sample(Some("8"), false), sample(Some("7"), true)];
        assert!(judge(&g, VoteRule::Exact).majority_correct);
        let g = [sample(Some("8"), false), sample(Some("7"), true), sample(Some("7"), true), sample(Some("8"), false)];
        assert!(!judge(&g, VoteRule::Exact).majority_correct);
    }

    #[test]
    fn math_vote_groups_equivalent_answers() {
        // "0.5" and "1/2" are one answer of two votes under math, two answers of one under exact.
        let g = [sample(Some("2"), false), sample(Some("0.5"), true), sample(Some("1/2"), true)];
        assert!(judge(&g, VoteRule::Math).majority_correct);
        assert!(!judge(&g, VoteRule::Exact).majority_correct, "exact: three one-vote answers, the first wins");
    }

    #[test]
    fn summary_matches_hand_computed_values() {
        let mut q0 =
            vec![sample(Some("1"), true), sample(Some("1"), true), sample(Some("2"), false), sample(None, false)];
        let mut q1 =
            vec![sample(Some("5"), false), sample(Some("5"), false), sample(Some("6"), true), sample(None, false)];
        for (i, s) in q0.iter_mut().chain(q1.iter_mut()).enumerate() {
            s.completion_tokens = i + 1;
            s.completion = if i == 0 { "wait but".into() } else { "x y".into() };
            s.task = Some(if i < 4 { "a".into() } else { "b".into() });
        }
        // Well formed but without an answer: counts for the format rate, not the extraction rate.
        q1[3].well_formed = true;
        let samples = vec![q0, q1];
        let qs: Vec<QuestionEval> = samples.iter().map(|g| judge(g, VoteRule::Math)).collect();
        let r = summarise(&qs, &samples, 4, &[1, 2, 4]).unwrap();
        assert_eq!(r.pass_at_1, (2.0 / 4.0 + 1.0 / 4.0) / 2.0);
        assert_eq!(r.cons_at_k, 0.5);
        // pass@2 per question: 1 − C(4−c, 2)/C(4, 2): c=2 → 5/6, c=1 → 1/2.
        assert!((r.pass_at_k[&2] - (5.0 / 6.0 + 0.5) / 2.0).abs() < 1e-12);
        assert_eq!(r.pass_at_k[&4], 1.0);
        assert!((r.pass_at_k[&1] - r.pass_at_1).abs() < 1e-12);
        assert_eq!((r.mean_completion_tokens, r.median_completion_tokens), (4.5, Some(4.5)));
        assert_eq!(r.format_rate, Some(7.0 / 8.0));
        assert_eq!(r.extraction_rate, Some(6.0 / 8.0));
        // 2 reflection words ("wait", "but") in 2 + 7 × 2 = 16 words.
        assert_eq!(r.reflection_per_1k_words, Some(2000.0 / 16.0));
        assert_eq!(r.per_task["a"], TaskEval { questions: 1, pass_at_1: 0.5, cons_at_k: 1.0 });
        assert_eq!(r.per_task["b"], TaskEval { questions: 1, pass_at_1: 0.25, cons_at_k: 0.0 });
    }

    #[test]
    fn pass_at_list_defaults_to_powers_of_two_and_checks_bounds() {
        let s = |k, pass_at: Vec<usize>| EvalSettings {
            generation: GenSettings { k, ..GenSettings::default() },
            pass_at,
            ..EvalSettings::default()
        };
        assert_eq!(s(1, vec![]).pass_at_list().unwrap(), vec![1]);
        assert_eq!(s(12, vec![]).pass_at_list().unwrap(), vec![1, 2, 4, 8]);
        assert_eq!(s(16, vec![]).pass_at_list().unwrap(), vec![1, 2, 4, 8, 16]);
        assert_eq!(s(5, vec![5, 3, 3]).pass_at_list().unwrap(), vec![3, 5]);
        assert!(s(4, vec![5]).pass_at_list().is_err());
        assert!(s(4, vec![0]).pass_at_list().is_err());
    }

    #[test]
    fn settings_read_one_flat_table_and_deny_unknown_keys() {
        let s: EvalSettings = toml::from_str("k = 8\ntemperature = 1.0\npass_at = [2]\nvote = \"exact\"\n").unwrap();
        let want = EvalSettings {
            generation: GenSettings { k: 8, temperature: 1.0, ..GenSettings::default() },
            pass_at: vec![2],
            vote: VoteRule::Exact,
        };
        assert_eq!(s, want);
        assert_eq!(toml::from_str::<EvalSettings>("").unwrap(), EvalSettings::default());
        assert_eq!(EvalSettings::default().generation.temperature, 0.6);
        for bad in ["tempreature = 1.0", "k = 2\nvotes = \"math\""] {
            let err = toml::from_str::<EvalSettings>(bad).unwrap_err().to_string();
            assert!(err.contains(bad.split(" =").next().unwrap().rsplit('\n').next().unwrap()), "{err}");
        }
        let json = serde_json::to_value(&want).unwrap();
        assert_eq!((json["k"].as_u64(), json["vote"].as_str()), (Some(8), Some("exact")), "{json}");
        assert_eq!(json["extract"].as_str(), Some("r1"), "{json}");
        assert_eq!(serde_json::from_value::<EvalSettings>(json).unwrap(), want);
    }

    #[test]
    fn extract_key_is_typed_and_checked() {
        let s: EvalSettings = toml::from_str("k = 2\nextract = \"free\"\n").unwrap();
        assert_eq!((s.generation.k, s.generation.extract), (2, AnswerExtraction::Free));
        let s: EvalSettings = toml::from_str("extract = \"r1\"\n").unwrap();
        assert_eq!(s.generation.extract, AnswerExtraction::R1);
        assert_eq!(EvalSettings::default().generation.extract, AnswerExtraction::R1);
        let err = toml::from_str::<EvalSettings>("extract = \"loose\"\n").unwrap_err().to_string();
        assert!(err.contains("loose") && err.contains("free"), "{err}");
        let err = toml::from_str::<EvalSettings>("extraction = \"free\"\n").unwrap_err().to_string();
        assert!(err.contains("extraction"), "{err}");
    }
}
