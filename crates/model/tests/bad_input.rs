//! Bad input gets a clear error naming the file and the tensor or field: missing files, an
//! unknown architecture, a wrong shape, a missing tensor, truncated or corrupt safetensors, and
//! GGUF files of an unsupported tensor type or architecture.

mod common;

use std::path::{Path, PathBuf};

use aha_model::{load_model, ModelSpec};
use candle_core::Device;

/// A copy of the tiny Qwen2 fixture in a temp dir, to damage.
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    std::fs::create_dir(&dst).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(common::fixtures().join("tiny-qwen2").join(f), dst.join(f)).unwrap();
    }
    (tmp, dst)
}

fn load_err(path: &Path) -> String {
    let spec = ModelSpec::parse(path.to_str().unwrap());
    let e = load_model(&spec, &aha_model::ExecRequest::default()).expect_err("loading should fail");
    let s = e.to_string();
    println!("{s}");
    s
}

fn edit_config(dir: &Path, f: impl Fn(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn missing_files_are_named() {
    let (_tmp, dir) = copy_fixture();
    let nowhere = dir.join("does-not-exist");
    assert!(load_err(&nowhere).contains("does-not-exist"));
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("tokenizer.json") && e.contains("not found"), "{e}");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("not found"), "{e}");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("not found"), "{e}");
    let e = load_err(&dir.join("missing.gguf"));
    assert!(e.contains("missing.gguf") && e.contains("not found"), "{e}");
}

#[test]
fn unknown_architecture_names_file_and_field() {
    let (_tmp, dir) = copy_fixture();
    edit_config(&dir, |v| {
        v["model_type"] = "gpt_neox".into();
        v["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    });
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("model_type") && e.contains("gpt_neox"), "{e}");
}

#[test]
fn wrong_shape_names_file_and_tensor() {
    let (_tmp, dir) = copy_fixture();
    edit_config(&dir, |v| v["intermediate_size"] = 96.into());
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("model.layers.0.mlp.gate_proj.weight"), "{e}");
    assert!(e.contains("[128, 64]") && e.contains("[96, 64]"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = copy_fixture();
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("model.layers.1.self_attn.k_proj.bias").unwrap();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("model.layers.1.self_attn.k_proj.bias") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let (_tmp, dir) = copy_fixture();
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("truncated or corrupt"), "{e}");
}

#[test]
fn corrupt_safetensors_header_is_named() {
    let (_tmp, dir) = copy_fixture();
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[8..40] {
        *b = b'#';
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("truncated or corrupt"), "{e}");
}

/// A minimal GGUF v3: one string metadata entry and one 2-D tensor of ggml type `ty`.
fn tiny_gguf(path: &Path, arch: &str, tensor: &str, ty: u32) {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend_from_slice(&(x.len() as u64).to_le_bytes());
        b.extend_from_slice(x.as_bytes());
    };
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
    s(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    s(&mut b, arch);
    s(&mut b, tensor);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&256u64.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, 4096));
    std::fs::write(path, b).unwrap();
}

#[test]
fn unsupported_gguf_tensor_type_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("iq.gguf");
    tiny_gguf(&path, "llama", "token_embd.weight", 16);
    let e = load_err(&path);
    assert!(e.contains("iq.gguf") && e.contains("token_embd.weight") && e.contains("IQ2_XXS"), "{e}");
}

#[test]
fn unsupported_gguf_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("gpt2.gguf");
    tiny_gguf(&path, "gpt2", "token_embd.weight", 0);
    let e = load_err(&path);
    assert!(e.contains("gpt2.gguf") && e.contains("general.architecture") && e.contains("gpt2"), "{e}");
}
