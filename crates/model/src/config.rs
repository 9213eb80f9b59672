//! Model configuration: the subset of a Hugging Face `config.json` aha's transformer needs.
//!
//! The raw JSON is parsed permissively (unknown fields ignored, HF defaults applied), then
//! validated once into [`ModelConfig`]. Errors name the file and the field.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ModelError, Result};

/// The transformer families aha implements. They differ only in a few switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Qwen2 / Qwen2.5: biases on q/k/v projections.
    Qwen2,
    /// Qwen3: RMSNorm on queries and keys per head, no q/k/v bias.
    Qwen3,
    /// Llama 3 / SmolLM2: optional Llama-3 RoPE frequency scaling.
    Llama,
}

impl Arch {
    /// The `model_type` string Hugging Face uses.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Llama => "llama",
        }
    }

    /// The `architectures[0]` class name Hugging Face uses.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Llama => "LlamaForCausalLM",
        }
    }

    /// Parses a `model_type` string.
    pub fn from_model_type(s: &str) -> Option<Self> {
        match s {
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            "llama" => Some(Arch::Llama),
            _ => None,
        }
    }
}

/// Llama-3 style RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Overall scaling factor for low frequencies.
    pub factor: f64,
    /// Wavelength threshold factor below which frequencies are scaled.
    pub low_freq_factor: f64,
    /// Wavelength threshold factor above which frequencies are kept.
    pub high_freq_factor: f64,
    /// The context length the model was originally trained with.
    pub original_max_position_embeddings: usize,
}

/// A validated model configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Which transformer family.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Residual stream width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Optional Llama-3 RoPE scaling.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (always true for Qwen2).
    pub attention_bias: bool,
    /// Maximum context length.
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (HF allows one or several).
    pub eos_token_ids: Vec<u32>,
}

/// The permissive mirror of `config.json`; every field optional so errors can name what is missing.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    max_position_embeddings: Option<usize>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

impl ModelConfig {
    /// A small grouped-query config of `arch` (2 layers, hidden 32, 4 heads of 8, 2 KV heads, no
    /// bias, tied head, vocabulary 41) for kernel tests and experiments; change fields with
    /// struct-update syntax.
    pub fn small(arch: Arch) -> Self {
        Self {
            arch,
            vocab_size: 41,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            attention_bias: false,
            max_position_embeddings: 64,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    /// Reads and validates a Hugging Face `config.json`.
    pub fn from_hf_json_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        Self::from_hf_json_str(&text, path)
    }

    /// Parses and validates `config.json` text; `origin` names the file in errors.
    pub fn from_hf_json_str(text: &str, origin: &Path) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|source| ModelError::Json { path: origin.to_path_buf(), source })?;
        raw.validate(origin)
    }

    /// Serialises to a `config.json` that `transformers` loads for the same architecture.
    pub fn to_hf_json(&self) -> Value {
        let mut v = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "torch_dtype": "float32",
        });
        self.write_arch_specific(&mut v);
        v
    }

    fn write_arch_specific(&self, v: &mut Value) {
        if let Some(bos) = self.bos_token_id {
            v["bos_token_id"] = json!(bos);
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = json!(one),
            many => v["eos_token_id"] = json!(many),
        }
        if self.arch != Arch::Qwen2 {
            v["attention_bias"] = json!(self.attention_bias);
        }
        if self.arch == Arch::Llama {
            v["mlp_bias"] = json!(false);
        }
        if self.arch == Arch::Qwen2 {
            v["use_sliding_window"] = json!(false);
        }
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
    }

    /// Number of query heads sharing one key/value head.
    pub fn gqa_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Checks internal consistency (used after building a config in code).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad("vocab_size, hidden_size and num_hidden_layers must be positive".into());
        }
        Ok(())
    }
}

impl RawConfig {
    fn validate(self, origin: &Path) -> Result<ModelConfig> {
        let err = |field: &str, reason: &str| ModelError::Config {
            path: origin.to_path_buf(),
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let arch = self.arch(origin)?;
        let need = |v: Option<usize>, f: &str| v.ok_or_else(|| err(f, "missing"));
        let hidden_size = need(self.hidden_size, "hidden_size")?;
        let num_attention_heads = need(self.num_attention_heads, "num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(err("num_attention_heads", "must be positive"));
        }
        let rope_params = self.rope_parameters.as_ref();
        let rope_theta = self
            .rope_theta
            .or_else(|| rope_params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64))
            .unwrap_or(10_000.0);
        let scaling_src = self.rope_scaling.as_ref().or(rope_params);
        let rope_scaling = parse_rope_scaling(scaling_src).map_err(|r| err("rope_scaling", &r))?;
        let cfg = ModelConfig {
            arch,
            vocab_size: need(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: self.head_dim.unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: arch == Arch::Qwen2 || self.attention_bias.unwrap_or(false),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            bos_token_id: token_ids(self.bos_token_id.as_ref()).first().copied(),
            eos_token_ids: token_ids(self.eos_token_id.as_ref()),
        };
        cfg.check().map_err(|e| err("num_key_value_heads/head_dim", &e.to_string()))?;
        Ok(cfg)
    }

    fn arch(&self, origin: &Path) -> Result<Arch> {
        let from_class = self
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .and_then(|c| [Arch::Qwen2, Arch::Qwen3, Arch::Llama].into_iter().find(|a| a.hf_class() == c));
        let from_type = self.model_type.as_deref().and_then(Arch::from_model_type);
        from_type.or(from_class).ok_or_else(|| ModelError::Config {
            path: origin.to_path_buf(),
            field: "model_type".into(),
            reason: format!(
                "unsupported architecture {:?} (architectures {:?}); aha supports qwen2, qwen3, llama",
                self.model_type, self.architectures
            ),
        })
    }
}

fn parse_rope_scaling(v: Option<&Value>) -> std::result::Result<Option<Llama3RopeScaling>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = |k: &str| v.get(k).and_then(Value::as_f64).ok_or(format!("llama3 scaling needs `{k}`"));
            Ok(Some(Llama3RopeScaling {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
            }))
        }
        other => Err(format!("rope_type `{other}` is not supported (default, llama3 are)")),
    }
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qwen2_and_defaults_head_dim() {
        let j = r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"eos_token_id":[3,4]}"#;
        let c = ModelConfig::from_hf_json_str(j, Path::new("config.json")).unwrap();
        assert_eq!(c.arch, Arch::Qwen2);
        assert_eq!(c.head_dim, 4);
        assert!(c.attention_bias);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
    }

    #[test]
    fn unknown_architecture_names_file_and_field() {
        let j = r#"{"model_type":"gpt2","vocab_size":10}"#;
        let e = ModelConfig::from_hf_json_str(j, Path::new("/m/config.json")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("/m/config.json") && s.contains("model_type") && s.contains("gpt2"), "{s}");
    }

    #[test]
    fn missing_field_is_named() {
        let j =
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2}"#;
        let e = ModelConfig::from_hf_json_str(j, Path::new("c.json")).unwrap_err();
        assert!(e.to_string().contains("intermediate_size"), "{e}");
    }

    #[test]
    fn round_trips_through_hf_json() {
        let j = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;
        let c = ModelConfig::from_hf_json_str(j, Path::new("c")).unwrap();
        let back = ModelConfig::from_hf_json_str(&c.to_hf_json().to_string(), Path::new("c")).unwrap();
        assert_eq!(c, back);
    }
}
