//! Logits parity with `transformers` on random-init tiny Qwen2, Qwen3 and Llama checkpoints
//! (`tests/fixtures/tiny-*`, made by `scripts/make_model_fixtures.py`): the full forward over a
//! left-padded batch, a padded prefill through the KV-cache path, token-by-token decoding of each
//! row alone, and of the whole left-padded batch at once. Each runs on three paths: the model as
//! loaded (the `auto` backend's training kernels), its `detached()` view (`Mode::Infer`: the CPU
//! inference kernels of `cpu/infer.rs` and candle's fused RMSNorm), and the `composite` backend
//! (candle's composite ops, the path CUDA and bf16 take). Only real (non-padding) positions are
//! compared; the bound is 1e-4 in f32.

mod common;

use aha_model::io::load_hf_dir;
use aha_model::{Backend, ExecRequest, Kernels, KvCache, LoadedModel, Mode, Transformer};
use candle_core::{DType, Device, IndexOp, Tensor};

const TOL: f32 = 1e-4;

struct Reference {
    ids: Tensor,
    mask: Tensor,
    pos: Tensor,
    logits: Tensor,
}

/// Which of the model's code paths runs.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// The model as loaded with the default request (`auto`: `cpu-handwritten` or
    /// `cpu-autograd`), in `Mode::Train`: the fused differentiable row kernels.
    Train,
    /// Its `detached()` view, `Mode::Infer`: the CPU inference kernels.
    Infer,
    /// Loaded on the `composite` backend.
    Composite,
}

fn load(arch: &str, path: Path) -> (LoadedModel, Transformer, Reference) {
    let dir = common::fixtures().join(format!("tiny-{arch}"));
    let backend = if matches!(path, Path::Composite) { Backend::Composite } else { Backend::Auto };
    let model = load_hf_dir(&dir, &ExecRequest { backend, ..Default::default() }).unwrap();
    let m = match path {
        Path::Infer => model.model.detached().unwrap(),
        _ => model.model.clone(),
    };
    let want = match path {
        Path::Train => (Mode::Train, Kernels::CpuFused),
        Path::Infer => (Mode::Infer, Kernels::CpuInfer),
        Path::Composite => (Mode::Train, Kernels::Composite),
    };
    assert_eq!((m.mode(), m.kernels()), want, "{arch} {path:?}: {}", m.plan().describe());
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let u32_of = |k: &str| r[k].to_dtype(DType::U32).unwrap();
    let reference = Reference {
        ids: u32_of("input_ids"),
        mask: u32_of("attention_mask"),
        pos: u32_of("position_ids"),
        logits: r["logits"].clone(),
    };
    (model, m, reference)
}

/// Max |diff| over the rows' real positions of `[B, T, V]` logits.
fn masked_max_diff(got: &Tensor, want: &Tensor, mask: &Tensor) -> f32 {
    let mask = mask.to_vec2::<u32>().unwrap();
    let mut worst = 0.0f32;
    for (b, row) in mask.iter().enumerate() {
        for (t, &m) in row.iter().enumerate() {
            if m == 1 {
                worst = worst.max(common::max_abs_diff(&got.i((b, t)).unwrap(), &want.i((b, t)).unwrap()));
            }
        }
    }
    worst
}

fn forward_matches(arch: &str, path: Path) {
    let (_, m, r) = load(arch, path);
    let logits = m.forward(&r.ids, &r.mask, &r.pos).unwrap();
    let d = masked_max_diff(&logits, &r.logits, &r.mask);
    println!("{arch} {path:?}: full forward max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "{arch} {path:?}: forward differs from transformers by {d}");
}

fn padded_prefill_matches(arch: &str, path: Path) {
    let (lm, m, r) = load(arch, path);
    let (b, t) = r.ids.dims2().unwrap();
    let mut cache = KvCache::new(&lm.config, b, t + 4, DType::F32, &Device::Cpu).unwrap();
    let logits = m.decode(&r.ids, &r.mask, &r.pos, &mut cache).unwrap();
    let d = masked_max_diff(&logits, &r.logits, &r.mask);
    println!("{arch} {path:?}: padded prefill (KV path) max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "{arch} {path:?}: padded prefill differs from transformers by {d}");
}

/// Each row alone: prefill its first two real tokens, then decode one token at a time.
fn stepwise_decode_matches(arch: &str, path: Path) {
    let (lm, m, r) = load(arch, path);
    let mask = r.mask.to_vec2::<u32>().unwrap();
    let ids = r.ids.to_vec2::<u32>().unwrap();
    let mut worst = 0.0f32;
    for (row, row_mask) in mask.iter().enumerate() {
        let start = row_mask.iter().position(|&x| x == 1).unwrap();
        let real: Vec<u32> = ids[row][start..].to_vec();
        let mut cache = KvCache::new(&lm.config, 1, real.len(), DType::F32, &Device::Cpu).unwrap();
        let mut done = 0;
        while done < real.len() {
            let step = if done == 0 { 2.min(real.len()) } else { 1 };
            let chunk = Tensor::new(&real[done..done + step], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let ones = Tensor::ones((1, step), DType::U32, &Device::Cpu).unwrap();
            let pos: Vec<u32> = (done as u32..(done + step) as u32).collect();
            let pos = Tensor::new(pos.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let logits = m.decode(&chunk, &ones, &pos, &mut cache).unwrap();
            for k in 0..step {
                let want = r.logits.i((row, start + done + k)).unwrap();
                worst = worst.max(common::max_abs_diff(&logits.i((0, k)).unwrap(), &want));
            }
            done += step;
        }
    }
    println!("{arch} {path:?}: step-by-step KV decode max |Δlogit| = {worst:.3e}");
    assert!(worst <= TOL, "{arch} {path:?}: KV-cache decoding differs from transformers by {worst}");
}

/// The whole left-padded batch at once, as a rollout decodes: prefill the first two columns
/// (padding only for the shortest row), then one column per call for every row, padding
/// columns with mask 0, so later tokens attend over a cache with invalid slots.
fn batched_decode_matches(arch: &str, path: Path) {
    let (lm, m, r) = load(arch, path);
    let (b, t) = r.ids.dims2().unwrap();
    let mut cache = KvCache::new(&lm.config, b, t, DType::F32, &Device::Cpu).unwrap();
    let mut got = Vec::new();
    let mut done = 0;
    while done < t {
        let step = if done == 0 { 2 } else { 1 };
        let cols = |x: &Tensor| x.narrow(1, done, step).unwrap().contiguous().unwrap();
        got.push(m.decode(&cols(&r.ids), &cols(&r.mask), &cols(&r.pos), &mut cache).unwrap());
        done += step;
    }
    let logits = Tensor::cat(&got, 1).unwrap();
    let d = masked_max_diff(&logits, &r.logits, &r.mask);
    println!("{arch} {path:?}: batched left-padded KV decode max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "{arch} {path:?}: batched KV-cache decoding differs from transformers by {d}");
}

/// Every comparison on one path.
fn all_match(arch: &str, path: Path) {
    forward_matches(arch, path);
    padded_prefill_matches(arch, path);
    stepwise_decode_matches(arch, path);
    batched_decode_matches(arch, path);
}

#[test]
fn qwen2_forward_matches_transformers() {
    forward_matches("qwen2", Path::Train);
}

#[test]
fn qwen2_kv_decode_matches_transformers() {
    padded_prefill_matches("qwen2", Path::Train);
    stepwise_decode_matches("qwen2", Path::Train);
    batched_decode_matches("qwen2", Path::Train);
}

#[test]
fn qwen2_inference_path_matches_transformers() {
    all_match("qwen2", Path::Infer);
}

#[test]
fn qwen2_composite_matches_transformers() {
    all_match("qwen2", Path::Composite);
}

#[test]
fn qwen3_forward_matches_transformers() {
    forward_matches("qwen3", Path::Train);
}

#[test]
fn qwen3_kv_decode_matches_transformers() {
    padded_prefill_matches("qwen3", Path::Train);
    stepwise_decode_matches("qwen3", Path::Train);
    batched_decode_matches("qwen3", Path::Train);
}

#[test]
fn qwen3_inference_path_matches_transformers() {
    all_match("qwen3", Path::Infer);
}

#[test]
fn qwen3_composite_matches_transformers() {
    all_match("qwen3", Path::Composite);
}

#[test]
fn llama_forward_matches_transformers() {
    forward_matches("llama", Path::Train);
}

#[test]
fn llama_kv_decode_matches_transformers() {
    padded_prefill_matches("llama", Path::Train);
    stepwise_decode_matches("llama", Path::Train);
    batched_decode_matches("llama", Path::Train);
}

#[test]
fn llama_inference_path_matches_transformers() {
    all_match("llama", Path::Infer);
}

#[test]
fn llama_composite_matches_transformers() {
    all_match("llama", Path::Composite);
}
