//! The model's row operations written with candle's composite ops: the reference semantics the
//! CPU kernels reproduce (their tests compare against these functions), and the path every
//! other device and dtype runs (CUDA, bf16). Every op has a backward in candle's autograd — no
//! fused `softmax_last_dim`, `rms_norm` or `rope` kernels, which have none. Softmax and RMS
//! statistics run in f32 (f64 for an f64 model), as `transformers`' eager attention does.

use candle_core::{DType, Module, Tensor, D};

use crate::error::Result;

/// The dtype softmax and RMS statistics are computed in: f32, or f64 for an f64 model (so an
/// f64 model is f64 throughout, which finite-difference gradient checks rely on).
pub fn upcast(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// RMSNorm, `x · rsqrt(mean(x²) + ε) · w` over the last dimension, in `x`'s dtype.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(upcast(dtype))?;
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_mul(&(mean_sq + eps)?.sqrt()?.recip()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(w)?)
}

/// RoPE ("rotate_half" layout) of `x` `[B, heads, T, hd]` with `cos`/`sin` `[B, 1, T, hd]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Heads `[B, T, heads, hd]` → `[B, heads, T, hd]`, rotated by RoPE.
pub fn rope_transposed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope(&x.transpose(1, 2)?.contiguous()?, cos, sin)
}

/// `softmax(scores · scale + bias)` over the last dimension; `bias` (0 or −1e30) broadcasts.
/// Computed in f32 (f64 for f64), returned in `scores`' dtype.
pub fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let cd = upcast(scores.dtype());
    let z = (scores * scale)?.to_dtype(cd)?.broadcast_add(&bias.to_dtype(cd)?)?;
    Ok(candle_nn::ops::softmax(&z, D::Minus1)?.to_dtype(scores.dtype())?)
}

/// SwiGLU's gate: `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::Activation::Silu.forward(gate)? * up)?)
}

/// `log_softmax(logits)[target]` per row: `logits` `[N, V]`, `targets` `[N]` u32 → `[N]` f32
/// (f64 for f64 logits).
pub fn gather_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(upcast(logits.dtype()))?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    Ok(logp.gather(&targets.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?.squeeze(D::Minus1)?)
}

/// The entropy of each row's softmax: `logits` `[N, V]` → `[N]` (no gradient).
pub fn row_entropy(logits: &Tensor) -> Result<Tensor> {
    let logits = logits.detach().to_dtype(upcast(logits.dtype()))?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    Ok((logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?)
}

/// `x` `[m, k]` · `w` `[n, k]`ᵀ (+ `bias` `[n]`) → `[m, n]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}
