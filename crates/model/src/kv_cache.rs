//! The key/value cache for incremental decoding, owned by the caller (not hidden in the model).
//!
//! Storage for every layer is allocated once, at `[batch, kv_heads, max_len, head_dim]`, and
//! written in place as tokens arrive; a per-row validity mask records which slots hold real
//! tokens (left-padded prompts leave padding slots invalid). Rows can be selected or repeated
//! (`select_rows`), which is how a rollout shares one prompt prefill across G samples and drops
//! finished sequences. Caches of different lengths can be joined into one batch
//! ([`KvCache::merge`]), which is how a serving loop adds requests to a running batch.

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

    /// Joins caches into one batch (rows of `parts[0]` first), each right-aligned: a part's
    /// filled slots end at the merged cache's fill position, and the slots before them are
    /// invalid. Leading slots no row of a part uses are dropped first, so rows whose tokens are
    /// contiguous and end at the fill position (every prefilled-then-decoded row) keep the
    /// merged length at the longest row's. `extra` free slots follow, for decoding.
    ///
    /// Keys and values keep their slots' contents and validity, so attention over the merged
    /// cache equals attention over each part; positions are the caller's, per row.
    pub fn merge(parts: &[KvCache], extra: usize) -> Result<Self> {
        let first = parts.first().ok_or_else(|| ModelError::InvalidConfig("KV cache merge: no caches".into()))?;
        let layers = first.keys.len();
        if parts.iter().any(|p| p.keys.len() != layers) {
            return Err(ModelError::InvalidConfig("KV cache merge: caches have different layer counts".into()));
        }
        let used: Vec<(usize, usize)> = parts.iter().map(KvCache::used_span).collect::<Result<_>>()?;
        let len = used.iter().map(|&(_, n)| n).max().unwrap_or(0);
        let max_len = len + extra;
        let place = |t: &Tensor, (start, n): (usize, usize)| -> candle_core::Result<Tensor> {
            let body = t.narrow(2, start, n)?;
            let mut dims = body.dims().to_vec();
            let mut pieces = Vec::with_capacity(3);
            dims[2] = len - n;
            pieces.push(Tensor::zeros(dims.as_slice(), body.dtype(), body.device())?);
            pieces.push(body);
            dims[2] = extra;
            pieces.push(Tensor::zeros(dims.as_slice(), t.dtype(), t.device())?);
            Tensor::cat(&pieces, 2)
        };
        // Every part's tensor (slots on dim 2) placed, then the parts' rows stacked.
        let join = |pick: &dyn Fn(&KvCache) -> candle_core::Result<Tensor>| -> candle_core::Result<Tensor> {
            let placed: Vec<Tensor> =
                parts.iter().zip(&used).map(|(p, &span)| place(&pick(p)?, span)).collect::<candle_core::Result<_>>()?;
            Tensor::cat(&placed, 0)
        };
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for l in 0..layers {
            keys.push(join(&|p: &KvCache| Ok(p.keys[l].clone()))?.contiguous()?);
            values.push(join(&|p: &KvCache| Ok(p.values[l].clone()))?.contiguous()?);
        }
        // The mask is [batch, slots]: viewed as [batch, 1, slots] so slots sit on dim 2.
        let valid = join(&|p: &KvCache| p.valid.unsqueeze(1))?.squeeze(1)?.contiguous()?;
        Ok(Self { keys, values, valid, len, max_len })
    }

    /// `(first used slot, used slots up to the fill position)`: the span of filled slots that
    /// at least one row marks valid, starting at the first such slot.
    fn used_span(&self) -> Result<(usize, usize)> {
        if self.len == 0 {
            return Ok((0, 0));
        }
        let valid: Vec<Vec<f32>> = self.valid.narrow(1, 0, self.len)?.to_vec2()?;
        let start = (0..self.len).find(|&s| valid.iter().any(|row| row[s] != 0.0)).unwrap_or(self.len);
        Ok((start, self.len - start))
    }
}
