//! k scored samples per prompt: what evaluation and rejection sampling share.
//!
//! Prompts are decoded in batches of `batch_prompts`; prompt `i` of the whole set always uses
//! the random stream `(seed, i, sample)` (the rollout's `prompt_index_offset`), so a sample
//! does not depend on the batch size. Every sample is scored by the whole reward registry, its
//! final answer extracted under [`GenSettings::extract`] (docs/DESIGN.md §3.3: by default the
//! `<answer>` block after `</think>`, the last `\boxed{}` inside it; `free` reads base and
//! instruct models as benchmark harnesses do), and judged: *correct* when the reward named
//! `correct_reward` scores it ≥ 1 (the rewards read the answer under the same extraction),
//! *well formed* when the reward named `format_reward` does (or, when the registry has no such
//! reward, when [`aha_reward::format::is_well_formed`] accepts it): the R1 format, whatever the
//! extraction.

use std::collections::BTreeMap;

use aha_metrics::{Metrics, TrainProgress};
use aha_model::rollout::{rollout, FinishReason, RolloutConfig, Sample as Completion};
use aha_model::Transformer;
use aha_reward::extract::AnswerExtraction;
use aha_reward::format::is_well_formed;
use aha_reward::{Registry, Sample as RewardSample, ScoredSample};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::data::PromptRow;
use crate::error::{Result, TrainError};
use crate::grpo::{sampling_params, TextCodec};
use crate::template::EncodedPrompts;

/// How to sample k completions per prompt and how to judge them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenSettings {
    /// Samples per prompt. Default 4.
    pub k: usize,
    /// Sampling temperature. Default 0.6 (the paper's evaluation value).
    pub temperature: f64,
    /// Nucleus threshold (1 disables). Default 0.95 (the paper's evaluation value).
    pub top_p: f64,
    /// Maximum completion tokens. Default 256.
    pub max_new_tokens: usize,
    /// Sampling seed. Default 1234.
    pub seed: u64,
    /// Prompts decoded together (each with its k samples); results do not depend on it. Default 8.
    pub batch_prompts: usize,
    /// Name of the reward that decides correctness (score ≥ 1). Default `accuracy`.
    pub correct_reward: String,
    /// Name of the reward that decides well-formedness (score ≥ 1); when the registry has no
    /// reward of that name the strict `<think>…</think><answer>…</answer>` check is used.
    /// Default `format`.
    pub format_reward: String,
    /// Row fields naming a row's task or source, tried in order, for per-task breakdowns.
    /// Default `["task", "source"]`.
    pub task_fields: Vec<String>,
    /// How final answers are read, for the extracted answer and for every reward that reads one:
    /// `r1` (the strict `<answer>` block) or `free` (a base or instruct model's free text: last
    /// `\boxed{}`, "the answer is X", `#### X`, else the last number). Default `r1`.
    pub extract: AnswerExtraction,
}

impl Default for GenSettings {
    fn default() -> Self {
        Self {
            k: 4,
            temperature: 0.6,
            top_p: 0.95,
            max_new_tokens: 256,
            seed: 1234,
            batch_prompts: 8,
            correct_reward: "accuracy".into(),
            format_reward: "format".into(),
            task_fields: vec!["task".into(), "source".into()],
            extract: AnswerExtraction::R1,
        }
    }
}

impl GenSettings {
    /// Checks ranges once, before any work, and that `correct_reward` is in `registry`.
    pub fn validate(&self, registry: &Registry) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.k == 0 || self.max_new_tokens == 0 {
            return bad("k and max_new_tokens must be positive".into());
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be a finite value > 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must lie in (0, 1], got {}", self.top_p));
        }
        if !registry.names().contains(&self.correct_reward.as_str()) {
            return bad(format!(
                "correct_reward `{}` is not a configured reward ({:?})",
                self.correct_reward,
                registry.names()
            ));
        }
        Ok(())
    }
}

/// One scored sample: a line of `aha sample`'s output and of `aha eval`'s `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// Index of the prompt in the evaluated set.
    pub prompt_index: usize,
    /// Index of the sample within its prompt's k.
    pub sample_index: usize,
    /// The question (before the template).
    pub prompt: String,
    /// The gold answer.
    pub answer: String,
    /// The row's verifier fields (`numbers`, `target`, `task`, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
    /// The row's task or source, when it names one (see [`GenSettings::task_fields`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The completion text (up to, not including, EOS).
    pub completion: String,
    /// The extracted final answer; `None` when the completion has none.
    pub extracted: Option<String>,
    /// Per reward: the score, or `None` when unscorable.
    pub rewards: BTreeMap<String, Option<f64>>,
    /// The weighted total; `None` when every reward was unscorable.
    pub reward: Option<f64>,
    /// Whether the correctness reward scored it ≥ 1.
    pub correct: bool,
    /// Whether it is well formed.
    pub well_formed: bool,
    /// Completion length in tokens (EOS included when sampled).
    pub completion_tokens: usize,
    /// Why it ended: `eos`, `stop` or `length`.
    pub finish_reason: String,
}

/// Samples `settings.k` completions for every prompt of `set` and scores them; the result is
/// grouped by prompt, in order. `progress` advances by one per prompt and shows running pass@1.
pub fn generate_scored(
    model: &Transformer,
    set: &EncodedPrompts,
    codec: &dyn TextCodec,
    registry: &Registry,
    settings: &GenSettings,
    progress: &mut TrainProgress,
) -> Result<Vec<Vec<SampleRecord>>> {
    settings.validate(registry)?;
    progress.set_length(set.rows.len() as u64);
    let mut out: Vec<Vec<SampleRecord>> = Vec::with_capacity(set.rows.len());
    let (mut correct, mut seen) = (0usize, 0usize);
    let batch = settings.batch_prompts.max(1);
    for (b, ids) in set.ids.chunks(batch).enumerate() {
        let start = b * batch;
        let groups = rollout(model, ids, &rollout_config(settings, codec, start), None)?;
        for (offset, group) in groups.into_iter().enumerate() {
            let index = start + offset;
            let records = score_group(index, &set.rows[index], group, codec, registry, settings)?;
            correct += records.iter().filter(|r| r.correct).count();
            seen += records.len();
            out.push(records);
        }
        let mut m = Metrics::new();
        m.set(aha_metrics::names::ACCURACY, correct as f64 / seen.max(1) as f64);
        progress.set_step(out.len() as u64);
        progress.set_metrics(&m);
    }
    progress.finish();
    Ok(out)
}

fn rollout_config(settings: &GenSettings, codec: &dyn TextCodec, offset: usize) -> RolloutConfig {
    RolloutConfig {
        group_size: settings.k,
        max_new_tokens: settings.max_new_tokens,
        sampling: sampling_params(settings.temperature, settings.top_p, 0, 0.0),
        eos_ids: codec.eos_ids(),
        stop_strings: Vec::new(),
        seed: settings.seed,
        prompt_index_offset: offset as u64,
    }
}

/// Decodes, scores, extracts and judges one prompt's samples.
fn score_group(
    index: usize,
    row: &PromptRow,
    group: Vec<Completion>,
    codec: &dyn TextCodec,
    registry: &Registry,
    settings: &GenSettings,
) -> Result<Vec<SampleRecord>> {
    let texts: Vec<String> = group.iter().map(|c| codec.decode(&c.completion_ids)).collect::<Result<_>>()?;
    let inputs: Vec<RewardSample> = texts
        .iter()
        .map(|t| RewardSample { completion: t.clone(), answer: row.answer.clone(), fields: row.fields.clone() })
        .collect();
    let scored =
        registry.score_batch_with(&inputs, settings.extract).map_err(|e| TrainError::Other(format!("rewards: {e}")))?;
    let task = task_of(row, &settings.task_fields);
    Ok(group
        .into_iter()
        .zip(texts)
        .zip(scored)
        .map(|((c, text), s)| SampleRecord {
            prompt_index: index,
            sample_index: c.sample_index,
            prompt: row.prompt.clone(),
            answer: row.answer.clone(),
            fields: row.fields.clone(),
            task: task.clone(),
            extracted: settings.extract.extract(&text),
            correct: passes(&s, &settings.correct_reward).unwrap_or(false),
            well_formed: passes(&s, &settings.format_reward).unwrap_or_else(|| is_well_formed(&text, false)),
            rewards: s.rewards,
            reward: s.reward,
            completion: text,
            completion_tokens: c.completion_ids.len(),
            finish_reason: finish_name(c.finish_reason).into(),
        })
        .collect())
}

/// Whether reward `name` scored the sample ≥ 1; `None` when the registry has no such reward.
fn passes(scored: &ScoredSample, name: &str) -> Option<bool> {
    scored.rewards.get(name).map(|v| v.is_some_and(|v| v >= 1.0))
}

/// The first of `fields` that the row holds as a string (or number).
pub fn task_of(row: &PromptRow, fields: &[String]) -> Option<String> {
    fields.iter().find_map(|f| match row.fields.get(f)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos => "eos",
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_is_the_first_named_field_present() {
        let mut row = PromptRow { prompt: "q".into(), answer: "1".into(), fields: Map::new() };
        let fields = vec!["task".to_string(), "source".to_string()];
        assert_eq!(task_of(&row, &fields), None);
        row.fields.insert("source".into(), Value::String("gsm8k".into()));
        assert_eq!(task_of(&row, &fields).as_deref(), Some("gsm8k"));
        row.fields.insert("task".into(), Value::String("algebra".into()));
        assert_eq!(task_of(&row, &fields).as_deref(), Some("algebra"));
    }

    /// Decodes token id `i` to the `i`-th text.
    struct Texts(Vec<&'static str>);

    impl TextCodec for Texts {
        fn encode(&self, _text: &str) -> Result<Vec<u32>> {
            Ok(Vec::new())
        }
        fn decode(&self, ids: &[u32]) -> Result<String> {
            Ok(ids.iter().map(|&i| self.0[i as usize]).collect())
        }
        fn eos_ids(&self) -> Vec<u32> {
            Vec::new()
        }
    }

    #[test]
    fn extraction_mode_decides_the_extracted_answer_and_correctness() {
        let texts = Texts(vec![
            "Each box holds 4 pens, so 3 boxes hold 3 * 4 = 12 pens.\nThe answer is: 12",
            "<think>3 * 4 = 12</think>\n<answer>12</answer>",
            "3 boxes of 4 pens make 13 pens.\n#### 13",
        ]);
        let group = || -> Vec<Completion> {
            (0..3)
                .map(|i| Completion {
                    prompt_index: 0,
                    sample_index: i,
                    completion_ids: vec![i as u32],
                    logprobs: vec![0.0],
                    finish_reason: FinishReason::Eos,
                    timing: Default::default(),
                })
                .collect()
        };
        let row = PromptRow { prompt: "How many pens?".into(), answer: "12".into(), fields: Map::new() };
        let rewards = "[[rewards]]\nkind = \"math\"\nname = \"accuracy\"\n[[rewards]]\nkind = \"format\"\n";
        let reg = Registry::build(&aha_reward::RewardsConfig::from_toml_str(rewards).unwrap()).unwrap();
        let judged = |extract| {
            let settings = GenSettings { k: 3, extract, ..GenSettings::default() };
            let records = score_group(0, &row, group(), &texts, &reg, &settings).unwrap();
            records.iter().map(|r| (r.extracted.clone(), r.correct, r.well_formed)).collect::<Vec<_>>()
        };
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            judged(AnswerExtraction::R1),
            vec![(None, false, false), (some("12"), true, true), (None, false, false)]
        );
        // Free text is read and judged; the format verdict stays the R1 format's.
        assert_eq!(
            judged(AnswerExtraction::Free),
            vec![(some("12"), true, false), (some("12"), true, true), (some("13"), false, false)]
        );
    }

    #[test]
    fn settings_are_checked_against_the_registry() {
        let reg = Registry::from_rewards(vec![], 0);
        let err = GenSettings::default().validate(&reg).unwrap_err().to_string();
        assert!(err.contains("correct_reward"), "{err}");
        let reg = Registry::build(
            &aha_reward::RewardsConfig::from_toml_str("[[rewards]]\nkind = \"numeric\"\nname = \"accuracy\"\n")
                .unwrap(),
        )
        .unwrap();
        assert!(GenSettings::default().validate(&reg).is_ok());
        assert!(GenSettings { top_p: 0.0, ..GenSettings::default() }.validate(&reg).is_err());
        assert!(GenSettings { k: 0, ..GenSettings::default() }.validate(&reg).is_err());
    }
}
