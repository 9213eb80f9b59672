//! aha-model: the transformer aha trains and samples from (Qwen2, Qwen3, Llama), its KV cache,
//! loading and saving of Hugging Face checkpoints, tokenizer and chat template.
//!
//! The model knows nothing about reinforcement learning: it maps token ids to logits, either
//! over a whole padded batch (training, differentiable) or incrementally against a KV cache the
//! caller owns (sampling).

pub mod chat_template;
pub mod config;
pub mod cpu;
pub mod error;
pub mod exec;
pub mod io;
pub mod kv_cache;
pub mod lora;
pub mod ops;
pub mod rollout;
pub mod sampling;
pub mod tiny;
pub mod tokenizer;
pub mod transformer;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use config::{Arch, Llama3RopeScaling, ModelConfig};
pub use error::{ModelError, Result};
pub use exec::{Backend, DTypeSpec, DeviceSpec, ExecPlan, ExecRequest, Kernels, Mode};
pub use io::{load_model, load_with_adapter, save_adapter, save_pretrained, LoadedModel, ModelSpec};
pub use kv_cache::KvCache;
pub use lora::{LoraConfig, Module as LoraModule};
pub use rollout::{rollout, FinishReason, RolloutConfig, Sample, SampleTiming};
pub use sampling::{sample_rng, sample_token, Sampled, SamplingParams};
pub use tiny::{init_tiny, init_tiny_on, TinySpec};
pub use tokenizer::AhaTokenizer;
pub use transformer::{ParamInit, ParamSpec, Transformer};
