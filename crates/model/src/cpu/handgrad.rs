//! Hand-written training forward and backward on the CPU (f32): the fast path behind SFT, GRPO
//! and `aha bench train`.
//!
//! Why: with candle's autograd a training step of a small model is dominated not by its
//! matmuls but by everything around them — one tensor, one pass over memory and one
//! synchronisation of the element-wise pool per op, a zero tensor and an add per gradient edge
//! (BENCHMARKS.md has the profile). Here the whole model is one forward that keeps only the
//! activations its backward needs and cannot cheaply recompute, and one backward that writes
//! every parameter gradient once:
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
//!
//! Memory: the activations kept per layer (`LayerTape`: its input, the q/k/v and gate/up
//! projections) are what a step's peak is made of; everything else a layer's backward reads is
//! recomputed by the forward's own code, so the bits do not change (the attention and `xmid`
//! are kept instead when small, `KEEP_BYTES`, as recomputing them costs time). The head's logits `[M, V]`
//! are kept only when small (one block of `head_blocks`); otherwise the forward and the
//! backward compute them a block of rows at a time, the backward only for rows whose log-prob
//! has a gradient (the head's own gradient then sums the blocks, so it rounds differently from
//! one product over all rows). The
//! backward frees each layer's tape once done with it and allocates a gradient only when it
//! writes it, so the gradients of the lower layers take the memory of the tapes above them.

use std::collections::HashMap;

use candle_core::{bail, DType, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::cpu::rows::{self, grain, rms_apply, rms_backward, rms_forward, rms_forward_into, ROW_GRAIN};
use crate::error::Result;
use crate::lora::{self, Module};
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
    /// Packed rows of the forward.
    fn rows(&self) -> usize {
        self.rows
    }
    /// Width of the queries of all heads, `nh·hd`.
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Width of the keys (or values) of all KV heads, `nkv·hd`.
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// Query heads per KV head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// Positions of one layer's parameters in the named parameter list.
#[derive(Debug, Clone)]
struct LayerIdx {
    layer: usize,
    /// `(A, B)` of each projection's LoRA adapter, indexed like [`Module::ALL`].
    lora: [Option<(usize, usize)>; 7],
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
    /// The positions in `names` of a model of `layers` layers; an error names a missing one.
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
                let lora = Module::ALL.map(|m| {
                    let at = |which| map.get(lora::peft_key(l, m, which).as_str()).copied();
                    at('A').zip(at('B'))
                });
                Ok(LayerIdx {
                    layer: l,
                    lora,
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

    /// The index in `data` of the last element of the view.
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
    add_bias(&mut y, bias, out);
    Ok(y)
}

/// [`linear`] into `y` (`[rows, out]`, every element written): the same gemm, the same bits.
fn linear_into(y: &mut [f32], x: &[f32], rows: usize, w: &[f32], bias: Option<&[f32]>, out: usize) -> CResult<()> {
    let inp = w.len() / out.max(1);
    if inp == 0 {
        y.fill(0.0);
    }
    mm(y, 0, out, Mat::new(x, rows, inp), Mat::new(w, out, inp).t(), false, true)?;
    add_bias(y, bias, out);
    Ok(())
}

/// Adds `bias` (if any) to each row of `y` (rows of `out`).
fn add_bias(y: &mut [f32], bias: Option<&[f32]>, out: usize) {
    if let Some(b) = bias {
        y.par_chunks_mut(out).with_min_len(grain(out)).for_each(|r| r.iter_mut().zip(b).for_each(|(o, &bv)| *o += bv));
    }
}

/// The weight gradients of a (possibly stacked) projection `y = x · Wᵀ`, each into its
/// parameter's buffer: `dW_p = dy[:, off..off+width]ᵀ · x` for each `(p, off, width)`.
/// Frozen parameters are skipped.
fn weight_grads(dy: &[f32], x: &[f32], rows: usize, parts: &[(usize, usize, usize)], gb: &mut GradBufs) -> CResult<()> {
    let out = dy.len() / rows.max(1);
    let inp = x.len() / rows.max(1);
    for &(p, off, width) in parts {
        if !gb.wants(p) {
            continue;
        }
        let dyp = Mat::view(dy, off, rows, width, out);
        gb.put(p, mm_new(dyp.t(), Mat::new(x, rows, inp), true)?);
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

/// `dst += src`, element-wise.
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

/// `silu(gate) · up` for rows of the stacked projection `gu` (`[rows, 2·inter]`, gate first),
/// into `out` (`[rows, inter]`).
fn swiglu_into(gu: &[f32], inter: usize, out: &mut [f32]) {
    out.par_chunks_mut(inter).zip(gu.par_chunks(2 * inter)).with_min_len(grain(inter)).for_each(|(o, row)| {
        let (g, u) = row.split_at(inter);
        rows::swiglu_row(g, u, o);
    });
}

/// The activation `silu(gate) · up` of [`swiglu_into`], recomputed by the backward, and the
/// backward for upstream `d` (`[rows, inter]`) in the same pass: returns the activation, and
/// `gu` becomes its gradient.
fn swiglu_act_and_backward(gu: &mut [f32], inter: usize, d: &[f32]) -> Vec<f32> {
    let mut act = vec![0f32; d.len()];
    gu.par_chunks_mut(2 * inter)
        .zip(d.par_chunks(inter))
        .zip(act.par_chunks_mut(inter))
        .with_min_len(grain(inter))
        .for_each(|((row, dc), ac)| {
            let (g, u) = row.split_at_mut(inter);
            rows::swiglu_act_and_backward_row(g, u, dc, ac);
        });
    act
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
    /// The layout for the sizes `d`.
    fn of(d: &Dims) -> Self {
        Self { width: d.q_width() + 2 * d.kv_width(), k: d.q_width(), v: d.q_width() + d.kv_width() }
    }
}

// ---------------------------------------------------------------------------------------------
// Layers

/// What one layer's backward needs from its forward: what is dear to recompute, and what is
/// cheap to recompute only when it is small ([`Kept`]). The backward recomputes the rest with
/// the forward's own code, so its bits do not change: the projections' normed inputs from
/// `x`/`xmid` and their `rstd` (one multiply per element), the SwiGLU activation from `gu`
/// and, unless kept, the attention's probabilities and output from `qkv` (a small part of a
/// layer's work at the lengths aha trains) and `xmid = x + o_proj(att)` (one `[H, nh·hd]`
/// projection, a tenth of the layer's matmul work, for a sixth of its tape).
struct LayerTape {
    x: Vec<f32>,
    rstd1: Vec<f32>,
    /// The fused q/k/v projection, RoPE applied to q and k (`QkvLayout`).
    qkv: Vec<f32>,
    /// Each projection's LoRA activations, indexed like [`Module::ALL`].
    lora: [Option<LoraTape>; 7],
    rstd2: Vec<f32>,
    /// The fused gate/up projection `[N, 2·I]` (gate first).
    gu: Vec<f32>,
    kept: Option<Kept>,
}

/// The activations a layer's backward can recompute, kept by a forward whose activations are
/// small ([`KEEP_BYTES`]).
struct Kept {
    /// The attention output `[N, nh·hd]` and probabilities.
    att: Vec<f32>,
    probs: Vec<attention::Probs>,
    /// `x + o_proj(att)`, `[N, H]`.
    xmid: Vec<f32>,
}

/// Bytes of the activations a layer's backward can recompute ([`Kept`]), over all layers, up to
/// which a forward keeps them: a small model trains faster keeping them, and recomputing them
/// saves memory worth the time only where they are big (a GRPO step of SmolLM2-135M: over
/// 300 MB).
const KEEP_BYTES: usize = 64 << 20;

/// Whether a forward of sizes `d` over `pk` with `layers` layers keeps what its backward can
/// recompute ([`KEEP_BYTES`]). Never in unit tests, so that they run the recomputation, while
/// the integration tests' tiny models keep: both paths run.
fn keeps(d: &Dims, pk: &Packing, layers: usize) -> bool {
    let per_layer = attention::probs_len(pk, d.heads) + d.rows() * (d.q_width() + d.hidden);
    !cfg!(test) && per_layer * 4 * layers <= KEEP_BYTES
}

/// Row-wise inputs shared by every layer.
struct Ctx<'a> {
    d: Dims,
    pk: &'a Packing,
    mask: &'a [f32],
    cos: &'a [f32],
    sin: &'a [f32],
    lora: Option<LoraCx>,
    /// Whether the forward keeps what the backward can recompute ([`keeps`]; forward only).
    keep: bool,
}

// ---------------------------------------------------------------------------------------------
// LoRA: `y += s·(drop(x)·Aᵀ)·Bᵀ` on a projection's output columns (`lora.rs` has the maths)

/// The adapters' settings for one forward.
#[derive(Debug, Clone, Copy)]
struct LoraCx {
    scale: f32,
    dropout: f64,
    /// The forward's dropout seed (`lora::forward_seed`), used when `dropout > 0`.
    seed: u64,
}

/// One adapter within a (possibly stacked) projection: its parameters and the output columns
/// `off .. off + width` it adds to.
#[derive(Debug, Clone, Copy)]
struct LoraSite {
    m: Module,
    a: usize,
    b: usize,
    off: usize,
    width: usize,
}

/// What an adapter's backward needs from the forward: `s·(drop(x)·Aᵀ)` `[N, r]`. The dropout
/// mask is drawn again from its seed ([`lora_dropped`]).
struct LoraTape {
    us: Vec<f32>,
}

/// The adapted projections of `li` among `parts` (`(projection, offset, width)` of a stacked output).
fn lora_sites(li: &LayerIdx, parts: &[(Module, usize, usize)]) -> Vec<LoraSite> {
    parts
        .iter()
        .filter_map(|&(m, off, width)| li.lora[m as usize].map(|(a, b)| LoraSite { m, a, b, off, width }))
        .collect()
}

/// With dropout, the mask of adapter `m` of layer `li` over its input `x` and the masked input:
/// drawn from the forward's seed, so the backward draws the forward's mask again.
fn lora_dropped(lc: &LoraCx, li: &LayerIdx, m: Module, x: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
    (lc.dropout > 0.0).then(|| {
        let mask = lora::dropout_mask(lora::module_seed(lc.seed, li.layer, m), x.len(), lc.dropout);
        let xd: Vec<f32> = x.iter().zip(&mask).map(|(&v, &k)| v * k).collect();
        (mask, xd)
    })
}

/// Adds the adapters of `sites` to `y` (`[N, yw]`) for input `x` (`[N, in]`); records their tapes.
fn lora_forward(
    cx: &Ctx,
    w: &[&[f32]],
    li: &LayerIdx,
    sites: &[LoraSite],
    x: &[f32],
    y: &mut [f32],
    tapes: &mut [Option<LoraTape>; 7],
) -> CResult<()> {
    let Some(lc) = cx.lora else { return Ok(()) };
    let n = cx.d.rows();
    let (inp, yw) = (x.len() / n.max(1), y.len() / n.max(1));
    for s in sites {
        let r = w[s.a].len() / inp;
        let dropped = lora_dropped(&lc, li, s.m, x);
        let xin = dropped.as_ref().map_or(x, |(_, xd)| xd.as_slice());
        let mut us = mm_new(Mat::new(xin, n, inp), Mat::new(w[s.a], r, inp).t(), true)?;
        drop(dropped);
        us.iter_mut().for_each(|v| *v *= lc.scale);
        mm(y, s.off, yw, Mat::new(&us, n, r), Mat::new(w[s.b], s.width, r).t(), true, true)?;
        tapes[s.m as usize] = Some(LoraTape { us });
    }
    Ok(())
}

/// The adapters' backward for upstream `dy` (`[N, yw]`) of the projection of `li` whose input
/// was `x`: writes `dA`, `dB` and adds their input gradient to `dx` (`[N, in]`).
#[allow(clippy::too_many_arguments)]
fn lora_backward(
    cx: &Ctx,
    w: &[&[f32]],
    li: &LayerIdx,
    sites: &[LoraSite],
    tapes: &[Option<LoraTape>; 7],
    x: &[f32],
    dy: &[f32],
    gb: &mut GradBufs,
    dx: &mut [f32],
) -> CResult<()> {
    let inp = x.len() / cx.d.rows().max(1);
    for s in sites {
        let du = lora_backward_dx(cx, w, li, s, tapes, inp, dy, gb, dx)?;
        lora_backward_da(cx, w, li, s, x, &du, gb)?;
    }
    Ok(())
}

/// The part of adapter `s`'s backward that does not read its input (of width `inp`): writes
/// `dB`, adds the input gradient to `dx` (`[N, inp]`); returns `du = s·dy·B` (`[N, r]`) for
/// [`lora_backward_da`].
#[allow(clippy::too_many_arguments)]
fn lora_backward_dx(
    cx: &Ctx,
    w: &[&[f32]],
    li: &LayerIdx,
    s: &LoraSite,
    tapes: &[Option<LoraTape>; 7],
    inp: usize,
    dy: &[f32],
    gb: &mut GradBufs,
    dx: &mut [f32],
) -> CResult<Vec<f32>> {
    let Some(lc) = cx.lora else { return Ok(Vec::new()) };
    let Some(tp) = &tapes[s.m as usize] else {
        bail!("hand-written backward: LoRA tape of {} is missing", s.m.hf_name())
    };
    let n = cx.d.rows();
    let (r, yw) = (w[s.a].len() / inp.max(1), dy.len() / n.max(1));
    let dyp = Mat::view(dy, s.off, n, s.width, yw);
    gb.put(s.b, mm_new(dyp.t(), Mat::new(&tp.us, n, r), true)?);
    let mut du = mm_new(dyp, Mat::new(w[s.b], s.width, r), true)?;
    du.iter_mut().for_each(|v| *v *= lc.scale);
    if lc.dropout > 0.0 {
        // The forward's mask, drawn again (`lora_dropped`).
        let mask = lora::dropout_mask(lora::module_seed(lc.seed, li.layer, s.m), n * inp, lc.dropout);
        let mut g = mm_new(Mat::new(&du, n, r), Mat::new(w[s.a], r, inp), true)?;
        g.iter_mut().zip(&mask).for_each(|(v, &k)| *v *= k);
        add_into(dx, &g);
    } else {
        mm(dx, 0, inp, Mat::new(&du, n, r), Mat::new(w[s.a], r, inp), true, true)?;
    }
    Ok(du)
}

/// The rest of adapter `s`'s backward: `dA = duᵀ · drop(x)` for its input `x` and the `du` of
/// [`lora_backward_dx`].
fn lora_backward_da(
    cx: &Ctx,
    w: &[&[f32]],
    li: &LayerIdx,
    s: &LoraSite,
    x: &[f32],
    du: &[f32],
    gb: &mut GradBufs,
) -> CResult<()> {
    let Some(lc) = cx.lora else { return Ok(()) };
    let n = cx.d.rows();
    let inp = x.len() / n.max(1);
    let r = w[s.a].len() / inp.max(1);
    let dropped = lora_dropped(&lc, li, s.m, x);
    let xin = dropped.as_ref().map_or(x, |(_, xd)| xd.as_slice());
    gb.put(s.a, mm_new(Mat::new(du, n, r).t(), Mat::new(xin, n, inp), true)?);
    Ok(())
}

/// The projections of each stacked group, with their output columns.
fn qkv_parts(d: &Dims) -> [(Module, usize, usize); 3] {
    let l = QkvLayout::of(d);
    [(Module::Q, 0, l.k), (Module::K, l.k, d.kv_width()), (Module::V, l.v, d.kv_width())]
}

/// The gate and up projections of the stacked `gu`, with their output columns.
fn gate_up_parts(d: &Dims) -> [(Module, usize, usize); 2] {
    [(Module::Gate, 0, d.inter), (Module::Up, d.inter, d.inter)]
}

/// Rows of several `[out_i, in]` weights stacked into one `[Σ out_i, in]` matrix (one gemm
/// instead of several, the input packed once).
fn stack(parts: &[&[f32]]) -> Vec<f32> {
    let mut out = vec![0f32; parts.iter().map(|p| p.len()).sum()];
    stack_in(&mut out, parts);
    out
}

/// [`stack`] into the start of `out`; returns the stacked matrix (that start).
fn stack_in<'a>(out: &'a mut [f32], parts: &[&[f32]]) -> &'a [f32] {
    let mut at = 0;
    for p in parts {
        out[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    &out[..at]
}

/// The q, k and v weights of `li`, in their stacked order.
fn qkv_parts_of<'a>(w: &[&'a [f32]], li: &LayerIdx) -> [&'a [f32]; 3] {
    [w[li.q], w[li.k], w[li.v]]
}

/// The stacked q/k/v biases, when the model has them.
fn qkv_bias(w: &[&[f32]], li: &LayerIdx) -> Option<Vec<f32>> {
    match (li.bq, li.bk, li.bv) {
        (Some(q), Some(k), Some(v)) => Some(stack(&[w[q], w[k], w[v]])),
        _ => None,
    }
}

/// One buffer for a forward's temporaries, allocated once: each layer's normed inputs,
/// attention output, `xmid`, SwiGLU activation and stacked weights ([`Scratch::layer`]), then
/// the head's block of logits. Allocated afresh in each layer, between the kept activations,
/// they would leave holes in the heap that later allocations of other sizes only partly fill
/// (with an allocator that keeps freed memory, as the binary's does, holes are peak memory).
struct Scratch {
    buf: Vec<f32>,
}

/// The per-layer temporaries, carved out of a [`Scratch`].
struct LayerScratch<'a> {
    xn: &'a mut [f32],
    att: &'a mut [f32],
    xmid: &'a mut [f32],
    act: &'a mut [f32],
    /// Room for the larger of the stacked q/k/v and gate/up weights.
    w: &'a mut [f32],
}

impl Scratch {
    /// Room for the layers of `d` and for the head's blocks over `span_rows` rows.
    fn new(d: &Dims, span_rows: usize) -> Self {
        let head = head_blocks(span_rows, head_block_rows(d.vocab)).map(|(_, n)| n).max().unwrap_or(0) * d.vocab;
        Self { buf: vec![0f32; Self::layer_len(d).max(head)] }
    }

    /// Elements of [`LayerScratch`].
    fn layer_len(d: &Dims) -> usize {
        let (n, h) = (d.rows(), d.hidden);
        let stacked = (d.q_width() + 2 * d.kv_width()).max(2 * d.inter) * h;
        n * (2 * h + d.q_width() + d.inter) + stacked
    }

    /// The per-layer temporaries of `d`.
    fn layer(&mut self, d: &Dims) -> LayerScratch<'_> {
        let (n, h) = (d.rows(), d.hidden);
        let (xn, rest) = self.buf.split_at_mut(n * h);
        let (att, rest) = rest.split_at_mut(n * d.q_width());
        let (xmid, rest) = rest.split_at_mut(n * h);
        let (act, w) = rest.split_at_mut(n * d.inter);
        LayerScratch { xn, att, xmid, act, w }
    }
}

/// One decoder layer over the packed rows `x`: its output and what its backward keeps; the
/// temporaries live in `s`.
fn layer_forward(
    cx: &Ctx,
    w: &[&[f32]],
    li: &LayerIdx,
    x: Vec<f32>,
    s: LayerScratch,
) -> CResult<(Vec<f32>, LayerTape)> {
    let d = &cx.d;
    let (n, l) = (d.rows(), QkvLayout::of(d));
    let mut lt: [Option<LoraTape>; 7] = Default::default();
    let rstd1 = rms_forward_into(&x, w[li.ln1], d.eps, s.xn);
    let wqkv = stack_in(s.w, &qkv_parts_of(w, li));
    let mut qkv = linear(s.xn, n, wqkv, qkv_bias(w, li).as_deref(), l.width)?;
    lora_forward(cx, w, li, &lora_sites(li, &qkv_parts(d)), s.xn, &mut qkv, &mut lt)?;
    rope_inplace(&mut qkv, l.width, l.v, cx.cos, cx.sin, d.head_dim, false);
    let kept = if cx.keep {
        Some(kept_of(cx, w, li, &x, &qkv, &mut lt)?)
    } else {
        drop(attention::forward(d, cx.pk, &qkv, cx.mask, s.att)?);
        xmid_of(cx, w, li, &x, s.att, &mut lt, s.xmid)?;
        // The backward recomputes the O adapter's tape with `xmid`.
        lt[Module::O as usize] = None;
        None
    };
    let xmid: &[f32] = kept.as_ref().map_or(&*s.xmid, |k| &k.xmid);
    let rstd2 = rms_forward_into(xmid, w[li.ln2], d.eps, s.xn);
    let wgu = stack_in(s.w, &[w[li.gate], w[li.up]]);
    let mut gu = linear(s.xn, n, wgu, None, 2 * d.inter)?;
    lora_forward(cx, w, li, &lora_sites(li, &gate_up_parts(d)), s.xn, &mut gu, &mut lt)?;
    swiglu_into(&gu, d.inter, s.act);
    let mut out = linear(s.act, n, w[li.down], None, d.hidden)?;
    lora_forward(cx, w, li, &lora_sites(li, &[(Module::Down, 0, d.hidden)]), s.act, &mut out, &mut lt)?;
    add_into(&mut out, xmid);
    Ok((out, LayerTape { x, rstd1, qkv, lora: lt, rstd2, gu, kept }))
}

/// The attention (output and probabilities) and `xmid` of layer `li` from its input `x` and
/// roped `qkv`: what a keeping forward stores ([`Kept`]) and a backward otherwise recomputes,
/// with the same code, so the same bits.
fn kept_of(
    cx: &Ctx,
    w: &[&[f32]],
    li: &LayerIdx,
    x: &[f32],
    qkv: &[f32],
    lt: &mut [Option<LoraTape>; 7],
) -> CResult<Kept> {
    let (d, n) = (&cx.d, cx.d.rows());
    let (mut att, mut xmid) = (vec![0f32; n * d.q_width()], vec![0f32; n * d.hidden]);
    let probs = attention::forward(d, cx.pk, qkv, cx.mask, &mut att)?;
    xmid_of(cx, w, li, x, &att, lt, &mut xmid)?;
    Ok(Kept { att, probs, xmid })
}

/// `xmid = x + o_proj(att)` of layer `li`, with the O adapter (whose tape goes to `lt`), into
/// `xmid` (`[N, H]`). The forward runs it, and the backward again (after the attention) unless
/// the forward kept them ([`Kept`]): the same code, so the same bits.
fn xmid_of(
    cx: &Ctx,
    w: &[&[f32]],
    li: &LayerIdx,
    x: &[f32],
    att: &[f32],
    lt: &mut [Option<LoraTape>; 7],
    xmid: &mut [f32],
) -> CResult<()> {
    let d = &cx.d;
    linear_into(xmid, att, d.rows(), w[li.o], None, d.hidden)?;
    lora_forward(cx, w, li, &lora_sites(li, &[(Module::O, 0, d.hidden)]), att, xmid, lt)?;
    add_into(xmid, x);
    Ok(())
}

/// Gradient buffers, one per named parameter. A buffer is allocated when its gradient is
/// written, not up front: the backward frees each layer's tape as it goes, so the gradients of
/// the layers below reuse that memory. Frozen parameters never get one.
struct GradBufs {
    bufs: Vec<Vec<f32>>,
    trainable: Vec<bool>,
    /// The gradient of a frozen norm weight, which [`rms_backward`] writes anyway; discarded.
    scratch: Vec<f32>,
}

impl GradBufs {
    /// No buffers yet, for parameters of which `trainable` says which get a gradient.
    fn new(trainable: &[bool]) -> Self {
        Self { bufs: vec![Vec::new(); trainable.len()], trainable: trainable.to_vec(), scratch: Vec::new() }
    }

    /// Whether parameter `p` gets a gradient.
    fn wants(&self, p: usize) -> bool {
        self.trainable[p]
    }

    /// Sets the gradient of `p` (a trainable parameter) to `g`.
    fn put(&mut self, p: usize, g: Vec<f32>) {
        self.bufs[p] = g;
    }

    /// The gradient buffer of `p` for accumulating into: zeros of `len` if not written yet. A
    /// frozen parameter gets a scratch buffer, whose contents are discarded.
    fn acc(&mut self, p: usize, len: usize) -> &mut [f32] {
        let buf = if self.trainable[p] { &mut self.bufs[p] } else { &mut self.scratch };
        if buf.len() != len {
            *buf = vec![0f32; len];
        }
        buf
    }

    /// Every trainable parameter's gradient (zeros where none was written), `None` for the
    /// frozen ones; `len(p)` is the size of parameter `p`.
    fn finish(self, len: impl Fn(usize) -> usize) -> CResult<Vec<Option<Vec<f32>>>> {
        let trainable = self.trainable;
        let mut out = Vec::with_capacity(self.bufs.len());
        for (p, g) in self.bufs.into_iter().enumerate() {
            out.push(match (trainable[p], g.len()) {
                (false, _) => None,
                (true, 0) => Some(vec![0f32; len(p)]),
                (true, n) if n == len(p) => Some(g),
                (true, n) => bail!("hand-written backward: a gradient of {n} for a parameter of {}", len(p)),
            });
        }
        Ok(out)
    }
}

/// The backward of [`layer_forward`] for upstream `dout`, consuming the layer's tape (each part
/// is freed once read): writes the layer's parameter gradients, returns the gradient of its
/// input. What the tape does not keep is recomputed first, by the forward's own kernels.
fn layer_backward(
    cx: &Ctx,
    w: &[&[f32]],
    li: &LayerIdx,
    tp: LayerTape,
    dout: Vec<f32>,
    gb: &mut GradBufs,
) -> CResult<Vec<f32>> {
    let d = &cx.d;
    let (n, l, i2) = (d.rows(), QkvLayout::of(d), 2 * d.inter);
    let LayerTape { x, rstd1, qkv, lora: mut lt, rstd2, gu, kept } = tp;
    let Kept { att, probs, xmid } = match kept {
        Some(k) => k,
        None => kept_of(cx, w, li, &x, &qkv, &mut lt)?,
    };
    // MLP: out = xmid + down(silu(gate) · up), gate and up one stacked projection. The
    // activation is recomputed in the pass that turns gu into its gradient, once dact is
    // complete (the down adapter's dA, which reads it, comes last).
    let down = lora_sites(li, &[(Module::Down, 0, d.hidden)]);
    let mut dact = mm_new(Mat::new(&dout, n, d.hidden), Mat::new(w[li.down], d.hidden, d.inter), true)?;
    let mut dus = Vec::with_capacity(down.len());
    for s in &down {
        dus.push(lora_backward_dx(cx, w, li, s, &lt, d.inter, &dout, gb, &mut dact)?);
    }
    let mut dgu = gu;
    let act = swiglu_act_and_backward(&mut dgu, d.inter, &dact);
    drop(dact);
    weight_grads(&dout, &act, n, &[(li.down, 0, d.hidden)], gb)?;
    for (s, du) in down.iter().zip(&dus) {
        lora_backward_da(cx, w, li, s, &act, du, gb)?;
    }
    drop((act, dus));
    let xn2 = rms_apply(&xmid, &rstd2, w[li.ln2]);
    weight_grads(&dgu, &xn2, n, &[(li.gate, 0, d.inter), (li.up, d.inter, d.inter)], gb)?;
    let mut dxn2 = mm_new(Mat::new(&dgu, n, i2), Mat::new(&stack(&[w[li.gate], w[li.up]]), i2, d.hidden), true)?;
    lora_backward(cx, w, li, &lora_sites(li, &gate_up_parts(d)), &lt, &xn2, &dgu, gb, &mut dxn2)?;
    drop((dgu, xn2));
    let mut dxmid = rms_backward(&xmid, &rstd2, w[li.ln2], &dxn2, gb.acc(li.ln2, d.hidden));
    drop((dxn2, xmid, rstd2));
    add_into(&mut dxmid, &dout);
    drop(dout);
    // Attention: xmid = x + o_proj(attention(rope(q), rope(k), v)), q/k/v one stacked projection.
    weight_grads(&dxmid, &att, n, &[(li.o, 0, d.hidden)], gb)?;
    let mut datt = mm_new(Mat::new(&dxmid, n, d.hidden), Mat::new(w[li.o], d.hidden, d.q_width()), true)?;
    let o = lora_sites(li, &[(Module::O, 0, d.hidden)]);
    lora_backward(cx, w, li, &o, &lt, &att, &dxmid, gb, &mut datt)?;
    drop(att);
    let mut dqkv = attention::backward(d, cx.pk, &qkv, &probs, cx.mask, &datt)?;
    drop((datt, probs, qkv));
    rope_inplace(&mut dqkv, l.width, l.v, cx.cos, cx.sin, d.head_dim, true);
    let (kw, h) = (d.kv_width(), d.hidden);
    let xn1 = rms_apply(&x, &rstd1, w[li.ln1]);
    weight_grads(&dqkv, &xn1, n, &[(li.q, 0, l.k), (li.k, l.k, kw), (li.v, l.v, kw)], gb)?;
    if let (Some(bq), Some(bk), Some(bv)) = (li.bq, li.bk, li.bv) {
        if gb.wants(bq) {
            let mut db = vec![0f32; l.width];
            column_sums(&dqkv, l.width, &mut db);
            unstack(&db, &[(bq, 0), (bk, l.k), (bv, l.v)], w, gb);
        }
    }
    let wqkv = stack(&qkv_parts_of(w, li));
    let mut dxn1 = mm_new(Mat::new(&dqkv, n, l.width), Mat::new(&wqkv, l.width, h), true)?;
    drop(wqkv);
    lora_backward(cx, w, li, &lora_sites(li, &qkv_parts(d)), &lt, &xn1, &dqkv, gb, &mut dxn1)?;
    drop((dqkv, xn1));
    let mut dx = rms_backward(&x, &rstd1, w[li.ln1], &dxn1, gb.acc(li.ln1, d.hidden));
    add_into(&mut dx, &dxmid);
    Ok(dx)
}

/// Copies blocks of a stacked gradient into the parameters' buffers: `(parameter, offset)`,
/// each parameter taking as many elements as it has (`w`).
fn unstack(stacked: &[f32], parts: &[(usize, usize)], w: &[&[f32]], gb: &mut GradBufs) {
    for &(param, off) in parts {
        gb.put(param, stacked[off..off + w[param].len()].to_vec());
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
    /// Whether each parameter gets a gradient (a LoRA model trains only its adapters).
    trainable: Vec<bool>,
    idx: ParamIdx,
    lora: Option<LoraCx>,
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
    /// The logits of the span rows `[M, V]` when they take one block of the head
    /// (`head_blocks`): kept, small next to the activations, which spares the backward their
    /// recomputation. Larger ones are not kept: the backward recomputes them a block at a time.
    logits: Option<Vec<f32>>,
    /// The log-sum-exp of each span row's logits.
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
    // Seeded from the unpacked batch, like `Transformer::dropout_seed`: without shared prefixes
    // both paths draw the same masks.
    let drop_seed = model.lora().map_or(0, |l| lora::forward_seed(&ids, l.init_seed));
    let src = pk.sources();
    let ids = gather_rows(&ids, 1, &src);
    let cos = gather_rows(&cos.flatten_all()?.to_vec1::<f32>()?, d.head_dim, &src);
    let sin = gather_rows(&sin.flatten_all()?.to_vec1::<f32>()?, d.head_dim, &src);
    let mut params = model.named_parameters();
    let base = params.len();
    params.extend(model.adapter_parameters());
    let trainable: Vec<bool> = (0..params.len()).map(|i| model.lora().is_none() || i >= base).collect();
    let lora = model.lora().map(|l| LoraCx {
        scale: l.scale() as f32,
        dropout: if model.mode() == crate::exec::Mode::Train { l.dropout } else { 0.0 },
        seed: drop_seed,
    });
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    let idx = ParamIdx::build(&names, cfg.num_hidden_layers)?;
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let mut tape = Tape {
        d,
        pk,
        params,
        trainable,
        idx,
        lora,
        ids,
        mask,
        cos,
        sin,
        layers: Vec::new(),
        x_last: Vec::new(),
        logits: None,
        rstd_final: Vec::new(),
        h_span: Vec::new(),
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
    let keep = keeps(&d, &tape.pk, tape.idx.layers.len());
    let cx = Ctx { d, pk: &tape.pk, mask: &tape.mask, cos: &tape.cos, sin: &tape.sin, lora: tape.lora, keep };
    let mut layers = Vec::with_capacity(tape.idx.layers.len());
    let mut scratch = Scratch::new(&d, d.batch * tape.len);
    for li in &tape.idx.layers {
        let (out, lt) = layer_forward(&cx, w, li, x, scratch.layer(&d))?;
        layers.push(lt);
        x = out;
    }
    let (xf, rstd_final) = rms_forward(&x, w[tape.idx.norm], d.eps);
    let h_span = span_rows(&xf, &d, &tape.pk, tape.start, tape.len);
    drop(xf);
    let m = d.batch * tape.len;
    let block_rows = head_block_rows(d.vocab);
    let stats = head_forward(&h_span, w[tape.idx.head], &tape.targets, &d, block_rows, &mut scratch.buf)?;
    if m <= block_rows {
        // One block: the scratch buffer holds all the logits.
        let mut logits = scratch.buf;
        logits.truncate(m * d.vocab);
        logits.shrink_to_fit();
        tape.logits = Some(logits);
    }
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

/// Bytes of logits per block of span rows in the head: the logits `[M, V]` (200 MB for
/// SmolLM2's vocabulary and a GRPO step of 16 × 64 completion tokens) never exist at once.
/// Small in unit tests, so that their batches span several blocks.
const HEAD_BLOCK_BYTES: usize = if cfg!(test) { 1 << 12 } else { 1 << 25 };

/// The most rows of a block of the head for a vocabulary of `vocab`: `HEAD_BLOCK_BYTES` of
/// logits, and at least 4.
fn head_block_rows(vocab: usize) -> usize {
    (HEAD_BLOCK_BYTES / (4 * vocab.max(1))).max(4)
}

/// Splits `n` rows into blocks of at most `max` rows (at least 4), as even as possible:
/// `(first, rows)` of each. No block of a split has a single row (as long as `n > 1`): gemm
/// computes a one-row product by another kernel, whose sums round differently.
fn head_blocks(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = n.div_ceil(max.max(4)).max(1);
    let (base, extra) = (n / count, n % count);
    (0..count).map(move |b| (b * base + b.min(extra), base + usize::from(b < extra))).filter(|&(_, len)| len > 0)
}

/// The head over the final normed span rows `h_span` (`[M, H]`), in blocks of at most
/// `block_rows` rows (the block's logits in `z`, grown if short): `(log p(target), entropy,
/// log-sum-exp)` of each row.
fn head_forward(
    h_span: &[f32],
    w_head: &[f32],
    targets: &[u32],
    d: &Dims,
    block_rows: usize,
    z: &mut Vec<f32>,
) -> CResult<Vec<(f32, f32, f32)>> {
    let (h, v) = (d.hidden, d.vocab);
    let m = targets.len();
    let mut stats = Vec::with_capacity(m);
    for (r0, n) in head_blocks(m, block_rows) {
        z.resize(z.len().max(n * v), 0f32);
        let zb = &mut z[..n * v];
        mm(zb, 0, v, Mat::new(h_span, m, h).sub((r0, r0 + n), (0, h)), Mat::new(w_head, v, h).t(), false, true)?;
        stats.par_extend(
            zb.par_chunks(v)
                .zip(targets[r0..r0 + n].par_iter())
                .with_min_len(grain(v))
                .map(|(zr, &t)| rows::logprob_row(zr, t as usize)),
        );
    }
    Ok(stats)
}

/// The head's backward for `dl` = d loss / d log p(target) of each span row: the head's
/// gradient (when trainable), and d loss / d h of the span rows written into their packed rows
/// of `dxf` (`[N, H]`, zero elsewhere). Only rows with `dl ≠ 0` are computed (padding has none;
/// nor has a GRPO group whose rewards are all equal). Their logits are recomputed a block at a
/// time by the forward's gemm — the same bits: a row's logits do not depend on the other rows
/// of its product ([`head_blocks`]) — and turned into `dz = dl · (onehot − softmax)` in place.
/// The head's gradient sums the blocks in order (deterministic, though not the bits of one
/// product over all rows).
fn head_backward(tape: &Tape, w: &[&[f32]], dl: &[f32], gb: &mut GradBufs, dxf: &mut [f32]) -> CResult<()> {
    let d = tape.d;
    let (h, v, head) = (d.hidden, d.vocab, tape.idx.head);
    let mut live: Vec<usize> = (0..dl.len()).filter(|&r| dl[r] != 0.0).collect();
    if live.len() == 1 && dl.len() > 1 {
        // Not a one-row product (see `head_blocks`): a second row, whose dz is 0, comes along.
        live.push(usize::from(live[0] == 0));
    }
    let wh = Mat::new(w[head], v, h);
    let mut z = Vec::new();
    for (bi, (r0, n)) in head_blocks(live.len(), head_block_rows(v)).enumerate() {
        let rs = &live[r0..r0 + n];
        let hb = gather_rows(&tape.h_span, h, rs);
        z.resize(z.len().max(n * v), 0f32);
        let zb = &mut z[..n * v];
        mm(zb, 0, v, Mat::new(&hb, n, h), wh.t(), false, true)?;
        logits_to_dz(tape, zb, rs, dl);
        let dz = Mat::new(zb, n, v);
        if gb.wants(head) {
            mm(gb.acc(head, v * h), 0, h, dz.t(), Mat::new(&hb, n, h), bi > 0, true)?;
        }
        scatter_dh(tape, &mm_new(dz, wh, true)?, rs, dxf);
    }
    Ok(())
}

/// Turns the logits `z` of span rows `rs` into d loss / d logits in place: for
/// log p(target) = z[target] − lse, dz = dl · (onehot − softmax); rows without a gradient get 0.
fn logits_to_dz(tape: &Tape, z: &mut [f32], rs: &[usize], dl: &[f32]) {
    let v = tape.d.vocab;
    z.par_chunks_mut(v).zip(rs.par_iter()).with_min_len(grain(v)).for_each(|(zr, &r)| {
        if dl[r] != 0.0 {
            rows::logprob_backward_row_in_place(zr, tape.lse[r], tape.targets[r] as usize, dl[r]);
        } else {
            zr.fill(0.0);
        }
    });
}

/// Writes d loss / d h of span rows `rs` (`dh`, one row each) to their rows of `dxf`.
fn scatter_dh(tape: &Tape, dh: &[f32], rs: &[usize], dxf: &mut [f32]) {
    let h = tape.d.hidden;
    for (row, &r) in dh.chunks(h).zip(rs) {
        let to = tape.pk.row(r / tape.len, tape.start + r % tape.len) * h;
        dxf[to..to + h].copy_from_slice(row);
    }
}

/// [`head_backward`] over the kept logits `z` (`[M, V]`, turned into `dz` in place): one product
/// over all span rows for each of the head's gradient and d loss / d h.
fn head_backward_kept(
    tape: &Tape,
    mut z: Vec<f32>,
    w: &[&[f32]],
    dl: &[f32],
    gb: &mut GradBufs,
    dxf: &mut [f32],
) -> CResult<()> {
    let d = tape.d;
    let (h, v, m, head) = (d.hidden, d.vocab, dl.len(), tape.idx.head);
    let all: Vec<usize> = (0..m).collect();
    logits_to_dz(tape, &mut z, &all, dl);
    let dz = Mat::new(&z, m, v);
    if gb.wants(head) {
        gb.put(head, mm_new(dz.t(), Mat::new(&tape.h_span, m, h), true)?);
    }
    scatter_dh(tape, &mm_new(dz, Mat::new(w[head], v, h), true)?, &all, dxf);
    Ok(())
}

impl TrainForward {
    /// Parameter gradients `(HF name, gradient)` of a loss whose gradient with respect to
    /// [`TrainForward::logps`] is `dlogps` (`[B, L]`).
    pub fn backward(self, dlogps: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let dl = dlogps.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut tape = self.tape;
        if dl.len() != tape.d.batch * tape.len {
            return Err(invalid(format!(
                "hand-written backward: {} log-prob gradients for a {}×{} span",
                dl.len(),
                tape.d.batch,
                tape.len
            )));
        }
        // The backward consumes the activations (each freed once read); the rest is borrowed.
        let acts = Activations {
            layers: std::mem::take(&mut tape.layers),
            x_last: std::mem::take(&mut tape.x_last),
            logits: tape.logits.take(),
        };
        let tensors: Vec<&Tensor> = tape.params.iter().map(|(_, t)| t).collect();
        let bufs = crate::cpu::autograd::cpu_slices(&tensors, |w| run_backward(&tape, acts, w, &dl))??;
        let mut out = Vec::with_capacity(bufs.len());
        for ((name, t), g) in tape.params.iter().zip(bufs) {
            if let Some(g) = g {
                out.push((name.clone(), Tensor::from_vec(g, t.shape(), t.device())?));
            }
        }
        Ok(out)
    }
}

/// The large activations of a [`Tape`], handed to [`run_backward`] to consume.
struct Activations {
    layers: Vec<LayerTape>,
    x_last: Vec<f32>,
    logits: Option<Vec<f32>>,
}

/// The backward of [`run_forward`] for `dl` = d loss / d log-probs: every trainable parameter's
/// gradient (`None` for the frozen ones), in the order of `tape.params`. Each activation is
/// freed once read, so memory falls as the backward goes down the layers.
fn run_backward(tape: &Tape, acts: Activations, w: &[&[f32]], dl: &[f32]) -> CResult<Vec<Option<Vec<f32>>>> {
    let d = tape.d;
    let h = d.hidden;
    let Activations { mut layers, x_last, logits } = acts;
    let mut gb = GradBufs::new(&tape.trainable);
    let mut dxf = vec![0f32; d.rows() * h];
    match logits {
        Some(z) => head_backward_kept(tape, z, w, dl, &mut gb, &mut dxf)?,
        None => head_backward(tape, w, dl, &mut gb, &mut dxf)?,
    }
    let norm = tape.idx.norm;
    let mut dx = rms_backward(&x_last, &tape.rstd_final, w[norm], &dxf, gb.acc(norm, h));
    drop((dxf, x_last));
    let (pk, mask, cos, sin) = (&tape.pk, &tape.mask, &tape.cos, &tape.sin);
    let cx = Ctx { d, pk, mask, cos, sin, lora: tape.lora, keep: false };
    for li in tape.idx.layers.iter().rev() {
        let Some(lt) = layers.pop() else { bail!("hand-written backward: the tape of layer {} is missing", li.layer) };
        dx = layer_backward(&cx, w, li, lt, dx, &mut gb)?;
    }
    // Embedding rows, in token order (deterministic); added to the head's gradient when tied.
    let embed = tape.idx.embed;
    if gb.wants(embed) {
        let buf = gb.acc(embed, w[embed].len());
        for (row, &id) in dx.chunks(h).zip(&tape.ids) {
            let dst = &mut buf[id as usize * h..(id as usize + 1) * h];
            dst.iter_mut().zip(row).for_each(|(a, &g)| *a += g);
        }
    }
    gb.finish(|p| w[p].len())
}

mod attention;
#[cfg(test)]
mod tests;
