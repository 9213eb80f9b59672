//! The execution backends (`exec.rs`) against each other on the same weights, on the CPU: the
//! `composite` path (candle's composite ops, what CUDA, bf16 and f64 run) against `cpu-autograd`
//! (logits and every parameter gradient of a log-prob loss, with composite f64 as the exact
//! reference) and against `cpu-handwritten` (logits, completion log-probs and entropies);
//! incremental decoding with a KV cache on detached (`Mode::Infer`) models of each backend,
//! against each other and against the full forward; a rollout on `composite` against the default
//! backend; and bf16 / f16 composite models that must forward, decode, backpropagate and roll
//! out, loosely close to f32.

use std::collections::HashMap;

use aha_model::cpu::handgrad;
use aha_model::ops;
use aha_model::rollout::{rollout, RolloutConfig};
use aha_model::{Arch, Backend, Kernels, KvCache, Llama3RopeScaling, Mode, ModelConfig, ParamInit, Transformer};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A small model of `arch` with GQA: Qwen2 with q/k/v biases and a tied head, Qwen3 with q/k
/// norms and an untied head, Llama with one KV head and Llama-3 RoPE scaling.
fn config(arch: Arch) -> ModelConfig {
    let base = ModelConfig { attention_bias: true, ..ModelConfig::small(arch) };
    match arch {
        Arch::Qwen2 => base,
        Arch::Qwen3 => ModelConfig { tie_word_embeddings: false, attention_bias: false, head_dim: 16, ..base },
        Arch::Llama => ModelConfig {
            tie_word_embeddings: false,
            attention_bias: false,
            num_key_value_heads: 1,
            rms_norm_eps: 1e-5,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8,
            }),
            ..base
        },
    }
}

/// Seeded weights (f64) large enough for peaked attention and non-trivial gradients: matrices
/// in ±0.35, norm weights around 1, biases non-zero.
fn weights(cfg: &ModelConfig, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Transformer::parameter_specs(cfg)
        .into_iter()
        .map(|spec| {
            let n: usize = spec.shape.iter().product();
            let v: Vec<f64> = match spec.init {
                ParamInit::Normal(_) => (0..n).map(|_| rng.random_range(-0.35..0.35)).collect(),
                ParamInit::Ones => (0..n).map(|_| rng.random_range(0.7..1.3)).collect(),
                ParamInit::Zeros => (0..n).map(|_| rng.random_range(-0.2..0.2)).collect(),
            };
            (spec.name, Tensor::from_vec(v, spec.shape, &Device::Cpu).unwrap())
        })
        .collect()
}

/// Trainable variables holding `w` in `dtype`.
fn varmap(w: &HashMap<String, Tensor>, dtype: DType) -> VarMap {
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().unwrap();
        for (name, t) in w {
            data.insert(name.clone(), Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap());
        }
    }
    vm
}

/// A model on `backend` whose parameters are the variables of `vm` (two models built from one
/// map share their variables).
fn model(cfg: &ModelConfig, vm: &VarMap, dtype: DType, backend: Backend) -> Transformer {
    let m = Transformer::with_backend(cfg, VarBuilder::from_varmap(vm, dtype, &Device::Cpu), backend).unwrap();
    assert_eq!(m.mode(), Mode::Train);
    if backend != Backend::Auto {
        assert_eq!(m.plan().backend(), backend);
    }
    m
}

/// A batch of 3 rows of width 9: row 0 full, row 1 left-padded by 3, row 2 right-padded by 2;
/// positions count real tokens. The loss span is positions `START..START + LEN`, with targets
/// and weights (zero where the position is padding).
struct Batch {
    ids: Tensor,
    mask: Tensor,
    pos: Tensor,
    targets: Tensor,
    weights: Tensor,
    /// `(row, position)` of every real token.
    real: Vec<(usize, usize)>,
}

const WIDTH: usize = 9;
const START: usize = 3;
const LEN: usize = 5;

fn batch(vocab: usize, seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let spans = [(0, 9), (3, 9), (0, 7)];
    let b = spans.len();
    let (mut ids, mut mask, mut pos, mut real) =
        (vec![0u32; b * WIDTH], vec![0f32; b * WIDTH], vec![0u32; b * WIDTH], vec![]);
    for (r, &(lo, hi)) in spans.iter().enumerate() {
        for (p, c) in (lo..hi).enumerate() {
            ids[r * WIDTH + c] = rng.random_range(1..vocab as u32);
            mask[r * WIDTH + c] = 1.0;
            pos[r * WIDTH + c] = p as u32;
            real.push((r, c));
        }
    }
    let targets: Vec<u32> = (0..b * LEN).map(|_| rng.random_range(0..vocab as u32)).collect();
    let weights: Vec<f64> = (0..b * LEN)
        .map(|i| if mask[(i / LEN) * WIDTH + START + i % LEN] == 0.0 { 0.0 } else { rng.random_range(-1.0..1.0) })
        .collect();
    let dev = Device::Cpu;
    Batch {
        ids: Tensor::from_vec(ids, (b, WIDTH), &dev).unwrap(),
        mask: Tensor::from_vec(mask, (b, WIDTH), &dev).unwrap(),
        pos: Tensor::from_vec(pos, (b, WIDTH), &dev).unwrap(),
        targets: Tensor::from_vec(targets, (b, LEN), &dev).unwrap(),
        weights: Tensor::from_vec(weights, (b, LEN), &dev).unwrap(),
        real,
    }
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Max |a − b| over two tensors of the same shape (compared in f64).
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    to_f64(a).iter().zip(to_f64(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn max_abs(t: &Tensor) -> f64 {
    to_f64(t).iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Max |a − b| over the real positions of `[B, T, V]` logits.
fn real_diff(a: &Tensor, b: &Tensor, real: &[(usize, usize)]) -> f64 {
    let pick = |t: &Tensor, r: usize, c: usize| t.narrow(0, r, 1).unwrap().narrow(1, c, 1).unwrap();
    real.iter().map(|&(r, c)| max_diff(&pick(a, r, c), &pick(b, r, c))).fold(0.0, f64::max)
}

/// Log-probs `[B, LEN]` of the span's targets, through the model's own row kernel.
fn span_logprobs(m: &Transformer, logits: &Tensor, bt: &Batch) -> Tensor {
    let (b, _, v) = logits.dims3().unwrap();
    let span = logits.narrow(1, START, LEN).unwrap().reshape((b * LEN, v)).unwrap();
    let lp = ops::gather_logprobs(&span, &bt.targets.flatten_all().unwrap(), m.kernels()).unwrap();
    lp.reshape((b, LEN)).unwrap()
}

/// Max |a − b| of `[B, LEN]` tensors where the loss weight is not zero.
fn weighted_diff(a: &Tensor, b: &Tensor, weights: &Tensor) -> f64 {
    let w = to_f64(weights);
    to_f64(a)
        .iter()
        .zip(to_f64(b))
        .zip(w)
        .filter(|(_, w)| *w != 0.0)
        .map(|((x, y), _)| (x - y).abs())
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------------
// Training forward and gradients

/// Logits and every parameter gradient of a span log-prob loss, under `m`.
fn logits_and_grads(m: &Transformer, vm: &VarMap, bt: &Batch) -> (Tensor, HashMap<String, Tensor>) {
    let logits = m.forward(&bt.ids, &bt.mask, &bt.pos).unwrap();
    let lp = span_logprobs(m, &logits, bt);
    let loss = (&lp * bt.weights.to_dtype(lp.dtype()).unwrap()).unwrap().sum_all().unwrap();
    let store = loss.backward().unwrap();
    let grads = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, var)| {
            let g =
                store.get(var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {name}", m.plan().describe()));
            (name.clone(), g.clone())
        })
        .collect();
    (logits, grads)
}

/// The largest gradient difference, relative to the reference gradient's largest entry.
fn grads_diff(got: &HashMap<String, Tensor>, want: &HashMap<String, Tensor>) -> (f64, String) {
    assert_eq!(got.len(), want.len());
    let mut worst = (0.0f64, String::new());
    for (name, w) in want {
        let d = max_diff(&got[name], w) / max_abs(w).max(1e-3);
        if d >= worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}

/// `cpu-autograd` (fused f32 kernels under candle's autograd) against `composite` in f32 on the
/// same weights, and both against `composite` in f64 (the exact reference): logits and every
/// parameter gradient of a log-prob loss.
#[test]
fn composite_matches_cpu_autograd() {
    for arch in [Arch::Qwen2, Arch::Qwen3, Arch::Llama] {
        let cfg = config(arch);
        let w = weights(&cfg, 1);
        let (vm32, vm64) = (varmap(&w, DType::F32), varmap(&w, DType::F64));
        let comp = model(&cfg, &vm32, DType::F32, Backend::Composite);
        let fused = model(&cfg, &vm32, DType::F32, Backend::CpuAutograd);
        let exact = model(&cfg, &vm64, DType::F64, Backend::Auto);
        assert_eq!(exact.plan().backend(), Backend::Composite, "f64 runs on composite");
        assert_eq!((comp.kernels(), fused.kernels()), (Kernels::Composite, Kernels::CpuFused));
        let bt = batch(cfg.vocab_size, 2);
        let (lc, gc) = logits_and_grads(&comp, &vm32, &bt);
        let (lf, gf) = logits_and_grads(&fused, &vm32, &bt);
        let (le, ge) = logits_and_grads(&exact, &vm64, &bt);
        assert_eq!(gc.len(), Transformer::parameter_specs(&cfg).len());

        let (d, dce, dfe) =
            (real_diff(&lc, &lf, &bt.real), real_diff(&lc, &le, &bt.real), real_diff(&lf, &le, &bt.real));
        println!(
            "{arch:?}: |Δlogit| composite vs cpu-autograd {d:.1e}; vs f64: {dce:.1e} / {dfe:.1e} (|logit| ≤ {:.1})",
            max_abs(&le)
        );
        assert!(d <= 1e-5 && dce <= 1e-5 && dfe <= 1e-5, "{arch:?}: logits differ: {d:e}, {dce:e}, {dfe:e}");

        let (g, gce, gfe) = (grads_diff(&gf, &gc), grads_diff(&gc, &ge), grads_diff(&gf, &ge));
        println!(
            "{arch:?}: relative |Δgrad| composite vs cpu-autograd {:.1e} ({}); vs f64: {:.1e} / {:.1e}",
            g.0, g.1, gce.0, gfe.0
        );
        for (what, (d, name)) in
            [("cpu-autograd vs composite", g), ("composite vs f64", gce), ("cpu-autograd vs f64", gfe)]
        {
            assert!(d <= 2e-5, "{arch:?}: {what}: gradient of {name} differs by {d:e} (relative)");
        }
    }
}

#[test]
fn composite_matches_cpu_handwritten_in_f32() {
    for arch in [Arch::Qwen2, Arch::Llama] {
        let cfg = config(arch);
        let vm = varmap(&weights(&cfg, 3), DType::F32);
        let comp = model(&cfg, &vm, DType::F32, Backend::Composite);
        let hand = model(&cfg, &vm, DType::F32, Backend::Auto);
        assert_eq!(hand.plan().backend(), Backend::CpuHandwritten, "auto must pick the hand-written backend");
        let bt = batch(cfg.vocab_size, 4);

        let lc = comp.forward(&bt.ids, &bt.mask, &bt.pos).unwrap();
        let lh = hand.forward(&bt.ids, &bt.mask, &bt.pos).unwrap();
        let d_logits = real_diff(&lc, &lh, &bt.real);
        assert!(d_logits <= 1e-5, "{arch:?}: logits differ by {d_logits}");

        let fwd = handgrad::forward(&hand, &bt.ids, &bt.mask, &bt.pos, START, &bt.targets).unwrap();
        let lp = span_logprobs(&comp, &lc, &bt);
        let d_lp = weighted_diff(&fwd.logps, &lp, &bt.weights);
        assert!(d_lp <= 1e-5, "{arch:?}: completion log-probs differ by {d_lp}");
        let (b, _, v) = lc.dims3().unwrap();
        let span = lc.narrow(1, START, LEN).unwrap().reshape((b * LEN, v)).unwrap();
        let ent = ops::row_entropy(&span, Kernels::Composite).unwrap().reshape((b, LEN)).unwrap();
        let d_ent = weighted_diff(&fwd.entropy, &ent, &bt.weights);
        assert!(d_ent <= 1e-5, "{arch:?}: entropies differ by {d_ent}");
        println!("{arch:?} f32: composite vs cpu-handwritten: |Δlogit| {d_logits:.1e}, |Δlogp| {d_lp:.1e}, |Δentropy| {d_ent:.1e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Incremental decoding

/// Three prompts of lengths 5, 2 and 4 and six further tokens for each row.
const PROMPTS: [&[u32]; 3] = [&[3, 17, 9, 30, 1], &[22, 5], &[8, 8, 13, 40]];
const STEPS: [[u32; 3]; 6] = [[4, 11, 29], [36, 2, 7], [19, 19, 0], [5, 38, 12], [27, 6, 33], [14, 25, 10]];

/// Prefills [`PROMPTS`] left-padded in one call, then decodes [`STEPS`] one token per row per
/// call; returns the logits of every real position, row by row, `[tokens, V]` each.
fn decode_all(m: &Transformer) -> Vec<Tensor> {
    let (n, width) = (PROMPTS.len(), PROMPTS.iter().map(|p| p.len()).max().unwrap());
    let dev = Device::Cpu;
    let (mut ids, mut mask, mut pos) = (vec![0u32; n * width], vec![0u8; n * width], vec![0u32; n * width]);
    for (r, p) in PROMPTS.iter().enumerate() {
        let pad = width - p.len();
        for (i, &tok) in p.iter().enumerate() {
            (ids[r * width + pad + i], mask[r * width + pad + i], pos[r * width + pad + i]) = (tok, 1, i as u32);
        }
    }
    let mut cache = KvCache::new(m.config(), n, width + STEPS.len(), m.dtype(), &dev).unwrap();
    let t = |v: Vec<u32>, c: usize| Tensor::from_vec(v, (n, c), &dev).unwrap();
    let mask_t = Tensor::from_vec(mask, (n, width), &dev).unwrap();
    let logits = m.decode(&t(ids, width), &mask_t, &t(pos, width), &mut cache).unwrap();
    let mut rows: Vec<Vec<Tensor>> = PROMPTS
        .iter()
        .enumerate()
        .map(|(r, p)| vec![logits.get(r).unwrap().narrow(0, width - p.len(), p.len()).unwrap()])
        .collect();
    for (s, step) in STEPS.iter().enumerate() {
        let pos: Vec<u32> = PROMPTS.iter().map(|p| (p.len() + s) as u32).collect();
        let ones = Tensor::ones((n, 1), DType::U8, &dev).unwrap();
        let logits = m.decode(&t(step.to_vec(), 1), &ones, &t(pos, 1), &mut cache).unwrap();
        for (r, row) in rows.iter_mut().enumerate() {
            row.push(logits.get(r).unwrap());
        }
    }
    rows.into_iter().map(|r| Tensor::cat(&r, 0).unwrap()).collect()
}

/// Each row's logits from one unpadded full forward of its whole sequence.
fn forward_all(m: &Transformer) -> Vec<Tensor> {
    let dev = Device::Cpu;
    PROMPTS
        .iter()
        .enumerate()
        .map(|(r, p)| {
            let seq: Vec<u32> = p.iter().copied().chain(STEPS.iter().map(|s| s[r])).collect();
            let t = seq.len();
            let ids = Tensor::from_vec(seq, (1, t), &dev).unwrap();
            let mask = Tensor::ones((1, t), DType::F32, &dev).unwrap();
            let pos = Tensor::arange(0u32, t as u32, &dev).unwrap().unsqueeze(0).unwrap();
            m.forward(&ids, &mask, &pos).unwrap().squeeze(0).unwrap()
        })
        .collect()
}

fn rows_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter().zip(b).map(|(x, y)| max_diff(x, y)).fold(0.0, f64::max)
}

/// Detached (`Mode::Infer`) models decoding with a KV cache: `composite` against the CPU
/// inference kernels (`cpu::infer`, reached from both `cpu-*` backends) in f32, each against the
/// full forward of the f64 model; and the f64 (composite) model's decode against its own full
/// forward.
#[test]
fn kv_decode_on_composite_matches_the_cpu_kernels() {
    let cases = [
        (Arch::Qwen2, Backend::CpuHandwritten),
        (Arch::Llama, Backend::CpuHandwritten),
        (Arch::Qwen3, Backend::CpuAutograd),
    ];
    for (arch, backend) in cases {
        let cfg = config(arch);
        let w = weights(&cfg, 5);
        let (vm32, vm64) = (varmap(&w, DType::F32), varmap(&w, DType::F64));
        let comp = model(&cfg, &vm32, DType::F32, Backend::Composite).detached().unwrap();
        let cpu = model(&cfg, &vm32, DType::F32, backend).detached().unwrap();
        let exact = model(&cfg, &vm64, DType::F64, Backend::Composite).detached().unwrap();
        assert!([&comp, &cpu, &exact].iter().all(|m| m.mode() == Mode::Infer));
        assert_eq!(
            (comp.kernels(), cpu.kernels(), exact.kernels()),
            (Kernels::Composite, Kernels::CpuInfer, Kernels::Composite)
        );
        let (dc, dk, de) = (decode_all(&comp), decode_all(&cpu), decode_all(&exact));
        let full = forward_all(&exact);
        let (d, dcf, dkf, def) =
            (rows_diff(&dc, &dk), rows_diff(&dc, &full), rows_diff(&dk, &full), rows_diff(&de, &full));
        println!("{arch:?}: KV decode composite vs {backend}: {d:.1e}; vs f64 forward: {dcf:.1e} / {dkf:.1e}; f64 decode vs forward {def:.1e}");
        assert!(d <= 1e-5, "{arch:?}: decoded logits differ by {d}");
        assert!(dcf <= 1e-5 && dkf <= 1e-5, "{arch:?}: f32 decode vs f64 forward: {dcf} / {dkf}");
        assert!(def <= 1e-10, "{arch:?}: f64 decode differs from the f64 forward by {def}");
    }
}

#[test]
fn rollout_on_composite_matches_the_default_backend() {
    let cfg = config(Arch::Qwen2);
    let vm = varmap(&weights(&cfg, 6), DType::F32);
    let comp = model(&cfg, &vm, DType::F32, Backend::Composite);
    let hand = model(&cfg, &vm, DType::F32, Backend::Auto);
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| p.to_vec()).collect();
    let rc = RolloutConfig { group_size: 3, max_new_tokens: 12, eos_ids: vec![7], seed: 9, ..Default::default() };
    let (a, b) = (rollout(&comp, &prompts, &rc, None).unwrap(), rollout(&hand, &prompts, &rc, None).unwrap());
    let mut worst = 0.0f32;
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert_eq!((x.prompt_index, x.sample_index), (y.prompt_index, y.sample_index));
        assert_eq!(x.completion_ids, y.completion_ids, "sample {} of prompt {}", x.sample_index, x.prompt_index);
        assert_eq!(x.finish_reason, y.finish_reason);
        for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
            worst = worst.max((p - q).abs());
        }
    }
    println!("rollout composite vs cpu-handwritten: identical tokens, max |Δlogprob| {worst:.1e}");
    assert!(worst <= 1e-5, "rollout log-probs differ by {worst}");
}

// ---------------------------------------------------------------------------------------------
// Half precision on the composite path

#[test]
fn half_precision_composite_forwards_decodes_trains_and_rolls_out() {
    let cfg = config(Arch::Qwen2);
    let w = weights(&cfg, 8);
    let vm32 = varmap(&w, DType::F32);
    let f32_model = model(&cfg, &vm32, DType::F32, Backend::Composite);
    let bt = batch(cfg.vocab_size, 9);
    let (want, want_grads) = logits_and_grads(&f32_model, &vm32, &bt);
    let scale = max_abs(&want);
    let full_f32 = forward_all(&f32_model);
    for dtype in [DType::BF16, DType::F16] {
        let vm = varmap(&w, dtype);
        let m = model(&cfg, &vm, dtype, Backend::Auto);
        assert_eq!(m.plan().backend(), Backend::Composite, "auto must pick composite for {dtype:?}");
        assert_eq!(m.detached().unwrap().kernels(), Kernels::Composite);

        // The training forward and a backward through the whole model.
        let (logits, grads) = logits_and_grads(&m, &vm, &bt);
        assert_eq!(logits.dtype(), dtype);
        let d = real_diff(&logits, &want, &bt.real);
        assert!(d < 0.1 * scale, "{dtype:?}: logits differ from f32 by {d} (scale {scale})");
        for (name, g) in &grads {
            assert_eq!(g.dtype(), dtype, "{name}");
            assert!(to_f64(g).iter().all(|x| x.is_finite()), "{dtype:?}: gradient of {name} is not finite");
        }
        let (dg, worst) = grads_diff(&grads, &want_grads);
        assert!(dg < 0.15, "{dtype:?}: gradient of {worst} differs from f32 by {dg} (relative)");

        let decoded = decode_all(&m.detached().unwrap());
        let d_dec = rows_diff(&decoded, &full_f32);
        println!(
            "{dtype:?}: max |Δlogit| vs f32 {d:.3} (forward), {d_dec:.3} (KV decode) of scale {scale:.2}; \
             relative |Δgrad| {dg:.3} ({worst})"
        );
        assert!(d_dec < 0.1 * scale, "{dtype:?}: decoded logits differ from f32 by {d_dec}");

        let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| p.to_vec()).collect();
        let rc = RolloutConfig { group_size: 2, max_new_tokens: 10, eos_ids: vec![7], seed: 1, ..Default::default() };
        let out = rollout(&m, &prompts, &rc, None).unwrap();
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        for s in out.iter().flatten() {
            assert!(!s.completion_ids.is_empty() && s.completion_ids.len() <= 10);
            assert_eq!(s.logprobs.len(), s.completion_ids.len());
            assert!(s.completion_ids.iter().all(|&t| (t as usize) < cfg.vocab_size));
            assert!(s.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0), "{dtype:?}: {:?}", s.logprobs);
        }
    }
}
