//! Fused, differentiable CPU kernels for the training forward: RMSNorm, RoPE (with the head
//! transpose folded in), scaled + masked softmax, SwiGLU and log-softmax + gather.
//!
//! Why: candle builds each of these from 5–10 element-wise ops, and every op allocates a tensor,
//! makes a pass over memory and synchronises the element-wise thread pool, in the forward and
//! again (two or three times over) in the backward. On a 2-core CPU that overhead, not the
//! matmuls, dominated a training step of small models (see BENCHMARKS.md). Each kernel here is
//! one pass forward and one pass backward, written as a candle custom op with its own `bwd`, so
//! autograd still works and nothing else in the model changes.
//!
//! Scope: CPU tensors in f32 or f64 (the plans `cpu-handwritten` and `cpu-autograd` in
//! `exec.rs` call them, through `ops.rs`); inputs are made contiguous first. Other devices and
//! dtypes (CUDA, bf16) take `ops/composite.rs`, which defines the semantics these kernels
//! reproduce (the tests compare values and gradients against those functions).
//! Work is split over rayon's pool in row blocks; small tensors stay on the calling thread.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Elements per rayon task (below this a kernel runs on the calling thread).
const GRAIN: usize = 1 << 14;

/// The float operations the kernels need, for f32 and f64.
trait Real: WithDType {
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    fn lowest() -> Self;
}

impl Real for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn lowest() -> Self {
        f32::NEG_INFINITY
    }
}

impl Real for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn lowest() -> Self {
        f64::NEG_INFINITY
    }
}

/// Rows per rayon task for rows of `len` elements.
fn rows_per_task(len: usize) -> usize {
    (GRAIN / len.max(1)).max(1)
}

/// The contiguous data of a CPU storage as `T`.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> CResult<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused kernel: input is not contiguous"),
    }
}

/// Runs `f` on the contiguous CPU data of `t` as `T`.
fn read<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> CResult<R>) -> CResult<R> {
    cpu_slices(&[t], |x| f(x[0]))?
}

/// Runs `f` on the CPU data of every tensor as `T`, without copying (a non-contiguous tensor is
/// made contiguous first); the storages stay read-locked for the duration of `f`.
pub fn cpu_slices<T: WithDType, R>(tensors: &[&Tensor], f: impl FnOnce(&[&[T]]) -> R) -> CResult<R> {
    let owned = tensors.iter().map(|t| t.contiguous()).collect::<CResult<Vec<_>>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(cpu) = &**storage else { bail!("expected a CPU tensor") };
        slices.push(slice::<T>(cpu, layout)?);
    }
    Ok(f(&slices))
}

/// Dispatches `$body` with `$T` bound to f32 or f64 according to `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $name:expr, |$T:ident| $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            dt => bail!("{}: unsupported dtype {dt:?} (f32 or f64 only)", $name),
        }
    };
}

fn owned<T: WithDType>(v: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(v)
}

fn tensor<T: WithDType>(v: Vec<T>, like: &Tensor) -> CResult<Tensor> {
    Tensor::from_vec(v, like.shape(), like.device())
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `x · rsqrt(mean(x²) + eps) · w` over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNormOp { eps })
}

struct RmsNormOp {
    eps: f64,
}

fn inv_rms<T: Real>(row: &[T], eps: f64) -> T {
    let mut ss = T::zero();
    for &v in row {
        ss += v * v;
    }
    let mean = ss / T::from_f64(row.len() as f64);
    T::one() / (mean + T::from_f64(eps)).sqrt()
}

fn rms_fwd<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).with_min_len(rows_per_task(d)).for_each(|(yr, xr)| {
        let inv = inv_rms(xr, eps);
        for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
            *o = xv * inv * wv;
        }
    });
    y
}

/// `(dx, dw)` of RMSNorm for upstream gradient `g`.
fn rms_bwd<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64) -> (Vec<T>, Vec<T>) {
    let d = w.len();
    let block = rows_per_task(d) * d;
    let mut dx = vec![T::zero(); x.len()];
    let partials = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(g.par_chunks(block))
        .map(|((dxb, xb), gb)| {
            let mut dw = vec![T::zero(); d];
            for ((dxr, xr), gr) in dxb.chunks_mut(d).zip(xb.chunks(d)).zip(gb.chunks(d)) {
                let inv = inv_rms(xr, eps);
                let mut dot = T::zero();
                for ((&gv, &wv), &xv) in gr.iter().zip(w).zip(xr) {
                    dot += gv * wv * xv;
                }
                let k = inv * inv * inv * dot / T::from_f64(d as f64);
                for j in 0..d {
                    dxr[j] = inv * gr[j] * w[j] - xr[j] * k;
                    dw[j] += gr[j] * xr[j] * inv;
                }
            }
            dw
        })
        .collect::<Vec<_>>();
    // Summed in block order on one thread: the result never depends on how rayon split the work
    // (bit-identical resume relies on it).
    let dw = partials.iter().fold(vec![T::zero(); d], |mut acc, part| {
        acc.iter_mut().zip(part).for_each(|(a, &p)| *a += p);
        acc
    });
    (dx, dw)
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "aha-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let y = by_dtype!(s1.dtype(), self.name(), |T| owned(rms_fwd::<T>(slice(s1, l1)?, slice(s2, l2)?, self.eps)));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        by_dtype!(x.dtype(), self.name(), |T| {
            let (dx, dw) =
                read::<T, _>(x, |xs| read::<T, _>(w, |ws| read::<T, _>(g, |gs| Ok(rms_bwd(xs, ws, gs, self.eps)))))?;
            Ok((Some(tensor(dx, x)?), Some(tensor(dw, w)?)))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE with the head transpose

/// Rotary embedding (HF "rotate_half" layout) of `x` `[B, T, H, D]`, returned transposed to
/// `[B, H, T, D]`; `cos`/`sin` are `[B, 1, T, D]` (they get no gradient).
pub fn rope_transposed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, RopeOp)
}

struct RopeOp;

/// One rotated row: `out = x·cos + rotate_half(x)·sin`.
fn rope_row<T: Real>(out: &mut [T], x: &[T], c: &[T], s: &[T]) {
    let half = x.len() / 2;
    for i in 0..half {
        out[i] = x[i] * c[i] - x[i + half] * s[i];
        out[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
    }
}

/// The transpose of [`rope_row`]: the gradient of `x` for upstream gradient `g`.
fn rope_row_bwd<T: Real>(dx: &mut [T], g: &[T], c: &[T], s: &[T]) {
    let half = g.len() / 2;
    for i in 0..half {
        dx[i] = g[i] * c[i] + g[i + half] * s[i + half];
        dx[i + half] = g[i + half] * c[i + half] - g[i] * s[i];
    }
}

fn rope_fwd<T: Real>(x: &[T], c: &[T], s: &[T], (_, t, h, d): (usize, usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(t * d).enumerate().for_each(|(bh, yb)| {
        let (b, hh) = (bh / h, bh % h);
        for (ti, yr) in yb.chunks_mut(d).enumerate() {
            let xo = ((b * t + ti) * h + hh) * d;
            let co = (b * t + ti) * d;
            rope_row(yr, &x[xo..xo + d], &c[co..co + d], &s[co..co + d]);
        }
    });
    y
}

fn rope_bwd<T: Real>(g: &[T], c: &[T], s: &[T], (_, t, h, d): (usize, usize, usize, usize)) -> Vec<T> {
    let mut dx = vec![T::zero(); g.len()];
    dx.par_chunks_mut(h * d).enumerate().for_each(|(bt, dxr)| {
        let (b, ti) = (bt / t, bt % t);
        let co = bt * d;
        for (hh, dxh) in dxr.chunks_mut(d).enumerate() {
            let go = ((b * h + hh) * t + ti) * d;
            rope_row_bwd(dxh, &g[go..go + d], &c[co..co + d], &s[co..co + d]);
        }
    });
    dx
}

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "aha-rope-transposed"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let (b, t, h, d) = dims;
        if d % 2 != 0 || l2.shape().elem_count() != b * t * d || l3.shape().elem_count() != b * t * d {
            bail!("aha-rope-transposed: x {:?} does not match cos {:?} / sin {:?}", l1.shape(), l2.shape(), l3.shape());
        }
        let y = by_dtype!(s1.dtype(), self.name(), |T| owned(rope_fwd::<T>(
            slice(s1, l1)?,
            slice(s2, l2)?,
            slice(s3, l3)?,
            dims
        )));
        Ok((y, Shape::from((b, h, t, d))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = x.dims4()?;
        let dx = by_dtype!(x.dtype(), self.name(), |T| {
            let v =
                read::<T, _>(g, |gs| read::<T, _>(cos, |cs| read::<T, _>(sin, |ss| Ok(rope_bwd(gs, cs, ss, dims)))))?;
            tensor(v, x)?
        });
        Ok((Some(dx), None, None))
    }
}

// ---------------------------------------------------------------------------------------------
// Scaled, masked softmax

/// `softmax(scores · scale + bias)` over the last dimension. `scores`: `[B, H, T, S]`;
/// `bias`: `[B, 1, T, S]` additive mask (no gradient).
pub fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> CResult<Tensor> {
    scores.contiguous()?.apply_op2(&bias.contiguous()?, SoftmaxOp { scale })
}

struct SoftmaxOp {
    scale: f64,
}

fn softmax_fwd<T: Real>(x: &[T], bias: &[T], (_, h, t, s): (usize, usize, usize, usize), scale: T) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(s).zip(x.par_chunks(s)).enumerate().with_min_len(rows_per_task(s)).for_each(|(r, (yr, xr))| {
        let (b, ti) = (r / (h * t), r % t);
        let br = &bias[(b * t + ti) * s..(b * t + ti + 1) * s];
        let mut max = T::lowest();
        for ((o, &xv), &bv) in yr.iter_mut().zip(xr).zip(br) {
            *o = xv * scale + bv;
            if *o > max {
                max = *o;
            }
        }
        let mut sum = T::zero();
        for o in yr.iter_mut() {
            *o = (*o - max).exp();
            sum += *o;
        }
        let inv = T::one() / sum;
        yr.iter_mut().for_each(|o| *o *= inv);
    });
    y
}

fn softmax_bwd<T: Real>(p: &[T], g: &[T], s: usize, scale: T) -> Vec<T> {
    let mut dx = vec![T::zero(); p.len()];
    dx.par_chunks_mut(s).zip(p.par_chunks(s)).zip(g.par_chunks(s)).with_min_len(rows_per_task(s)).for_each(
        |((dr, pr), gr)| {
            let mut dot = T::zero();
            for (&pv, &gv) in pr.iter().zip(gr) {
                dot += pv * gv;
            }
            for ((o, &pv), &gv) in dr.iter_mut().zip(pr).zip(gr) {
                *o = scale * pv * (gv - dot);
            }
        },
    );
    dx
}

impl CustomOp2 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "aha-masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let (b, _, t, s) = dims;
        if l2.shape().elem_count() != b * t * s {
            bail!("aha-masked-softmax: scores {:?} do not match bias {:?}", l1.shape(), l2.shape());
        }
        let y = by_dtype!(s1.dtype(), self.name(), |T| owned(softmax_fwd::<T>(
            slice(s1, l1)?,
            slice(s2, l2)?,
            dims,
            T::from_f64(self.scale)
        )));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _bias: &Tensor, res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let s = x.dim(3)?;
        let dx = by_dtype!(x.dtype(), self.name(), |T| {
            let v = read::<T, _>(res, |ps| read::<T, _>(g, |gs| Ok(softmax_bwd(ps, gs, s, T::from_f64(self.scale)))))?;
            tensor(v, x)?
        });
        Ok((Some(dx), None))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(gate) · up`, element-wise (same shapes).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwigluOp)
}

struct SwigluOp;

fn sigmoid<T: Real>(a: T) -> T {
    T::one() / (T::one() + (T::zero() - a).exp())
}

fn swiglu_fwd<T: Real>(a: &[T], u: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); a.len()];
    y.par_chunks_mut(GRAIN).zip(a.par_chunks(GRAIN)).zip(u.par_chunks(GRAIN)).for_each(|((yc, ac), uc)| {
        for ((o, &av), &uv) in yc.iter_mut().zip(ac).zip(uc) {
            *o = av * sigmoid(av) * uv;
        }
    });
    y
}

fn swiglu_bwd<T: Real>(a: &[T], u: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
    let mut da = vec![T::zero(); a.len()];
    let mut du = vec![T::zero(); a.len()];
    da.par_chunks_mut(GRAIN)
        .zip(du.par_chunks_mut(GRAIN))
        .zip(a.par_chunks(GRAIN))
        .zip(u.par_chunks(GRAIN).zip(g.par_chunks(GRAIN)))
        .for_each(|(((dac, duc), ac), (uc, gc))| {
            for i in 0..ac.len() {
                let (av, sg) = (ac[i], sigmoid(ac[i]));
                duc[i] = gc[i] * av * sg;
                dac[i] = gc[i] * uc[i] * sg * (T::one() + av * (T::one() - sg));
            }
        });
    (da, du)
}

impl CustomOp2 for SwigluOp {
    fn name(&self) -> &'static str {
        "aha-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("aha-swiglu: gate {:?} and up {:?} differ", l1.shape(), l2.shape());
        }
        let y = by_dtype!(s1.dtype(), self.name(), |T| owned(swiglu_fwd::<T>(slice(s1, l1)?, slice(s2, l2)?)));
        Ok((y, l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, u: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        by_dtype!(a.dtype(), self.name(), |T| {
            let (da, du) =
                read::<T, _>(a, |av| read::<T, _>(u, |uv| read::<T, _>(g, |gv| Ok(swiglu_bwd(av, uv, gv)))))?;
            Ok((Some(tensor(da, a)?), Some(tensor(du, u)?)))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// log-softmax + gather

/// `log_softmax(logits)[n, targets[n]]`: `logits` `[N, V]` (f32/f64), `targets` `[N]` u32 →
/// `[N]`. The gradient flows to `logits` only.
pub fn gather_logprobs(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    logits.contiguous()?.apply_op2(&targets, LogprobOp { lse: Mutex::new(Vec::new()) })
}

/// Keeps each row's log-sum-exp from the forward for the backward.
struct LogprobOp {
    lse: Mutex<Vec<f64>>,
}

fn logprob_fwd<T: Real>(z: &[T], targets: &[u32], v: usize) -> CResult<(Vec<T>, Vec<f64>)> {
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
        bail!("aha-gather-logprobs: target id {bad} is outside the vocabulary of {v}");
    }
    let rows: Vec<(T, f64)> = z
        .par_chunks(v)
        .zip(targets.par_iter())
        .with_min_len(rows_per_task(v))
        .map(|(zr, &t)| {
            let max = zr.iter().fold(T::lowest(), |m, &x| if x > m { x } else { m });
            let mut sum = T::zero();
            for &x in zr {
                sum += (x - max).exp();
            }
            let lse = max.to_f64() + sum.to_f64().ln();
            (T::from_f64(zr[t as usize].to_f64() - lse), lse)
        })
        .collect();
    Ok(rows.into_iter().unzip())
}

fn logprob_bwd<T: Real>(z: &[T], targets: &[u32], g: &[T], lse: &[f64], v: usize) -> Vec<T> {
    let mut dz = vec![T::zero(); z.len()];
    dz.par_chunks_mut(v).zip(z.par_chunks(v)).enumerate().with_min_len(rows_per_task(v)).for_each(|(n, (dr, zr))| {
        let (gn, l) = (g[n], T::from_f64(lse[n]));
        for (o, &x) in dr.iter_mut().zip(zr) {
            *o = T::zero() - gn * (x - l).exp();
        }
        dr[targets[n] as usize] += gn;
    });
    dz
}

impl CustomOp2 for LogprobOp {
    fn name(&self) -> &'static str {
        "aha-gather-logprobs"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        if l2.shape().elem_count() != n {
            bail!("aha-gather-logprobs: {n} rows of logits but {} targets", l2.shape().elem_count());
        }
        let targets = slice::<u32>(s2, l2)?;
        let (y, lse) = by_dtype!(s1.dtype(), self.name(), |T| {
            let (y, lse) = logprob_fwd::<T>(slice(s1, l1)?, targets, v)?;
            (owned(y), lse)
        });
        *self.lse.lock().map_err(|_| candle_core::Error::Msg("aha-gather-logprobs: poisoned lock".into()))? = lse;
        Ok((y, Shape::from(n)))
    }

    fn bwd(
        &self,
        z: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let v = z.dim(1)?;
        let lse = self.lse.lock().map_err(|_| candle_core::Error::Msg("aha-gather-logprobs: poisoned lock".into()))?;
        let dz = by_dtype!(z.dtype(), self.name(), |T| {
            let d = read::<T, _>(z, |zs| {
                read::<u32, _>(targets, |ts| read::<T, _>(g, |gs| Ok(logprob_bwd(zs, ts, gs, &lse, v))))
            })?;
            tensor(d, z)?
        });
        Ok((Some(dz), None))
    }
}

// ---------------------------------------------------------------------------------------------
// Entropy (no gradient)

/// The entropy of `softmax(logits)` per row: `logits` `[N, V]` (f32/f64) → `[N]` f64. Outside
/// autograd (a metric).
pub fn row_entropy(logits: &Tensor) -> CResult<Tensor> {
    let (n, v) = logits.dims2()?;
    let h = by_dtype!(logits.dtype(), "aha-row-entropy", |T| read::<T, _>(logits, |z| Ok(entropy_rows(z, v)))?);
    Tensor::from_vec(h, n, logits.device())
}

fn entropy_rows<T: Real>(z: &[T], v: usize) -> Vec<f64> {
    z.par_chunks(v)
        .with_min_len(rows_per_task(v))
        .map(|zr| {
            let max = zr.iter().fold(T::lowest(), |m, &x| if x > m { x } else { m });
            let (mut sum, mut wsum) = (T::zero(), T::zero());
            for &x in zr {
                let e = (x - max).exp();
                sum += e;
                wsum += e * (x - max);
            }
            // H = log Σe − Σ e·(x − max) / Σe, with x shifted by the row maximum.
            sum.to_f64().ln() - wsum.to_f64() / sum.to_f64()
        })
        .collect()
}

#[cfg(test)]
mod tests;
