//! CPU fast paths for inference (nothing here has a backward): a small-batch `x · Wᵀ` kernel
//! and fused single-token attention over the KV cache.
//!
//! Why: a decode step multiplies a handful of rows (the live samples) by every weight matrix.
//! candle's gemm packs the whole weight for each such call and synchronises its thread pool
//! around it, and the batched attention matmuls run one tiny gemm per (row, KV head); on a
//! 2-core CPU that overhead, not arithmetic, dominated rollout time (see BENCHMARKS.md). The
//! kernels here read the weight rows in place (PyTorch's `[out, in]` layout is already what a
//! row-times-row dot product wants) with AVX2/FMA when the CPU has it (detected at run time,
//! scalar code otherwise) and split the work over candle's rayon pool.
//!
//! The execution plan decides when these run (`Kernels::CpuInfer`: a CPU f32 model in inference
//! mode, see `exec.rs`). Entry points return `Ok(None)` only when a tensor's storage is not
//! contiguous f32 (the caller then uses the composite op), and an error when an input tracks
//! gradients: a training forward reaching an inference kernel is a bug, never a silent cut.

use candle_core::{CpuStorage, Storage, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// Work (multiply-adds) below which a kernel stays on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// An error when any of `tensors` tracks gradients (these kernels have no backward).
fn check_untracked(tensors: &[&Tensor], kernel: &str) -> Result<()> {
    if tensors.iter().any(|t| t.track_op()) {
        return Err(crate::error::ModelError::InvalidConfig(format!(
            "inference kernel `{kernel}` was given a tensor that tracks gradients (a training forward must use \
             the model in Mode::Train)"
        )));
    }
    Ok(())
}

/// Runs `f` on the contiguous f32 data of a CPU tensor; `None` when it is not one.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else { return None };
    let (start, end) = layout.contiguous_offsets()?;
    Some(f(&data[start..end]))
}

// ---------------------------------------------------------------------------------------------
// x · Wᵀ (+ b)

/// `x` `[m, k]` times `w` `[n, k]` transposed, plus `bias` `[n]`: `[m, n]`, or `None` when a
/// storage is not contiguous f32 or the shapes do not agree.
pub(crate) fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    check_untracked(&[x, w], "linear")?;
    if let Some(b) = bias {
        check_untracked(&[b], "linear")?;
    }
    let ((m, k), (n, k2)) = (x.dims2()?, w.dims2()?);
    if k != k2 || m == 0 {
        return Ok(None);
    }
    let out = with_f32(x, |xs| {
        with_f32(w, |ws| match bias {
            Some(b) => with_f32(b, |bs| matmul_nt(xs, ws, Some(bs), m, k, n)),
            None => Some(matmul_nt(xs, ws, None, m, k, n)),
        })
    });
    match out.flatten().flatten() {
        Some(data) => Ok(Some(Tensor::from_vec(data, (m, n), x.device())?)),
        None => Ok(None),
    }
}

/// `[m, k] · [n, k]ᵀ (+ bias)` → `[m, n]`, row-major, split over column stripes.
pub(crate) fn matmul_nt(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let threads = rayon::current_num_threads().max(1);
    if m * n * k < PARALLEL_MIN_MACS || threads == 1 || n < 8 {
        let mut out = vec![0f32; m * n];
        stripe(x, w, m, k, 0, n, &mut out);
        add_bias(&mut out, bias, n);
        return out;
    }
    // Column stripes, multiples of 4 wide, one per thread; each fills its own [m, width] buffer.
    let width = n.div_ceil(threads).next_multiple_of(4);
    let bounds: Vec<(usize, usize)> = (0..n).step_by(width).map(|j0| (j0, (j0 + width).min(n))).collect();
    let parts: Vec<Vec<f32>> = bounds
        .par_iter()
        .map(|&(j0, j1)| {
            let mut buf = vec![0f32; m * (j1 - j0)];
            stripe(x, w, m, k, j0, j1, &mut buf);
            buf
        })
        .collect();
    let mut out = vec![0f32; m * n];
    for (&(j0, j1), part) in bounds.iter().zip(&parts) {
        let wd = j1 - j0;
        for i in 0..m {
            out[i * n + j0..i * n + j1].copy_from_slice(&part[i * wd..(i + 1) * wd]);
        }
    }
    add_bias(&mut out, bias, n);
    out
}

fn add_bias(out: &mut [f32], bias: Option<&[f32]>, n: usize) {
    if let Some(b) = bias {
        for row in out.chunks_exact_mut(n) {
            row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
        }
    }
}

/// The vector instructions the `x · Wᵀ` kernel uses, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Portable code: 8 partial sums too, but added in another order and without fused
    /// multiply-adds, so it agrees with the others to rounding, not bit for bit.
    Scalar,
    /// AVX2 + FMA: 8-lane sums.
    Avx2,
    /// AVX-512F: two rows' 8-lane sums per 16-lane register (the AVX2 kernel's arithmetic,
    /// lane for lane, so the results are bit-identical to it).
    Avx512,
}

impl Simd {
    /// Lower-case name, as `AHA_SIMD` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "avx512",
            Simd::Avx2 => "avx2",
            Simd::Scalar => "scalar",
        }
    }
}

/// The best [`Simd`] this CPU has, capped by the environment variable `AHA_SIMD` (`avx2` or
/// `scalar`: what a CPU without AVX-512, or without AVX2, would run) and by the build (AVX-512
/// needs the `avx512` feature, on by default in `aha`). Decided once per process.
pub fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("AHA_SIMD").ok().as_deref() {
            Some("scalar") => Simd::Scalar,
            Some("avx2") => Simd::Avx2,
            _ => Simd::Avx512,
        };
        cap.min(detect_simd())
    })
}

fn detect_simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        if avx2 && cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if avx2 {
            return Simd::Avx2;
        }
    }
    Simd::Scalar
}

/// Columns `j0..j1` of `x · wᵀ` into `out` (`[m, j1 - j0]`).
fn stripe(x: &[f32], w: &[f32], m: usize, k: usize, j0: usize, j1: usize, out: &mut [f32]) {
    // SAFETY (both): `simd()` reports only instructions this CPU has; the kernels read only
    // within `x[..m*k]`, `w[j0*k..j1*k]` and write within `out[..m*(j1-j0)]`, whose lengths
    // they assert.
    #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
    if simd() == Simd::Avx512 {
        unsafe { avx512::stripe(x, w, m, k, j0, j1, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd() != Simd::Scalar {
        unsafe { avx::stripe(x, w, m, k, j0, j1, out) };
        return;
    }
    scalar_stripe(x, w, m, k, j0, j1, out);
}

fn scalar_stripe(x: &[f32], w: &[f32], m: usize, k: usize, j0: usize, j1: usize, out: &mut [f32]) {
    let wd = j1 - j0;
    for j in j0..j1 {
        let wr = &w[j * k..(j + 1) * k];
        for i in 0..m {
            out[i * wd + j - j0] = dot(&x[i * k..(i + 1) * k], wr);
        }
    }
}

/// Dot product with eight independent partial sums (so the compiler can vectorise it; inlined,
/// it takes the target features of its caller — the training row kernels use it too).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The fastest dot product this CPU has.
fn dot_fn() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd() != Simd::Scalar {
        return avx::dot;
    }
    dot
}

#[cfg(target_arch = "x86_64")]
mod avx {
    //! AVX2/FMA register-blocked dot products: `R` rows of `x` against `C` rows of `w`.

    use std::arch::x86_64::*;

    /// Columns `j0..j1` of `x · wᵀ` into `out` (`[m, j1 - j0]`).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn stripe(x: &[f32], w: &[f32], m: usize, k: usize, j0: usize, j1: usize, out: &mut [f32]) {
        let wd = j1 - j0;
        assert!(x.len() >= m * k && w.len() >= j1 * k && out.len() >= m * wd);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut j = j0;
        while j + 4 <= j1 {
            let mut i = 0;
            while i + 2 <= m {
                let r = block::<2, 4>(xp.add(i * k), wp.add(j * k), k);
                store(out, wd, i, j - j0, &r);
                i += 2;
            }
            if i < m {
                let r = block::<1, 4>(xp.add(i * k), wp.add(j * k), k);
                store(out, wd, i, j - j0, &r);
            }
            j += 4;
        }
        while j < j1 {
            for i in 0..m {
                let r = block::<1, 1>(xp.add(i * k), wp.add(j * k), k);
                out[i * wd + j - j0] = r[0][0];
            }
            j += 1;
        }
    }

    /// Dot product (AVX2/FMA); only handed out by `dot_fn` after the CPU check.
    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let k = a.len().min(b.len());
        // SAFETY: `dot_fn` returns this function only when AVX2 and FMA are present; both
        // slices hold at least `k` floats.
        unsafe { block::<1, 1>(a.as_ptr(), b.as_ptr(), k)[0][0] }
    }

    pub(super) fn store<const R: usize, const C: usize>(
        out: &mut [f32],
        wd: usize,
        i: usize,
        j: usize,
        r: &[[f32; C]; R],
    ) {
        for (di, row) in r.iter().enumerate() {
            out[(i + di) * wd + j..(i + di) * wd + j + C].copy_from_slice(row);
        }
    }

    /// `R × C` dot products of length `k`: rows `x + r·k` against rows `w + c·k`.
    ///
    /// # Safety
    /// AVX2 + FMA; `x` must hold `R·k` and `w` `C·k` readable floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const R: usize, const C: usize>(x: *const f32, w: *const f32, k: usize) -> [[f32; C]; R] {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let k8 = k & !7;
        let mut p = 0;
        while p < k8 {
            let mut wv = [_mm256_setzero_ps(); C];
            // The next block's weight rows towards the L1 cache (see `avx512::block`).
            for c in 0..C {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((C + c) * k + p) as *const i8);
            }
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(w.add(c * k + p));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(r * k + p));
                for (a, wc) in acc_r.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(xv, *wc, *a);
                }
            }
            p += 8;
        }
        let mut out = [[0f32; C]; R];
        for r in 0..R {
            for c in 0..C {
                out[r][c] = reduce(acc[r][c], x.add(r * k), w.add(c * k), k8, k);
            }
        }
        out
    }

    /// The end of one dot product of length `k`: the 8 lanes' partial sums added, then the
    /// `k8..k` tail of `x` and `w` in order. The AVX-512 kernel ends its dot products here too,
    /// which keeps the two bit-identical.
    ///
    /// # Safety
    /// AVX2 + FMA; `x` and `w` must hold `k` readable floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn reduce(v: __m256, x: *const f32, w: *const f32, k8: usize, k: usize) -> f32 {
        let mut s = hsum(v);
        for q in k8..k {
            s += *x.add(q) * *w.add(q);
        }
        s
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[cfg(all(target_arch = "x86_64", feature = "avx512"))]
mod avx512 {
    //! The AVX2 kernel's arithmetic on 16-lane registers: each register holds the 8-lane sums
    //! of two rows of `x` against one row of `w`, so every lane sees the same fused
    //! multiply-adds in the same order as in `avx::block` and the results are bit-identical.
    //! `x`'s rows are first interleaved in pairs, 8 floats at a time, so one load feeds both
    //! halves; each `w` row's 8 floats are broadcast to both halves.

    use std::arch::x86_64::*;

    use super::avx::{reduce, store};

    /// Row pairs per block.
    const P: usize = 4;
    /// Weight rows per block.
    const C: usize = 4;

    /// Columns `j0..j1` of `x · wᵀ` into `out` (`[m, j1 - j0]`).
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn stripe(x: &[f32], w: &[f32], m: usize, k: usize, j0: usize, j1: usize, out: &mut [f32]) {
        let wd = j1 - j0;
        assert!(x.len() >= m * k && w.len() >= j1 * k && out.len() >= m * wd);
        let k8 = k & !7;
        let pairs = m.div_ceil(2);
        let packed = pack_pairs(x, m, k, k8);
        let (xp, wp) = (packed.as_ptr(), w.as_ptr());
        let mut j = j0;
        while j < j1 {
            let cols = if j + C <= j1 { C } else { 1 };
            let mut pr = 0;
            while pr < pairs {
                let np = if pr + P <= pairs { P } else { 1 };
                let (xb, wb) = (xp.add(pr * 2 * k8), wp.add(j * k));
                match (np, cols) {
                    (P, C) => finish::<P, C>(block::<P, C>(xb, wb, k, k8), x, w, m, k, k8, pr, j, j0, wd, out),
                    (P, _) => finish::<P, 1>(block::<P, 1>(xb, wb, k, k8), x, w, m, k, k8, pr, j, j0, wd, out),
                    (_, C) => finish::<1, C>(block::<1, C>(xb, wb, k, k8), x, w, m, k, k8, pr, j, j0, wd, out),
                    _ => finish::<1, 1>(block::<1, 1>(xb, wb, k, k8), x, w, m, k, k8, pr, j, j0, wd, out),
                }
                pr += np;
            }
            j += cols;
        }
    }

    /// `x`'s first `k8` columns, rows interleaved in pairs 8 floats at a time: pair `p`'s
    /// chunk `q` is `x[2p][8q..8q+8]` then `x[2p+1][8q..8q+8]` (zeros for a missing odd row).
    fn pack_pairs(x: &[f32], m: usize, k: usize, k8: usize) -> Vec<f32> {
        let pairs = m.div_ceil(2);
        let mut packed = vec![0f32; pairs * 2 * k8];
        for p in 0..pairs {
            for q in 0..k8 / 8 {
                let dst = &mut packed[p * 2 * k8 + q * 16..p * 2 * k8 + q * 16 + 16];
                for h in 0..2 {
                    let r = 2 * p + h;
                    if r < m {
                        dst[h * 8..h * 8 + 8].copy_from_slice(&x[r * k + q * 8..r * k + q * 8 + 8]);
                    }
                }
            }
        }
        packed
    }

    /// The 16-lane sums of `NP` row pairs (packed, from `x`) against `NC` rows of `w`.
    ///
    /// # Safety
    /// AVX-512F; `x` must hold `NP·2·k8` and `w` `NC·k` readable floats (rows `k` apart).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn block<const NP: usize, const NC: usize>(
        x: *const f32,
        w: *const f32,
        k: usize,
        k8: usize,
    ) -> [[__m512; NC]; NP] {
        let mut acc = [[_mm512_setzero_ps(); NC]; NP];
        let mut p = 0;
        while p < k8 {
            let mut wv = [_mm512_setzero_ps(); NC];
            // The next block's weight rows (the `NC` rows after these), towards the L1 cache
            // while this block computes: the weights stream from memory once per decode step.
            // A prefetch never faults, so one past the matrix's end is harmless.
            for c in 0..NC {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((NC + c) * k + p) as *const i8);
            }
            for (c, v) in wv.iter_mut().enumerate() {
                // 256 bits to both halves (AVX-512F's 64-bit-lane broadcast; the bits are the floats').
                *v = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(w.add(c * k + p)))));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(r * 2 * k8 + 2 * p));
                for (a, wc) in acc_r.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wc, *a);
                }
            }
            p += 8;
        }
        acc
    }

    /// Ends each half-register's dot product as the AVX2 kernel does (`avx::reduce`) and stores
    /// the real rows.
    ///
    /// # Safety
    /// AVX-512F; the indices are within the shapes `stripe` asserted.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn finish<const NP: usize, const NC: usize>(
        acc: [[__m512; NC]; NP],
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        k8: usize,
        pair: usize,
        j: usize,
        j0: usize,
        wd: usize,
        out: &mut [f32],
    ) {
        for (p, acc_p) in acc.iter().enumerate() {
            for h in 0..2 {
                let r = 2 * (pair + p) + h;
                if r >= m {
                    continue;
                }
                let mut row = [[0f32; NC]; 1];
                for (c, a) in acc_p.iter().enumerate() {
                    let half = if h == 0 {
                        _mm512_castps512_ps256(*a)
                    } else {
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a)))
                    };
                    row[0][c] = reduce(half, x.as_ptr().add(r * k), w.as_ptr().add((j + c) * k), k8, k);
                }
                store(out, wd, r, j - j0, &row);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Single-token attention over the cache

/// Shapes of one fused decode-attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Slots per row in the cache buffers.
    pub max_len: usize,
    /// Slots filled so far, the new token's included.
    pub total: usize,
}

/// Attention of one new token per row: `q` `[B, nh, 1, hd]`, the cache's full key/value
/// buffers `[B, nkv, max_len, hd]` and slot mask `[B, max_len]` (1 = real token). Slots
/// `0..total` that are valid are attended (all are in the past, so no causal mask is needed).
/// Returns `[B, 1, nh·hd]`, or `None` when a storage is not contiguous f32.
pub(crate) fn decode_attention(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    valid: &Tensor,
    shape: AttnShape,
) -> Result<Option<Tensor>> {
    check_untracked(&[q, keys, values, valid], "decode_attention")?;
    let out = with_f32(q, |qs| {
        with_f32(keys, |ks| with_f32(values, |vs| with_f32(valid, |ms| attend_all(qs, ks, vs, ms, shape))))
    });
    match out.flatten().flatten().flatten().flatten() {
        Some(data) => {
            let s = shape;
            Ok(Some(Tensor::from_vec(data, (s.batch, 1, s.heads * s.head_dim), q.device())?))
        }
        None => Ok(None),
    }
}

fn attend_all(q: &[f32], k: &[f32], v: &[f32], valid: &[f32], s: AttnShape) -> Option<Vec<f32>> {
    let hd = s.head_dim;
    let need_cache = s.batch * s.kv_heads * s.max_len * hd;
    if q.len() != s.batch * s.heads * hd || k.len() != need_cache || v.len() != need_cache {
        return None;
    }
    if valid.len() != s.batch * s.max_len || s.total > s.max_len || !s.heads.is_multiple_of(s.kv_heads) {
        return None;
    }
    let mut out = vec![0f32; s.batch * s.heads * hd];
    let work = s.batch * s.heads * s.total * hd;
    let dot = dot_fn();
    let one = |(bh, o): (usize, &mut [f32])| attend_head(q, k, v, valid, s, bh, o, dot);
    if work < PARALLEL_MIN_MACS {
        out.chunks_exact_mut(hd).enumerate().for_each(one);
    } else {
        out.par_chunks_exact_mut(hd).enumerate().for_each(one);
    }
    Some(out)
}

/// One (row, query head): softmax(q·Kᵀ/√hd over valid slots) · V into `out` (`[hd]`).
#[allow(clippy::too_many_arguments)]
fn attend_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    valid: &[f32],
    s: AttnShape,
    bh: usize,
    out: &mut [f32],
    dot: fn(&[f32], &[f32]) -> f32,
) {
    let hd = s.head_dim;
    let (b, h) = (bh / s.heads, bh % s.heads);
    let kvh = h / (s.heads / s.kv_heads);
    let qv = &q[bh * hd..(bh + 1) * hd];
    let base = (b * s.kv_heads + kvh) * s.max_len * hd;
    let mask = &valid[b * s.max_len..b * s.max_len + s.total];
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores: Vec<f32> = Vec::with_capacity(s.total);
    let mut max = f32::NEG_INFINITY;
    for (slot, &m) in mask.iter().enumerate() {
        let sc =
            if m > 0.0 { dot(qv, &k[base + slot * hd..base + (slot + 1) * hd]) * scale } else { f32::NEG_INFINITY };
        max = max.max(sc);
        scores.push(sc);
    }
    if max == f32::NEG_INFINITY {
        return; // No valid slot: the row is padding only; leave zeros.
    }
    let mut denom = 0f32;
    for sc in &mut scores {
        *sc = (*sc - max).exp();
        denom += *sc;
    }
    for (slot, &p) in scores.iter().enumerate() {
        if p > 0.0 {
            let vr = &v[base + slot * hd..base + (slot + 1) * hd];
            out.iter_mut().zip(vr).for_each(|(o, x)| *o += p * x);
        }
    }
    let inv = 1.0 / denom;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn naive(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum();
                out[i * n + j] = s as f32 + bias.map_or(0.0, |b| b[j]);
            }
        }
        out
    }

    fn ramp(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matmul_nt_matches_naive_on_odd_shapes() {
        for &(m, k, n) in &[(1, 7, 3), (2, 8, 4), (3, 13, 9), (16, 256, 768), (17, 100, 37), (64, 64, 130)] {
            let (x, w, b) = (ramp(m * k, 1), ramp(n * k, 2), ramp(n, 3));
            let got = matmul_nt(&x, &w, Some(&b), m, k, n);
            let want = naive(&x, &w, Some(&b), m, k, n);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-4, "({m},{k},{n}): max err {err}");
        }
    }

    /// The AVX-512 kernel is the AVX2 kernel's arithmetic, bit for bit, on every shape path
    /// (4-pair and single-pair blocks, 4-column and single-column blocks, an odd row, a `k`
    /// tail); the portable code agrees to rounding.
    #[test]
    #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
    fn avx512_stripe_is_bit_identical_to_avx2() {
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        if !avx2 || !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU lacks AVX-512F (the AVX-512 kernel never runs here)");
            return;
        }
        let shapes = [(1, 8, 4), (2, 16, 5), (3, 13, 9), (9, 100, 37), (16, 768, 64), (17, 256, 131), (33, 64, 8)];
        for &(m, k, n) in &shapes {
            let (x, w) = (ramp(m * k, 6), ramp(n * k, 7));
            let (j0, j1) = (n / 3, n);
            let wd = j1 - j0;
            let (mut a, mut b, mut c) = (vec![0f32; m * wd], vec![0f32; m * wd], vec![0f32; m * wd]);
            // SAFETY: AVX-512F, AVX2 and FMA are present (checked above); the buffers have the
            // asserted lengths.
            unsafe {
                avx512::stripe(&x, &w, m, k, j0, j1, &mut a);
                avx::stripe(&x, &w, m, k, j0, j1, &mut b);
            }
            scalar_stripe(&x, &w, m, k, j0, j1, &mut c);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "({m},{k},{n}): AVX-512 and AVX2 differ");
            let err = a.iter().zip(&c).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            assert!(err < 1e-4, "({m},{k},{n}): portable code is {err} away");
        }
    }

    #[test]
    fn linear_agrees_with_candle_matmul() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(ramp(5 * 24, 4), (5, 24), &dev)?;
        let w = Tensor::from_vec(ramp(10 * 24, 5), (10, 24), &dev)?;
        let fast = linear(&x, &w, None)?.ok_or(crate::error::ModelError::InvalidConfig("no fast path".into()))?;
        let slow = x.matmul(&w.t()?)?;
        let err = (fast - slow)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "max err {err}");
        Ok(())
    }

    #[test]
    fn tracked_tensors_are_refused() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), candle_core::DType::F32, &dev)?;
        let w = candle_core::Var::zeros((4, 8), candle_core::DType::F32, &dev)?;
        let e = linear(&x, w.as_tensor(), None).unwrap_err().to_string();
        assert!(e.contains("tracks gradients"), "{e}");
        Ok(())
    }
}
