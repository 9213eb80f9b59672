//! Attention of the hand-written training path, over packed rows ([`Packing`]): sequences
//! that share their first positions (the G samples of one GRPO prompt) keep those rows once,
//! and each sample's own rows attend to the shared ones and then to themselves.
//!
//! One task per (group, KV head): the shared prefix is causal self-attention; each sample's
//! suffix attends to `[prefix keys | its own keys]`, causally, in blocks of
//! [`CAUSAL_BLOCK`] query rows so the masked upper triangle is (mostly) never computed. The
//! backward of a group sums the prefix's key and value gradients over its samples in a fixed
//! order (deterministic).

use candle_core::bail;
use rayon::prelude::*;

use super::{mm, CResult, Dims, Mat, QkvLayout};
use crate::cpu::rows as kernels;

/// Query rows per block of the causal attention: rows `i0..i1` need keys `0..i1` only.
const CAUSAL_BLOCK: usize = 32;

/// The `(i0, i1)` query-row blocks of a segment of `t` rows.
fn causal_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(CAUSAL_BLOCK).map(move |i0| (i0, (i0 + CAUSAL_BLOCK).min(t)))
}

/// Sequences `first .. first + count` share positions `0..prefix`; their rows start at `row0`:
/// the prefix rows, then each sequence's `suffix` rows in order.
#[derive(Debug, Clone, Copy)]
pub(super) struct Group {
    pub first: usize,
    pub count: usize,
    pub row0: usize,
}

/// Where each (sequence, position) of a `[B, T]` batch lives in the packed rows.
#[derive(Debug, Clone)]
pub(super) struct Packing {
    pub prefix: usize,
    pub suffix: usize,
    pub groups: Vec<Group>,
    /// The group of each sequence.
    group_of: Vec<usize>,
    pub rows: usize,
}

impl Packing {
    /// Groups runs of consecutive sequences whose first `prefix` positions agree in `same`
    /// (`same(a, b)`: sequences a and b have equal tokens, mask and positions there).
    pub fn detect(batch: usize, seq: usize, prefix: usize, same: impl Fn(usize, usize) -> bool) -> Self {
        let prefix = prefix.min(seq);
        let suffix = seq - prefix;
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of = Vec::with_capacity(batch);
        let mut rows = 0;
        for b in 0..batch {
            match groups.last_mut() {
                Some(g) if prefix > 0 && same(g.first, b) => g.count += 1,
                _ => {
                    if let Some(g) = groups.last() {
                        rows += prefix + g.count * suffix;
                    }
                    groups.push(Group { first: b, count: 1, row0: rows });
                }
            }
            group_of.push(groups.len() - 1);
        }
        if let Some(g) = groups.last() {
            rows += prefix + g.count * suffix;
        }
        Self { prefix, suffix, groups, group_of, rows }
    }

    /// The packed row of position `t` of sequence `b`.
    pub fn row(&self, b: usize, t: usize) -> usize {
        let g = self.groups[self.group_of[b]];
        if t < self.prefix {
            g.row0 + t
        } else {
            g.row0 + self.prefix + (b - g.first) * self.suffix + (t - self.prefix)
        }
    }

    /// For each packed row, the flat index `b·T + t` of a (sequence, position) it stands for.
    pub fn sources(&self) -> Vec<usize> {
        let t_all = self.prefix + self.suffix;
        let mut src = Vec::with_capacity(self.rows);
        for g in &self.groups {
            src.extend((0..self.prefix).map(|t| g.first * t_all + t));
            for b in g.first..g.first + g.count {
                src.extend((self.prefix..t_all).map(|t| b * t_all + t));
            }
        }
        src
    }

    /// The packed rows of group `g`: its prefix, then each sequence's suffix.
    fn group_rows(&self, g: &Group) -> usize {
        self.prefix + g.count * self.suffix
    }
}

/// Elements of the probabilities [`forward`] returns, over all (group, head) pairs.
pub(super) fn probs_len(pk: &Packing, heads: usize) -> usize {
    let t = pk.prefix + pk.suffix;
    pk.groups.iter().map(|g| pk.prefix * pk.prefix + g.count * pk.suffix * t).sum::<usize>() * heads
}

/// The attention probabilities of one (group, query head): the prefix's `[P, P]`, then each
/// sequence's `[S, P + S]` (keys: prefix, then its own rows), zero where masked.
pub(super) type Probs = Vec<f32>;

/// One segment of query rows and the keys it sees: `before` rows of keys (the shared prefix)
/// and then its own rows, causally.
#[derive(Clone, Copy)]
struct Segment<'a> {
    /// Row offset of the segment inside the group.
    row: usize,
    len: usize,
    /// Keys and values of the rows before it (`[P, hd]` each), if any.
    before: Option<(Mat<'a>, Mat<'a>)>,
    /// The mask over `[before | own]` key positions.
    valid: &'a [f32],
    /// Offset of its probabilities in the head's [`Probs`].
    p_off: usize,
}

impl Segment<'_> {
    /// Keys before the segment's own rows (the shared prefix's, if any).
    fn n_before(&self) -> usize {
        self.before.map_or(0, |(k, _)| k.rows)
    }
    /// Keys a row of the segment may see at most: those before, then its own.
    fn width(&self) -> usize {
        self.n_before() + self.len
    }
}

/// The segments of group `g`: its prefix, then each sequence's suffix.
fn segments<'a>(pk: &Packing, g: &Group, mask: &'a [f32], kv: (Mat<'a>, Mat<'a>)) -> Vec<Segment<'a>> {
    let (p, s) = (pk.prefix, pk.suffix);
    let t = p + s;
    let mut out = Vec::with_capacity(g.count + 1);
    if p > 0 {
        let valid = &mask[g.first * t..g.first * t + p];
        out.push(Segment { row: 0, len: p, before: None, valid, p_off: 0 });
    }
    let before = (p > 0).then(|| (kv.0.sub((0, p), (0, kv.0.cols)), kv.1.sub((0, p), (0, kv.1.cols))));
    for j in 0..g.count {
        let b = g.first + j;
        out.push(Segment {
            row: p + j * s,
            len: s,
            before,
            valid: &mask[b * t..(b + 1) * t],
            p_off: p * p + j * s * t,
        });
    }
    out
}

/// The `[R, hd]` views (R = the group's rows) of query head `h` and KV head `kvh`.
fn head_views<'a>(d: &Dims, qkv: &'a [f32], row0: usize, rows: usize, h: usize, kvh: usize) -> [Mat<'a>; 3] {
    let (hd, l) = (d.head_dim, QkvLayout::of(d));
    let at = |col: usize| Mat::view(qkv, row0 * l.width + col, rows, hd, l.width);
    [at(h * hd), at(l.k + kvh * hd), at(l.v + kvh * hd)]
}

/// Scaled, causal, key-masked softmax attention over the fused projection `qkv` (packed rows):
/// writes the output `[N, nh·hd]` into `out` (every element); returns the probabilities per
/// `(group, head)`.
pub(super) fn forward(d: &Dims, pk: &Packing, qkv: &[f32], mask: &[f32], out: &mut [f32]) -> CResult<Vec<Probs>> {
    let kvh_n = d.kv_heads;
    let (hd, qw, g) = (d.head_dim, d.q_width(), d.group());
    if out.len() != pk.rows * qw {
        bail!("hand-written attention: output of {} for {}×{qw}", out.len(), pk.rows);
    }
    let blocks: Vec<Block> = (0..pk.groups.len() * kvh_n)
        .into_par_iter()
        .map(|task| group_forward(d, pk, &pk.groups[task / kvh_n], task % kvh_n, qkv, mask))
        .collect::<CResult<_>>()?;
    let mut probs = vec![Vec::new(); pk.groups.len() * d.heads];
    for (task, block) in blocks.into_iter().enumerate() {
        let (grp, kvh) = (&pk.groups[task / kvh_n], task % kvh_n);
        let rows = pk.group_rows(grp);
        for (j, p) in block.probs.into_iter().enumerate() {
            let h = kvh * g + j;
            for i in 0..rows {
                let dst = (grp.row0 + i) * qw + h * hd;
                out[dst..dst + hd].copy_from_slice(&block.out[(j * rows + i) * hd..(j * rows + i + 1) * hd]);
            }
            probs[(task / kvh_n) * d.heads + h] = p;
        }
    }
    Ok(probs)
}

/// The probabilities ([`Probs`]) of one query head over its group's segments: `q` and `keys`
/// are the head's `[R, hd]` views.
fn head_probs(pk: &Packing, grp: &Group, segs: &[Segment], q: Mat, keys: Mat, hd: usize) -> CResult<Probs> {
    let scale = 1.0 / (hd as f32).sqrt();
    let t = pk.prefix + pk.suffix;
    let mut p = vec![0f32; pk.prefix * pk.prefix + grp.count * pk.suffix * t];
    for seg in segs {
        let (w, nb) = (seg.width(), seg.n_before());
        for (i0, i1) in causal_blocks(seg.len) {
            let (own, qb) = ((seg.row, seg.row + i1), q.sub((seg.row + i0, seg.row + i1), (0, hd)));
            let at = seg.p_off + i0 * w;
            if let Some((kb, _)) = seg.before {
                mm(&mut p, at, w, qb, kb.t(), false, false)?;
            }
            mm(&mut p, at + nb, w, qb, keys.sub(own, (0, hd)).t(), false, false)?;
            for i in i0..i1 {
                let row = seg.p_off + i * w;
                kernels::masked_softmax_row(&mut p[row..row + nb + i1], nb + i, seg.valid, scale);
            }
        }
    }
    Ok(p)
}

/// The outputs `[g, R, hd]` of one (group, KV head) task and the probabilities of its heads.
struct Block {
    out: Vec<f32>,
    probs: Vec<Probs>,
}

/// The attention of one (group, KV head) task.
fn group_forward(d: &Dims, pk: &Packing, grp: &Group, kvh: usize, qkv: &[f32], mask: &[f32]) -> CResult<Block> {
    let (hd, g, rows) = (d.head_dim, d.group(), pk.group_rows(grp));
    let mut out = vec![0f32; g * rows * hd];
    let mut probs = Vec::with_capacity(g);
    for j in 0..g {
        let [q, keys, values] = head_views(d, qkv, grp.row0, rows, kvh * g + j, kvh);
        let segs = segments(pk, grp, mask, (keys, values));
        let p = head_probs(pk, grp, &segs, q, keys, hd)?;
        for seg in &segs {
            let (w, nb) = (seg.width(), seg.n_before());
            let pm = Mat::view(&p, seg.p_off, seg.len, w, w);
            for (i0, i1) in causal_blocks(seg.len) {
                let own = (seg.row, seg.row + i1);
                let o_at = (j * rows + seg.row + i0) * hd;
                if let Some((_, vb)) = seg.before {
                    mm(&mut out, o_at, hd, pm.sub((i0, i1), (0, nb)), vb, false, false)?;
                }
                let acc = seg.before.is_some();
                mm(&mut out, o_at, hd, pm.sub((i0, i1), (nb, nb + i1)), values.sub(own, (0, hd)), acc, false)?;
            }
        }
        probs.push(p);
    }
    Ok(Block { out, probs })
}

/// Gradients of one (group, KV head) task: `dq` `[g, R, hd]`, `dk`, `dv` `[R, hd]`.
struct Grads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// The backward of [`forward`] for upstream `dout` `[N, nh·hd]`, given the layer's `qkv` and
/// `probs`: the gradient of the fused projection, `[N, nh·hd + 2·nkv·hd]`.
pub(super) fn backward(
    d: &Dims,
    pk: &Packing,
    qkv: &[f32],
    probs: &[Probs],
    mask: &[f32],
    dout: &[f32],
) -> CResult<Vec<f32>> {
    let kvh_n = d.kv_heads;
    let blocks: Vec<Grads> = (0..pk.groups.len() * kvh_n)
        .into_par_iter()
        .map(|task| {
            let gi = task / kvh_n;
            let head_probs = &probs[gi * d.heads..(gi + 1) * d.heads];
            group_backward(d, pk, &pk.groups[gi], task % kvh_n, qkv, head_probs, mask, dout)
        })
        .collect::<CResult<_>>()?;
    let (hd, g, l) = (d.head_dim, d.group(), QkvLayout::of(d));
    let mut dqkv = vec![0f32; pk.rows * l.width];
    for (task, blk) in blocks.into_iter().enumerate() {
        let (grp, kvh) = (&pk.groups[task / kvh_n], task % kvh_n);
        let rows = pk.group_rows(grp);
        for i in 0..rows {
            let row = &mut dqkv[(grp.row0 + i) * l.width..(grp.row0 + i + 1) * l.width];
            row[l.k + kvh * hd..l.k + (kvh + 1) * hd].copy_from_slice(&blk.dk[i * hd..(i + 1) * hd]);
            row[l.v + kvh * hd..l.v + (kvh + 1) * hd].copy_from_slice(&blk.dv[i * hd..(i + 1) * hd]);
            for j in 0..g {
                let h = kvh * g + j;
                row[h * hd..(h + 1) * hd].copy_from_slice(&blk.dq[(j * rows + i) * hd..(j * rows + i + 1) * hd]);
            }
        }
    }
    Ok(dqkv)
}

/// The gradients of one (group, KV head) task.
#[allow(clippy::too_many_arguments)]
fn group_backward(
    d: &Dims,
    pk: &Packing,
    grp: &Group,
    kvh: usize,
    qkv: &[f32],
    head_probs: &[Probs],
    mask: &[f32],
    dout: &[f32],
) -> CResult<Grads> {
    let (hd, qw, g, rows) = (d.head_dim, d.q_width(), d.group(), pk.group_rows(grp));
    let scale = 1.0 / (hd as f32).sqrt();
    let mut gr = Grads { dq: vec![0f32; g * rows * hd], dk: vec![0f32; rows * hd], dv: vec![0f32; rows * hd] };
    let mut dp = vec![0f32; head_probs.first().map_or(0, |p| p.len())];
    for j in 0..g {
        let h = kvh * g + j;
        let [q, keys, values] = head_views(d, qkv, grp.row0, rows, h, kvh);
        let segs = segments(pk, grp, mask, (keys, values));
        let p = &head_probs[h];
        let d_o = Mat::view(dout, grp.row0 * qw + h * hd, rows, hd, qw);
        for seg in &segs {
            let (w, nb) = (seg.width(), seg.n_before());
            let pm = Mat::view(p, seg.p_off, seg.len, w, w);
            for (i0, i1) in causal_blocks(seg.len) {
                let (qrows, own) = ((seg.row + i0, seg.row + i1), (seg.row, seg.row + i1));
                let (d_ob, qb) = (d_o.sub(qrows, (0, hd)), q.sub(qrows, (0, hd)));
                let at = seg.p_off + i0 * w;
                // dP = dO · Vᵀ and dV += Pᵀ · dO, over the keys before and the own keys.
                if let Some((_, vb)) = seg.before {
                    mm(&mut dp, at, w, d_ob, vb.t(), false, false)?;
                    mm(&mut gr.dv, 0, hd, pm.sub((i0, i1), (0, nb)).t(), d_ob, true, false)?;
                }
                mm(&mut dp, at + nb, w, d_ob, values.sub(own, (0, hd)).t(), false, false)?;
                mm(&mut gr.dv, seg.row * hd, hd, pm.sub((i0, i1), (nb, nb + i1)).t(), d_ob, true, false)?;
                for i in i0..i1 {
                    let row = seg.p_off + i * w;
                    kernels::softmax_backward_row(&mut dp[row..row + nb + i1], &p[row..row + nb + i1], scale);
                }
                // dQ = dS · K and dK += dSᵀ · Q.
                let dsm = Mat::view(&dp, seg.p_off, seg.len, w, w);
                let (ds_before, ds_own) = (dsm.sub((i0, i1), (0, nb)), dsm.sub((i0, i1), (nb, nb + i1)));
                let q_at = (j * rows + seg.row + i0) * hd;
                if let Some((kb, _)) = seg.before {
                    mm(&mut gr.dq, q_at, hd, ds_before, kb, false, false)?;
                    mm(&mut gr.dk, 0, hd, ds_before.t(), qb, true, false)?;
                }
                let acc = seg.before.is_some();
                mm(&mut gr.dq, q_at, hd, ds_own, keys.sub(own, (0, hd)), acc, false)?;
                mm(&mut gr.dk, seg.row * hd, hd, ds_own.t(), qb, true, false)?;
            }
        }
    }
    Ok(gr)
}
