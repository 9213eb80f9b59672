//! Evaluation as the R1 paper does it: k samples per question, pass@1 = mean correctness over
//! the samples, cons@k = correctness of the majority-vote final answer, unbiased pass@k,
//! completion lengths and reflection-word frequency.
//!
//! A sample is correct when the reward named `correct_reward` scores it 1. Majority vote is
//! over the extracted final answers (the `<answer>` content, last `\boxed{}` inside it);
//! samples with no extractable answer do not vote; ties go to the earliest-seen answer.

use std::collections::BTreeMap;

use aha_metrics::{majority_vote, mean, median, pass_at_k, reflection_frequency, EvalRecord};
use aha_model::rollout::{rollout, RolloutConfig};
use aha_model::Transformer;
use aha_reward::{extract::final_answer, Registry, Sample as RewardSample};

use crate::data::PromptRow;
use crate::error::{Result, TrainError};
use crate::grpo::TextCodec;

/// How to sample for evaluation. Defaults are the paper's: T 0.6, top-p 0.95.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// Samples per question. Default 4.
    pub k: usize,
    /// Sampling temperature. Default 0.6.
    pub temperature: f64,
    /// Nucleus threshold. Default 0.95.
    pub top_p: f64,
    /// Maximum completion tokens. Default 256.
    pub max_new_tokens: usize,
    /// Sampling seed. Default 1234.
    pub seed: u64,
    /// Name of the reward that decides correctness. Default `accuracy`.
    pub correct_reward: String,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self { k: 4, temperature: 0.6, top_p: 0.95, max_new_tokens: 256, seed: 1234, correct_reward: "accuracy".into() }
    }
}

/// Per-question outcome, kept for reports.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionEval {
    /// Correct samples out of k.
    pub correct: usize,
    /// Whether the majority answer is correct.
    pub majority_correct: bool,
}

/// Evaluates `model` on `rows` (prompts already tokenised in `prompt_ids`).
pub fn evaluate(
    model: &Transformer,
    rows: &[PromptRow],
    prompt_ids: &[Vec<u32>],
    codec: &dyn TextCodec,
    registry: &Registry,
    settings: &EvalSettings,
) -> Result<(EvalRecord, Vec<QuestionEval>)> {
    let cfg = RolloutConfig {
        group_size: settings.k,
        max_new_tokens: settings.max_new_tokens,
        sampling: crate::grpo::sampling_params(settings.temperature, settings.top_p, 0, 0.0),
        eos_ids: codec.eos_ids(),
        stop_strings: Vec::new(),
        seed: settings.seed,
        prompt_index_offset: 0,
    };
    let groups = rollout(model, prompt_ids, &cfg, None)?;
    let mut questions = Vec::with_capacity(rows.len());
    let mut lens = Vec::new();
    let mut texts = Vec::new();
    for (row, group) in rows.iter().zip(groups) {
        let group_texts: Vec<String> = group.iter().map(|s| codec.decode(&s.completion_ids)).collect::<Result<_>>()?;
        lens.extend(group.iter().map(|s| s.completion_ids.len() as f64));
        questions.push(judge(row, &group_texts, registry, &settings.correct_reward)?);
        texts.extend(group_texts);
    }
    Ok((summarise(&questions, &lens, &texts, settings.k)?, questions))
}

/// Scores one question's samples and votes.
fn judge(row: &PromptRow, texts: &[String], registry: &Registry, reward: &str) -> Result<QuestionEval> {
    let samples: Vec<RewardSample> = texts
        .iter()
        .map(|t| RewardSample { completion: t.clone(), answer: row.answer.clone(), fields: row.fields.clone() })
        .collect();
    let scored = registry.score_batch(&samples).map_err(|e| TrainError::Other(format!("rewards: {e}")))?;
    let ok: Vec<bool> =
        scored.iter().map(|s| s.rewards.get(reward).copied().flatten().is_some_and(|v| v >= 1.0)).collect();
    let answers: Vec<Option<String>> =
        texts.iter().map(|t| final_answer(t).ok().map(|a| a.trim().to_string())).collect();
    let majority_correct = majority_vote(&answers).is_some_and(|v| ok[v.index]);
    Ok(QuestionEval { correct: ok.iter().filter(|&&b| b).count(), majority_correct })
}

fn summarise(questions: &[QuestionEval], lens: &[f64], texts: &[String], k: usize) -> Result<EvalRecord> {
    let n = questions.len().max(1) as f64;
    let pass1 = questions.iter().map(|q| q.correct as f64 / k.max(1) as f64).sum::<f64>() / n;
    let cons = questions.iter().filter(|q| q.majority_correct).count() as f64 / n;
    let mut pass_k = BTreeMap::new();
    for kk in [1usize, 2, 4, 8, 16].into_iter().filter(|&x| x <= k) {
        let mut total = 0.0;
        for q in questions {
            total += pass_at_k(k as u64, q.correct as u64, kk as u64).map_err(|e| TrainError::Other(e.to_string()))?;
        }
        pass_k.insert(kk as u32, total / n);
    }
    Ok(EvalRecord {
        k: k as u32,
        questions: questions.len() as u64,
        pass_at_1: pass1,
        cons_at_k: cons,
        pass_at_k: pass_k,
        mean_completion_tokens: mean(lens).unwrap_or(0.0),
        median_completion_tokens: median(lens),
        reflection_per_1k_words: Some(reflection_frequency(texts)),
        ..Default::default()
    })
}
