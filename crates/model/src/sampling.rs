//! Logits processing and token sampling: temperature, top-k, top-p, min-p, and a per-sample
//! random stream.
//!
//! Each sample draws from its own ChaCha8 stream keyed by `(seed, prompt index, sample index)`
//! ([`sample_rng`]), so a sample's tokens do not depend on which other samples share its batch.
//!
//! The processed distribution is built in `transformers`' warper order: temperature, then top-k,
//! then top-p (nucleus), then min-p. Whatever the processing, [`sample_token`] also returns the
//! log-probability of the chosen token under the **unmodified** model distribution
//! (`log_softmax(logits)`, temperature 1, no truncation). That is the `log π_old(o_t | q, o_<t)`
//! GRPO's importance ratio needs: the policy being optimised is the model itself, not the
//! truncated or sharpened sampling distribution.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{ModelError, Result};

/// How logits are turned into the distribution a token is drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy (argmax, lowest id on ties). Default 1.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens. Default `None` (no limit).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (0 < p ≤ 1).
    /// Default `None`.
    pub top_p: Option<f32>,
    /// Drop tokens whose probability is below `min_p` × the top token's (0 ≤ min_p ≤ 1).
    /// Default `None`.
    pub min_p: Option<f32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 1.0, top_k: None, top_p: None, min_p: None }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0).
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(format!("sampling: {m}")));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature {} must be finite and >= 0", self.temperature));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be >= 1 (use None to disable)".into());
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad(format!("top_p {p} must be in (0, 1]"));
        }
        if let Some(m) = self.min_p.filter(|m| !(0.0..=1.0).contains(m)) {
            return bad(format!("min_p {m} must be in [0, 1]"));
        }
        Ok(())
    }

    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// The random stream of one sample, a pure function of `(seed, prompt_index, sample_index)`.
///
/// The three numbers are laid out verbatim in the 256-bit ChaCha key (plus a domain tag), so
/// distinct triples give distinct, independent streams.
pub fn sample_rng(seed: u64, prompt_index: u64, sample_index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&prompt_index.to_le_bytes());
    key[16..24].copy_from_slice(&sample_index.to_le_bytes());
    key[24..32].copy_from_slice(b"aha-smpl");
    ChaCha8Rng::from_seed(key)
}

/// One sampled token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// `log_softmax(logits)[token]`: its log-probability under the unmodified distribution
    /// (temperature 1, no truncation), whatever [`SamplingParams`] were used to draw it.
    pub logprob: f32,
}

/// Draws one token from `logits` (one row, full vocabulary) processed by `params`.
///
/// Consumes exactly one uniform draw from `rng` unless `params` is greedy (then none), so a
/// sample's stream stays aligned with its token positions.
pub fn sample_token<R: Rng + ?Sized>(logits: &[f32], params: &SamplingParams, rng: &mut R) -> Result<Sampled> {
    if params.is_greedy() {
        let token = argmax(logits)?;
        return Ok(Sampled { token, logprob: log_softmax_at(logits, token as usize)? });
    }
    params.validate()?;
    let max = max_logit(logits)?;
    let weights = scaled_weights(logits, max, params.temperature);
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    // At temperature 1 the weights are exp(l − max): their sum gives the log-normaliser too.
    let log_z = if params.temperature == 1.0 { total.ln() } else { log_sum_exp_shifted(logits, max) };
    let token = if truncates(params, logits.len()) {
        let cands = truncate(&weights, params);
        let kept: f64 = cands.iter().map(|c| c.1).sum();
        pick(&cands, rng.random::<f64>() * kept)
    } else {
        pick_dense(&weights, rng.random::<f64>() * total)
    };
    let logprob = ((logits[token as usize] - max) as f64 - log_z) as f32;
    Ok(Sampled { token, logprob })
}

/// The processed distribution as a dense probability vector (zeros for removed tokens).
/// Greedy puts all mass on the argmax. Useful for tests and for inspecting a configuration.
pub fn processed_probs(logits: &[f32], params: &SamplingParams) -> Result<Vec<f64>> {
    let mut out = vec![0.0; logits.len()];
    if params.is_greedy() {
        out[argmax(logits)? as usize] = 1.0;
        return Ok(out);
    }
    let cands = candidates(logits, params)?;
    let total: f64 = cands.iter().map(|c| c.1).sum();
    for (id, w) in cands {
        out[id as usize] = w / total;
    }
    Ok(out)
}

/// `log_softmax(logits)[index]`, computed in f64.
pub fn log_softmax_at(logits: &[f32], index: usize) -> Result<f32> {
    let max = max_logit(logits)?;
    let lse = log_sum_exp_shifted(logits, max);
    let x = logits.get(index).ok_or_else(|| empty_or_oob(logits.len(), index))?;
    Ok(((*x - max) as f64 - lse) as f32)
}

fn empty_or_oob(len: usize, index: usize) -> ModelError {
    ModelError::InvalidConfig(format!("sampling: token {index} outside logits of length {len}"))
}

fn max_logit(logits: &[f32]) -> Result<f32> {
    let mut max = f32::NEG_INFINITY;
    for &l in logits {
        // A NaN, once taken, stays (every comparison with it is false) and fails the check below.
        max = if l > max || l.is_nan() { l } else { max };
    }
    if !max.is_finite() {
        return Err(ModelError::InvalidConfig(format!(
            "sampling: logits (length {}) have no finite maximum (empty, all -inf, or +inf/NaN)",
            logits.len()
        )));
    }
    Ok(max)
}

fn argmax(logits: &[f32]) -> Result<u32> {
    let max = max_logit(logits)?;
    let i = logits.iter().position(|&l| l == max).ok_or_else(|| empty_or_oob(logits.len(), 0))?;
    Ok(i as u32)
}

/// Walks the candidates' cumulative weight up to `u` (falls back to the last candidate when
/// rounding leaves `u` just past the total).
fn pick(cands: &[(u32, f64)], u: f64) -> u32 {
    let mut acc = 0.0;
    for &(id, w) in cands {
        acc += w;
        if u < acc {
            return id;
        }
    }
    cands.last().map_or(0, |c| c.0)
}

/// `exp((l − max) / T)` per token (the top token has weight 1).
fn scaled_weights(logits: &[f32], max: f32, temperature: f32) -> Vec<f32> {
    let inv_t = 1.0 / temperature;
    logits.iter().map(|&l| ((l - max) * inv_t).exp()).collect()
}

/// `ln Σ exp(l − max)`.
fn log_sum_exp_shifted(logits: &[f32], max: f32) -> f64 {
    logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln()
}

/// Whether top-k, top-p or min-p can remove anything.
fn truncates(params: &SamplingParams, vocab: usize) -> bool {
    params.top_k.is_some_and(|k| k < vocab)
        || params.top_p.is_some_and(|p| p < 1.0)
        || params.min_p.is_some_and(|m| m > 0.0)
}

/// Inverse-CDF draw over dense weights (falls back to the last positive weight on rounding).
fn pick_dense(weights: &[f32], u: f64) -> u32 {
    let mut acc = 0.0f64;
    for (i, &w) in weights.iter().enumerate() {
        acc += w as f64;
        if u < acc {
            return i as u32;
        }
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
}

/// The surviving tokens with unnormalised weights `exp((l − max) / T)`, after top-k, top-p and
/// min-p. Truncated candidate lists come out sorted by decreasing weight; the untruncated one in
/// id order.
fn candidates(logits: &[f32], params: &SamplingParams) -> Result<Vec<(u32, f64)>> {
    params.validate()?;
    let max = max_logit(logits)?;
    Ok(truncate(&scaled_weights(logits, max, params.temperature), params))
}

/// Applies top-k, then top-p, then min-p to `weights` (top weight 1).
fn truncate(weights: &[f32], params: &SamplingParams) -> Vec<(u32, f64)> {
    let mut cands: Vec<(u32, f64)> =
        weights.iter().enumerate().filter(|c| *c.1 > 0.0).map(|(i, &w)| (i as u32, w as f64)).collect();
    let k = params.top_k.unwrap_or(usize::MAX);
    if k < cands.len() || params.top_p.is_some_and(|p| p < 1.0) {
        cands = top_truncate(cands, k, params.top_p.unwrap_or(1.0) as f64);
    }
    if let Some(m) = params.min_p.filter(|m| *m > 0.0) {
        // The top token has weight exactly 1 (its logit is the max).
        cands.retain(|c| c.1 >= m as f64);
    }
    cands
}

/// Keeps the top `k` candidates, then the smallest prefix of them whose probability (relative to
/// the mass surviving top-k) reaches `top_p`. Sorts only as much of the list as needed: the
/// head is widened geometrically until it holds the nucleus.
fn top_truncate(mut cands: Vec<(u32, f64)>, k: usize, top_p: f64) -> Vec<(u32, f64)> {
    let desc = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k < cands.len() {
        cands.select_nth_unstable_by(k, desc);
        cands.truncate(k);
    }
    let mass: f64 = cands.iter().map(|c| c.1).sum();
    let mut head = cands.len().min(64);
    loop {
        if head < cands.len() {
            cands.select_nth_unstable_by(head, desc);
        }
        let mut top: Vec<(u32, f64)> = cands[..head].to_vec();
        top.sort_unstable_by(desc);
        if let Some(n) = nucleus_len(&top, mass, top_p) {
            top.truncate(n);
            return top;
        }
        if head == cands.len() {
            return top;
        }
        head = (head * 8).min(cands.len());
    }
}

/// Number of leading candidates (sorted by decreasing weight) that form the nucleus: a token is
/// kept while the mass strictly before it is below `top_p`. `None` when `sorted` runs out first.
fn nucleus_len(sorted: &[(u32, f64)], mass: f64, top_p: f64) -> Option<usize> {
    let mut before = 0.0;
    for (i, c) in sorted.iter().enumerate() {
        if before >= top_p * mass {
            return Some(i.max(1));
        }
        before += c.1;
    }
    (before >= top_p * mass).then_some(sorted.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed logit vector: probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04 (plus a constant).
    const PROBS: [f64; 6] = [0.4, 0.25, 0.15, 0.1, 0.06, 0.04];

    fn logits() -> Vec<f32> {
        PROBS.iter().map(|p| (p.ln() + 3.0) as f32).collect()
    }

    fn normalise(w: &[f64]) -> Vec<f64> {
        let s: f64 = w.iter().sum();
        w.iter().map(|x| x / s).collect()
    }

    /// Upper 0.1 % quantile of the chi-square distribution for 1..=5 degrees of freedom.
    const CHI2_999: [f64; 5] = [10.83, 13.82, 16.27, 18.47, 20.52];

    /// Draws `n` tokens with a fixed seed and checks the histogram against `expected` with a
    /// chi-square goodness-of-fit test (p = 0.001); zero-probability tokens must never appear.
    fn chi_square(params: SamplingParams, expected: &[f64]) {
        let n = 40_000;
        let l = logits();
        let mut rng = sample_rng(1234, 0, 0);
        let mut counts = vec![0usize; l.len()];
        for _ in 0..n {
            counts[sample_token(&l, &params, &mut rng).unwrap().token as usize] += 1;
        }
        let mut stat = 0.0;
        let mut cells = 0;
        for (c, e) in counts.iter().zip(expected) {
            if *e == 0.0 {
                assert_eq!(*c, 0, "{params:?}: a removed token was drawn ({counts:?})");
                continue;
            }
            let exp = e * n as f64;
            stat += (*c as f64 - exp).powi(2) / exp;
            cells += 1;
        }
        let crit = CHI2_999[cells - 2];
        assert!(stat < crit, "{params:?}: chi2 {stat:.2} >= {crit} with counts {counts:?} vs {expected:?}");
    }

    #[test]
    fn plain_sampling_matches_softmax() {
        chi_square(SamplingParams::default(), &PROBS);
    }

    #[test]
    fn temperature_sharpens_as_a_power() {
        let t = 0.5;
        let w: Vec<f64> = PROBS.iter().map(|p| p.powf(1.0 / t)).collect();
        chi_square(SamplingParams { temperature: t as f32, ..Default::default() }, &normalise(&w));
        let t = 2.0;
        let w: Vec<f64> = PROBS.iter().map(|p| p.powf(1.0 / t)).collect();
        chi_square(SamplingParams { temperature: t as f32, ..Default::default() }, &normalise(&w));
    }

    #[test]
    fn top_k_keeps_k_most_likely() {
        let p = SamplingParams { top_k: Some(3), ..Default::default() };
        chi_square(p, &normalise(&[0.4, 0.25, 0.15, 0.0, 0.0, 0.0]));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Mass before token 2 is 0.65 < 0.7, so it is kept; before token 3 it is 0.8.
        let p = SamplingParams { top_p: Some(0.7), ..Default::default() };
        chi_square(p, &normalise(&[0.4, 0.25, 0.15, 0.0, 0.0, 0.0]));
        let p = SamplingParams { top_p: Some(0.5), ..Default::default() };
        chi_square(p, &normalise(&[0.4, 0.25, 0.0, 0.0, 0.0, 0.0]));
    }

    #[test]
    fn min_p_drops_tokens_below_a_fraction_of_the_top() {
        // Threshold 0.3 × 0.4 = 0.12: tokens 0..=2 stay.
        let p = SamplingParams { min_p: Some(0.3), ..Default::default() };
        chi_square(p, &normalise(&[0.4, 0.25, 0.15, 0.0, 0.0, 0.0]));
    }

    #[test]
    fn combined_processing_follows_transformers_order() {
        // T = 0.5 squares the probabilities: 0.16, 0.0625, 0.0225, 0.01, ... top_k 4 keeps four
        // (mass 0.255); top_p 0.9 of that mass (0.2295) keeps three (0.2225 comes before the
        // third); min_p 0.3 (threshold 0.3 × 0.16 = 0.048) then drops the third.
        let p = SamplingParams { temperature: 0.5, top_k: Some(4), top_p: Some(0.9), min_p: Some(0.3) };
        chi_square(p, &normalise(&[0.16, 0.0625, 0.0, 0.0, 0.0, 0.0]));
        let p = SamplingParams { temperature: 0.5, top_k: Some(4), top_p: Some(0.9), ..Default::default() };
        chi_square(p, &normalise(&[0.16, 0.0625, 0.0225, 0.0, 0.0, 0.0]));
    }

    #[test]
    fn greedy_takes_argmax_and_reports_unmodified_logprob() {
        let s = sample_token(&logits(), &SamplingParams::greedy(), &mut sample_rng(0, 0, 0)).unwrap();
        assert_eq!(s.token, 0);
        assert!((s.logprob as f64 - 0.4f64.ln()).abs() < 1e-5, "{}", s.logprob);
    }

    #[test]
    fn logprob_ignores_truncation_and_temperature() {
        let p = SamplingParams { temperature: 0.3, top_k: Some(2), ..Default::default() };
        let mut rng = sample_rng(5, 1, 2);
        for _ in 0..100 {
            let s = sample_token(&logits(), &p, &mut rng).unwrap();
            let want = PROBS[s.token as usize].ln();
            assert!((s.logprob as f64 - want).abs() < 1e-5, "{s:?} vs {want}");
        }
    }

    #[test]
    fn top_p_on_a_large_vocabulary_widens_the_head() {
        // A flat vocabulary of 5000 tokens: the nucleus of 0.5 needs 2500 of them, more than the
        // first 64-token head, so the search must widen.
        let l = vec![0.0f32; 5000];
        let probs = processed_probs(&l, &SamplingParams { top_p: Some(0.5), ..Default::default() }).unwrap();
        assert_eq!(probs.iter().filter(|p| **p > 0.0).count(), 2500);
    }

    #[test]
    fn streams_depend_on_every_part_of_the_key() {
        let first = |s, p, i| sample_rng(s, p, i).random::<u64>();
        assert_eq!(first(1, 2, 3), first(1, 2, 3));
        assert_ne!(first(1, 2, 3), first(1, 3, 2));
        assert_ne!(first(1, 2, 3), first(2, 2, 3));
        assert_ne!(first(1, 2, 3), first(1, 2, 4));
    }

    #[test]
    fn invalid_params_are_rejected() {
        let l = logits();
        let mut rng = sample_rng(0, 0, 0);
        for p in [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { top_k: Some(0), ..Default::default() },
            SamplingParams { top_p: Some(0.0), ..Default::default() },
            SamplingParams { min_p: Some(1.5), ..Default::default() },
        ] {
            assert!(sample_token(&l, &p, &mut rng).is_err(), "{p:?}");
        }
        assert!(sample_token(&[], &SamplingParams::default(), &mut rng).is_err());
        assert!(sample_token(&[f32::NAN], &SamplingParams::default(), &mut rng).is_err());
    }
}
