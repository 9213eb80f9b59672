//! `save_pretrained` round trip inside aha: load → save → load gives identical parameters,
//! logits, config and tokenizer files; saving over an existing checkpoint replaces it whole.
//! (`scripts/roundtrip_check.sh` checks that `transformers` loads the saved directory with
//! identical logits.)

mod common;

use aha_model::io::load_hf_dir;
use candle_core::{DType, Device, Tensor};

fn logits(m: &aha_model::LoadedModel) -> Tensor {
    let ids = Tensor::new(&[[1u32, 2, 3, 258, 257]], &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 5), DType::U32, &Device::Cpu).unwrap();
    let pos = Tensor::new(&[[0u32, 1, 2, 3, 4]], &Device::Cpu).unwrap();
    m.model.forward(&ids, &mask, &pos).unwrap()
}

#[test]
fn save_then_load_is_identical() {
    for arch in ["qwen2", "qwen3", "llama"] {
        let src = common::fixtures().join(format!("tiny-{arch}"));
        let a = load_hf_dir(&src, &aha_model::ExecRequest::default()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ckpt");
        a.save_pretrained(&out).unwrap();
        let b = load_hf_dir(&out, &aha_model::ExecRequest::default()).unwrap();
        assert_eq!(a.config, b.config, "{arch}");
        assert_eq!(common::max_abs_diff(&logits(&a), &logits(&b)), 0.0, "{arch}");
        let tok_a = std::fs::read(src.join("tokenizer.json")).unwrap();
        let tok_b = std::fs::read(out.join("tokenizer.json")).unwrap();
        assert_eq!(tok_a, tok_b, "{arch}: tokenizer.json not preserved byte for byte");
        assert_eq!(a.tokenizer.chat_template().unwrap().source(), b.tokenizer.chat_template().unwrap().source());
        assert_eq!(b.tokenizer.eos_token_ids(), a.tokenizer.eos_token_ids());
        // Saving again over the same directory replaces it and leaves no temporary siblings.
        b.save_pretrained(&out).unwrap();
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let src = common::fixtures().join("tiny-qwen2");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let all = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<_> = all.keys().cloned().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        let shard: std::collections::HashMap<_, _> = part.iter().map(|n| (n.clone(), all[n].clone())).collect();
        candle_core::safetensors::save(&shard, dir.join(file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let a = load_hf_dir(&src, &aha_model::ExecRequest::default()).unwrap();
    let b = load_hf_dir(dir, &aha_model::ExecRequest::default()).unwrap();
    assert_eq!(common::max_abs_diff(&logits(&a), &logits(&b)), 0.0);
}
