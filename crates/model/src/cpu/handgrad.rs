//! Hand-written training forward and backward on the CPU (f32): the fast path behind SFT, GRPO
//! and `aha bench train`.
//!
//! Why: with candle's autograd a training step of a small model is dominated not by its
//! matmuls but by everything around them — one tensor, one pass over memory and one
//! synchronisation of the element-wise pool per op, a zero tensor and an add per gradient edge
//! (BENCHMARKS.md has the profile). Here the whole model is one forward that keeps exactly the
//! activations its backward needs, and one backward that writes every parameter gradient once:
//! gemm calls (the same `gemm` crate candle uses) with transposes expressed as strides, and
//! fused row kernels for RMSNorm, RoPE, masked softmax, SwiGLU and log-softmax, split over
//! rayon's pool. It computes what [`Transformer::forward`] does (the tests compare values and
//! every gradient against candle's autograd through the composite model).
//!
//! Interface: [`forward`] returns the log-probabilities of given target tokens at a span of
//! positions (and each position's entropy); [`TrainForward::backward`] turns the gradient of a
//! loss with respect to those log-probabilities into parameter gradients by Hugging Face name.
//! Every loss aha trains (SFT cross-entropy, the GRPO objectives) is a function of those
//! log-probabilities, so it stays in candle and only its small `[B, L]` graph is autograd.
//!
//! Shared prompts: sequences next to each other that agree on every position before the span
//! (the G samples of one GRPO prompt) are packed so those positions are computed once — in the
//! forward, the backward and the reference forward ([`attention`] has the layout). Per-row work
//! runs over the packed rows; the row kernels are `cpu/rows.rs`, shared with `cpu/autograd.rs`.
//!
//! Scope: models whose execution plan is `cpu-handwritten` (CPU, f32, Qwen2 / Llama; Qwen3's q/k
//! norms take `cpu-autograd`), decided in `exec.rs`; [`forward`] refuses any other.
//! Reductions over rows (bias and norm-weight gradients, the embedding scatter) run in a fixed
//! order, so results do not depend on the number of threads.

use std::collections::HashMap;

use candle_core::{bail, DType, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::rows::{self, grain, rms_backward, rms_forward, ROW_GRAIN};
use crate::error::Result;
use crate::transformer::Transformer;
use attention::Packing;

type CResult<T> = candle_core::Result<T>;

/// Multiply-adds below which a gemm stays on the calling thread.
const PAR_MIN_WORK: usize = 1 << 18;

// ---------------------------------------------------------------------------------------------
// Shapes and parameters

/// The sizes one forward works with.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    /// Packed rows ([`Packing`]): `batch · seq` less the shared prefixes.
    rows: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
    vocab: usize,
    eps: f32,
}

impl Dims {
    fn rows(&self) -> usize {
        self.rows
    }
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// Positions of one layer's parameters in the named parameter list.
#[derive(Debug, Clone)]
struct LayerIdx {
    ln1: usize,
    q: usize,
    bq: Option<usize>,
    k: usize,
    bk: Option<usize>,
    v: usize,
    bv: Option<usize>,
    o: usize,
    ln2: usize,
    gate: usize,
    up: usize,
    down: usize,
}

/// Positions of every parameter in the named parameter list (`head == embed` when tied).
#[derive(Debug, Clone)]
struct ParamIdx {
    embed: usize,
    layers: Vec<LayerIdx>,
    norm: usize,
    head: usize,
}

impl ParamIdx {
    fn build(names: &[String], layers: usize) -> CResult<Self> {
        let map: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let get = |name: &str| match map.get(name) {
            Some(&i) => Ok(i),
            None => bail!("hand-written backward: parameter `{name}` is missing"),
        };
        let layers = (0..layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let a = |n: &str| get(&format!("{p}.self_attn.{n}"));
                Ok(LayerIdx {
                    ln1: get(&format!("{p}.input_layernorm.weight"))?,
                    q: a("q_proj.weight")?,
                    bq: map.get(format!("{p}.self_attn.q_proj.bias").as_str()).copied(),
                    k: a("k_proj.weight")?,
                    bk: map.get(format!("{p}.self_attn.k_proj.bias").as_str()).copied(),
                    v: a("v_proj.weight")?,
                    bv: map.get(format!("{p}.self_attn.v_proj.bias").as_str()).copied(),
                    o: a("o_proj.weight")?,
                    ln2: get(&format!("{p}.post_attention_layernorm.weight"))?,
                    gate: get(&format!("{p}.mlp.gate_proj.weight"))?,
                    up: get(&format!("{p}.mlp.up_proj.weight"))?,
                    down: get(&format!("{p}.mlp.down_proj.weight"))?,
                })
            })
            .collect::<CResult<Vec<_>>>()?;
        if layers.iter().any(|l| [l.bq, l.bk, l.bv].iter().filter(|b| b.is_some()).count() % 3 != 0) {
            bail!("hand-written backward: q/k/v biases must be all present or all absent");
        }
        let embed = get("model.embed_tokens.weight")?;
        let head = map.get("lm_head.weight").copied().unwrap_or(embed);
        Ok(Self { embed, layers, norm: get("model.norm.weight")?, head })
    }
}

// ---------------------------------------------------------------------------------------------
// gemm

/// A strided matrix view into a slice.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix filling `data` from the start.
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, off: 0, rows, cols, rs: cols, cs: 1 }
    }

    /// A `rows × cols` block starting at `off` with row stride `rs`.
    fn view(data: &'a [f32], off: usize, rows: usize, cols: usize, rs: usize) -> Self {
        Self { data, off, rows, cols, rs, cs: 1 }
    }

    /// The block of rows `r0..r1` and columns `c0..c1` (no copy).
    fn sub(self, (r0, r1): (usize, usize), (c0, c1): (usize, usize)) -> Self {
        Self { off: self.off + r0 * self.rs + c0 * self.cs, rows: r1 - r0, cols: c1 - c0, ..self }
    }

    /// The transpose (no copy).
    fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    fn last(&self) -> usize {
        self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs
    }
}

/// `dst[doff..]` (an `a.rows × b.cols` block with row stride `drs`) `= a · b`, or `+= a · b`
/// when `acc`. `par` lets gemm split large products over rayon's pool.
fn mm(dst: &mut [f32], doff: usize, drs: usize, a: Mat, b: Mat, acc: bool, par: bool) -> CResult<()> {
    let (m, n) = (a.rows, b.cols);
    if !check_operands(a, b)? {
        return Ok(());
    }
    if doff + (m - 1) * drs + n > dst.len() || drs < n {
        bail!("hand-written backward: gemm output {m}×{n} does not fit");
    }
    // SAFETY: the output block lies inside `dst` (checked just above) and `dst` is borrowed
    // mutably, so nothing else aliases it; the operands were checked by `check_operands`.
    unsafe { gemm_raw(dst.as_mut_ptr().add(doff), drs, a, b, acc, par) };
    Ok(())
}

/// `a · b` as a new row-major `[a.rows, b.cols]` vector. Nothing is zeroed first: gemm
/// overwrites every element.
fn mm_new(a: Mat, b: Mat, par: bool) -> CResult<Vec<f32>> {
    let (m, n) = (a.rows, b.cols);
    if !check_operands(a, b)? {
        return Ok(vec![0f32; m * n]);
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the buffer has room for the `m × n` block with row stride `n`, which gemm writes
    // in full without reading it (`acc` false); only then is the length set.
    unsafe {
        gemm_raw(out.as_mut_ptr(), n, a, b, false, par);
        out.set_len(m * n);
    }
    Ok(out)
}

/// Checks that `a · b` is well formed and its operands in bounds; `false` when the product is
/// empty or has `k = 0` (every element zero).
fn check_operands(a: Mat, b: Mat) -> CResult<bool> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        bail!("hand-written backward: gemm shapes {m}×{k} · {}×{n}", b.rows);
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(false);
    }
    if a.last() >= a.data.len() || b.last() >= b.data.len() {
        bail!("hand-written backward: gemm operand out of bounds");
    }
    Ok(true)
}

/// `dst = a · b` (or `+=` when `acc`) for a row-major block at `dst` with row stride `drs`.
///
/// # Safety
/// `dst` must be valid for writes (and, when `acc`, reads) of the `a.rows × b.cols` block with
/// row stride `drs ≥ b.cols`, not aliased by anything else, and the operands must have passed
/// [`check_operands`] (non-empty, `k > 0`, in bounds).
unsafe fn gemm_raw(dst: *mut f32, drs: usize, a: Mat, b: Mat, acc: bool, par: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let threads = rayon::current_num_threads();
    let parallelism =
        if par && threads > 1 && m * n * k >= PAR_MIN_WORK { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: the caller guarantees the output block; every operand element gemm reads lies
    // inside its slice (the last one was checked, strides are non-negative).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            drs as isize,
            acc,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `x · wᵀ (+ bias)`: `x` `[rows, inp]`, `w` `[out, inp]` → `[rows, out]`.
fn linear(x: &[f32], rows: usize, w: &[f32], bias: Option<&[f32]>, out: usize) -> CResult<Vec<f32>> {
    let inp = w.len() / out.max(1);
    let mut y = mm_new(Mat::new(x, rows, inp), Mat::new(w, out, inp).t(), true)?;
    if let Some(b) = bias {
        y.par_chunks_mut(out).with_min_len(grain(out)).for_each(|r| r.iter_mut().zip(b).for_each(|(o, &bv)| *o += bv));
    }
    Ok(y)
}

/// The weight gradients of a (possibly stacked) projection `y = x · Wᵀ`, straight into each
/// parameter's buffer: `dW_p = dy[:, off..off+width]ᵀ · x` for each `(p, off, width)`.
fn weight_grads(dy: &[f32], x: &[f32], rows: usize, parts: &[(usize, usize, usize)], gb: &mut GradBufs) -> CResult<()> {
    let out = dy.len() / rows.max(1);
    let inp = x.len() / rows.max(1);
    for &(p, off, width) in parts {
        let dyp = Mat::view(dy, off, rows, width, out);
        mm(&mut gb[p], 0, inp, dyp.t(), Mat::new(x, rows, inp), false, true)?;
    }
    Ok(())
}

/// `acc[j] = Σ_rows m[row, j]`, summed in a fixed order.
fn column_sums(m: &[f32], cols: usize, acc: &mut [f32]) {
    acc.fill(0.0);
    for row in m.chunks(cols) {
        acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
    }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(ROW_GRAIN).zip(src.par_chunks(ROW_GRAIN)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(a, &b)| *a += b);
    });
}

// ---------------------------------------------------------------------------------------------
// Row kernels

/// RoPE in place on the first `roped` columns of each row of `x` (`[rows, width]`, heads of
/// `hd` side by side), HF's rotate-half layout; `cos`/`sin` are `[rows, hd]`. `inverse` applies
/// the transpose (the backward).
fn rope_inplace(x: &mut [f32], width: usize, roped: usize, cos: &[f32], sin: &[f32], hd: usize, inverse: bool) {
    x.par_chunks_mut(width)
        .zip(cos.par_chunks(hd))
        .zip(sin.par_chunks(hd))
        .with_min_len(grain(width))
        .for_each(|((row, c), s)| row[..roped].chunks_mut(hd).for_each(|head| rows::rope_head(head, c, s, inverse)));
}

/// `silu(gate) · up` for rows of the stacked projection `gu` (`[rows, 2·inter]`, gate first).
fn swiglu(gu: &[f32], inter: usize) -> Vec<f32> {
    let mut out = vec![0f32; gu.len() / 2];
    out.par_chunks_mut(inter).zip(gu.par_chunks(2 * inter)).with_min_len(grain(inter)).for_each(|(o, row)| {
        let (g, u) = row.split_at(inter);
        rows::swiglu_row(g, u, o);
    });
    out
}

/// The backward of [`swiglu`]: the gradient of `gu` for upstream `d` (`[rows, inter]`).
fn swiglu_backward(gu: &[f32], inter: usize, d: &[f32]) -> Vec<f32> {
    let mut dgu = vec![0f32; gu.len()];
    dgu.par_chunks_mut(2 * inter)
        .zip(gu.par_chunks(2 * inter))
        .zip(d.par_chunks(inter))
        .with_min_len(grain(inter))
        .for_each(|((dr, row), dc)| {
            let (g, u) = row.split_at(inter);
            let (dg, du) = dr.split_at_mut(inter);
            rows::swiglu_backward_row(g, u, dc, dg, du);
        });
    dgu
}

// ---------------------------------------------------------------------------------------------
// Attention

/// Column offsets of q, k and v in a row of the fused projection `[N, nh·hd + 2·nkv·hd]`.
#[derive(Clone, Copy)]
struct QkvLayout {
    width: usize,
    k: usize,
    v: usize,
}

impl QkvLayout {
    fn of(d: &Dims) -> Self {
        Self { width: d.q_width() + 2 * d.kv_width(), k: d.q_width(), v: d.q_width() + d.kv_width() }
    }
}

// ---------------------------------------------------------------------------------------------
// Layers

/// What one layer's backward needs from its forward.
struct LayerTape {
    x: Vec<f32>,
    rstd1: Vec<f32>,
    xn1: Vec<f32>,
    /// The fused q/k/v projection, RoPE applied to q and k (`QkvLayout`).
    qkv: Vec<f32>,
    probs: Vec<attention::Probs>,
    att: Vec<f32>,
    xmid: Vec<f32>,
    rstd2: Vec<f32>,
    xn2: Vec<f32>,
    /// The fused gate/up projection `[N, 2·I]` (gate first).
    gu: Vec<f32>,
    act: Vec<f32>,
}

/// Row-wise inputs shared by every layer.
struct Ctx<'a> {
    d: Dims,
    pk: &'a Packing,
    mask: &'a [f32],
    cos: &'a [f32],
    sin: &'a [f32],
}

/// Rows of several `[out_i, in]` weights stacked into one `[Σ out_i, in]` matrix (one gemm
/// instead of several, the input packed once).
fn stack(parts: &[&[f32]]) -> Vec<f32> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| out.extend_from_slice(p));
    out
}

/// The stacked q/k/v weight and, when the model has them, the stacked biases.
fn qkv_weights(w: &[&[f32]], li: &LayerIdx) -> (Vec<f32>, Option<Vec<f32>>) {
    let weight = stack(&[w[li.q], w[li.k], w[li.v]]);
    let bias = match (li.bq, li.bk, li.bv) {
        (Some(q), Some(k), Some(v)) => Some(stack(&[w[q], w[k], w[v]])),
        _ => None,
    };
    (weight, bias)
}

fn layer_forward(cx: &Ctx, w: &[&[f32]], li: &LayerIdx, x: Vec<f32>) -> CResult<(Vec<f32>, LayerTape)> {
    let d = &cx.d;
    let (n, l) = (d.rows(), QkvLayout::of(d));
    let (xn1, rstd1) = rms_forward(&x, w[li.ln1], d.eps);
    let (wqkv, bqkv) = qkv_weights(w, li);
    let mut qkv = linear(&xn1, n, &wqkv, bqkv.as_deref(), l.width)?;
    rope_inplace(&mut qkv, l.width, l.v, cx.cos, cx.sin, d.head_dim, false);
    let (att, probs) = attention::forward(d, cx.pk, &qkv, cx.mask)?;
    let mut xmid = linear(&att, n, w[li.o], None, d.hidden)?;
    add_into(&mut xmid, &x);
    let (xn2, rstd2) = rms_forward(&xmid, w[li.ln2], d.eps);
    let gu = linear(&xn2, n, &stack(&[w[li.gate], w[li.up]]), None, 2 * d.inter)?;
    let act = swiglu(&gu, d.inter);
    let mut out = linear(&act, n, w[li.down], None, d.hidden)?;
    add_into(&mut out, &xmid);
    Ok((out, LayerTape { x, rstd1, xn1, qkv, probs, att, xmid, rstd2, xn2, gu, act }))
}

/// Gradient buffers, one per named parameter.
type GradBufs = Vec<Vec<f32>>;

fn layer_backward(
    cx: &Ctx,
    w: &[&[f32]],
    li: &LayerIdx,
    tp: &LayerTape,
    dout: Vec<f32>,
    gb: &mut GradBufs,
) -> CResult<Vec<f32>> {
    let d = &cx.d;
    let (n, l, i2) = (d.rows(), QkvLayout::of(d), 2 * d.inter);
    // MLP: out = xmid + down(silu(gate) · up), gate and up one stacked projection.
    weight_grads(&dout, &tp.act, n, &[(li.down, 0, d.hidden)], gb)?;
    let dact = mm_new(Mat::new(&dout, n, d.hidden), Mat::new(w[li.down], d.hidden, d.inter), true)?;
    let dgu = swiglu_backward(&tp.gu, d.inter, &dact);
    drop(dact);
    weight_grads(&dgu, &tp.xn2, n, &[(li.gate, 0, d.inter), (li.up, d.inter, d.inter)], gb)?;
    let dxn2 = mm_new(Mat::new(&dgu, n, i2), Mat::new(&stack(&[w[li.gate], w[li.up]]), i2, d.hidden), true)?;
    drop(dgu);
    let mut dxmid = rms_backward(&tp.xmid, &tp.rstd2, w[li.ln2], &dxn2, &mut gb[li.ln2]);
    add_into(&mut dxmid, &dout);
    drop(dout);
    // Attention: xmid = x + o_proj(attention(rope(q), rope(k), v)), q/k/v one stacked projection.
    weight_grads(&dxmid, &tp.att, n, &[(li.o, 0, d.hidden)], gb)?;
    let datt = mm_new(Mat::new(&dxmid, n, d.hidden), Mat::new(w[li.o], d.hidden, d.q_width()), true)?;
    let mut dqkv = attention::backward(d, cx.pk, &tp.qkv, &tp.probs, cx.mask, &datt)?;
    drop(datt);
    rope_inplace(&mut dqkv, l.width, l.v, cx.cos, cx.sin, d.head_dim, true);
    let (wqkv, _) = qkv_weights(w, li);
    let (kw, h) = (d.kv_width(), d.hidden);
    weight_grads(&dqkv, &tp.xn1, n, &[(li.q, 0, l.k), (li.k, l.k, kw), (li.v, l.v, kw)], gb)?;
    if let (Some(bq), Some(bk), Some(bv)) = (li.bq, li.bk, li.bv) {
        let mut db = vec![0f32; l.width];
        column_sums(&dqkv, l.width, &mut db);
        unstack(&db, &[(bq, 0), (bk, l.k), (bv, l.v)], gb);
    }
    let dxn1 = mm_new(Mat::new(&dqkv, n, l.width), Mat::new(&wqkv, l.width, h), true)?;
    let mut dx = rms_backward(&tp.x, &tp.rstd1, w[li.ln1], &dxn1, &mut gb[li.ln1]);
    add_into(&mut dx, &dxmid);
    Ok(dx)
}

/// Copies blocks of a stacked gradient into the parameters' buffers: `(parameter, offset)`,
/// each parameter taking as many elements as its buffer holds.
fn unstack(stacked: &[f32], parts: &[(usize, usize)], gb: &mut GradBufs) {
    for &(param, off) in parts {
        let len = gb[param].len();
        gb[param].copy_from_slice(&stacked[off..off + len]);
    }
}

// ---------------------------------------------------------------------------------------------
// The model

/// The result of [`forward`]: log-probabilities and entropies of the span, and what the
/// backward needs.
pub struct TrainForward {
    /// `[B, L]` f32: log p(target) at each position of the span.
    pub logps: Tensor,
    /// `[B, L]` f32: the entropy of each position's next-token distribution (not differentiated).
    pub entropy: Tensor,
    tape: Tape,
}

/// Everything the backward reads, owned.
struct Tape {
    d: Dims,
    pk: Packing,
    params: Vec<(String, Tensor)>,
    idx: ParamIdx,
    /// Token ids of the packed rows.
    ids: Vec<u32>,
    /// The attention mask `[B, T]` (not packed).
    mask: Vec<f32>,
    /// RoPE tables of the packed rows.
    cos: Vec<f32>,
    sin: Vec<f32>,
    layers: Vec<LayerTape>,
    x_last: Vec<f32>,
    rstd_final: Vec<f32>,
    /// Final normed hidden states of the span rows, `[M, H]`.
    h_span: Vec<f32>,
    /// Logits of the span rows `[M, V]`.
    logits: Vec<f32>,
    lse: Vec<f32>,
    targets: Vec<u32>,
    start: usize,
    len: usize,
}

/// The training forward over a padded batch, down to the log-probabilities of `targets`.
///
/// `input_ids` `[B, T]` u32, `attention_mask` `[B, T]` (1 real, 0 padding), `position_ids`
/// `[B, T]` u32; `targets` `[B, L]` u32 are the tokens predicted by positions
/// `start .. start + L` (e.g. the completion after a prompt of width `start + 1`).
pub fn forward(
    model: &Transformer,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    position_ids: &Tensor,
    start: usize,
    targets: &Tensor,
) -> Result<TrainForward> {
    if !model.plan().hand_written_grads() {
        return Err(invalid(format!(
            "the hand-written training forward needs the `cpu-handwritten` backend, not {}",
            model.plan().describe()
        )));
    }
    let cfg = model.config();
    let (batch, seq) = input_ids.dims2()?;
    let (tb, len) = targets.dims2()?;
    if tb != batch || start + len > seq {
        return Err(invalid(format!(
            "hand-written forward: targets {tb}×{len} from position {start} do not fit a {batch}×{seq} batch"
        )));
    }
    let ids = token_ids(input_ids, cfg.vocab_size, "token")?;
    let mask = attention_mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let pos = position_ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let same = |a: usize, b: usize| {
        let (ra, rb) = (a * seq..a * seq + start, b * seq..b * seq + start);
        ids[ra.clone()] == ids[rb.clone()] && mask[ra.clone()] == mask[rb.clone()] && pos[ra] == pos[rb]
    };
    let pk = Packing::detect(batch, seq, start, same);
    let d = Dims {
        batch,
        rows: pk.rows,
        hidden: cfg.hidden_size,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        inter: cfg.intermediate_size,
        vocab: cfg.vocab_size,
        eps: cfg.rms_norm_eps as f32,
    };
    let targets = token_ids(targets, d.vocab, "target")?;
    let (cos, sin) = model.rope_tables(position_ids)?;
    let src = pk.sources();
    let ids = gather_rows(&ids, 1, &src);
    let cos = gather_rows(&cos.flatten_all()?.to_vec1::<f32>()?, d.head_dim, &src);
    let sin = gather_rows(&sin.flatten_all()?.to_vec1::<f32>()?, d.head_dim, &src);
    let params = model.named_parameters();
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    let idx = ParamIdx::build(&names, cfg.num_hidden_layers)?;
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let mut tape = Tape {
        d,
        pk,
        params,
        idx,
        ids,
        mask,
        cos,
        sin,
        layers: Vec::new(),
        x_last: Vec::new(),
        rstd_final: Vec::new(),
        h_span: Vec::new(),
        logits: Vec::new(),
        lse: Vec::new(),
        targets,
        start,
        len,
    };
    let (logps, entropy) =
        crate::cpu::autograd::cpu_slices(&tensors.iter().collect::<Vec<_>>(), |w| run_forward(&mut tape, w))??;
    let device = input_ids.device();
    Ok(TrainForward {
        logps: Tensor::from_vec(logps, (batch, len), device)?,
        entropy: Tensor::from_vec(entropy, (batch, len), device)?,
        tape,
    })
}

/// Rows `src[i]` of `x` (rows of `width` elements), in order.
fn gather_rows<T: Copy>(x: &[T], width: usize, src: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(src.len() * width);
    src.iter().for_each(|&r| out.extend_from_slice(&x[r * width..(r + 1) * width]));
    out
}

/// A model error carrying `msg`.
fn invalid(msg: String) -> crate::error::ModelError {
    candle_core::Error::Msg(msg).into()
}

/// The ids of `t` as u32, each checked against the vocabulary (`what` names them in the error).
fn token_ids(t: &Tensor, vocab: usize, what: &str) -> Result<Vec<u32>> {
    let ids = t.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    match ids.iter().find(|&&i| i as usize >= vocab) {
        Some(&bad) => Err(invalid(format!("{what} id {bad} is outside the vocabulary of {vocab}"))),
        None => Ok(ids),
    }
}

/// Fills the tape; returns `(logps, entropy)` of the span rows.
fn run_forward(tape: &mut Tape, w: &[&[f32]]) -> CResult<(Vec<f32>, Vec<f32>)> {
    let d = tape.d;
    let h = d.hidden;
    let embed = w[tape.idx.embed];
    let mut x = vec![0f32; d.rows() * h];
    x.par_chunks_mut(h).zip(tape.ids.par_iter()).for_each(|(row, &id)| {
        row.copy_from_slice(&embed[id as usize * h..(id as usize + 1) * h]);
    });
    let cx = Ctx { d, pk: &tape.pk, mask: &tape.mask, cos: &tape.cos, sin: &tape.sin };
    let mut layers = Vec::with_capacity(tape.idx.layers.len());
    for li in &tape.idx.layers {
        let (out, lt) = layer_forward(&cx, w, li, x)?;
        layers.push(lt);
        x = out;
    }
    let (xf, rstd_final) = rms_forward(&x, w[tape.idx.norm], d.eps);
    let h_span = span_rows(&xf, &d, &tape.pk, tape.start, tape.len);
    drop(xf);
    let m = d.batch * tape.len;
    let logits = mm_new(Mat::new(&h_span, m, h), Mat::new(w[tape.idx.head], d.vocab, h).t(), true)?;
    let stats: Vec<(f32, f32, f32)> = logits
        .par_chunks(d.vocab)
        .zip(tape.targets.par_iter())
        .with_min_len(grain(d.vocab))
        .map(|(z, &tgt)| rows::logprob_row(z, tgt as usize))
        .collect();
    let mut logps = Vec::with_capacity(m);
    let mut entropy = Vec::with_capacity(m);
    let mut lse = Vec::with_capacity(m);
    for (lp, ent, l) in stats {
        logps.push(lp);
        entropy.push(ent);
        lse.push(l);
    }
    tape.layers = layers;
    tape.x_last = x;
    tape.rstd_final = rstd_final;
    tape.h_span = h_span;
    tape.logits = logits;
    tape.lse = lse;
    Ok((logps, entropy))
}

/// The rows of positions `start .. start + len` of every sequence of `x` (packed rows) →
/// `[B·len, H]`.
fn span_rows(x: &[f32], d: &Dims, pk: &Packing, start: usize, len: usize) -> Vec<f32> {
    let h = d.hidden;
    let mut out = Vec::with_capacity(d.batch * len * h);
    for b in (0..d.batch).filter(|_| len > 0) {
        // The span lies after the shared prefix, so its rows are consecutive.
        let from = pk.row(b, start) * h;
        out.extend_from_slice(&x[from..from + len * h]);
    }
    out
}

impl TrainForward {
    /// Parameter gradients `(HF name, gradient)` of a loss whose gradient with respect to
    /// [`TrainForward::logps`] is `dlogps` (`[B, L]`).
    pub fn backward(self, dlogps: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let dl = dlogps.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let tape = self.tape;
        if dl.len() != tape.d.batch * tape.len {
            return Err(invalid(format!(
                "hand-written backward: {} log-prob gradients for a {}×{} span",
                dl.len(),
                tape.d.batch,
                tape.len
            )));
        }
        let tensors: Vec<&Tensor> = tape.params.iter().map(|(_, t)| t).collect();
        let bufs = crate::cpu::autograd::cpu_slices(&tensors, |w| run_backward(&tape, w, &dl))??;
        let mut out = Vec::with_capacity(bufs.len());
        for ((name, t), g) in tape.params.iter().zip(bufs) {
            out.push((name.clone(), Tensor::from_vec(g, t.shape(), t.device())?));
        }
        Ok(out)
    }
}

fn run_backward(tape: &Tape, w: &[&[f32]], dl: &[f32]) -> CResult<GradBufs> {
    let d = tape.d;
    let (h, v, m) = (d.hidden, d.vocab, d.batch * tape.len);
    let mut gb: GradBufs = w.iter().map(|p| vec![0f32; p.len()]).collect();
    // log p(target) = z[target] − lse: dz = dl · (onehot − softmax).
    let mut dz = vec![0f32; m * v];
    dz.par_chunks_mut(v).zip(tape.logits.par_chunks(v)).enumerate().with_min_len(grain(v)).for_each(|(r, (dr, zr))| {
        if dl[r] != 0.0 {
            rows::logprob_backward_row(zr, tape.lse[r], tape.targets[r] as usize, dl[r], dr);
        }
    });
    let head = tape.idx.head;
    mm(&mut gb[head], 0, h, Mat::new(&dz, m, v).t(), Mat::new(&tape.h_span, m, h), false, true)?;
    let dh_span = mm_new(Mat::new(&dz, m, v), Mat::new(w[head], v, h), true)?;
    drop(dz);
    let mut dxf = vec![0f32; d.rows() * h];
    for b in (0..d.batch).filter(|_| tape.len > 0) {
        let to = tape.pk.row(b, tape.start) * h;
        dxf[to..to + tape.len * h].copy_from_slice(&dh_span[b * tape.len * h..(b + 1) * tape.len * h]);
    }
    let mut dx = rms_backward(&tape.x_last, &tape.rstd_final, w[tape.idx.norm], &dxf, &mut gb[tape.idx.norm]);
    drop(dxf);
    let cx = Ctx { d, pk: &tape.pk, mask: &tape.mask, cos: &tape.cos, sin: &tape.sin };
    for (li, lt) in tape.idx.layers.iter().zip(&tape.layers).rev() {
        dx = layer_backward(&cx, w, li, lt, dx, &mut gb)?;
    }
    // Embedding rows, in token order (deterministic); added to the head's gradient when tied.
    let embed = &mut gb[tape.idx.embed];
    for (row, &id) in dx.chunks(h).zip(&tape.ids) {
        let dst = &mut embed[id as usize * h..(id as usize + 1) * h];
        dst.iter_mut().zip(row).for_each(|(a, &g)| *a += g);
    }
    Ok(gb)
}

mod attention;
#[cfg(test)]
mod tests;
