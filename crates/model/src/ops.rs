//! The model's row operations with the kernel the execution plan chose ([`Kernels`], decided in
//! `exec.rs`): each function here only reads that choice and calls the CPU kernel
//! (`cpu::infer`, `cpu::autograd`) or the composite reference ([`composite`]).

pub mod composite;

use candle_core::Tensor;

use crate::cpu::{autograd, infer};
use crate::error::Result;
use crate::exec::Kernels;

/// RMSNorm over the last dimension (see [`composite::rms_norm`]).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, k: Kernels) -> Result<Tensor> {
    match k {
        // Inference: candle's fused kernel (same f32 arithmetic, no backward).
        Kernels::CpuInfer => Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)?),
        Kernels::CpuFused => Ok(autograd::rms_norm(x, w, eps)?),
        Kernels::Composite => composite::rms_norm(x, w, eps),
    }
}

/// Heads `[B, T, heads, hd]` → `[B, heads, T, hd]` rotated by RoPE (see
/// [`composite::rope_transposed`]).
pub fn rope_transposed(x: &Tensor, cos: &Tensor, sin: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::CpuInfer | Kernels::CpuFused => Ok(autograd::rope_transposed(x, cos, sin)?),
        Kernels::Composite => composite::rope_transposed(x, cos, sin),
    }
}

/// `softmax(scores · scale + bias)` (see [`composite::masked_softmax`]).
pub fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::CpuInfer | Kernels::CpuFused => {
            Ok(autograd::masked_softmax(scores, &bias.to_dtype(scores.dtype())?, scale)?)
        }
        Kernels::Composite => composite::masked_softmax(scores, bias, scale),
    }
}

/// `silu(gate) · up` (see [`composite::swiglu`]).
pub fn swiglu(gate: &Tensor, up: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::CpuInfer | Kernels::CpuFused => Ok(autograd::swiglu(gate, up)?),
        Kernels::Composite => composite::swiglu(gate, up),
    }
}

/// `x` `[m, k]` · `w`ᵀ (+ bias): the small-batch inference kernel for few rows, else a gemm.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, k: Kernels) -> Result<Tensor> {
    if k.small_batch_linear(x.dim(0)?) {
        if let Some(y) = infer::linear(x, w, bias)? {
            return Ok(y);
        }
    }
    composite::linear(x, w, bias)
}

/// Per-row log-probabilities of `targets` (`[N]` u32) under `logits` (`[N, V]`), in f32 (f64 for
/// f64 logits); differentiable (see [`composite::gather_logprobs`]).
pub fn gather_logprobs(logits: &Tensor, targets: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::CpuInfer | Kernels::CpuFused => Ok(autograd::gather_logprobs(logits, targets)?),
        Kernels::Composite => composite::gather_logprobs(logits, targets),
    }
}

/// The entropy of each row's softmax, without gradient (see [`composite::row_entropy`]).
pub fn row_entropy(logits: &Tensor, k: Kernels) -> Result<Tensor> {
    match k {
        Kernels::CpuInfer | Kernels::CpuFused => Ok(autograd::row_entropy(&logits.detach())?),
        Kernels::Composite => composite::row_entropy(logits),
    }
}
