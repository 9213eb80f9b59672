//! aha-train: the trainers. GRPO (docs/DESIGN.md §2) and SFT, the AdamW optimiser and schedules,
//! checkpoints with exact resume, procedural tasks and datasets, and GRPO rollouts on external
//! inference servers (`remote`).
//!
//! The trainer sees the model as a map from token ids to logits and the rewards as a registry
//! of scorers; it owns the RL logic between them.

pub mod advantage;
pub mod batch;
pub mod checkpoint;
pub mod codec;
pub mod collective;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod grpo;
pub mod grpo_dp;
pub mod loss;
pub mod optim;
pub mod parquet;
pub mod rejection;
pub mod remote;
pub mod rm;
pub mod run;
pub mod samples;
pub mod sft;
pub mod sft_data;
pub mod source;
pub mod tasks;
pub mod teacher;
pub mod template;
pub mod timing;

pub use error::{Result, TrainError};
