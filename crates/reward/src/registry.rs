//! The [`Reward`] trait and the [`Registry`] that builds the configured rewards and scores batches.

use crate::config::{RewardKind, RewardSpec, RewardsConfig};
use crate::error::RewardError;
use crate::extract::AnswerExtraction;
use crate::sample::{Sample, Score, ScoredSample};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// One reward function: a score or an unscorable verdict per sample.
pub trait Reward: Send + Sync {
    /// Scores one sample under the default (`r1`) answer extraction. May panic: the registry
    /// catches it and counts it.
    fn score(&self, sample: &Sample) -> Score;

    /// Scores one sample, reading its final answer under `extraction`. Rewards that read a final
    /// answer override it; the default is [`Reward::score`] (the reward reads no answer).
    fn score_with(&self, sample: &Sample, extraction: AnswerExtraction) -> Score {
        let _ = extraction;
        self.score(sample)
    }
}

struct Entry {
    name: String,
    weight: f64,
    reward: Box<dyn Reward>,
}

/// The rewards named in the config, built once, with their weights.
pub struct Registry {
    entries: Vec<Entry>,
    max_panics: usize,
    panics: AtomicUsize,
    last_panic: Mutex<String>,
    threads: usize,
}

impl Registry {
    /// Builds only the rewards named in `config`.
    pub fn build(config: &RewardsConfig) -> Result<Self, RewardError> {
        config.validate()?;
        let entries = config.rewards.iter().map(build_entry).collect::<Result<_, _>>()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Registry {
            entries,
            max_panics: config.max_panics,
            panics: AtomicUsize::new(0),
            last_panic: Mutex::new(String::new()),
            threads,
        })
    }

    /// Builds a registry from already-constructed rewards (for tests and custom tasks).
    pub fn from_rewards(rewards: Vec<(String, f64, Box<dyn Reward>)>, max_panics: usize) -> Self {
        let entries = rewards.into_iter().map(|(name, weight, reward)| Entry { name, weight, reward }).collect();
        Registry { entries, max_panics, panics: AtomicUsize::new(0), last_panic: Mutex::new(String::new()), threads: 1 }
    }

    /// Sets how many samples are scored concurrently (default: the number of CPUs).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The reward names, in config order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// Panics caught so far.
    pub fn panics(&self) -> usize {
        self.panics.load(Ordering::Relaxed)
    }

    /// Scores every sample under every reward; output order matches input order.
    ///
    /// Fails only when more panics than `max_panics` have been caught (a bug, not a verdict).
    pub fn score_batch(&self, samples: &[Sample]) -> Result<Vec<ScoredSample>, RewardError> {
        self.score_batch_with(samples, AnswerExtraction::R1)
    }

    /// [`Registry::score_batch`] with final answers read under `extraction`.
    pub fn score_batch_with(
        &self,
        samples: &[Sample],
        extraction: AnswerExtraction,
    ) -> Result<Vec<ScoredSample>, RewardError> {
        let chunk = samples.len().div_ceil(self.threads).max(1);
        let mut out: Vec<ScoredSample> = Vec::with_capacity(samples.len());
        std::thread::scope(|scope| {
            let handles: Vec<_> = samples
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || part.iter().map(|s| self.score_one_with(s, extraction)).collect::<Vec<_>>())
                })
                .collect();
            for handle in handles {
                // A worker only panics outside `catch_unwind` on a bug in this function itself.
                out.extend(handle.join().unwrap_or_default());
            }
        });
        self.check_panics()?;
        Ok(out)
    }

    /// Scores one sample under every reward.
    pub fn score_one(&self, sample: &Sample) -> ScoredSample {
        self.score_one_with(sample, AnswerExtraction::R1)
    }

    /// [`Registry::score_one`] with final answers read under `extraction`.
    pub fn score_one_with(&self, sample: &Sample, extraction: AnswerExtraction) -> ScoredSample {
        let mut scored = ScoredSample::default();
        let mut total = 0.0;
        let mut any = false;
        for entry in &self.entries {
            match self.guarded(entry, sample, extraction) {
                Score::Value(v) => {
                    scored.rewards.insert(entry.name.clone(), Some(v));
                    total += entry.weight * v;
                    any = true;
                }
                Score::Unscorable { reason } => {
                    scored.rewards.insert(entry.name.clone(), None);
                    scored.unscorable.insert(entry.name.clone(), reason);
                }
            }
        }
        scored.reward = any.then_some(total);
        scored
    }

    fn guarded(&self, entry: &Entry, sample: &Sample, extraction: AnswerExtraction) -> Score {
        match catch_unwind(AssertUnwindSafe(|| entry.reward.score_with(sample, extraction))) {
            Ok(score) => score,
            Err(payload) => {
                let msg = panic_message(payload.as_ref());
                self.panics.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_panic.lock() {
                    *last = format!("{}: {msg}", entry.name);
                }
                Score::unscorable(format!("panic: {msg}"))
            }
        }
    }

    fn check_panics(&self) -> Result<(), RewardError> {
        let count = self.panics();
        if count > self.max_panics {
            let last = self.last_panic.lock().map(|s| s.clone()).unwrap_or_default();
            return Err(RewardError::TooManyPanics { count, limit: self.max_panics, last });
        }
        Ok(())
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

fn build_entry(spec: &RewardSpec) -> Result<Entry, RewardError> {
    Ok(Entry { name: spec.name(), weight: spec.weight, reward: build_reward(&spec.kind)? })
}

fn build_reward(kind: &RewardKind) -> Result<Box<dyn Reward>, RewardError> {
    use crate::{code, format, language, math, tasks};
    Ok(match kind {
        RewardKind::Math { precision } => Box::new(math::MathReward::new(*precision)),
        RewardKind::Format { think_in_prompt } => Box::new(format::FormatReward { think_in_prompt: *think_in_prompt }),
        RewardKind::TagCount => Box::new(format::TagCountReward),
        RewardKind::Language { language } => Box::new(language::LanguageReward { language: *language }),
        RewardKind::Countdown => Box::new(tasks::countdown::CountdownReward),
        RewardKind::ExactMatch { case_sensitive } => {
            Box::new(tasks::exact::ExactMatchReward { case_sensitive: *case_sensitive })
        }
        RewardKind::Numeric { tolerance } => Box::new(tasks::exact::NumericReward { tolerance: *tolerance }),
        RewardKind::Code { timeout_s, memory_mb } => Box::new(code::CodeReward::new(*timeout_s, *memory_mb)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Boom;
    impl Reward for Boom {
        fn score(&self, sample: &Sample) -> Score {
            if sample.completion == "boom" {
                panic!("deliberate");
            }
            Score::Value(0.5)
        }
    }

    #[test]
    fn panic_is_unscorable_and_counted_then_aborts() {
        let reg = Registry::from_rewards(vec![("boom".into(), 2.0, Box::new(Boom))], 1);
        let batch = vec![Sample::new("ok", ""), Sample::new("boom", "")];
        let out = reg.score_batch(&batch).unwrap();
        assert_eq!(out[0].reward, Some(1.0));
        assert_eq!(out[1].reward, None);
        assert!(out[1].unscorable["boom"].contains("deliberate"));
        assert_eq!(reg.panics(), 1);
        let err = reg.score_batch(&batch).unwrap_err();
        assert!(matches!(err, RewardError::TooManyPanics { count: 2, .. }));
    }

    #[test]
    fn only_named_rewards_are_built() {
        let cfg = RewardsConfig::from_toml_str(
            "[[rewards]]\nkind = \"format\"\nweight = 0.5\n[[rewards]]\nkind = \"countdown\"\nname = \"cd\"\n",
        )
        .unwrap();
        let reg = Registry::build(&cfg).unwrap();
        assert_eq!(reg.names(), vec!["format", "cd"]);
        let out = reg.score_batch(&[Sample::new("<think>x</think><answer>1</answer>", "1")]).unwrap();
        assert_eq!(out[0].rewards["format"], Some(1.0));
        assert_eq!(out[0].rewards["cd"], None);
        assert_eq!(out[0].reward, Some(0.5));
    }

    #[test]
    fn extraction_mode_reaches_every_answer_reading_reward() {
        let cfg = RewardsConfig::from_toml_str(
            "[[rewards]]\nkind = \"math\"\n[[rewards]]\nkind = \"numeric\"\n[[rewards]]\nkind = \"exact_match\"\n\
             [[rewards]]\nkind = \"format\"\n",
        )
        .unwrap();
        let reg = Registry::build(&cfg).unwrap();
        let base = Sample::new("Half of 36 is 18, so she keeps 18 stickers.\nThe answer is: 18", "18");
        let scores = |extraction| {
            let out = reg.score_batch_with(std::slice::from_ref(&base), extraction).unwrap();
            ["math", "numeric", "exact_match", "format"].map(|k| out[0].rewards[k])
        };
        assert_eq!(scores(AnswerExtraction::R1), [Some(0.0); 4]);
        assert_eq!(scores(AnswerExtraction::Free), [Some(1.0), Some(1.0), Some(1.0), Some(0.0)]);
        // The plain entry points keep the strict R1 reading.
        assert_eq!(reg.score_batch(std::slice::from_ref(&base)).unwrap()[0].rewards["math"], Some(0.0));
        let countdown = Sample::new("We need 83: (25 - 5) * 4 + 3 = 83.\n\\boxed{(25 - 5) * 4 + 3}", "")
            .with_field("numbers", serde_json::json!([3, 4, 5, 25]))
            .with_field("target", serde_json::json!(83));
        let cd =
            Registry::build(&RewardsConfig::from_toml_str("[[rewards]]\nkind = \"countdown\"\n").unwrap()).unwrap();
        assert_eq!(cd.score_one_with(&countdown, AnswerExtraction::Free).reward, Some(1.0));
        assert_eq!(cd.score_one(&countdown).reward, Some(0.0));
    }

    #[test]
    fn bad_config_is_rejected() {
        assert!(RewardsConfig::from_toml_str("[[rewards]]\nkind = \"nope\"\n").is_err());
        assert!(RewardsConfig::from_toml_str("rewards = []\n").is_err());
    }
}
