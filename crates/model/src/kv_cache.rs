//! The key/value cache for incremental decoding, owned by the caller (not hidden in the model).
//!
//! Storage for every layer is allocated once, at `[batch, kv_heads, max_len, head_dim]`, and
//! written in place as tokens arrive; a per-row validity mask records which slots hold real
//! tokens (left-padded prompts leave padding slots invalid). Rows can be selected or repeated
//! (`select_rows`), which is how a rollout shares one prompt prefill across G samples and drops
//! finished sequences.

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Per-layer key and value buffers plus the slot-validity mask shared by all layers.
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// `[batch, max_len]` f32: 1 where the slot holds a real token, 0 for padding or unused.
    valid: Tensor,
    len: usize,
    max_len: usize,
}

impl KvCache {
    /// Allocates an empty cache for `batch` rows of at most `max_len` tokens each.
    pub fn new(cfg: &ModelConfig, batch: usize, max_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim);
        let alloc = || Tensor::zeros(shape, dtype, device);
        let keys = (0..cfg.num_hidden_layers).map(|_| alloc()).collect::<candle_core::Result<_>>()?;
        let values = (0..cfg.num_hidden_layers).map(|_| alloc()).collect::<candle_core::Result<_>>()?;
        let valid = Tensor::zeros((batch, max_len), DType::F32, device)?;
        Ok(Self { keys, values, valid, len: 0, max_len })
    }

    /// Number of positions filled so far (the same for every row).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position has been filled yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in positions.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.valid.dims()[0]
    }

    /// Records the validity of `t` new positions (`mask`: `[batch, t]`, 1 real / 0 pad).
    /// Called once per decode call, before the layers append their keys and values.
    pub(crate) fn push_mask(&mut self, mask: &Tensor) -> Result<()> {
        let t = mask.dim(1)?;
        if self.len + t > self.max_len {
            return Err(ModelError::InvalidConfig(format!(
                "KV cache overflow: {} + {} tokens exceed capacity {}",
                self.len, t, self.max_len
            )));
        }
        self.valid.slice_set(&mask.to_dtype(DType::F32)?.contiguous()?, 1, self.len)?;
        Ok(())
    }

    /// Writes layer `layer`'s new keys/values (`[batch, kv_heads, t, head_dim]`) at the current
    /// position and returns views of everything cached so far, including them.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        self.keys[layer].slice_set(&k.contiguous()?, 2, self.len)?;
        self.values[layer].slice_set(&v.contiguous()?, 2, self.len)?;
        let total = self.len + t;
        Ok((self.keys[layer].narrow(2, 0, total)?, self.values[layer].narrow(2, 0, total)?))
    }

    /// Layer `layer`'s whole key and value buffers (`[batch, kv_heads, max_len, head_dim]`) and
    /// the slot mask (`[batch, max_len]`), for kernels that index slots themselves.
    pub(crate) fn buffers(&self, layer: usize) -> (&Tensor, &Tensor, &Tensor) {
        (&self.keys[layer], &self.values[layer], &self.valid)
    }

    /// The validity mask of the first `total` slots, `[batch, total]`.
    pub(crate) fn valid_prefix(&self, total: usize) -> Result<Tensor> {
        Ok(self.valid.narrow(1, 0, total)?)
    }

    /// Advances the fill position by `t` once every layer has appended.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Keeps (or repeats) rows: row `i` of the result is row `rows[i]` of `self`.
    /// Used to fan a prompt's prefill out to G samples and to drop finished sequences.
    pub fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        let idx = Tensor::from_slice(rows, rows.len(), self.valid.device())?;
        let pick = |t: &Tensor| t.index_select(&idx, 0);
        Ok(Self {
            keys: self.keys.iter().map(pick).collect::<candle_core::Result<_>>()?,
            values: self.values.iter().map(pick).collect::<candle_core::Result<_>>()?,
            valid: pick(&self.valid)?,
            len: self.len,
            max_len: self.max_len,
        })
    }
}
