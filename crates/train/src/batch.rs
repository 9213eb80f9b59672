//! Packing (prompt, completion) pairs into one padded training batch, and the per-token
//! log-probabilities of the completions under a model — with gradients through the
//! hand-written CPU path where it applies ([`policy_forward`]), candle's autograd elsewhere.
//!
//! Layout (as TRL): prompts left-padded to a common width P, completions right-padded to Lc,
//! so every completion starts at column P and token j of a completion is predicted by the
//! hidden state at column P − 1 + j. Position ids count real tokens only.

use aha_model::cpu::handgrad;
use aha_model::{Kernels, Transformer};
use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;
use crate::loss::{masked_mean_scalar, mean_entropy, token_logprobs};
use crate::optim::{AdamW, Grads};

/// A padded batch of prompt + completion sequences.
#[derive(Debug, Clone)]
pub struct SeqBatch {
    /// `[B, P + Lc]` u32 token ids (padding id 0).
    pub input_ids: Tensor,
    /// `[B, P + Lc]` f32, 1 for real tokens.
    pub attention_mask: Tensor,
    /// `[B, P + Lc]` u32 positions (real tokens counted from 0).
    pub position_ids: Tensor,
    /// `[B, Lc]` u32 completion tokens (the prediction targets).
    pub completion_ids: Tensor,
    /// `[B, Lc]` f32, 1 for real completion tokens.
    pub completion_mask: Tensor,
    /// Prompt width P.
    pub prompt_width: usize,
    /// Completion width Lc.
    pub completion_width: usize,
}

/// Builds the batch. Every prompt must be non-empty; completions may be empty (masked out).
pub fn build_batch(pairs: &[(&[u32], &[u32])], device: &Device) -> Result<SeqBatch> {
    let b = pairs.len();
    let p = pairs.iter().map(|(q, _)| q.len()).max().unwrap_or(1).max(1);
    let lc = pairs.iter().map(|(_, c)| c.len()).max().unwrap_or(0).max(1);
    let t = p + lc;
    let mut ids = vec![0u32; b * t];
    let mut mask = vec![0f32; b * t];
    let mut pos = vec![0u32; b * t];
    let mut cids = vec![0u32; b * lc];
    let mut cmask = vec![0f32; b * lc];
    for (r, (q, c)) in pairs.iter().enumerate() {
        let row = r * t;
        let start = p - q.len();
        for (i, &tok) in q.iter().chain(c.iter()).enumerate() {
            ids[row + start + i] = tok;
            mask[row + start + i] = 1.0;
            pos[row + start + i] = i as u32;
        }
        for (j, &tok) in c.iter().enumerate() {
            cids[r * lc + j] = tok;
            cmask[r * lc + j] = 1.0;
        }
    }
    Ok(SeqBatch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        attention_mask: Tensor::from_vec(mask, (b, t), device)?,
        position_ids: Tensor::from_vec(pos, (b, t), device)?,
        completion_ids: Tensor::from_vec(cids, (b, lc), device)?,
        completion_mask: Tensor::from_vec(cmask, (b, lc), device)?,
        prompt_width: p,
        completion_width: lc,
    })
}

/// Per-token log-probabilities `[B, Lc]` of the batch's completion tokens, and the logits
/// `[B, Lc, V]` they came from (for entropy). Differentiable when `model` holds variables.
pub fn completion_logprobs(model: &Transformer, batch: &SeqBatch) -> Result<(Tensor, Tensor)> {
    let hidden = model.forward_hidden(&batch.input_ids, &batch.attention_mask, &batch.position_ids)?;
    let h = hidden.narrow(1, batch.prompt_width - 1, batch.completion_width)?;
    let logits = model.logits(&h)?;
    let logps = token_logprobs(&logits, &batch.completion_ids, model.kernels())?;
    Ok((logps, logits))
}

/// The policy's completion log-probabilities with what turns a loss on them into parameter
/// gradients: the hand-written CPU path ([`aha_model::handgrad`]) when it applies, candle's
/// autograd through the model otherwise. Either way the loss is built on [`PolicyForward::logps`]
/// with candle ops.
pub struct PolicyForward {
    logps: Tensor,
    path: GradPath,
}

enum GradPath {
    Autograd { logits: Tensor, kernels: Kernels },
    HandWritten { leaf: Var, fwd: Box<handgrad::TrainForward> },
}

/// The differentiable forward of `batch`'s completions under `model` (see [`PolicyForward`]).
pub fn policy_forward(model: &Transformer, batch: &SeqBatch) -> Result<PolicyForward> {
    if !model.plan().hand_written_grads() {
        let (logps, logits) = completion_logprobs(model, batch)?;
        return Ok(PolicyForward { logps, path: GradPath::Autograd { logits, kernels: model.kernels() } });
    }
    let fwd = hand_written_forward(model, batch)?;
    // A leaf variable: the loss's backward stops here and hands its gradient to the model's.
    let leaf = Var::from_tensor(&fwd.logps)?;
    Ok(PolicyForward { logps: leaf.as_tensor().clone(), path: GradPath::HandWritten { leaf, fwd: Box::new(fwd) } })
}

/// Completion log-probabilities `[B, Lc]` without gradient (π_old, π_ref).
pub fn no_grad_logprobs(model: &Transformer, batch: &SeqBatch) -> Result<Tensor> {
    if model.plan().hand_written_grads() {
        return Ok(hand_written_forward(model, batch)?.logps);
    }
    Ok(completion_logprobs(&model.detached()?, batch)?.0.detach())
}

/// [`handgrad::forward`] over the batch's completions (predicted from column P − 1 on).
fn hand_written_forward(model: &Transformer, batch: &SeqBatch) -> Result<handgrad::TrainForward> {
    Ok(handgrad::forward(
        model,
        &batch.input_ids,
        &batch.attention_mask,
        &batch.position_ids,
        batch.prompt_width - 1,
        &batch.completion_ids,
    )?)
}

impl PolicyForward {
    /// `[B, Lc]` f32 log-probabilities of the completion tokens (differentiable).
    pub fn logps(&self) -> &Tensor {
        &self.logps
    }

    /// Mean per-token entropy over `mask` `[B, Lc]`.
    pub fn mean_entropy(&self, mask: &Tensor) -> Result<f64> {
        match &self.path {
            GradPath::Autograd { logits, kernels } => mean_entropy(logits, mask, *kernels),
            GradPath::HandWritten { fwd, .. } => masked_mean_scalar(&fwd.entropy, &mask.to_dtype(DType::F32)?),
        }
    }

    /// Backpropagates `loss` (built on [`PolicyForward::logps`]) to `opt`'s parameters.
    pub fn gradients(self, loss: &Tensor, opt: &AdamW) -> Result<Grads> {
        let store = loss.backward()?;
        match self.path {
            GradPath::Autograd { .. } => Ok(opt.collect(&store)),
            GradPath::HandWritten { leaf, fwd } => {
                let dlogps = match store.get(leaf.as_tensor()) {
                    Some(g) => g.clone(),
                    None => leaf.as_tensor().zeros_like()?,
                };
                opt.collect_named(fwd.backward(&dlogps)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_left_pads_prompts_and_right_pads_completions() {
        let b = build_batch(&[(&[5, 6], &[7]), (&[9], &[10, 11])], &Device::Cpu).unwrap();
        assert_eq!(b.input_ids.to_vec2::<u32>().unwrap(), vec![vec![5, 6, 7, 0], vec![0, 9, 10, 11]]);
        assert_eq!(b.position_ids.to_vec2::<u32>().unwrap(), vec![vec![0, 1, 2, 0], vec![0, 0, 1, 2]]);
        assert_eq!(b.completion_mask.to_vec2::<f32>().unwrap(), vec![vec![1.0, 0.0], vec![1.0, 1.0]]);
        assert_eq!((b.prompt_width, b.completion_width), (2, 2));
    }
}
