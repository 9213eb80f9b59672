//! Tiny models from nothing (`aha init`): a seeded random-init transformer and an offline
//! byte-level tokenizer, saved as a Hugging Face directory. The demo and the tests use these;
//! no download is involved.
//!
//! The tokenizer is byte-level BPE with no merges: token id `b` is byte `b` (GPT-2's byte →
//! unicode alphabet), followed by the special tokens in [`TINY_SPECIAL_TOKENS`], each a single
//! token. `<|endoftext|>`, `<|im_start|>` and `<|im_end|>` are special (dropped by
//! `decode(skip_special_tokens)`); the reasoning tags are added but not special, so decoded
//! completions keep them for the format reward. The chat template is ChatML.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use crate::chat_template::CHATML_TEMPLATE;
use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::exec::ExecRequest;
use crate::io::{build_from_source, save_pretrained, LoadedModel, WeightSource};
use crate::tokenizer::AhaTokenizer;
use crate::transformer::{ParamInit, Transformer};

/// The tiny tokenizer's added tokens, in id order from 256; the bool says "special".
pub const TINY_SPECIAL_TOKENS: [(&str, bool); 7] = [
    ("<|endoftext|>", true),
    ("<|im_start|>", true),
    ("<|im_end|>", true),
    ("<think>", false),
    ("</think>", false),
    ("<answer>", false),
    ("</answer>", false),
];

/// The tiny tokenizer's vocabulary size: 256 bytes plus the added tokens.
pub const TINY_VOCAB_SIZE: usize = 256 + TINY_SPECIAL_TOKENS.len();

/// Architecture sizes of a tiny model (vocabulary size is fixed by the tokenizer). As a TOML
/// table (a pipeline recipe's `[init]`), every key is optional and unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TinySpec {
    /// Transformer family (`qwen2`, `qwen3`, `llama`). Default `qwen2`.
    pub arch: Arch,
    /// Residual width. Default 64.
    pub hidden_size: usize,
    /// SwiGLU inner width. Default 192.
    pub intermediate_size: usize,
    /// Blocks. Default 2.
    pub num_hidden_layers: usize,
    /// Query heads. Default 4.
    pub num_attention_heads: usize,
    /// Key/value heads. Default 2.
    pub num_key_value_heads: usize,
    /// Context length. Default 512.
    pub max_position_embeddings: usize,
    /// RoPE base. Default 10 000.
    pub rope_theta: f64,
    /// Share the embedding with the LM head. Default true.
    pub tie_word_embeddings: bool,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            arch: Arch::Qwen2,
            hidden_size: 64,
            intermediate_size: 192,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 512,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
        }
    }
}

impl TinySpec {
    /// The model config this spec describes (EOS: `<|im_end|>`, `<|endoftext|>`).
    pub fn config(&self) -> Result<ModelConfig> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::InvalidConfig(format!(
                "hidden_size {} must be a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        let cfg = ModelConfig {
            arch: self.arch,
            vocab_size: TINY_VOCAB_SIZE,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.hidden_size / self.num_attention_heads,
            rms_norm_eps: 1e-6,
            rope_theta: self.rope_theta,
            rope_scaling: None,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.arch == Arch::Qwen2,
            max_position_embeddings: self.max_position_embeddings,
            bos_token_id: None,
            eos_token_ids: vec![258, 256],
        };
        cfg.check()?;
        Ok(cfg)
    }
}

/// Creates a tiny random model (seeded, reproducible) with the byte-level tokenizer, saves it
/// to `out_dir` as a Hugging Face directory and returns it loaded on the CPU in f32.
pub fn init_tiny(out_dir: &Path, spec: &TinySpec, seed: u64) -> Result<LoadedModel> {
    init_tiny_on(out_dir, spec, seed, &ExecRequest::default())
}

/// [`init_tiny`] on the device, dtype and backend `exec` asks for (the weights are drawn in f32
/// on the host, then converted).
pub fn init_tiny_on(out_dir: &Path, spec: &TinySpec, seed: u64, exec: &ExecRequest) -> Result<LoadedModel> {
    let config = spec.config()?;
    let mut source = SeededInit::new(&config, seed)?;
    let (varmap, model) = build_from_source(&config, &mut source, exec)?;
    let tokenizer = tiny_tokenizer(spec.max_position_embeddings)?;
    save_pretrained(out_dir, &config, &model, &tokenizer)?;
    Ok(LoadedModel { config, varmap, model, tokenizer, source: out_dir.to_path_buf() })
}

/// The byte-level tokenizer with the tiny special tokens and the ChatML template.
pub fn tiny_tokenizer(model_max_length: usize) -> Result<AhaTokenizer> {
    let json_text = tiny_tokenizer_json().to_string();
    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("bos_token".into(), Json::Null);
    config.insert("eos_token".into(), json!("<|im_end|>"));
    config.insert("pad_token".into(), json!("<|endoftext|>"));
    config.insert("unk_token".into(), Json::Null);
    config.insert("add_bos_token".into(), json!(false));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    config.insert("model_max_length".into(), json!(model_max_length));
    config.insert("chat_template".into(), json!(CHATML_TEMPLATE));
    let mut generation = Map::new();
    generation.insert("eos_token_id".into(), json!([258, 256]));
    AhaTokenizer::from_parts(&json_text, &PathBuf::from("tiny tokenizer.json"), config, &generation, None)
}

/// GPT-2's byte → printable character table (`bytes_to_unicode`).
fn byte_to_char() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(code).unwrap_or('?')
        })
        .collect()
}

/// `tokenizer.json` of the tiny tokenizer.
fn tiny_tokenizer_json() -> Json {
    let vocab: Map<String, Json> =
        byte_to_char().into_iter().enumerate().map(|(i, c)| (c.to_string(), json!(i))).collect();
    let added: Vec<Json> = TINY_SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, (content, special))| {
            json!({"id": 256 + i, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

/// Parameters drawn from a seeded ChaCha8 stream in [`Transformer::parameter_specs`] order.
struct SeededInit {
    tensors: HashMap<String, Tensor>,
}

impl SeededInit {
    fn new(cfg: &ModelConfig, seed: u64) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for spec in Transformer::parameter_specs(cfg) {
            let n: usize = spec.shape.iter().product();
            let data: Vec<f32> = match spec.init {
                ParamInit::Normal(std) => (0..n).map(|_| (normal(&mut rng) * std) as f32).collect(),
                ParamInit::Ones => vec![1.0; n],
                ParamInit::Zeros => vec![0.0; n],
            };
            tensors.insert(spec.name, Tensor::from_vec(data, spec.shape, &crate::io::host())?);
        }
        Ok(Self { tensors })
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl WeightSource for SeededInit {
    fn tensor(&mut self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| ModelError::Tensor {
            path: PathBuf::from("(tiny init)"),
            tensor: name.to_string(),
            reason: format!("not generated (shape {expected:?})"),
        })
    }

    fn file_of(&self, _name: &str) -> PathBuf {
        PathBuf::from("(tiny init)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens_are_ids_and_specials_are_single_tokens() {
        let tok = tiny_tokenizer(512).unwrap();
        assert_eq!(tok.vocab_size(), TINY_VOCAB_SIZE);
        let ids = tok.encode("hé<think>x</think><answer>4</answer><|im_end|>", false).unwrap();
        assert_eq!(ids, vec![104, 0xc3, 0xa9, 259, 120, 260, 261, 52, 262, 258]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hé<think>x</think><answer>4</answer>");
        assert_eq!(tok.eos_token_ids(), &[258, 256]);
        assert_eq!(tok.pad_token_id(), Some(256));
    }

    #[test]
    fn init_is_seeded_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TinySpec { num_hidden_layers: 1, ..Default::default() };
        let a = init_tiny(&dir.path().join("a"), &spec, 7).unwrap();
        let b = init_tiny(&dir.path().join("b"), &spec, 7).unwrap();
        let c = init_tiny(&dir.path().join("c"), &spec, 8).unwrap();
        let w = |m: &LoadedModel| m.model.named_parameters()[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
        let back = crate::io::load_hf_dir(&dir.path().join("a"), &crate::exec::ExecRequest::default()).unwrap();
        assert_eq!(w(&back), w(&a));
        assert_eq!(back.tokenizer.chat_template().unwrap().source(), CHATML_TEMPLATE);
    }
}
