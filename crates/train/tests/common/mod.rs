//! Shared helpers for the training crate's integration tests.

use aha_model::TinySpec;

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
