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
    grpo_loss_weighted(inp, None, cfg, norm)
}

/// [`grpo_loss`] with each token's clipped surrogate multiplied by a detached weight `[B, L]`
/// (the truncated importance weight of rollouts from another engine, [`truncated_is_weights`]),
/// before the KL term is added — as TRL applies `importance_sampling_ratio`. `None` is exactly
/// [`grpo_loss`].
pub fn grpo_loss_weighted(
    inp: &LossInputs,
    is_weights: Option<&Tensor>,
    cfg: &GrpoLossConfig,
    norm: &LossNorm,
) -> Result<LossOutput> {
    let coef1 = log_importance(inp, cfg.importance_sampling)?.exp()?;
    let coef2 = clamp_like_torch(&coef1, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)?;
    let adv = inp.advantages.unsqueeze(1)?.broadcast_as(coef1.shape())?;
    let mut surrogate = minimum(&coef1.mul(&adv)?, &coef2.mul(&adv)?)?.neg()?;
    if let Some(w) = is_weights {
        surrogate = surrogate.mul(&w.detach())?;
    }
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

/// Sums over the counted tokens of a micro-batch comparing the trainer's π_old with the
/// engine that sampled the rollout: the inputs of the `rollout/*` metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IsStats {
    /// Tokens counted.
    pub tokens: f64,
    /// Σ |log π_trainer − log π_engine|.
    pub abs_logprob_diff: f64,
    /// Σ of the applied weights (the truncated ratio; the raw ratio when the cap is off).
    pub weight_sum: f64,
    /// Largest applied weight (0 without tokens).
    pub weight_max: f64,
    /// Tokens whose ratio exceeded the cap.
    pub clipped: f64,
}

impl IsStats {
    /// Adds another micro-batch's sums.
    pub fn add(&mut self, o: &IsStats) {
        self.tokens += o.tokens;
        self.abs_logprob_diff += o.abs_logprob_diff;
        self.weight_sum += o.weight_sum;
        self.weight_max = self.weight_max.max(o.weight_max);
        self.clipped += o.clipped;
    }
}

/// The truncated importance weight per token, `w = min(exp(log π_old − log π_engine), cap)`
/// (TRL's token-level `vllm_importance_sampling_correction`), 1 where `mask` is 0, and its
/// statistics over `mask`. `cap` 0 disables the correction: no weights (`None`), the raw ratio's
/// statistics. All inputs `[B, L]`; `old` and `engine` are detached log-probabilities.
pub fn truncated_is_weights(
    old: &Tensor,
    engine: &Tensor,
    mask: &Tensor,
    cap: f64,
) -> Result<(Option<Tensor>, IsStats)> {
    let mask = mask.to_dtype(DType::F32)?;
    let diff = (old.to_dtype(DType::F32)? - engine.to_dtype(DType::F32)?)?;
    let on = mask.gt(0.0)?;
    let ones = mask.ones_like()?;
    let raw = on.where_cond(&diff.exp()?, &ones)?;
    let w = if cap > 0.0 { raw.minimum(cap)? } else { raw.clone() };
    let clipped = if cap > 0.0 { raw.gt(cap)?.to_dtype(DType::F32)? } else { mask.zeros_like()? };
    let sum = |t: &Tensor| -> Result<f64> { Ok((t * &mask)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    let stats = IsStats {
        tokens: mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        abs_logprob_diff: sum(&diff.abs()?)?,
        weight_sum: sum(&w)?,
        weight_max: (&w * &mask)?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?.max(0.0),
        clipped: sum(&clipped)?,
    };
    Ok(((cap > 0.0).then_some(w), stats))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t<const M: usize>(rows: &[[f32; 3]; M]) -> Tensor {
        Tensor::new(rows, &Device::Cpu).unwrap()
    }

    #[test]
    fn is_weights_are_truncated_ratios_with_masked_statistics() {
        let old = t(&[[-1.0, -2.0, -0.5], [-3.0, -1.0, -9.0]]);
        let engine = t(&[[-1.0, -2.5, -2.5], [-2.0, -1.0, 0.0]]);
        let mask = t(&[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]);
        let (w, st) = truncated_is_weights(&old, &engine, &mask, 3.0).unwrap();
        let w = w.unwrap().to_vec2::<f32>().unwrap();
        let want = [[1.0, 0.5f32.exp(), 3.0], [(-1.0f32).exp(), 1.0, 1.0]];
        for (a, b) in w.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        assert_eq!((st.tokens, st.clipped), (5.0, 1.0));
        assert!((st.abs_logprob_diff - 3.5).abs() < 1e-6, "{st:?}");
        let sum = 1.0 + 0.5f64.exp() + 3.0 + (-1.0f64).exp() + 1.0;
        assert!((st.weight_sum - sum).abs() < 1e-5 && (st.weight_max - 3.0).abs() < 1e-6, "{st:?}");
        let (none, raw) = truncated_is_weights(&old, &engine, &mask, 0.0).unwrap();
        assert!(none.is_none());
        assert!((raw.weight_max - 2f64.exp()).abs() < 1e-4 && raw.clipped == 0.0, "{raw:?}");
    }

    #[test]
    fn weights_scale_the_surrogate_and_none_is_the_plain_loss() {
        let logps = t(&[[-1.0, -2.0, -0.5]]);
        let mask = t(&[[1.0, 1.0, 1.0]]);
        let adv = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        let inp = LossInputs { logps: &logps, old_logps: &logps, ref_logps: None, advantages: &adv, mask: &mask };
        let cfg = GrpoLossConfig { loss_type: LossType::Bnpo, ..Default::default() };
        let norm = LossNorm { max_completion_length: 3, grad_accum_steps: 1, dapo_active_tokens: 3.0 };
        let plain = grpo_loss(&inp, &cfg, &norm).unwrap().loss.to_scalar::<f32>().unwrap();
        let same = grpo_loss_weighted(&inp, None, &cfg, &norm).unwrap().loss.to_scalar::<f32>().unwrap();
        assert_eq!(plain.to_bits(), same.to_bits());
        let w = t(&[[2.0, 1.0, 0.0]]);
        let weighted = grpo_loss_weighted(&inp, Some(&w), &cfg, &norm).unwrap().loss.to_scalar::<f32>().unwrap();
        assert!((plain - -1.0).abs() < 1e-6 && (weighted - -1.0).abs() < 1e-6, "{plain} {weighted}");
        let w = t(&[[3.0, 3.0, 3.0]]);
        let tripled = grpo_loss_weighted(&inp, Some(&w), &cfg, &norm).unwrap().loss.to_scalar::<f32>().unwrap();
        assert!((tripled - -3.0).abs() < 1e-6, "{tripled}");
    }
}
