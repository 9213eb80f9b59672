//! The GRPO objective (docs/DESIGN.md §2), term for term as TRL's `GRPOTrainer._compute_loss`.
//!
//! Per token: `l = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·(e^{ref−logπ} − (ref−logπ) − 1)`,
//! with ρ per token or, for GSPO, one per sequence (exp of the masked mean log-ratio). The
//! per-token losses are then aggregated by [`LossType`]. All inputs are `[B, L]` over completion
//! tokens; the mask is 1 for tokens that count.
//!
//! With one inner iteration π_old = π_θ, so ρ = 1 and the printed loss is ≈ 0 (exactly 0 with
//! β = 0 and zero-mean advantages) while its gradient is REINFORCE's: that is expected.

use aha_model::Kernels;
use candle_core::{DType, Tensor, D};

use crate::config::{GrpoLossConfig, ImportanceLevel, LossType};
use crate::error::Result;

/// Per-token tensors of one (micro-)batch, all `[B, L]` except `advantages` (`[B]`).
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// log π_θ of the sampled tokens (differentiable).
    pub logps: &'a Tensor,
    /// log π_old of the sampled tokens (from the rollout, detached).
    pub old_logps: &'a Tensor,
    /// log π_ref of the sampled tokens; required when β > 0.
    pub ref_logps: Option<&'a Tensor>,
    /// One advantage per sample.
    pub advantages: &'a Tensor,
    /// 1 for completion tokens that count, 0 for padding and masked (truncated) samples.
    pub mask: &'a Tensor,
}

/// Normalisers that depend on the whole optimiser step, not just this micro-batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossNorm {
    /// Max completion length L of `dr_grpo` (the configured one, not the padded width).
    pub max_completion_length: usize,
    /// Micro-batches accumulated into one optimiser step (grpo/bnpo/dr_grpo divide by it).
    pub grad_accum_steps: usize,
    /// Active completion tokens of the whole accumulated batch (the `dapo` denominator).
    pub dapo_active_tokens: f64,
}

/// Clipping and KL statistics, TRL's names (`clip_ratio/low_mean`, ...), as masked means.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LossStats {
    /// Fraction of tokens clipped below (ρ < 1 − ε_low with A < 0).
    pub clip_low: f64,
    /// Fraction of tokens clipped above (ρ > 1 + ε_high with A > 0).
    pub clip_high: f64,
    /// Fraction clipped either way.
    pub clip_region: f64,
    /// Mean per-token k3 KL to the reference (0 without one).
    pub kl: f64,
}

/// The scalar loss (differentiable) and its statistics.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The aggregated loss for this micro-batch.
    pub loss: Tensor,
    /// Clip and KL statistics.
    pub stats: LossStats,
}

/// Clamps like `torch.clamp`: the gradient passes (fully) wherever `lo <= x <= hi`.
fn clamp_like_torch(x: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let lo_t = x.ones_like()?.affine(lo, 0.0)?;
    let hi_t = x.ones_like()?.affine(hi, 0.0)?;
    let below = x.lt(lo)?;
    let above = x.gt(hi)?;
    Ok(below.where_cond(&lo_t, &above.where_cond(&hi_t, x)?)?)
}

/// Elementwise min like `torch.minimum` (ties split the gradient in half; candle does the same).
fn minimum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.minimum(b)?)
}

/// `sum(x · m) / max(sum(m), 1)` along the last dim: `[B, L]` → `[B]`.
fn masked_row_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let num = (x * mask)?.sum(D::Minus1)?;
    let den = mask.sum(D::Minus1)?.clamp(1.0, f64::INFINITY)?;
    Ok(num.div(&den)?)
}

/// Masked mean over all elements as a plain number.
pub(crate) fn masked_mean_scalar(x: &Tensor, mask: &Tensor) -> Result<f64> {
    let num = (x * mask)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let den = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok(num / den.max(1.0))
}

/// log ρ per token (`[B, L]`), at token or sequence level.
fn log_importance(inp: &LossInputs, level: ImportanceLevel) -> Result<Tensor> {
    let log_ratio = (inp.logps - inp.old_logps)?;
    match level {
        ImportanceLevel::Token => Ok(log_ratio),
        ImportanceLevel::Sequence => {
            let seq = masked_row_mean(&log_ratio, inp.mask)?.unsqueeze(1)?;
            Ok(seq.broadcast_as(log_ratio.shape())?)
        }
    }
}

/// The k3 estimator `e^{ref−logπ} − (ref−logπ) − 1`, per token.
fn k3_kl(logps: &Tensor, ref_logps: &Tensor) -> Result<Tensor> {
    let d = (ref_logps - logps)?;
    Ok(((d.exp()? - &d)? - 1.0)?)
}

/// Aggregates `[B, L]` per-token losses into a scalar according to `loss_type`.
fn aggregate(per_token: &Tensor, mask: &Tensor, loss_type: LossType, norm: &LossNorm) -> Result<Tensor> {
    let accum = norm.grad_accum_steps.max(1) as f64;
    let masked = (per_token * mask)?;
    let loss = match loss_type {
        LossType::Grpo => (masked_row_mean(per_token, mask)?.mean_all()? / accum)?,
        LossType::Bnpo => {
            let den = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.max(1.0);
            (masked.sum_all()? / (den * accum))?
        }
        LossType::DrGrpo => {
            let b = per_token.dim(0)? as f64;
            (masked.sum_all()? / (b * norm.max_completion_length as f64 * accum))?
        }
        LossType::Dapo => (masked.sum_all()? / norm.dapo_active_tokens.max(1.0))?,
    };
    Ok(loss)
}

/// Clip statistics as TRL computes them (on the token-level or sequence-level ratio).
fn clip_stats(coef: &Tensor, adv: &Tensor, mask: &Tensor, cfg: &GrpoLossConfig) -> Result<(f64, f64, f64)> {
    let neg = adv.lt(0.0)?.to_dtype(coef.dtype())?;
    let pos = adv.gt(0.0)?.to_dtype(coef.dtype())?;
    let low = (coef.lt(1.0 - cfg.epsilon_low)?.to_dtype(coef.dtype())? * neg)?;
    let high = (coef.gt(1.0 + cfg.epsilon_high)?.to_dtype(coef.dtype())? * pos)?;
    let region = (&low + &high)?;
    Ok((masked_mean_scalar(&low, mask)?, masked_mean_scalar(&high, mask)?, masked_mean_scalar(&region, mask)?))
}

/// Computes the GRPO loss of one micro-batch.
pub fn grpo_loss(inp: &LossInputs, cfg: &GrpoLossConfig, norm: &LossNorm) -> Result<LossOutput> {
    let coef1 = log_importance(inp, cfg.importance_sampling)?.exp()?;
    let coef2 = clamp_like_torch(&coef1, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)?;
    let adv = inp.advantages.unsqueeze(1)?.broadcast_as(coef1.shape())?;
    let surrogate = minimum(&coef1.mul(&adv)?, &coef2.mul(&adv)?)?.neg()?;
    let (per_token, kl) = match (cfg.beta > 0.0, inp.ref_logps) {
        (true, Some(r)) => {
            let kl = k3_kl(inp.logps, r)?;
            let mean_kl = masked_mean_scalar(&kl, inp.mask)?;
            ((surrogate + (kl * cfg.beta)?)?, mean_kl)
        }
        (true, None) => return Err(crate::error::TrainError::Config("beta > 0 needs reference log-probs".into())),
        (false, Some(r)) => (surrogate, masked_mean_scalar(&k3_kl(inp.logps, r)?, inp.mask)?),
        (false, None) => (surrogate, 0.0),
    };
    let loss = aggregate(&per_token, inp.mask, cfg.loss_type, norm)?;
    let (clip_low, clip_high, clip_region) = clip_stats(&coef1, &adv, inp.mask, cfg)?;
    Ok(LossOutput { loss, stats: LossStats { clip_low, clip_high, clip_region, kl } })
}

/// Per-token log-probabilities of `targets` under `logits`, with the model's kernels `k`.
///
/// `logits`: `[B, L, V]`; `targets`: `[B, L]` u32 → `[B, L]` in f32 (computed in f32, or f64 for
/// f64 logits). Differentiable (log-softmax then gather).
pub fn token_logprobs(logits: &Tensor, targets: &Tensor, k: Kernels) -> Result<Tensor> {
    let (b, l, v) = logits.dims3()?;
    let flat = aha_model::ops::gather_logprobs(&logits.reshape((b * l, v))?, &targets.flatten_all()?, k)?;
    Ok(flat.reshape((b, l))?.to_dtype(DType::F32)?)
}

/// Mean per-token entropy of the distributions in `logits` (`[B, L, V]`) over `mask` (`[B, L]`).
pub fn mean_entropy(logits: &Tensor, mask: &Tensor, k: Kernels) -> Result<f64> {
    let (b, l, v) = logits.dims3()?;
    let ent = aha_model::ops::row_entropy(&logits.reshape((b * l, v))?, k)?.reshape((b, l))?;
    masked_mean_scalar(&ent.to_dtype(DType::F32)?, &mask.to_dtype(DType::F32)?)
}
