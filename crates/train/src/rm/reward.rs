//! Reward models as GRPO rewards: `[[rewards]] kind = "model"` entries, each a trained reward
//! model with a name, a weight, an optional transform and an activity window.
//!
//! The rule-based rewards live in the tensor-free `aha-reward` registry; model rewards are
//! scored here, batched over every completion of a rollout round, and added to each sample's
//! [`ScoredSample`] (`rewards[name]` and the weighted total) before advantages are computed.
//! A model reward is only **called** during its active steps (R1 used its helpfulness and
//! safety models in the last steps of stage 4): `last_steps = N` activates it for the last N
//! of `max_steps`, `active_from_step = S` from step S on (steps count from 1, as in metrics).
//! A sequence too long for the reward model's context is unscorable for it, never 0.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use aha_reward::ScoredSample;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::rm::model::RewardModel;
use crate::template::PromptTemplate;

/// The tag of a model reward's table (`kind = "model"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A trained reward model.
    Model,
}

/// How a raw score enters the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScoreTransform {
    /// The head's output as is.
    #[default]
    Raw,
    /// σ(score), in (0, 1) like the rule-based rewards.
    Sigmoid,
}

impl ScoreTransform {
    /// Applies the transform.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            ScoreTransform::Raw => x,
            ScoreTransform::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// One `[[rewards]]` table with `kind = "model"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRewardSpec {
    /// Always `model`.
    pub kind: ModelKind,
    /// Name in outputs (`rewards/<name>/mean`). Default `model`.
    #[serde(default = "default_name")]
    pub name: String,
    /// The reward model's directory (`aha rm train`'s `final/`).
    pub path: PathBuf,
    /// Weight in the total. Default 1.0.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Active for the last N steps of the run only. Default: every step.
    #[serde(default)]
    pub last_steps: Option<usize>,
    /// Active from this step (1-based) on. Default: every step.
    #[serde(default)]
    pub active_from_step: Option<usize>,
    /// `raw` or `sigmoid`. Default raw.
    #[serde(default)]
    pub transform: ScoreTransform,
    /// Sequences per reward-model forward. Default 16.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Override of the template saved with the reward model. Default: the saved one.
    #[serde(default)]
    pub template: Option<PromptTemplate>,
}

fn default_name() -> String {
    "model".into()
}
fn default_weight() -> f64 {
    1.0
}
fn default_batch() -> usize {
    16
}

impl ModelRewardSpec {
    /// The first active step (1-based) in a run of `max_steps`.
    pub fn first_active_step(&self, max_steps: usize) -> Result<usize> {
        match (self.last_steps, self.active_from_step) {
            (Some(_), Some(_)) => Err(TrainError::Config(format!(
                "reward `{}`: give last_steps or active_from_step, not both",
                self.name
            ))),
            (Some(n), None) => Ok(max_steps.saturating_sub(n) + 1),
            (None, Some(s)) => Ok(s.max(1)),
            (None, None) => Ok(1),
        }
    }

    /// Checks the weight and batch size.
    pub fn validate(&self) -> Result<()> {
        if !self.weight.is_finite() || self.batch_size == 0 {
            return Err(TrainError::Config(format!(
                "reward `{}`: weight must be finite and batch_size positive",
                self.name
            )));
        }
        Ok(())
    }
}

/// Scores (prompt, completion) pairs in one call; `None` marks an unscorable item.
pub trait BatchScorer: Send + Sync {
    /// One score per item, in order.
    fn score_batch(&self, items: &[(&str, &str)]) -> Result<Vec<Option<f64>>>;
}

/// A [`RewardModel`] scoring `batch_size` sequences per forward.
pub struct RmScorer {
    /// The model.
    pub model: RewardModel,
    /// Sequences per forward.
    pub batch_size: usize,
}

impl BatchScorer for RmScorer {
    fn score_batch(&self, items: &[(&str, &str)]) -> Result<Vec<Option<f64>>> {
        Ok(self.model.score(items, self.batch_size)?.into_iter().map(|s| s.map(f64::from)).collect())
    }
}

/// One model reward, built.
pub struct ModelReward {
    /// Name in outputs.
    pub name: String,
    /// Weight in the total.
    pub weight: f64,
    /// First active step (1-based).
    pub from_step: usize,
    /// Applied to each raw score.
    pub transform: ScoreTransform,
    scorer: Box<dyn BatchScorer>,
    calls: AtomicUsize,
    steps: Mutex<Vec<usize>>,
}

impl ModelReward {
    /// Wraps a scorer.
    pub fn new(
        name: &str,
        weight: f64,
        from_step: usize,
        transform: ScoreTransform,
        scorer: Box<dyn BatchScorer>,
    ) -> Self {
        Self {
            name: name.to_string(),
            weight,
            from_step,
            transform,
            scorer,
            calls: AtomicUsize::new(0),
            steps: Mutex::new(Vec::new()),
        }
    }

    /// Whether the reward is active at `step` (1-based).
    pub fn active_at(&self, step: usize) -> bool {
        step >= self.from_step
    }

    /// Times the scorer has been called.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The (1-based) step of every call, in order.
    pub fn called_at_steps(&self) -> Vec<usize> {
        self.steps.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Every model reward of a run (possibly none).
#[derive(Default)]
pub struct ModelRewards {
    /// The rewards, in config order.
    pub rewards: Vec<ModelReward>,
}

impl ModelRewards {
    /// Loads each spec's reward model (a run of `max_steps` steps fixes the windows).
    pub fn load(specs: &[ModelRewardSpec], max_steps: usize, exec: &aha_model::ExecRequest) -> Result<Self> {
        let mut rewards = Vec::with_capacity(specs.len());
        for s in specs {
            s.validate()?;
            let mut model = RewardModel::open(&s.path, exec)
                .map_err(|e| TrainError::Config(format!("reward `{}`: loading {}: {e}", s.name, s.path.display())))?;
            if let Some(t) = s.template {
                model.template = t;
            }
            let scorer = Box::new(RmScorer { model, batch_size: s.batch_size });
            rewards.push(ModelReward::new(&s.name, s.weight, s.first_active_step(max_steps)?, s.transform, scorer));
        }
        Ok(Self { rewards })
    }

    /// True when there is no model reward.
    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty()
    }

    /// The names, in config order.
    pub fn names(&self) -> Vec<&str> {
        self.rewards.iter().map(|r| r.name.as_str()).collect()
    }

    /// Scores `items` (prompt, completion) with every reward active at `step` (1-based) and
    /// adds each to its sample: `rewards[name]`, and weight × value into the total (a sample
    /// with no scorable rule reward gets a total from the model rewards alone).
    pub fn apply(&self, step: usize, items: &[(&str, &str)], scored: &mut [&mut ScoredSample]) -> Result<()> {
        for r in self.rewards.iter().filter(|r| r.active_at(step)) {
            r.calls.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut s) = r.steps.lock() {
                s.push(step);
            }
            let values = r.scorer.score_batch(items)?;
            if values.len() != scored.len() {
                return Err(TrainError::Other(format!(
                    "reward `{}` returned {} scores for {}",
                    r.name,
                    values.len(),
                    scored.len()
                )));
            }
            for (s, v) in scored.iter_mut().zip(values) {
                match v.map(|x| r.transform.apply(x)).filter(|x| x.is_finite()) {
                    Some(x) => {
                        s.rewards.insert(r.name.clone(), Some(x));
                        s.reward = Some(s.reward.unwrap_or(0.0) + r.weight * x);
                    }
                    None => {
                        s.rewards.insert(r.name.clone(), None);
                        s.unscorable.insert(r.name.clone(), "too long for the reward model's context".into());
                    }
                }
            }
        }
        Ok(())
    }
}
