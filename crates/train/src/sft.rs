//! Supervised fine-tuning: next-token loss on completion (assistant) tokens only.
//!
//! Shares the batch layout, optimiser, schedule, guards and checkpoints with GRPO. The loss of
//! an optimiser step is the token mean over all completion tokens of the accumulated batch, so
//! the split into micro-batches does not change the gradient.

use candle_core::DType;

use aha_model::Transformer;

use crate::batch::{build_batch, policy_forward};
use crate::error::Result;
use crate::optim::{AdamW, Grads, StepReport};

/// One training example: prompt tokens (no loss) and completion tokens (loss).
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Context tokens (template, question); never trained on.
    pub prompt_ids: Vec<u32>,
    /// Target tokens (the assistant's answer, EOS included).
    pub completion_ids: Vec<u32>,
}

/// The result of one SFT optimiser step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftStep {
    /// Mean token cross-entropy over the step's completion tokens (NaN when skipped).
    pub loss: f64,
    /// Completion tokens trained on.
    pub tokens: usize,
    /// The optimiser's report (`None` when the loss was non-finite and nothing ran).
    pub report: Option<StepReport>,
}

/// One optimiser step over `examples`, split into micro-batches of `micro` examples.
///
/// A non-finite loss skips the step without touching the parameters.
pub fn sft_step(
    model: &Transformer,
    opt: &mut AdamW,
    examples: &[SftExample],
    micro: usize,
    total_steps: usize,
) -> Result<SftStep> {
    let tokens: usize = examples.iter().map(|e| e.completion_ids.len()).sum();
    let denom = tokens.max(1) as f64;
    let mut grads = Grads::default();
    let mut loss_sum = 0.0;
    for chunk in examples.chunks(micro.max(1)) {
        let pairs: Vec<(&[u32], &[u32])> =
            chunk.iter().map(|e| (e.prompt_ids.as_slice(), e.completion_ids.as_slice())).collect();
        let batch = build_batch(&pairs, model.device())?;
        let fwd = policy_forward(model, &batch)?;
        let loss = ((fwd.logps() * &batch.completion_mask)?.sum_all()?.neg()? / denom)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Ok(SftStep { loss: f64::NAN, tokens, report: None });
        }
        loss_sum += value;
        grads.accumulate(fwd.gradients(&loss, opt)?)?;
    }
    let report = opt.step(&grads, total_steps)?;
    Ok(SftStep { loss: loss_sum, tokens, report: Some(report) })
}
