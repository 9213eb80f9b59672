//! Shared helpers for the training crate's integration tests.

use aha_model::TinySpec;
use candle_core::{DType, Tensor};

/// The small model the trainer tests build: 2 layers, hidden 32, 4 heads, 2 KV heads.
pub fn tiny_spec() -> TinySpec {
    TinySpec {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 96,
        ..TinySpec::default()
    }
}

/// The bit patterns of a tensor's values as f32 (exact comparisons).
#[allow(dead_code)]
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}
