//! GGUF files (llama.cpp): metadata → config, quantised tensors → trainable f32 variables with
//! Hugging Face names, and the tokenizer from the metadata.
//!
//! llama.cpp's converter permutes the rows of `q_proj`/`k_proj` for the `llama` architecture
//! (it rotates interleaved pairs where Hugging Face rotates halves); [`unpermute_qk`] undoes
//! it, as `transformers`' own GGUF loader does. Qwen2/Qwen3 files are not permuted.
//!
//! Tokenizer: a `tokenizer.json` beside the file (or in the given directory) wins; otherwise the
//! tokenizer is rebuilt from `tokenizer.ggml.*` metadata (byte-level BPE, `gpt2` model only) with
//! candle's builder, and the chat template comes from `tokenizer.chat_template`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::Tensor;
use serde_json::{json, Map, Value as Json};

use super::{build_from_source, LoadedModel, WeightSource};
use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::exec::ExecRequest;
use crate::tokenizer::{read_json_object_if_exists, AhaTokenizer, GENERATION_CONFIG_JSON, TOKENIZER_JSON};

/// Loads a GGUF file (dequantised to `dtype`); see the module docs for the tokenizer.
pub fn load_gguf(file: &Path, tokenizer_dir: Option<&Path>, exec: &ExecRequest) -> Result<LoadedModel> {
    let (content, mut reader) = open(file)?;
    let config = config_from_content(&content, file)?;
    let tokenizer = gguf_tokenizer(&content, file, tokenizer_dir)?;
    let mut source = GgufSource { file: file.to_path_buf(), content: &content, reader: &mut reader, config: &config };
    let (varmap, model) = build_from_source(&config, &mut source, exec)?;
    Ok(LoadedModel { config, varmap, model, tokenizer, source: file.to_path_buf() })
}

/// Reads only the config of a GGUF file.
pub fn read_gguf_config(file: &Path) -> Result<ModelConfig> {
    let (content, _) = open(file)?;
    config_from_content(&content, file)
}

fn open(file: &Path) -> Result<(Content, BufReader<File>)> {
    let f = File::open(file).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => {
            ModelError::MissingFile { path: file.to_path_buf(), hint: "GGUF model file".into() }
        }
        _ => ModelError::Io { path: file.to_path_buf(), source },
    })?;
    let mut reader = BufReader::new(f);
    let content = Content::read(&mut reader).map_err(|e| ModelError::WeightsFile {
        path: file.to_path_buf(),
        reason: describe_read_error(file, &e.to_string()),
    })?;
    Ok((content, reader))
}

/// Adds the offending tensor's name and type to candle's "unknown dtype" error.
fn describe_read_error(file: &Path, msg: &str) -> String {
    if msg.contains("unknown dtype") {
        if let Ok(Some((tensor, ty))) = super::gguf_scan::first_unsupported_tensor(file) {
            return format!(
                "tensor `{tensor}` has GGUF type {ty} ({}), which aha cannot dequantise (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q8_K)",
                super::gguf_scan::ggml_type_name(ty)
            );
        }
    }
    format!("not a readable GGUF file: {msg}")
}

/// An integer metadata value of any width.
fn meta_u64(content: &Content, key: &str) -> Option<u64> {
    match content.metadata.get(key)? {
        Value::U8(v) => Some(u64::from(*v)),
        Value::U16(v) => Some(u64::from(*v)),
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn meta_f64(content: &Content, key: &str) -> Option<f64> {
    match content.metadata.get(key)? {
        Value::F32(v) => Some(f64::from(*v)),
        Value::F64(v) => Some(*v),
        _ => meta_u64(content, key).map(|v| v as f64),
    }
}

fn meta_str<'a>(content: &'a Content, key: &str) -> Option<&'a str> {
    content.metadata.get(key).and_then(|v| v.to_string().ok()).map(String::as_str)
}

/// Builds the Hugging Face config from `general.architecture` and `<arch>.*` metadata, then
/// validates it like a `config.json`.
fn config_from_content(content: &Content, file: &Path) -> Result<ModelConfig> {
    let arch_name = meta_str(content, "general.architecture").unwrap_or("(missing)");
    let model_type = match arch_name {
        "llama" | "qwen2" | "qwen3" => arch_name,
        other => {
            return Err(ModelError::Config {
                path: file.to_path_buf(),
                field: "general.architecture".into(),
                reason: format!("unsupported GGUF architecture `{other}`; aha supports llama, qwen2, qwen3"),
            })
        }
    };
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(ModelError::Tensor {
            path: file.to_path_buf(),
            tensor: "rope_freqs.weight".into(),
            reason:
                "Llama-3.1 RoPE scaling stored as a tensor is not supported from GGUF; load the Hugging Face directory"
                    .into(),
        });
    }
    let need = |suffix: &str| {
        let key = format!("{arch_name}.{suffix}");
        meta_u64(content, &key).ok_or_else(|| ModelError::Config {
            path: file.to_path_buf(),
            field: key,
            reason: "missing or not an integer".into(),
        })
    };
    let heads = need("attention.head_count")?;
    let hidden = need("embedding_length")?;
    let vocab = match content.tensor_infos.get("token_embd.weight") {
        Some(info) => info.shape.dims()[0] as u64,
        None => {
            return Err(ModelError::Tensor {
                path: file.to_path_buf(),
                tensor: "model.embed_tokens.weight (token_embd.weight)".into(),
                reason: "missing".into(),
            })
        }
    };
    let mut raw = json!({
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": meta_u64(content, &format!("{arch_name}.attention.head_count_kv")).unwrap_or(heads),
        "head_dim": meta_u64(content, &format!("{arch_name}.attention.key_length")).unwrap_or(hidden / heads.max(1)),
        "rms_norm_eps": meta_f64(content, &format!("{arch_name}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
        "rope_theta": meta_f64(content, &format!("{arch_name}.rope.freq_base")).unwrap_or(10_000.0),
        "max_position_embeddings": meta_u64(content, &format!("{arch_name}.context_length")).unwrap_or(4096),
        "tie_word_embeddings": !content.tensor_infos.contains_key("output.weight"),
        "attention_bias": content.tensor_infos.contains_key("blk.0.attn_q.bias"),
    });
    for (hf, key) in [("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")]
    {
        if let Some(id) = meta_u64(content, key) {
            raw[hf] = json!(id);
        }
    }
    ModelConfig::from_hf_json_str(&raw.to_string(), file)
}

/// The GGUF name of a Hugging Face parameter name (llama.cpp's convention).
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Undoes llama.cpp's row permutation of a `[heads·head_dim, in]` q/k weight:
/// GGUF rows are `(head, pair, 2)`, Hugging Face rows are `(head, 2, pair)`.
pub fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let half = out / heads / 2;
    // [heads, half, 2, in] → [heads, 2, half, in] → [out, in]
    Ok(w.reshape((heads, half, 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))?)
}

/// Tensors of an open GGUF file, dequantised on demand.
struct GgufSource<'a> {
    file: PathBuf,
    content: &'a Content,
    reader: &'a mut BufReader<File>,
    config: &'a ModelConfig,
}

impl WeightSource for GgufSource<'_> {
    fn tensor(&mut self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let err = |reason: String| ModelError::Tensor { path: self.file.clone(), tensor: name.to_string(), reason };
        let gname = hf_to_gguf_name(name).ok_or_else(|| err("has no GGUF equivalent".into()))?;
        if !self.content.tensor_infos.contains_key(&gname) {
            return Err(err(format!("missing (GGUF name `{gname}`, expected shape {expected:?})")));
        }
        let q = self
            .content
            .tensor(self.reader, &gname, &super::host())
            .map_err(|e| err(format!("cannot read GGUF tensor `{gname}`: {e}")))?;
        let t = q
            .dequantize(&super::host())
            .map_err(|e| err(format!("cannot dequantise `{gname}` ({:?}): {e}", q.dtype())))?;
        // Norm weights and biases are 1-D; everything else is [out, in] already.
        let t = if t.dims() != expected && t.elem_count() == expected.iter().product::<usize>() && expected.len() == 1 {
            t.reshape(expected)?
        } else {
            t
        };
        if self.config.arch == Arch::Llama && t.rank() == 2 {
            if name.ends_with("self_attn.q_proj.weight") {
                return unpermute_qk(&t, self.config.num_attention_heads);
            }
            if name.ends_with("self_attn.k_proj.weight") {
                return unpermute_qk(&t, self.config.num_key_value_heads);
            }
        }
        Ok(t)
    }

    fn file_of(&self, _name: &str) -> PathBuf {
        self.file.clone()
    }
}

/// The tokenizer: `tokenizer.json` from `tokenizer_dir` or beside the file, else from metadata.
fn gguf_tokenizer(content: &Content, file: &Path, tokenizer_dir: Option<&Path>) -> Result<AhaTokenizer> {
    let beside = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = tokenizer_dir.map(Path::to_path_buf).unwrap_or(beside);
    if dir.join(TOKENIZER_JSON).is_file() {
        return AhaTokenizer::from_dir(&dir);
    }
    if let Some(explicit) = tokenizer_dir {
        return Err(ModelError::MissingFile {
            path: explicit.join(TOKENIZER_JSON),
            hint: "tokenizer for the GGUF model".into(),
        });
    }
    let mut inner = tokenizers::Tokenizer::from_gguf(content).map_err(|e| ModelError::Tokenizer {
        path: file.to_path_buf(),
        reason: format!("cannot build a tokenizer from GGUF metadata ({e}); put a tokenizer.json beside the file"),
    })?;
    fix_pre_tokenizer(content, &mut inner);
    let json_text = inner
        .to_string(false)
        .map_err(|e| ModelError::Tokenizer { path: file.to_path_buf(), reason: e.to_string() })?;
    let (config, generation) = tokenizer_config_from_metadata(content, &inner);
    let generation = match read_json_object_if_exists(&dir.join(GENERATION_CONFIG_JSON))? {
        Some(g) => g,
        None => generation,
    };
    let template = meta_str(content, "tokenizer.chat_template")
        .map(|t| (t.to_string(), format!("{}: tokenizer.chat_template", file.display())));
    AhaTokenizer::from_tokenizer(inner, json_text, file, config, &generation, template)
}

/// candle's builder falls back to GPT-2's pre-tokenizer, which adds a prefix space, for
/// `tokenizer.ggml.pre` values it does not know. Hugging Face's byte-level tokenizers add none
/// (`tokenizer.ggml.add_space_prefix`, default false), and SmolLM (`smollm`) also splits digits
/// one by one, as its `tokenizer.json` does.
fn fix_pre_tokenizer(content: &Content, tok: &mut tokenizers::Tokenizer) {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::PreTokenizerWrapper;
    let pre = meta_str(content, "tokenizer.ggml.pre").unwrap_or("gpt2");
    if matches!(pre, "qwen2" | "llama3" | "smaug-bpe" | "lfm2") {
        return;
    }
    let prefix =
        content.metadata.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    let byte_level: PreTokenizerWrapper = ByteLevel::new(prefix, true, true).into();
    let wrapper: PreTokenizerWrapper =
        if pre == "smollm" { Sequence::new(vec![Digits::new(true).into(), byte_level]).into() } else { byte_level };
    tok.with_pre_tokenizer(Some(wrapper));
}

/// `tokenizer_config.json` and `generation_config.json` equivalents from `tokenizer.ggml.*`.
fn tokenizer_config_from_metadata(
    content: &Content,
    tok: &tokenizers::Tokenizer,
) -> (Map<String, Json>, Map<String, Json>) {
    let mut config = Map::new();
    let mut generation = Map::new();
    for (name, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ] {
        let Some(id) = meta_u64(content, key) else {
            continue;
        };
        if let Some(t) = tok.id_to_token(id as u32) {
            config.insert(name.into(), Json::String(t));
        }
        if name == "eos_token" {
            generation.insert("eos_token_id".into(), json!(id));
        }
    }
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    (config, generation)
}
