//! The rollout engine: G samples per prompt, decoded together in one batch against a KV cache.
//!
//! How a rollout runs:
//! 1. every prompt is prefilled once, in one left-padded batch; only the last position of each
//!    prompt is projected to logits;
//! 2. the cache is allocated once, for the longest prompt plus `max_new_tokens`, and fanned out
//!    to `prompts × G` rows with [`KvCache::select_rows`]: the G samples share their prompt's
//!    prefill;
//! 3. each step samples one token per live row, then decodes all live rows in one call;
//! 4. a row finishes on an EOS id, on a stop string (matched on decoded text, so it is caught
//!    when split across tokens), or at `max_new_tokens`; finished rows are dropped from the
//!    batch (the cache is compacted) once they are at least an eighth of it, so they stop
//!    costing compute.
//!
//! Each sample draws from its own random stream keyed by `(seed, prompt index, sample index)`
//! ([`crate::sampling::sample_rng`]): a sample's tokens do not depend on the batch it was
//! decoded in. The returned log-probabilities are under the **unmodified** model distribution
//! (temperature 1, no top-k/top-p/min-p), which is what GRPO's `log π_old` must be.

use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use rand_chacha::ChaCha8Rng;

use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::sampling::{sample_rng, sample_token, SamplingParams};
use crate::transformer::Transformer;

/// What a rollout generates and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Samples per prompt (G). Default 1.
    pub group_size: usize,
    /// Maximum completion length in tokens. Default 256.
    pub max_new_tokens: usize,
    /// How each token is drawn. Default: temperature 1, no truncation.
    pub sampling: SamplingParams,
    /// Token ids that end a completion (kept as its last token). Default none; callers usually
    /// pass the tokenizer's or the model config's EOS ids.
    pub eos_ids: Vec<u32>,
    /// Strings that end a completion when they appear in its decoded text; the token that
    /// completes one is kept. Needs a decoder. Default none.
    pub stop_strings: Vec<String>,
    /// Seed of every sample's random stream. Default 0.
    pub seed: u64,
    /// Index of `prompts[0]` in the caller's numbering: prompt `i` uses stream index
    /// `prompt_index_offset + i`, so splitting a dataset into rollout batches differently does
    /// not change any sample. Default 0.
    pub prompt_index_offset: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            group_size: 1,
            max_new_tokens: 256,
            sampling: SamplingParams::default(),
            eos_ids: Vec::new(),
            stop_strings: Vec::new(),
            seed: 0,
            prompt_index_offset: 0,
        }
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FinishReason {
    /// An EOS id was sampled (it is the completion's last token).
    Eos,
    /// A stop string appeared in the decoded completion (the completing token is the last).
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

/// Wall-clock timing of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SampleTiming {
    /// Time of the shared prompt prefill (the same for every sample of a rollout).
    pub prefill: Duration,
    /// Time from the start of the rollout until this sample finished.
    pub total: Duration,
}

/// One generated completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Position of the prompt in the `prompts` slice.
    pub prompt_index: usize,
    /// Index of this sample within its group (0..G).
    pub sample_index: usize,
    /// Generated token ids (EOS or stop-completing token included).
    pub completion_ids: Vec<u32>,
    /// `log π(token_t | prompt, tokens_<t)` under the unmodified distribution (temperature 1,
    /// no truncation), one per completion token: GRPO's `log π_old`.
    pub logprobs: Vec<f32>,
    /// Why the completion ended.
    pub finish_reason: FinishReason,
    /// Wall-clock timing.
    pub timing: SampleTiming,
}

/// A text decoder used to match stop strings, e.g. a tokenizer's `decode`.
pub type StopDecoder<'a> = &'a dyn Fn(&[u32]) -> String;

/// Generates `cfg.group_size` completions for each prompt (token ids, any lengths ≥ 1).
///
/// Returns `result[prompt][sample]`. `stop_decoder` turns token ids into text for stop-string
/// matching; it is required when `cfg.stop_strings` is not empty. The model is used through a
/// detached view, so no autograd graph is built.
pub fn rollout(
    model: &Transformer,
    prompts: &[Vec<u32>],
    cfg: &RolloutConfig,
    stop_decoder: Option<StopDecoder<'_>>,
) -> Result<Vec<Vec<Sample>>> {
    validate(prompts, cfg, stop_decoder.is_some())?;
    if prompts.is_empty() || cfg.group_size == 0 {
        return Ok(vec![Vec::new(); prompts.len()]);
    }
    let model = model.detached()?;
    let groups = row_groups(&model, prompts.len(), stop_decoder.is_some());
    if groups > 1 {
        return rollout_split(&model, prompts, cfg, groups);
    }
    rollout_batch(&model, prompts, cfg, stop_decoder)
}

/// Largest model (parameter bytes) whose rollout is split into per-thread batches: its weights
/// stay in the caches, so each thread reading all of them costs less than the per-operation
/// hand-offs of threads sharing every matrix product.
const SPLIT_MAX_PARAM_BYTES: usize = 32 << 20;

/// How many independent batches `model` decodes best at once: one per thread of the calling
/// thread's pool for a small model on the CPU (each batch on its own thread with
/// single-threaded kernels), else 1 (one batch whose products share the threads). The one
/// place this is decided, for [`rollout`] and for `aha serve`'s engine.
pub fn decode_shards(model: &Transformer) -> usize {
    let threads = rayon::current_num_threads();
    let bytes: usize = model.named_parameters().iter().map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes()).sum();
    if !model.device().is_cpu() || threads < 2 || bytes > SPLIT_MAX_PARAM_BYTES {
        return 1;
    }
    threads
}

/// A pool of one thread: kernels run inside it are single-threaded (a decode shard's pool).
pub fn single_thread_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| ModelError::InvalidConfig(format!("no decoding thread pool: {e}")))
}

/// How many independent batches to decode at once: [`decode_shards`] with at least two prompts
/// per batch. (A stop decoder is not `Sync`, so rollouts with stop strings stay one batch.)
fn row_groups(model: &Transformer, prompts: usize, has_decoder: bool) -> usize {
    if has_decoder {
        return 1;
    }
    decode_shards(model).min(prompts / 2).max(1)
}

/// Decodes contiguous shares of the prompts concurrently, each on its own thread with
/// single-threaded kernels. Every row's arithmetic is the same as in one batch (each output of a
/// product, norm or attention reads only its own row), and each sample keeps its random stream,
/// so the samples are those of [`rollout_batch`] over all prompts.
fn rollout_split(
    model: &Transformer,
    prompts: &[Vec<u32>],
    cfg: &RolloutConfig,
    groups: usize,
) -> Result<Vec<Vec<Sample>>> {
    let n = prompts.len();
    let bounds: Vec<(usize, usize)> = (0..groups).map(|g| (g * n / groups, (g + 1) * n / groups)).collect();
    let parts: Vec<Result<Vec<Vec<Sample>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = bounds
            .iter()
            .map(|&(lo, hi)| {
                s.spawn(move || {
                    let sub = RolloutConfig { prompt_index_offset: cfg.prompt_index_offset + lo as u64, ..cfg.clone() };
                    single_thread_pool()?.install(|| rollout_batch(model, &prompts[lo..hi], &sub, None))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ModelError::InvalidConfig("rollout: a decoding thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for (part, &(lo, _)) in parts.into_iter().zip(&bounds) {
        for mut group in part? {
            for sample in &mut group {
                sample.prompt_index += lo;
            }
            out.push(group);
        }
    }
    Ok(out)
}

/// [`rollout`] of all prompts in one batch on the calling thread's pool (`model` detached).
fn rollout_batch(
    model: &Transformer,
    prompts: &[Vec<u32>],
    cfg: &RolloutConfig,
    stop_decoder: Option<StopDecoder<'_>>,
) -> Result<Vec<Vec<Sample>>> {
    let stops = StopMatcher::new(&cfg.stop_strings, stop_decoder);
    let start = Instant::now();
    let (mut cache, prompt_logits) = prefill(model, prompts, cfg.max_new_tokens)?;
    let prefill_time = start.elapsed();
    let fan_out: Vec<u32> = (0..prompts.len() as u32).flat_map(|p| std::iter::repeat_n(p, cfg.group_size)).collect();
    cache = cache.select_rows(&fan_out)?;
    let mut rows: Vec<Row> = fan_out.iter().enumerate().map(|(i, &p)| Row::new(p as usize, i, prompts, cfg)).collect();
    let mut logits: Vec<Vec<f32>> = fan_out.iter().map(|&p| prompt_logits[p as usize].clone()).collect();
    // `live[j]` is the row occupying batch slot `j`.
    let mut live: Vec<usize> = (0..rows.len()).collect();
    loop {
        for (slot, &r) in live.iter().enumerate() {
            if rows[r].finish.is_none() {
                rows[r].step(&logits[slot], cfg, &stops, start)?;
            }
        }
        let done: Vec<bool> = live.iter().map(|&r| rows[r].finish.is_some()).collect();
        if done.iter().all(|&d| d) {
            break;
        }
        if let Some(keep) = slots_to_keep(&done) {
            cache = cache.select_rows(&keep)?;
            live = keep.iter().map(|&j| live[j as usize]).collect();
        }
        logits = decode_step(model, &rows, &live, &mut cache)?;
    }
    Ok(collect(rows, prompts.len(), prefill_time))
}

fn validate(prompts: &[Vec<u32>], cfg: &RolloutConfig, has_decoder: bool) -> Result<()> {
    cfg.sampling.validate()?;
    let bad = |m: String| Err(ModelError::InvalidConfig(format!("rollout: {m}")));
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return bad(format!("prompt {i} is empty (a completion needs at least one token to follow)"));
    }
    if cfg.max_new_tokens == 0 {
        return bad("max_new_tokens must be >= 1".into());
    }
    if !cfg.stop_strings.is_empty() && !has_decoder {
        return bad("stop strings need a decoder (pass the tokenizer's decode)".into());
    }
    if cfg.stop_strings.iter().any(String::is_empty) {
        return bad("stop strings must not be empty".into());
    }
    Ok(())
}

/// Prefills all prompts in one left-padded batch into a fresh cache sized for the longest
/// prompt plus `max_new_tokens`; returns the cache and each prompt's next-token logits.
/// Prompts must be non-empty. Also the first step of `aha serve`'s admission of new requests.
pub fn prefill(model: &Transformer, prompts: &[Vec<u32>], max_new_tokens: usize) -> Result<(KvCache, Vec<Vec<f32>>)> {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let n = prompts.len();
    let (mut ids, mut mask, mut pos) = (vec![0u32; n * width], vec![0u8; n * width], vec![0u32; n * width]);
    for (p, prompt) in prompts.iter().enumerate() {
        let pad = width - prompt.len();
        for (i, &tok) in prompt.iter().enumerate() {
            ids[p * width + pad + i] = tok;
            mask[p * width + pad + i] = 1;
            pos[p * width + pad + i] = i as u32;
        }
    }
    let dev = model.device();
    let mut cache = KvCache::new(model.config(), n, width + max_new_tokens, model.dtype(), dev)?;
    let ids = Tensor::from_vec(ids, (n, width), dev)?;
    let mask = Tensor::from_vec(mask, (n, width), dev)?;
    let pos = Tensor::from_vec(pos, (n, width), dev)?;
    let hidden = model.decode_hidden(&ids, &mask, &pos, &mut cache)?; // [n, width, hidden]
    let last = hidden.narrow(1, width - 1, 1)?; // [n, 1, hidden]
    let logits = model.logits(&last)?.squeeze(1)?.to_dtype(DType::F32)?; // [n, vocab]
    Ok((cache, logits.to_vec2()?))
}

/// Feeds each live row's last token (one position) and returns the next logits per batch slot.
fn decode_step(model: &Transformer, rows: &[Row], live: &[usize], cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
    let ids: Vec<u32> = live.iter().map(|&r| rows[r].ids.last().copied().unwrap_or(0)).collect();
    let pos: Vec<u32> = live.iter().map(|&r| (rows[r].prompt_len + rows[r].ids.len() - 1) as u32).collect();
    decode_next(model, ids, pos, cache)
}

/// Decodes one position per row (`ids[j]` at position `pos[j]`) into `cache` and returns each
/// row's next-token logits (f32). Also the step of `aha serve`'s engine.
pub fn decode_next(model: &Transformer, ids: Vec<u32>, pos: Vec<u32>, cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
    let b = ids.len();
    let dev = model.device();
    let ids = Tensor::from_vec(ids, (b, 1), dev)?;
    let pos = Tensor::from_vec(pos, (b, 1), dev)?;
    let mask = Tensor::ones((b, 1), DType::U8, dev)?;
    let logits = model.decode(&ids, &mask, &pos, cache)?; // [b, 1, vocab]
    Ok(logits.squeeze(1)?.to_dtype(DType::F32)?.to_vec2()?)
}

/// The batch slots to keep when the finished rows (`done[j]`: slot `j`'s row has finished) are
/// worth dropping from the KV cache, at least an eighth of the batch; else `None` (the finished
/// rows keep decoding, unread, until then). Also `aha serve`'s rule.
pub fn slots_to_keep(done: &[bool]) -> Option<Vec<u32>> {
    let finished = done.iter().filter(|&&d| d).count();
    if finished == 0 || finished * 8 < done.len() {
        return None;
    }
    Some((0..done.len()).filter(|&j| !done[j]).map(|j| j as u32).collect())
}

/// Whether a sample that just emitted its last token (`ids`'s last) ends, and why: an EOS id,
/// then a stop string, then the length limit. Also `aha serve`'s rule.
pub fn finish_reason(ids: &[u32], eos_ids: &[u32], stops: &StopMatcher, max_new_tokens: usize) -> Option<FinishReason> {
    let last = ids.last()?;
    if eos_ids.contains(last) {
        Some(FinishReason::Eos)
    } else if stops.matches(ids) {
        Some(FinishReason::Stop)
    } else if ids.len() >= max_new_tokens {
        Some(FinishReason::Length)
    } else {
        None
    }
}

/// One sample being generated.
struct Row {
    prompt: usize,
    sample: usize,
    prompt_len: usize,
    rng: ChaCha8Rng,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    finish: Option<FinishReason>,
    finished_at: Duration,
}

impl Row {
    fn new(prompt: usize, row: usize, prompts: &[Vec<u32>], cfg: &RolloutConfig) -> Self {
        let sample = row % cfg.group_size;
        Self {
            prompt,
            sample,
            prompt_len: prompts[prompt].len(),
            rng: sample_rng(cfg.seed, cfg.prompt_index_offset + prompt as u64, sample as u64),
            ids: Vec::with_capacity(cfg.max_new_tokens),
            logprobs: Vec::with_capacity(cfg.max_new_tokens),
            finish: None,
            finished_at: Duration::ZERO,
        }
    }

    /// Samples the next token from `logits` and decides whether the row is finished.
    fn step(&mut self, logits: &[f32], cfg: &RolloutConfig, stops: &StopMatcher, start: Instant) -> Result<()> {
        let s = sample_token(logits, &cfg.sampling, &mut self.rng)?;
        self.ids.push(s.token);
        self.logprobs.push(s.logprob);
        self.finish = finish_reason(&self.ids, &cfg.eos_ids, stops, cfg.max_new_tokens);
        if self.finish.is_some() {
            self.finished_at = start.elapsed();
        }
        Ok(())
    }
}

fn collect(rows: Vec<Row>, n_prompts: usize, prefill: Duration) -> Vec<Vec<Sample>> {
    let mut out: Vec<Vec<Sample>> = (0..n_prompts).map(|_| Vec::new()).collect();
    for r in rows {
        out[r.prompt].push(Sample {
            prompt_index: r.prompt,
            sample_index: r.sample,
            completion_ids: r.ids,
            logprobs: r.logprobs,
            finish_reason: r.finish.unwrap_or(FinishReason::Length),
            timing: SampleTiming { prefill, total: r.finished_at },
        });
    }
    out
}

/// Finds stop strings in the decoded tail of a completion.
///
/// Only the last `window` tokens are decoded each step (enough to cover the longest stop string,
/// which spans at most one token per byte, plus slack for tokens that decode to nothing), so the
/// cost per token does not grow with the completion. A stop string is looked for in the whole
/// window; had it appeared earlier, the row would already have stopped.
pub struct StopMatcher<'a> {
    stops: &'a [String],
    decode: Option<StopDecoder<'a>>,
    window: usize,
}

impl<'a> StopMatcher<'a> {
    /// A matcher for `stops` using `decode` (no decoder: never matches).
    pub fn new(stops: &'a [String], decode: Option<StopDecoder<'a>>) -> Self {
        let window = stops.iter().map(String::len).max().unwrap_or(0) + 16;
        Self { stops, decode, window }
    }

    /// Whether the completion `ids` now contains a stop string.
    pub fn matches(&self, ids: &[u32]) -> bool {
        let Some(decode) = self.decode.filter(|_| !self.stops.is_empty()) else {
            return false;
        };
        let tail = &ids[ids.len().saturating_sub(self.window)..];
        let text = decode(tail);
        self.stops.iter().any(|s| text.contains(s.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_decoder(ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn stop_string_split_inside_a_character_is_caught() {
        // "é" is two bytes, so two byte tokens; the stop string "é!" spans three tokens.
        let stops = vec!["é!".to_string()];
        let m = StopMatcher::new(&stops, Some(&bytes_decoder));
        let ids: Vec<u32> = "abé!".bytes().map(u32::from).collect();
        assert!(!m.matches(&ids[..3]));
        assert!(!m.matches(&ids[..4]));
        assert!(m.matches(&ids));
    }

    #[test]
    fn stop_string_is_found_past_the_window_start() {
        let stops = vec!["xyz".to_string()];
        let m = StopMatcher::new(&stops, Some(&bytes_decoder));
        let mut ids: Vec<u32> = std::iter::repeat_n(u32::from(b'a'), 500).collect();
        assert!(!m.matches(&ids));
        ids.extend("xyz".bytes().map(u32::from));
        assert!(m.matches(&ids));
    }
}
