//! Reward models (docs/DESIGN.md §3.8, model-based rewards): the policy architecture with a scalar head,
//! trained pairwise (Bradley–Terry) for helpfulness or pointwise (binary cross-entropy) for
//! safety, saved as a Hugging Face sequence-classification checkpoint, and plugged into GRPO
//! as named, weighted rewards that are only called during their active steps.
//!
//! - [`data`]: the JSONL row shapes and the held-out split.
//! - [`model`]: [`RewardModel`], scoring (prompt, response) texts in batches.
//! - [`train`]: [`RmConfig`] and [`train_reward_model`].
//! - [`eval`]: held-out accuracy, precision/recall/F1.
//! - [`reward`]: [`ModelRewards`], the GRPO side.
//! - [`synth`]: the deterministic synthetic helpfulness and safety data.

pub mod data;
pub mod eval;
pub mod model;
pub mod reward;
pub mod synth;
pub mod train;

pub use data::{Objective, PairRow, PointRow, RmRows};
pub use eval::{Confusion, HeldOut};
pub use model::{RewardModel, RM_META_FILE};
pub use reward::{BatchScorer, ModelReward, ModelRewardSpec, ModelRewards, ScoreTransform};
pub use synth::{make_rows, SynthKind};
pub use train::{train_reward_model, RmConfig, RmReport, FINAL_DIR, REPORT_FILE};
