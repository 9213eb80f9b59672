//! [`RewardModel`]: a sequence classifier (policy body + scalar head) with the prompt template
//! it was trained with, turning (prompt, response) texts into scores in length-sorted batches.
//!
//! A scored sequence is the templated prompt followed by the response, tokenised as one text
//! would be by the policy; a trailing end-of-sequence token is dropped, so a finished and a
//! truncated completion are pooled at their last content token (and `transformers`, which
//! pools at the last non-padding token with padding = EOS, agrees). The template is stored
//! beside the weights in [`RM_META_FILE`].

use std::path::Path;

use aha_model::io::{load_sequence_classifier, pooled_scores, ModelSpec, SequenceClassifier};
use aha_model::{ExecRequest, Transformer};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;
use crate::error::{io_err, Result, TrainError};
use crate::rm::data::Objective;
use crate::template::PromptTemplate;

/// aha's side file of a reward-model directory (template and objective).
pub const RM_META_FILE: &str = "reward_model.json";

/// What a reward model needs besides its weights to score like it was trained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmMeta {
    /// How prompts were templated.
    pub template: PromptTemplate,
    /// The objective it was trained with.
    pub objective: Objective,
}

/// A reward model ready to score or train.
pub struct RewardModel {
    /// The classifier (trainable variables, tokenizer, config).
    pub inner: SequenceClassifier,
    /// How prompts are templated.
    pub template: PromptTemplate,
    /// The objective (informational when scoring).
    pub objective: Objective,
    /// Detached views of the body and head (share storage; build no graph).
    frozen: (Transformer, Tensor),
}

impl RewardModel {
    /// Loads a reward-model directory (or any base model, with a fresh head of std `head_std`).
    /// The template is the one saved beside the weights, else `template`, else `chat`.
    /// It runs where `exec` says.
    pub fn load(
        spec: &ModelSpec,
        template: Option<PromptTemplate>,
        head_std: f64,
        seed: u64,
        exec: &ExecRequest,
    ) -> Result<Self> {
        let inner = load_sequence_classifier(spec, exec, head_std, seed)?;
        let meta = match spec {
            ModelSpec::HfDir(dir) => read_meta(dir)?,
            _ => None,
        };
        let template = template.or(meta.map(|m| m.template)).unwrap_or_default();
        let objective = meta.map(|m| m.objective).unwrap_or_default();
        Self::from_classifier(inner, template, objective)
    }

    /// Loads a trained reward model from its directory, which must hold a head.
    pub fn open(dir: &Path, exec: &ExecRequest) -> Result<Self> {
        let rm = Self::load(&ModelSpec::HfDir(dir.to_path_buf()), None, 0.0, 0, exec)?;
        if !rm.inner.head_loaded {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: "no `score.weight`: this is not a reward model (train one with `aha rm train`)".into(),
            });
        }
        Ok(rm)
    }

    /// Wraps a classifier.
    pub fn from_classifier(inner: SequenceClassifier, template: PromptTemplate, objective: Objective) -> Result<Self> {
        let frozen = (inner.backbone.detached()?, inner.score.detach());
        Ok(Self { inner, template, objective, frozen })
    }

    /// Trains LoRA adapters on the body (and the head in full) instead of every parameter.
    pub fn apply_lora(&mut self, lora: &aha_model::LoraConfig, origin: &str) -> Result<()> {
        self.inner.apply_lora(lora, origin)?;
        self.frozen = (self.inner.backbone.detached()?, self.inner.score.detach());
        Ok(())
    }

    /// The context length: sequences longer than this cannot be scored.
    pub fn max_length(&self) -> usize {
        self.inner.config.max_position_embeddings
    }

    /// Token ids of the templated `prompt` followed by `response` (trailing EOS dropped).
    pub fn encode(&self, prompt: &str, response: &str) -> Result<Vec<u32>> {
        let tok = &self.inner.tokenizer;
        let text = self.template.render(tok, prompt)? + response;
        let mut ids = tok.encode(&text, false)?;
        while ids.len() > 1 && ids.last().is_some_and(|id| tok.eos_token_ids().contains(id)) {
            ids.pop();
        }
        Ok(ids)
    }

    /// Differentiable scores `[B]` of token sequences (one padded batch).
    pub fn forward(&self, seqs: &[&[u32]]) -> Result<Tensor> {
        let (ids, mask, pos) = pad_right(seqs, self.inner.score.device())?;
        Ok(self.inner.forward_scores(&ids, &mask, &pos)?)
    }

    /// Scores token sequences without a graph, `batch_size` at a time in length order; a
    /// sequence longer than the context (or empty) scores `None`.
    pub fn score_ids(&self, seqs: &[Vec<u32>], batch_size: usize) -> Result<Vec<Option<f32>>> {
        let limit = self.max_length();
        let mut order: Vec<usize> =
            (0..seqs.len()).filter(|&i| !seqs[i].is_empty() && seqs[i].len() <= limit).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut out = vec![None; seqs.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
            let (ids, mask, pos) = pad_right(&batch, self.frozen.1.device())?;
            let scores = pooled_scores(&self.frozen.0, &self.frozen.1, &ids, &mask, &pos)?;
            for (&i, s) in chunk.iter().zip(scores.to_dtype(DType::F32)?.to_vec1::<f32>()?) {
                out[i] = Some(s);
            }
        }
        Ok(out)
    }

    /// Scores (prompt, response) texts; `None` where the sequence exceeds the context.
    pub fn score(&self, items: &[(&str, &str)], batch_size: usize) -> Result<Vec<Option<f32>>> {
        let seqs = items.iter().map(|(p, r)| self.encode(p, r)).collect::<Result<Vec<_>>>()?;
        self.score_ids(&seqs, batch_size)
    }

    /// Saves the Hugging Face classification directory and [`RM_META_FILE`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::run::ensure_finite(&self.inner.backbone)?;
        let head = self.inner.score.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !head.is_finite() {
            return Err(TrainError::Other("refusing to save: `score.weight` is not finite".into()));
        }
        self.inner.save(dir)?;
        let meta = RmMeta { template: self.template, objective: self.objective };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| TrainError::Other(e.to_string()))?;
        write_atomic(&dir.join(RM_META_FILE), &json)
    }
}

fn read_meta(dir: &Path) -> Result<Option<RmMeta>> {
    let path = dir.join(RM_META_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let meta = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint { path: path.clone(), reason: format!("invalid {RM_META_FILE}: {e}") })?;
    Ok(Some(meta))
}

/// Right-padded `[B, T]` ids (pad 0), mask and positions.
pub fn pad_right(seqs: &[&[u32]], device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let b = seqs.len();
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![0u32; b * t];
    let mut mask = vec![0f32; b * t];
    let mut pos = vec![0u32; b * t];
    for (r, s) in seqs.iter().enumerate() {
        for (j, &tok) in s.iter().enumerate() {
            ids[r * t + j] = tok;
            mask[r * t + j] = 1.0;
            pos[r * t + j] = j as u32;
        }
    }
    Ok((
        Tensor::from_vec(ids, (b, t), device)?,
        Tensor::from_vec(mask, (b, t), device)?,
        Tensor::from_vec(pos, (b, t), device)?,
    ))
}
