//! Logits parity with `transformers` on random-init tiny Qwen2, Qwen3 and Llama checkpoints
//! (`tests/fixtures/tiny-*`, made by `scripts/make_model_fixtures.py`): the training forward over
//! a left-padded batch, a padded prefill through the KV-cache path, and token-by-token decoding.
//! Only real (non-padding) positions are compared; the bound is 1e-4 in f32.

mod common;

use aha_model::io::load_hf_dir;
use aha_model::{KvCache, LoadedModel};
use candle_core::{DType, Device, IndexOp, Tensor};

const TOL: f32 = 1e-4;

struct Reference {
    ids: Tensor,
    mask: Tensor,
    pos: Tensor,
    logits: Tensor,
}

fn load(arch: &str) -> (LoadedModel, Reference) {
    let dir = common::fixtures().join(format!("tiny-{arch}"));
    let model = load_hf_dir(&dir, &aha_model::ExecRequest::default()).unwrap();
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let u32_of = |k: &str| r[k].to_dtype(DType::U32).unwrap();
    let reference = Reference {
        ids: u32_of("input_ids"),
        mask: u32_of("attention_mask"),
        pos: u32_of("position_ids"),
        logits: r["logits"].clone(),
    };
    (model, reference)
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

fn forward_matches(arch: &str) {
    let (m, r) = load(arch);
    let logits = m.model.forward(&r.ids, &r.mask, &r.pos).unwrap();
    let d = masked_max_diff(&logits, &r.logits, &r.mask);
    println!("{arch}: training forward max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "{arch}: forward differs from transformers by {d}");
}

fn padded_prefill_matches(arch: &str) {
    let (m, r) = load(arch);
    let (b, t) = r.ids.dims2().unwrap();
    let mut cache = KvCache::new(&m.config, b, t + 4, DType::F32, &Device::Cpu).unwrap();
    let logits = m.model.decode(&r.ids, &r.mask, &r.pos, &mut cache).unwrap();
    let d = masked_max_diff(&logits, &r.logits, &r.mask);
    println!("{arch}: padded prefill (KV path) max |Δlogit| = {d:.3e}");
    assert!(d <= TOL, "{arch}: padded prefill differs from transformers by {d}");
}

/// Each row alone: prefill its first two real tokens, then decode one token at a time.
fn stepwise_decode_matches(arch: &str) {
    let (m, r) = load(arch);
    let mask = r.mask.to_vec2::<u32>().unwrap();
    let ids = r.ids.to_vec2::<u32>().unwrap();
    let mut worst = 0.0f32;
    for (row, row_mask) in mask.iter().enumerate() {
        let start = row_mask.iter().position(|&x| x == 1).unwrap();
        let real: Vec<u32> = ids[row][start..].to_vec();
        let mut cache = KvCache::new(&m.config, 1, real.len(), DType::F32, &Device::Cpu).unwrap();
        let mut done = 0;
        while done < real.len() {
            let step = if done == 0 { 2.min(real.len()) } else { 1 };
            let chunk = Tensor::new(&real[done..done + step], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let ones = Tensor::ones((1, step), DType::U32, &Device::Cpu).unwrap();
            let pos: Vec<u32> = (done as u32..(done + step) as u32).collect();
            let pos = Tensor::new(pos.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let logits = m.model.decode(&chunk, &ones, &pos, &mut cache).unwrap();
            for k in 0..step {
                let want = r.logits.i((row, start + done + k)).unwrap();
                worst = worst.max(common::max_abs_diff(&logits.i((0, k)).unwrap(), &want));
            }
            done += step;
        }
    }
    println!("{arch}: step-by-step KV decode max |Δlogit| = {worst:.3e}");
    assert!(worst <= TOL, "{arch}: KV-cache decoding differs from transformers by {worst}");
}

#[test]
fn qwen2_forward_matches_transformers() {
    forward_matches("qwen2");
}

#[test]
fn qwen3_forward_matches_transformers() {
    forward_matches("qwen3");
}

#[test]
fn llama_forward_matches_transformers() {
    forward_matches("llama");
}

#[test]
fn qwen2_kv_decode_matches_transformers() {
    padded_prefill_matches("qwen2");
    stepwise_decode_matches("qwen2");
}

#[test]
fn qwen3_kv_decode_matches_transformers() {
    padded_prefill_matches("qwen3");
    stepwise_decode_matches("qwen3");
}

#[test]
fn llama_kv_decode_matches_transformers() {
    padded_prefill_matches("llama");
    stepwise_decode_matches("llama");
}
