//! Typed trainer configuration: optimiser, schedule, GRPO and SFT settings.
//!
//! Every field documents its default and where it comes from (TRL's `GRPOConfig` names where one
//! exists). Raw TOML is deserialised into these structs once and checked once by `validate`.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How rewards are scaled into advantages (TRL `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's standard deviation (GRPO, default).
    #[default]
    Group,
    /// Divide by the whole batch's standard deviation.
    Batch,
    /// No scaling: A = r − mean(r) (Dr. GRPO).
    None,
}

/// How per-token losses are aggregated into one scalar (TRL `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over samples of each sample's token-mean (the original GRPO).
    #[default]
    Grpo,
    /// Token-mean over the local (micro-)batch.
    Bnpo,
    /// Token-sum divided by batch size × max completion length (Dr. GRPO).
    DrGrpo,
    /// Token-sum divided by the active tokens of the whole accumulated batch (DAPO).
    Dapo,
}

/// The level at which importance ratios are taken (TRL `importance_sampling_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceLevel {
    /// One ratio per token (GRPO).
    #[default]
    Token,
    /// One ratio per sequence: exp of the masked mean log-ratio (GSPO).
    Sequence,
}

/// Learning-rate schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Constant after warmup.
    #[default]
    Constant,
    /// Cosine decay to zero at the last step.
    Cosine,
    /// Linear decay to zero at the last step (`transformers`' default).
    Linear,
}

/// AdamW and schedule settings, shared by every trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate. Default 1e-5.
    pub learning_rate: f64,
    /// AdamW β1. Default 0.9.
    pub beta1: f64,
    /// AdamW β2. Default 0.999.
    pub beta2: f64,
    /// AdamW ε. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay. Default 0.
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables. Default 1.0 (TRL `max_grad_norm`).
    pub max_grad_norm: f64,
    /// Linear warmup steps. Default 0.
    pub warmup_steps: usize,
    /// Schedule after warmup. Default constant.
    pub schedule: LrSchedule,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            warmup_steps: 0,
            schedule: LrSchedule::Constant,
        }
    }
}

/// The GRPO objective's settings (docs/DESIGN.md §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoLossConfig {
    /// Lower clip ε. Default 0.2 (TRL `epsilon`).
    pub epsilon_low: f64,
    /// Upper clip ε (DAPO clip-higher). Default 0.2 (TRL `epsilon_high`, defaults to `epsilon`).
    pub epsilon_high: f64,
    /// KL coefficient β of the k3 estimator; 0 loads no reference model. Default 0.0.
    pub beta: f64,
    /// Loss aggregation. Default grpo.
    pub loss_type: LossType,
    /// Importance-ratio level. Default token.
    pub importance_sampling: ImportanceLevel,
    /// Reward scaling into advantages. Default group.
    pub scale_rewards: ScaleRewards,
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        Self {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.0,
            loss_type: LossType::Grpo,
            importance_sampling: ImportanceLevel::Token,
            scale_rewards: ScaleRewards::Group,
        }
    }
}

impl GrpoLossConfig {
    /// Checks value ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.epsilon_low >= 0.0 && self.epsilon_high >= 0.0) {
            return Err(TrainError::Config("epsilon_low/epsilon_high must be >= 0".into()));
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(TrainError::Config(format!("beta must be a finite value >= 0, got {}", self.beta)));
        }
        Ok(())
    }
}
