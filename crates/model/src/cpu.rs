//! CPU kernels, by purpose. Which of them run is decided by the execution plan (`exec.rs`).
//!
//! - [`infer`]: inference only, no backward — the small-batch `x · Wᵀ` and one-token attention
//!   over the KV cache that sampling spends its time in; AVX-512, AVX2 or portable, picked at run
//!   time ([`simd`], capped by `AHA_SIMD`); AVX-512 and AVX2 give the same bits, the portable
//!   code agrees to rounding.
//! - [`autograd`]: the row ops (RMSNorm, RoPE, masked softmax, SwiGLU, log-softmax + gather,
//!   entropy) as fused candle custom ops with their own backward, for a differentiable forward.
//! - [`handgrad`]: the whole model's hand-written training forward and backward (f32), which
//!   trains without candle's autograd.
//! - [`rows`]: the row math both of the training paths (and the inference forward) run, written
//!   once: compiled for baseline x86-64 and for AVX2 + FMA, picked at run time, same bits.

pub mod autograd;
pub mod handgrad;
pub(crate) mod infer;
pub mod rows;

pub use infer::{simd, Simd};
