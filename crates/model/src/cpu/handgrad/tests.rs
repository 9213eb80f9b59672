//! The hand-written forward and backward against candle's autograd through the same weights on
//! the `composite` backend (candle's own ops, sharing no code with `cpu/rows.rs`, which the
//! hand-written path and the fused `cpu-autograd` kernels both run): the log-probabilities,
//! entropies and every parameter gradient, for Qwen2 (biases, GQA, tied and untied heads) and
//! Llama (no biases), with left-padded prompts and right-padded completions, and with
//! GRPO-shaped groups of samples sharing their prompt's rows; and bit-identical results on 1 and
//! 4 threads.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::config::{Arch, ModelConfig};
use crate::cpu::rows::exp;
use crate::transformer::ParamInit;

fn config(arch: Arch, tied: bool, bias: bool) -> ModelConfig {
    ModelConfig { vocab_size: 37, tie_word_embeddings: tied, attention_bias: bias, ..ModelConfig::small(arch) }
}

/// A model of trainable variables with random weights large enough for non-trivial gradients
/// (norm weights around 1, biases non-zero).
fn model(cfg: &ModelConfig, seed: u64) -> (Transformer, VarMap) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for spec in Transformer::parameter_specs(cfg) {
            let n: usize = spec.shape.iter().product();
            let v: Vec<f32> = match spec.init {
                ParamInit::Normal(_) => (0..n).map(|_| rng.random_range(-0.4..0.4)).collect(),
                ParamInit::Ones => (0..n).map(|_| rng.random_range(0.7..1.3)).collect(),
                ParamInit::Zeros => (0..n).map(|_| rng.random_range(-0.2..0.2)).collect(),
            };
            let t = Tensor::from_vec(v, spec.shape.as_slice(), &Device::Cpu).unwrap();
            data.insert(spec.name.clone(), Var::from_tensor(&t).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    (Transformer::new(cfg, vb).unwrap(), varmap)
}

/// A batch of 3 rows of width 9: row 0 full, row 1 with 3 left-padding tokens, row 2 with 2
/// right-padding tokens; positions count real tokens. The span is positions 3..8.
struct Batch {
    ids: Tensor,
    mask: Tensor,
    pos: Tensor,
    targets: Tensor,
    weights: Tensor,
}

const START: usize = 3;
const LEN: usize = 5;

fn batch(vocab: usize, seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows = [(0, 9), (3, 9), (0, 7)].map(|(lo, hi)| row(&mut rng, vocab, lo, hi));
    finish(&rows, vocab, &mut rng)
}

/// A GRPO-shaped batch of 7 rows of width 9: two prompts of 4 positions with three samples
/// each (the second prompt left-padded by 2) and one prompt with a single sample; samples of a
/// prompt differ after it and some are right-padded. The span 3..8 starts at the last prompt
/// position, so each group's first 3 positions are shared.
fn grouped_batch(vocab: usize, seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = Vec::new();
    for (lo, samples) in [(0, 3), (2, 3), (1, 1)] {
        let prompt = row(&mut rng, vocab, lo, 4);
        for s in 0..samples {
            let mut r = row(&mut rng, vocab, lo, 9 - s);
            r.0[..4].copy_from_slice(&prompt.0[..4]);
            rows.push(r);
        }
    }
    finish(&rows, vocab, &mut rng)
}

/// One row of width 9, real tokens at `lo..hi` (ids, mask, positions counting real tokens).
fn row(rng: &mut ChaCha8Rng, vocab: usize, lo: usize, hi: usize) -> (Vec<u32>, Vec<f32>, Vec<u32>) {
    let t = 9;
    let (mut ids, mut mask, mut pos) = (vec![0u32; t], vec![0f32; t], vec![0u32; t]);
    for (p, c) in (lo..hi).enumerate() {
        ids[c] = rng.random_range(1..vocab as u32);
        mask[c] = 1.0;
        pos[c] = p as u32;
    }
    (ids, mask, pos)
}

fn finish(rows: &[(Vec<u32>, Vec<f32>, Vec<u32>)], vocab: usize, rng: &mut ChaCha8Rng) -> Batch {
    let (b, t) = (rows.len(), 9usize);
    let ids: Vec<u32> = rows.iter().flat_map(|r| r.0.clone()).collect();
    let mask: Vec<f32> = rows.iter().flat_map(|r| r.1.clone()).collect();
    let pos: Vec<u32> = rows.iter().flat_map(|r| r.2.clone()).collect();
    let targets: Vec<u32> = (0..b * LEN).map(|_| rng.random_range(0..vocab as u32)).collect();
    // Loss weights: zero at padding positions (as a completion mask makes them).
    let weights: Vec<f32> = (0..b * LEN)
        .map(|i| {
            let (r, j) = (i / LEN, i % LEN);
            if mask[r * t + START + j] == 0.0 {
                0.0
            } else {
                rng.random_range(-1.0..1.0)
            }
        })
        .collect();
    let dev = Device::Cpu;
    Batch {
        ids: Tensor::from_vec(ids, (b, t), &dev).unwrap(),
        mask: Tensor::from_vec(mask, (b, t), &dev).unwrap(),
        pos: Tensor::from_vec(pos, (b, t), &dev).unwrap(),
        targets: Tensor::from_vec(targets, (b, LEN), &dev).unwrap(),
        weights: Tensor::from_vec(weights, (b, LEN), &dev).unwrap(),
    }
}

/// Log-probs and entropy of the span through candle's autograd model.
fn autograd_logps(m: &Transformer, bt: &Batch) -> (Tensor, Tensor) {
    let logits = m.forward(&bt.ids, &bt.mask, &bt.pos).unwrap().narrow(1, START, LEN).unwrap();
    let logsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let lp = logsm.gather(&bt.targets.unsqueeze(D::Minus1).unwrap(), D::Minus1).unwrap().squeeze(D::Minus1).unwrap();
    let ent = (logsm.exp().unwrap() * &logsm).unwrap().sum(D::Minus1).unwrap().neg().unwrap();
    (lp, ent)
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Masked (by `weights == 0`) maximum difference of two `[B, L]` tensors.
fn span_diff(a: &Tensor, b: &Tensor, weights: &Tensor) -> f32 {
    let keep = weights.ne(0f32).unwrap().to_dtype(DType::F32).unwrap();
    max_diff(&(a * &keep).unwrap(), &(b * &keep).unwrap())
}

fn check_against_autograd(cfg: &ModelConfig) {
    check_batch_against_autograd(cfg, &batch(cfg.vocab_size, 11));
    check_batch_against_autograd(cfg, &grouped_batch(cfg.vocab_size, 12));
}

fn check_batch_against_autograd(cfg: &ModelConfig, bt: &Batch) {
    let (m, varmap) = model(cfg, 7);
    // The reference: the same variables on the composite backend.
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let reference = Transformer::with_backend(cfg, vb, crate::exec::Backend::Composite).unwrap();
    assert_eq!(reference.kernels(), crate::exec::Kernels::Composite);
    let (lp_ref, ent_ref) = autograd_logps(&reference, bt);
    let loss = (&lp_ref * &bt.weights).unwrap().sum_all().unwrap();
    let grads_ref = loss.backward().unwrap();

    let fwd = forward(&m, &bt.ids, &bt.mask, &bt.pos, START, &bt.targets).unwrap();
    let d_lp = span_diff(&fwd.logps, &lp_ref, &bt.weights);
    assert!(d_lp < 2e-5, "{:?}: log-probs differ by {d_lp}", cfg.arch);
    let d_ent = span_diff(&fwd.entropy, &ent_ref, &bt.weights);
    assert!(d_ent < 2e-5, "{:?}: entropies differ by {d_ent}", cfg.arch);
    let grads: HashMap<String, Tensor> = fwd.backward(&bt.weights).unwrap().into_iter().collect();

    let vars = varmap.data().lock().unwrap().clone();
    assert_eq!(grads.len(), vars.len());
    for (name, var) in &vars {
        let want = grads_ref.get(var.as_tensor()).unwrap_or_else(|| panic!("no autograd gradient for {name}"));
        let got = &grads[name];
        let scale = max_abs(want).max(1e-3);
        let d = max_diff(got, want) / scale;
        assert!(d < 1e-4, "{:?}: gradient of {name} differs by {d} (relative to {scale})", cfg.arch);
    }
}

#[test]
fn qwen2_untied_matches_autograd() {
    check_against_autograd(&config(Arch::Qwen2, false, true));
}

#[test]
fn qwen2_tied_matches_autograd() {
    check_against_autograd(&config(Arch::Qwen2, true, true));
}

#[test]
fn llama_without_biases_matches_autograd() {
    check_against_autograd(&config(Arch::Llama, false, false));
}

#[test]
fn results_do_not_depend_on_thread_count() {
    // Wide enough that the MLP's gemms split over the pool (27 × 256 × 64 > PAR_MIN_WORK).
    let cfg = ModelConfig { hidden_size: 64, intermediate_size: 256, head_dim: 16, ..config(Arch::Qwen2, true, true) };
    assert!(3 * 9 * cfg.intermediate_size * cfg.hidden_size >= PAR_MIN_WORK);
    let (m, _) = model(&cfg, 3);
    let bt = grouped_batch(cfg.vocab_size, 5);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let fwd = forward(&m, &bt.ids, &bt.mask, &bt.pos, START, &bt.targets).unwrap();
            let lp = fwd.logps.to_vec2::<f32>().unwrap();
            let grads = fwd.backward(&bt.weights).unwrap();
            let flat: Vec<Vec<f32>> =
                grads.iter().map(|(_, g)| g.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
            (lp, flat)
        })
    };
    assert_eq!(run(1), run(4));
}

#[test]
fn samples_of_one_prompt_share_its_rows() {
    let bt = grouped_batch(37, 1);
    let ids = bt.ids.to_vec2::<u32>().unwrap().concat();
    let mask = bt.mask.to_vec2::<f32>().unwrap().concat();
    let same =
        |a: usize, b: usize| ids[a * 9..a * 9 + START] == ids[b * 9..b * 9 + START] && mask[a * 9] == mask[b * 9];
    let pk = Packing::detect(7, 9, START, same);
    let counts: Vec<usize> = pk.groups.iter().map(|g| g.count).collect();
    assert_eq!(counts, [3, 3, 1]);
    // Three prefixes of 3 rows, seven suffixes of 6.
    assert_eq!(pk.rows, 3 * 3 + 7 * 6);
    assert_eq!(pk.row(4, 1), pk.row(3, 1));
    assert_ne!(pk.row(4, 3), pk.row(3, 3));
    let src = pk.sources();
    assert_eq!(src.len(), pk.rows);
    for b in 0..7 {
        for t in 0..9 {
            let s = src[pk.row(b, t)];
            assert_eq!(ids[s], ids[b * 9 + t], "row of ({b}, {t})");
        }
    }
    // Nothing shared without a prefix.
    assert_eq!(Packing::detect(7, 9, 0, |_, _| true).rows, 63);
}

#[test]
fn rejects_a_span_that_does_not_fit() {
    let cfg = config(Arch::Qwen2, true, true);
    let (m, _) = model(&cfg, 3);
    let bt = batch(cfg.vocab_size, 5);
    let err = forward(&m, &bt.ids, &bt.mask, &bt.pos, 6, &bt.targets).err().unwrap();
    assert!(err.to_string().contains("do not fit"), "{err}");
}

#[test]
fn refuses_a_model_planned_for_another_backend() {
    let mut q3 = config(Arch::Qwen3, true, false);
    q3.head_dim = 8;
    let (m3, _) = model(&q3, 1);
    assert_eq!(m3.plan().backend(), crate::exec::Backend::CpuAutograd);
    let bt = batch(q3.vocab_size, 5);
    let err = forward(&m3, &bt.ids, &bt.mask, &bt.pos, 1, &bt.targets).err().unwrap();
    assert!(err.to_string().contains("cpu-handwritten"), "{err}");
}

#[test]
fn fast_exp_is_accurate_to_two_ulps() {
    let mut worst = 0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f64 / 200_000.0;
        let (got, want) = (exp(x as f32) as f64, (x as f32 as f64).exp());
        worst = worst.max(((got - want) / want).abs());
    }
    assert!(worst < 2.5e-7, "relative error {worst}");
    assert!(exp(-1e30) > 0.0 && exp(1e30).is_finite());
}

#[test]
fn head_blocks_cover_every_row_without_a_single_row_block() {
    for n in 0..60 {
        for max in [1, 4, 5, 7, 16] {
            let blocks: Vec<(usize, usize)> = head_blocks(n, max).collect();
            let mut next = 0;
            for &(first, rows) in &blocks {
                assert_eq!(first, next, "n {n} max {max}: {blocks:?}");
                assert!(rows <= max.max(4) && (rows > 1 || n == 1), "n {n} max {max}: {blocks:?}");
                next += rows;
            }
            assert_eq!(next, n, "n {n} max {max}: {blocks:?}");
        }
    }
}

#[test]
fn the_head_in_blocks_gives_the_bits_of_one_product() {
    // A row's logits do not depend on the other rows of its gemm: any split into blocks (none of
    // one row) gives the bits of the whole, so the backward may recompute them a block at a time.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (m, h, v) = (37, 48, 300);
    let d = Dims { batch: 1, rows: m, hidden: h, heads: 1, kv_heads: 1, head_dim: h, inter: h, vocab: v, eps: 1e-6 };
    let h_span: Vec<f32> = (0..m * h).map(|_| rng.random_range(-1.0..1.0)).collect();
    let w_head: Vec<f32> = (0..v * h).map(|_| rng.random_range(-1.0..1.0)).collect();
    let targets: Vec<u32> = (0..m).map(|_| rng.random_range(0..v as u32)).collect();
    let bits = |block_rows: usize| {
        let stats = head_forward(&h_span, &w_head, &targets, &d, block_rows, &mut Vec::new()).unwrap();
        stats.iter().flat_map(|&(a, b, c)| [a.to_bits(), b.to_bits(), c.to_bits()]).collect::<Vec<u32>>()
    };
    let whole = bits(m);
    for block_rows in [4, 5, 9, 18] {
        assert_eq!(bits(block_rows), whole, "blocks of {block_rows}");
    }
}

#[test]
fn recomputed_lora_activations_give_autograd_adapter_gradients() {
    // Unit tests recompute what a layer's backward can (`keeps` is false here), the O adapter's
    // tape with `xmid` included, and the backward draws the dropout masks again. (Dropout masks
    // are drawn over the packed rows, so with shared prompts they are not the composite path's.)
    let cfg = config(Arch::Llama, false, false);
    check_lora_against_autograd(&cfg, 0.25, &batch(cfg.vocab_size, 8));
    check_lora_against_autograd(&cfg, 0.0, &grouped_batch(cfg.vocab_size, 9));
}

/// The adapter gradients (and nothing else) of a LoRA model with `dropout` over `bt`, hand-written
/// against candle's autograd on the composite backend.
fn check_lora_against_autograd(cfg: &ModelConfig, dropout: f64, bt: &Batch) {
    use crate::lora::{AdapterPair, AdapterSet, LoraConfig};
    let (base, varmap) = model(cfg, 5);
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let reference = Transformer::with_backend(cfg, vb, crate::exec::Backend::Composite).unwrap();
    let lora = LoraConfig { r: 3, alpha: 6.0, dropout, ..Default::default() };
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (mut set, mut vars) = (AdapterSet::new(), Vec::new());
    for layer in 0..cfg.num_hidden_layers {
        for m in lora.validate("test").unwrap() {
            let (inp, out) = m.features(cfg);
            let mut var = |rows: usize, cols: usize| {
                let v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-0.3..0.3)).collect();
                Var::from_tensor(&Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()).unwrap()
            };
            let (a, b) = (var(lora.r, inp), var(out, lora.r));
            set.insert((layer, m), AdapterPair { a: a.as_tensor().clone(), b: b.as_tensor().clone() });
            vars.push((crate::lora::peft_key(layer, m, 'A'), a));
            vars.push((crate::lora::peft_key(layer, m, 'B'), b));
        }
    }
    let hand = base.with_adapters(&lora, set.clone()).unwrap();
    let reference = reference.with_adapters(&lora, set).unwrap();
    let (lp_ref, _) = autograd_logps(&reference, bt);
    let grads_ref = (&lp_ref * &bt.weights).unwrap().sum_all().unwrap().backward().unwrap();
    let fwd = forward(&hand, &bt.ids, &bt.mask, &bt.pos, START, &bt.targets).unwrap();
    let d_lp = span_diff(&fwd.logps, &lp_ref, &bt.weights);
    assert!(d_lp < 2e-5, "dropout {dropout}: log-probs differ by {d_lp}");
    let grads: HashMap<String, Tensor> = fwd.backward(&bt.weights).unwrap().into_iter().collect();
    assert_eq!(grads.len(), vars.len(), "the adapters' gradients and nothing else");
    for (name, var) in &vars {
        let want = grads_ref.get(var.as_tensor()).unwrap();
        let scale = max_abs(want).max(1e-3);
        let d = max_diff(&grads[name], want) / scale;
        assert!(d < 1e-4, "dropout {dropout}: gradient of {name} differs by {d} (relative to {scale})");
    }
}
