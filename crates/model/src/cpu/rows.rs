//! The row math of every CPU path, written once: RMSNorm, RoPE, SwiGLU, softmax (causal + key
//! mask, or an additive bias), log-softmax + gather (with the entropy), their backwards, and the
//! `exp` they share — one row (or one head) per call, plus the row-parallel RMSNorm both callers
//! use. The hand-written training path (`cpu/handgrad.rs`) and the fused autograd ops
//! (`cpu/autograd.rs`, which the inference forward also runs) call these; `ops/composite.rs`
//! states the same math in candle ops, and the tests hold both to it.
//!
//! Each kernel is compiled twice by [`multiversion!`]: for the baseline x86-64 target the binary
//! is built for (SSE2) and with AVX2 + FMA enabled, and picks the second at run time when the
//! CPU has it — the binary stays portable, and the vectorised loops run twice as wide. Rust
//! never contracts `a · b + c` into an FMA by itself and every reduction here runs in eight
//! fixed lanes, so both builds (and every thread count) give the same bits.

use rayon::prelude::*;

use crate::cpu::infer::dot;

/// Elements per rayon task in the row-parallel loops (at least one row).
pub(crate) const ROW_GRAIN: usize = 1 << 13;

/// Rows of `row_len` elements per rayon task.
pub(crate) fn grain(row_len: usize) -> usize {
    (ROW_GRAIN / row_len.max(1)).max(1)
}

/// Defines `fn $name` whose body is compiled for the baseline target and, on x86-64, again with
/// AVX2 + FMA, the second chosen at run time when the CPU supports it.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { wide($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

/// Whether this CPU has AVX2 and FMA (the answer is cached by the standard library).
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    #[cfg(test)]
    if tests::BASELINE_ONLY.with(|b| b.get()) {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Reduction lanes: sums and maxima run in this many independent accumulators (as in
/// [`crate::cpu::infer::dot`], the dot product used here).
const LANES: usize = 8;

/// `eˣ` in f32 without a libm call, so row loops vectorise: `2ⁿ · p(r)` with `x = n·ln2 + r`,
/// `|r| ≤ ln2 / 2` and `p` the degree-7 Taylor polynomial (relative error below 2e-7 where the
/// result is a normal float; inputs are clamped to [−87, 88], so it never returns 0 or ∞).
/// No float→int conversion and no division, so every step is one vector instruction.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 · 2²³ rounds to the nearest integer n, which then sits in the low mantissa
    // bits: `t.to_bits() − ROUND.to_bits()` is n (|n| ≤ 127 here).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    f32::from_bits(biased << 23) * p
}

#[inline(always)]
fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + exp(-a))
}

/// `max aᵢ` (−∞ for an empty slice), in [`LANES`] lanes.
#[inline(always)]
fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    acc.iter().fold(tail, |m, &x| m.max(x))
}

multiversion! {
    /// RMSNorm of one row: `y = x · rstd · w`; returns `rstd = 1 / √(mean x² + eps)`.
    pub(crate) fn rms_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) -> f32 {
        let r = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
        rms_scale(x, w, r, y);
        r
    }
}

multiversion! {
    /// [`rms_row`] with its `rstd` already known: `y = x · r · w`, the same bits (a backward
    /// recomputes the normed row from the input and the kept `rstd` instead of keeping it).
    pub(crate) fn rms_scale_row(x: &[f32], w: &[f32], r: f32, y: &mut [f32]) {
        rms_scale(x, w, r, y);
    }
}

/// `y = x · r · w`, element-wise (the one expression [`rms_row`] and [`rms_scale_row`] share).
#[inline(always)]
fn rms_scale(x: &[f32], w: &[f32], r: f32, y: &mut [f32]) {
    y.iter_mut().zip(x).zip(w).for_each(|((o, &xv), &wv)| *o = xv * r * wv);
}

multiversion! {
    /// The backward of [`rms_row`] for upstream `g`: writes `dx`, adds `g · x̂` to `dw_part`.
    pub(crate) fn rms_backward_row(x: &[f32], g: &[f32], w: &[f32], r: f32, dx: &mut [f32], dw_part: &mut [f32]) {
        let mut acc = [0f32; LANES];
        let (cx, cg, cw) = (x.chunks_exact(LANES), g.chunks_exact(LANES), w.chunks_exact(LANES));
        let mut tail = 0f32;
        for ((&xv, &gv), &wv) in cx.remainder().iter().zip(cg.remainder()).zip(cw.remainder()) {
            tail += gv * wv * xv;
        }
        for ((xc, gc), wc) in cx.zip(cg).zip(cw) {
            for l in 0..LANES {
                acc[l] += gc[l] * wc[l] * xc[l];
            }
        }
        let k = (acc.iter().sum::<f32>() + tail) * r / x.len() as f32;
        for ((((o, p), &xv), &gv), &wv) in dx.iter_mut().zip(dw_part.iter_mut()).zip(x).zip(g).zip(w) {
            let xh = xv * r;
            *o = r * (gv * wv - xh * k);
            *p += gv * xh;
        }
    }
}

multiversion! {
    /// RoPE (HF's rotate-half layout) in place on one head `v` of `hd` values, with that
    /// position's `cos`/`sin` rows; `inverse` applies the transpose (the backward).
    pub(crate) fn rope_head(v: &mut [f32], c: &[f32], s: &[f32], inverse: bool) {
        let half = v.len() / 2;
        let (lo, hi) = v.split_at_mut(half);
        let (c_lo, c_hi) = c.split_at(half);
        let (s_lo, s_hi) = s.split_at(half);
        for i in 0..half.min(hi.len()).min(c_hi.len()).min(s_hi.len()) {
            let (a, b) = (lo[i], hi[i]);
            if inverse {
                lo[i] = a * c_lo[i] + b * s_hi[i];
                hi[i] = b * c_hi[i] - a * s_lo[i];
            } else {
                lo[i] = a * c_lo[i] - b * s_lo[i];
                hi[i] = b * c_hi[i] + a * s_hi[i];
            }
        }
    }
}

multiversion! {
    /// `out = silu(gate) · up` for one row.
    pub(crate) fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

multiversion! {
    /// The backward of [`swiglu_row`] for upstream `d`: writes `dgate` and `dup`.
    pub(crate) fn swiglu_backward_row(gate: &[f32], up: &[f32], d: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        for ((((dg, du), &g), &u), &dv) in dgate.iter_mut().zip(dup.iter_mut()).zip(gate).zip(up).zip(d) {
            let s = sigmoid(g);
            *du = dv * g * s;
            *dg = dv * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

multiversion! {
    /// [`swiglu_row`] and [`swiglu_backward_row`] in one pass, for a backward that did not keep
    /// the activation: writes `act = silu(gate) · up`, and `gate` and `up` become `dgate` and
    /// `dup` for upstream `d` — the same bits as the two kernels.
    pub(crate) fn swiglu_act_and_backward_row(gate: &mut [f32], up: &mut [f32], d: &[f32], act: &mut [f32]) {
        for (((gr, ur), &dv), a) in gate.iter_mut().zip(up.iter_mut()).zip(d).zip(act.iter_mut()) {
            let (g, u) = (*gr, *ur);
            let s = sigmoid(g);
            *a = g * s * u;
            *ur = dv * g * s;
            *gr = dv * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

multiversion! {
    /// Softmax of `scale · row` over the keys query `i` may see (`j ≤ i`, `valid[j] > 0.5`);
    /// zero elsewhere (and everywhere when it may see none, as for left padding).
    pub(crate) fn masked_softmax_row(row: &mut [f32], i: usize, valid: &[f32], scale: f32) {
        let n = (i + 1).min(row.len()).min(valid.len());
        let (live, dead) = row.split_at_mut(n);
        dead.fill(0.0);
        let valid = &valid[..n];
        live.iter_mut().zip(valid).for_each(|(s, &v)| *s = if v > 0.5 { *s * scale } else { f32::NEG_INFINITY });
        softmax_in_place(live);
    }
}

multiversion! {
    /// Softmax of `scale · row + bias` (`bias`: 0 where allowed, −1e30 where masked, as
    /// `transformer.rs` builds it; a fully masked row comes out uniform, as candle's softmax).
    pub(crate) fn biased_softmax_row(row: &mut [f32], bias: &[f32], scale: f32) {
        row.iter_mut().zip(bias).for_each(|(s, &b)| *s = *s * scale + b);
        softmax_in_place(row);
    }
}

/// Softmax of `row` in place; `−∞` entries get 0, and a row of only `−∞` becomes all 0.
#[inline(always)]
fn softmax_in_place(live: &mut [f32]) {
    let top = max(live);
    if top == f32::NEG_INFINITY {
        live.fill(0.0);
        return;
    }
    let mut acc = [0f32; LANES];
    let mut chunks = live.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = if c[l] == f32::NEG_INFINITY { 0.0 } else { exp(c[l] - top) };
            c[l] = e;
            acc[l] += e;
        }
    }
    let mut tail = 0f32;
    for s in chunks.into_remainder() {
        *s = if *s == f32::NEG_INFINITY { 0.0 } else { exp(*s - top) };
        tail += *s;
    }
    let sum = acc.iter().sum::<f32>() + tail;
    live.iter_mut().for_each(|s| *s /= sum);
}

/// RMSNorm rows of `x` (`[rows, d]`): returns `(x · rstd · w, rstd)`.
pub(crate) fn rms_forward(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0f32; x.len()];
    let rstd = rms_forward_into(x, w, eps, &mut y);
    (y, rstd)
}

/// [`rms_forward`] into `y` (as long as `x`): writes `x · rstd · w`, returns `rstd`.
pub(crate) fn rms_forward_into(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) -> Vec<f32> {
    let d = w.len();
    let mut rstd = vec![0f32; x.len() / d];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter_mut())
        .with_min_len(grain(d))
        .for_each(|((yr, xr), r)| *r = rms_row(xr, w, eps, yr));
    rstd
}

/// The RMSNorm of rows of `x` (`[rows, d]`) whose `rstd` [`rms_forward`] returned: the same
/// `x · rstd · w`, bit for bit, without the reduction.
pub(crate) fn rms_apply(x: &[f32], rstd: &[f32], w: &[f32]) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter())
        .with_min_len(grain(d))
        .for_each(|((yr, xr), &r)| rms_scale_row(xr, w, r, yr));
    y
}

/// The backward of [`rms_forward`] for upstream `g`: returns `dx`, writes `dw` (summed over row
/// blocks in block order, so the result never depends on how rayon split the work).
pub(crate) fn rms_backward(x: &[f32], rstd: &[f32], w: &[f32], g: &[f32], dw: &mut [f32]) -> Vec<f32> {
    let d = w.len();
    let block = grain(d) * d;
    let mut dx = vec![0f32; x.len()];
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(g.par_chunks(block))
        .zip(rstd.par_chunks(block / d))
        .map(|(((dxb, xb), gb), rb)| {
            let mut part = vec![0f32; d];
            for (((dxr, xr), gr), &r) in dxb.chunks_mut(d).zip(xb.chunks(d)).zip(gb.chunks(d)).zip(rb) {
                rms_backward_row(xr, gr, w, r, dxr, &mut part);
            }
            part
        })
        .collect();
    dw.fill(0.0);
    for part in &partials {
        dw.iter_mut().zip(part).for_each(|(a, &p)| *a += p);
    }
    dx
}

multiversion! {
    /// The backward of [`masked_softmax_row`] (with its `scale`) in place: `dp ← p · (dp − dp·p) · scale`.
    pub(crate) fn softmax_backward_row(dp: &mut [f32], p: &[f32], scale: f32) {
        let d = dot(dp, p);
        dp.iter_mut().zip(p).for_each(|(x, &pv)| *x = pv * (*x - d) * scale);
    }
}

multiversion! {
    /// `(log p(target), entropy, log-sum-exp)` of one row of logits (exponentials in f32, sums
    /// in f64).
    pub(crate) fn logprob_row(z: &[f32], target: usize) -> (f32, f32, f32) {
        let top = max(z);
        let (mut sum, mut weighted) = ([0f64; LANES], [0f64; LANES]);
        let chunks = z.chunks_exact(LANES);
        let (mut sum_tail, mut weighted_tail) = (0f64, 0f64);
        for &x in chunks.remainder() {
            let e = exp(x - top) as f64;
            sum_tail += e;
            weighted_tail += e * x as f64;
        }
        for c in chunks {
            for l in 0..LANES {
                let e = exp(c[l] - top) as f64;
                sum[l] += e;
                weighted[l] += e * c[l] as f64;
            }
        }
        let sum = sum.iter().sum::<f64>() + sum_tail;
        let weighted = weighted.iter().sum::<f64>() + weighted_tail;
        let lse = top as f64 + sum.ln();
        let zt = z.get(target).copied().unwrap_or(f32::NAN) as f64;
        ((zt - lse) as f32, (lse - weighted / sum) as f32, lse as f32)
    }
}

multiversion! {
    /// The gradient of `g · log p(target)` with respect to one row of logits `z` whose
    /// log-sum-exp is `lse`: `g · (onehot(target) − softmax(z))`.
    pub(crate) fn logprob_backward_row(z: &[f32], lse: f32, target: usize, g: f32, dz: &mut [f32]) {
        dz.iter_mut().zip(z).for_each(|(o, &x)| *o = -g * exp(x - lse));
        if let Some(t) = dz.get_mut(target) {
            *t += g;
        }
    }
}

multiversion! {
    /// [`logprob_backward_row`] in place: `z` (one row of logits) becomes its gradient
    /// `g · (onehot(target) − softmax(z))`, the same bits.
    pub(crate) fn logprob_backward_row_in_place(z: &mut [f32], lse: f32, target: usize, g: f32) {
        z.iter_mut().for_each(|x| *x = -g * exp(*x - lse));
        if let Some(t) = z.get_mut(target) {
            *t += g;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    thread_local! {
        /// Set by a test to force the baseline build on its own thread.
        pub(super) static BASELINE_ONLY: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `f` with the baseline build and with the wide one; the two results.
    fn both<T>(f: impl Fn() -> T) -> (T, T) {
        BASELINE_ONLY.with(|b| b.set(true));
        let base = f();
        BASELINE_ONLY.with(|b| b.set(false));
        (base, f())
    }

    /// The bit patterns of `v`, to compare floats exactly.
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn baseline_and_avx2_builds_give_the_same_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // 77: not a multiple of the lanes, so the tails run too.
        let n = 77;
        let mut row = |scale: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-scale..scale)).collect() };
        let (x, w, g, u, z) = (row(3.0), row(1.5), row(2.0), row(4.0), row(20.0));
        let valid: Vec<f32> = (0..n).map(|j| if j % 5 == 1 { 0.0 } else { 1.0 }).collect();
        let (a, b) = both(|| {
            let mut y = vec![0f32; n];
            let r = rms_row(&x, &w, 1e-6, &mut y);
            let (mut dx, mut part) = (vec![0f32; n], vec![0.5f32; n]);
            rms_backward_row(&x, &g, &w, r, &mut dx, &mut part);
            let mut head = x[..64].to_vec();
            rope_head(&mut head, &w[..64], &g[..64], false);
            rope_head(&mut head, &w[..64], &g[..64], true);
            let mut act = vec![0f32; n];
            swiglu_row(&g, &u, &mut act);
            let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
            swiglu_backward_row(&g, &u, &x, &mut dg, &mut du);
            let (mut dg_fused, mut du_fused, mut act_fused) = (g.clone(), u.clone(), vec![0f32; n]);
            swiglu_act_and_backward_row(&mut dg_fused, &mut du_fused, &x, &mut act_fused);
            assert_eq!(bits(&act), bits(&act_fused));
            assert_eq!((bits(&dg), bits(&du)), (bits(&dg_fused), bits(&du_fused)));
            let mut p = z.clone();
            masked_softmax_row(&mut p, 60, &valid, 0.125);
            let mut pb = z.clone();
            biased_softmax_row(&mut pb, &x, 0.5);
            let mut dp = g.clone();
            softmax_backward_row(&mut dp, &p, 0.125);
            let (lp, ent, lse) = logprob_row(&z, 3);
            let mut dz = vec![0f32; n];
            logprob_backward_row(&z, lse, 3, -0.25, &mut dz);
            let mut dz_in_place = z.clone();
            logprob_backward_row_in_place(&mut dz_in_place, lse, 3, -0.25);
            assert_eq!(bits(&dz), bits(&dz_in_place));
            let mut y_again = vec![0f32; n];
            rms_scale_row(&x, &w, r, &mut y_again);
            assert_eq!(bits(&y), bits(&y_again));
            let scalars = vec![r, lp, ent, lse, exp(-3.3), exp(40.0)];
            [y, dx, part, head, act, dg, du, p, pb, dp, dz, scalars].concat()
        });
        assert_eq!(bits(&a), bits(&b));
        assert!(a.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn masked_softmax_sees_only_valid_keys_up_to_the_query() {
        let mut row = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        masked_softmax_row(&mut row, 2, &[1.0, 0.0, 1.0, 1.0, 1.0], 1.0);
        let (e0, e2) = ((1f32 - 3.0).exp(), 1.0);
        let want = [e0 / (e0 + e2), 0.0, e2 / (e0 + e2), 0.0, 0.0];
        row.iter().zip(want).for_each(|(g, w)| assert!((g - w).abs() < 1e-6, "{row:?}"));
        let mut none = vec![1.0, 2.0];
        masked_softmax_row(&mut none, 1, &[0.0, 0.0], 1.0);
        assert_eq!(none, [0.0, 0.0]);
    }
}
