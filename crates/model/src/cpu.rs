//! CPU kernels, by purpose. Which of them run is decided by the execution plan (`exec.rs`).
//!
//! - [`infer`]: inference only, no backward — the small-batch `x · Wᵀ` and one-token attention
//!   over the KV cache that sampling spends its time in.
//! - [`autograd`]: the row ops (RMSNorm, RoPE, masked softmax, SwiGLU, log-softmax + gather,
//!   entropy) as fused candle custom ops with their own backward, for a differentiable forward.
//! - [`handgrad`]: the whole model's hand-written training forward and backward (f32), which
//!   trains without candle's autograd.

pub mod autograd;
pub mod handgrad;
pub(crate) mod infer;
