//! Fused, differentiable CPU ops for a candle-autograd forward (the `cpu-autograd` backend, and
//! the row ops of every CPU forward): RMSNorm, RoPE (with the head transpose folded in), scaled +
//! biased softmax, SwiGLU, log-softmax + gather, and a no-grad row entropy.
//!
//! Why: candle builds each of these from 5–10 element-wise ops, and every op allocates a tensor,
//! makes a pass over memory and synchronises the element-wise thread pool, in the forward and
//! again (two or three times over) in the backward. On a 2-core CPU that overhead, not the
//! matmuls, dominated a training step of small models (see BENCHMARKS.md). Each op here is one
//! pass forward and one pass backward, a candle custom op with its own `bwd`, so autograd still
//! works. The arithmetic of every row is `cpu/rows.rs`'s, the same the hand-written path runs.
//!
//! Scope: CPU tensors in f32 (the plans `cpu-handwritten` and `cpu-autograd` in `exec.rs` reach
//! them through `ops.rs`); inputs are made contiguous first. Other devices and dtypes take
//! `ops/composite.rs`, which defines the semantics these ops reproduce (the tests compare values
//! and gradients against those functions). Work is split over rayon's pool in row blocks.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::cpu::rows::{self, grain, ROW_GRAIN};

type CResult<T> = candle_core::Result<T>;

/// The contiguous data of a CPU storage as `T`.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> CResult<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused kernel: input is not contiguous"),
    }
}

/// The f32 data of an op input (every op here is f32 only; the plan never sends it another).
fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    if s.dtype() != DType::F32 {
        bail!("{op}: f32 only, got {:?} (other dtypes take the composite ops)", s.dtype());
    }
    slice(s, l)
}

/// Runs `f` on the contiguous f32 CPU data of each tensor.
fn read<R>(tensors: &[&Tensor], f: impl FnOnce(&[&[f32]]) -> R) -> CResult<R> {
    cpu_slices(tensors, f)
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

fn tensor(v: Vec<f32>, like: &Tensor) -> CResult<Tensor> {
    Tensor::from_vec(v, like.shape(), like.device())
}

fn lock<'a, T>(m: &'a Mutex<T>, op: &str) -> CResult<std::sync::MutexGuard<'a, T>> {
    m.lock().map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned lock")))
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `x · rsqrt(mean(x²) + eps) · w` over the last dimension.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32, rstd: Mutex::new(Vec::new()) })
}

/// Keeps each row's `1 / rms` from the forward for the backward.
struct RmsNormOp {
    eps: f32,
    rstd: Mutex<Vec<f32>>,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "aha-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (x, w) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        if w.is_empty() || x.len() % w.len() != 0 {
            bail!("aha-rms-norm: x {:?} does not match w {:?}", l1.shape(), l2.shape());
        }
        let (y, rstd) = rows::rms_forward(x, w, self.eps);
        *lock(&self.rstd, self.name())? = rstd;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let rstd = lock(&self.rstd, self.name())?;
        let mut dw = vec![0f32; w.elem_count()];
        let dx = read(&[x, w, g], |s| rows::rms_backward(s[0], &rstd, s[1], s[2], &mut dw))?;
        Ok((Some(tensor(dx, x)?), Some(tensor(dw, w)?)))
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

/// `[B, T, H, D]` → `[B, H, T, D]`, each head rotated.
fn rope_fwd(x: &[f32], c: &[f32], s: &[f32], (_, t, h, d): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(t * d).enumerate().for_each(|(bh, yb)| {
        let (b, hh) = (bh / h, bh % h);
        for (ti, yr) in yb.chunks_mut(d).enumerate() {
            let xo = ((b * t + ti) * h + hh) * d;
            let co = (b * t + ti) * d;
            yr.copy_from_slice(&x[xo..xo + d]);
            rows::rope_head(yr, &c[co..co + d], &s[co..co + d], false);
        }
    });
    y
}

/// The transpose of [`rope_fwd`]: `[B, H, T, D]` upstream gradient → `[B, T, H, D]`.
fn rope_bwd(g: &[f32], c: &[f32], s: &[f32], (_, t, h, d): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut dx = vec![0f32; g.len()];
    dx.par_chunks_mut(h * d).enumerate().for_each(|(bt, dxr)| {
        let (b, ti) = (bt / t, bt % t);
        let co = bt * d;
        for (hh, dxh) in dxr.chunks_mut(d).enumerate() {
            let go = ((b * h + hh) * t + ti) * d;
            dxh.copy_from_slice(&g[go..go + d]);
            rows::rope_head(dxh, &c[co..co + d], &s[co..co + d], true);
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
        let (x, c, s) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        Ok((CpuStorage::F32(rope_fwd(x, c, s, dims)), Shape::from((b, h, t, d))))
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
        let dx = read(&[g, cos, sin], |s| rope_bwd(s[0], s[1], s[2], dims))?;
        Ok((Some(tensor(dx, x)?), None, None))
    }
}

// ---------------------------------------------------------------------------------------------
// Scaled softmax with an additive mask

/// `softmax(scores · scale + bias)` over the last dimension. `scores`: `[B, H, T, S]`;
/// `bias`: `[B, 1, T, S]`, 0 where attention is allowed and −1e30 where not (no gradient).
pub fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> CResult<Tensor> {
    scores.contiguous()?.apply_op2(&bias.contiguous()?, SoftmaxOp { scale: scale as f32 })
}

struct SoftmaxOp {
    scale: f32,
}

impl CustomOp2 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "aha-masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (b, h, t, s) = l1.shape().dims4()?;
        if l2.shape().elem_count() != b * t * s {
            bail!("aha-masked-softmax: scores {:?} do not match bias {:?}", l1.shape(), l2.shape());
        }
        let (x, bias) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let mut y = x.to_vec();
        y.par_chunks_mut(s).enumerate().with_min_len(grain(s)).for_each(|(r, yr)| {
            let (bi, ti) = (r / (h * t), r % t);
            let o = (bi * t + ti) * s;
            rows::biased_softmax_row(yr, &bias[o..o + s], self.scale);
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _bias: &Tensor, res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let s = x.dim(3)?;
        let dx = read(&[res, g], |v| {
            let (p, mut dp) = (v[0], v[1].to_vec());
            dp.par_chunks_mut(s).zip(p.par_chunks(s)).with_min_len(grain(s)).for_each(|(dr, pr)| {
                rows::softmax_backward_row(dr, pr, self.scale);
            });
            dp
        })?;
        Ok((Some(tensor(dx, x)?), None))
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(gate) · up`, element-wise (same shapes).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwigluOp)
}

struct SwigluOp;

impl CustomOp2 for SwigluOp {
    fn name(&self) -> &'static str {
        "aha-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("aha-swiglu: gate {:?} and up {:?} differ", l1.shape(), l2.shape());
        }
        let (a, u) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(ROW_GRAIN)
            .zip(a.par_chunks(ROW_GRAIN))
            .zip(u.par_chunks(ROW_GRAIN))
            .for_each(|((yc, ac), uc)| rows::swiglu_row(ac, uc, yc));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, u: &Tensor, _res: &Tensor, g: &Tensor) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (da, du) = read(&[a, u, g], |s| {
            let (mut da, mut du) = (vec![0f32; s[0].len()], vec![0f32; s[0].len()]);
            da.par_chunks_mut(ROW_GRAIN)
                .zip(du.par_chunks_mut(ROW_GRAIN))
                .zip(s[0].par_chunks(ROW_GRAIN))
                .zip(s[1].par_chunks(ROW_GRAIN).zip(s[2].par_chunks(ROW_GRAIN)))
                .for_each(|(((dac, duc), ac), (uc, gc))| rows::swiglu_backward_row(ac, uc, gc, dac, duc));
            (da, du)
        })?;
        Ok((Some(tensor(da, a)?), Some(tensor(du, u)?)))
    }
}

// ---------------------------------------------------------------------------------------------
// log-softmax + gather

/// `log_softmax(logits)[n, targets[n]]`: `logits` `[N, V]` f32, `targets` `[N]` u32 → `[N]` f32.
/// The gradient flows to `logits` only.
pub fn gather_logprobs(logits: &Tensor, targets: &Tensor) -> CResult<Tensor> {
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    logits.contiguous()?.apply_op2(&targets, LogprobOp { lse: Mutex::new(Vec::new()) })
}

/// Keeps each row's log-sum-exp from the forward for the backward.
struct LogprobOp {
    lse: Mutex<Vec<f32>>,
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
        let (z, targets) = (f32s(s1, l1, self.name())?, slice::<u32>(s2, l2)?);
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
            bail!("aha-gather-logprobs: target id {bad} is outside the vocabulary of {v}");
        }
        let (y, lse): (Vec<f32>, Vec<f32>) = z
            .par_chunks(v)
            .zip(targets.par_iter())
            .with_min_len(grain(v))
            .map(|(zr, &t)| {
                let (lp, _, lse) = rows::logprob_row(zr, t as usize);
                (lp, lse)
            })
            .unzip();
        *lock(&self.lse, self.name())? = lse;
        Ok((CpuStorage::F32(y), Shape::from(n)))
    }

    fn bwd(
        &self,
        z: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let v = z.dim(1)?;
        let lse = lock(&self.lse, self.name())?;
        let ts = cpu_slices::<u32, _>(&[targets], |t| t[0].to_vec())?;
        let dz = read(&[z, g], |s| {
            let mut dz = vec![0f32; s[0].len()];
            dz.par_chunks_mut(v)
                .zip(s[0].par_chunks(v))
                .enumerate()
                .with_min_len(grain(v))
                .for_each(|(n, (dr, zr))| rows::logprob_backward_row(zr, lse[n], ts[n] as usize, s[1][n], dr));
            dz
        })?;
        Ok((Some(tensor(dz, z)?), None))
    }
}

// ---------------------------------------------------------------------------------------------
// Entropy (no gradient)

/// The entropy of `softmax(logits)` per row: `logits` `[N, V]` f32 → `[N]` f32. Outside autograd
/// (a metric).
pub fn row_entropy(logits: &Tensor) -> CResult<Tensor> {
    let (n, v) = logits.dims2()?;
    if logits.dtype() != DType::F32 {
        bail!("aha-row-entropy: f32 only, got {:?}", logits.dtype());
    }
    let h = read(&[logits], |z| {
        z[0].par_chunks(v).with_min_len(grain(v)).map(|zr| rows::logprob_row(zr, 0).1).collect::<Vec<f32>>()
    })?;
    Tensor::from_vec(h, n, logits.device())
}

#[cfg(test)]
mod tests;
