//! Loading and saving models: Hugging Face directories, GGUF files, repo ids from the local
//! Hugging Face cache (downloaded into it when missing, with the `hub-download` feature), and
//! `save_pretrained`.
//!
//! Every loader ends the same way ([`build_from_source`]): for each parameter the transformer
//! declares ([`Transformer::parameter_specs`]) the source yields a tensor, its shape is checked
//! against the config, it becomes a trainable `Var` in a fresh `VarMap`, and the transformer is
//! built from that map. Errors name the file and the tensor or field.

mod adapter;
mod gguf;
mod gguf_scan;
mod hf;
mod hub;
#[cfg(feature = "hub-download")]
mod hub_download;
mod save;
mod seq_cls;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::exec::{ExecPlan, ExecRequest};
use crate::tokenizer::AhaTokenizer;
use crate::transformer::Transformer;

pub use adapter::{adapter_base, is_adapter_dir, read_adapter, save_adapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
pub use gguf::{hf_to_gguf_name, load_gguf, read_gguf_config, unpermute_qk};
pub use hf::load_hf_dir;
pub use hub::{resolve_hub_repo, resolve_hub_repo_in, resolve_hub_repo_with, HubOptions, DEFAULT_HF_ENDPOINT};
pub use save::{save_parts, save_parts_with, save_pretrained};
pub use seq_cls::{
    load_sequence_classifier, pooled_scores, save_sequence_classifier, seq_cls_class, SequenceClassifier, NUM_LABELS,
    SCORE_WEIGHT,
};

/// Where a model comes from, as a user names it on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A Hugging Face model directory (config.json, safetensors, tokenizer files).
    HfDir(PathBuf),
    /// A GGUF file; the tokenizer comes from its metadata unless `tokenizer_dir` holds a
    /// `tokenizer.json` (a `tokenizer.json` beside the file is used automatically).
    Gguf {
        /// The `.gguf` file.
        file: PathBuf,
        /// A directory with `tokenizer.json` (+ `tokenizer_config.json`) to use instead.
        tokenizer_dir: Option<PathBuf>,
    },
    /// A Hugging Face repo id (`org/name`), resolved from the local Hugging Face cache and
    /// downloaded into it when missing (see [`resolve_hub_repo`]).
    HubRepo {
        /// `org/name`.
        repo_id: String,
        /// Branch, tag or commit (default `main`).
        revision: Option<String>,
    },
}

impl ModelSpec {
    /// Interprets a user string: an existing directory or `.gguf` file is a path; otherwise
    /// `org/name[@revision]` that is not an existing path is a hub repo id; anything else is
    /// taken as a directory (and loading will say which file is missing).
    pub fn parse(s: &str) -> Self {
        let path = Path::new(s);
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return Self::Gguf { file: path.to_path_buf(), tokenizer_dir: None };
        }
        if path.exists() || !looks_like_repo_id(s) {
            return Self::HfDir(path.to_path_buf());
        }
        match s.split_once('@') {
            Some((id, rev)) => Self::HubRepo { repo_id: id.to_string(), revision: Some(rev.to_string()) },
            None => Self::HubRepo { repo_id: s.to_string(), revision: None },
        }
    }
}

impl FromStr for ModelSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self::parse(s))
    }
}

/// `org/name` with no leading `.`/`/` and exactly one slash.
fn looks_like_repo_id(s: &str) -> bool {
    let id = s.split('@').next().unwrap_or(s);
    let mut parts = id.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(org) && ok(name)
}

/// A model ready to train or sample: its config, trainable variables, the transformer built on
/// them, and its tokenizer.
pub struct LoadedModel {
    /// The validated configuration.
    pub config: ModelConfig,
    /// The trainable variables, by Hugging Face name (what an optimiser steps).
    pub varmap: VarMap,
    /// The transformer whose parameters are the variables of `varmap`.
    pub model: Transformer,
    /// The tokenizer with its chat template and special ids.
    pub tokenizer: AhaTokenizer,
    /// Where the weights were read from.
    pub source: PathBuf,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("config", &self.config)
            .field("source", &self.source)
            .field("vocab_size", &self.tokenizer.vocab_size())
            .finish_non_exhaustive()
    }
}

/// Loads a model from any [`ModelSpec`] onto the requested device, with parameters in the
/// requested dtype (GGUF tensors are dequantised) and the execution plan decided for it
/// ([`crate::exec::ExecPlan::decide`], before any weight is read).
///
/// A PEFT adapter directory (with `adapter_config.json` and no `config.json`) loads its
/// `base_model_name_or_path` with the adapter on top, as `peft`'s `AutoPeftModel` does.
pub fn load_model(spec: &ModelSpec, exec: &ExecRequest) -> Result<LoadedModel> {
    match spec {
        ModelSpec::HfDir(dir) if is_adapter_dir(dir) && !dir.join(hf::CONFIG_JSON).is_file() => {
            let base = adapter_base(dir)?.ok_or_else(|| ModelError::Config {
                path: dir.join(ADAPTER_CONFIG),
                field: "base_model_name_or_path".into(),
                reason: "is empty: pass the base model with --model and this directory with --adapter".into(),
            })?;
            load_with_adapter(&ModelSpec::parse(&base), Some(dir), exec)
        }
        ModelSpec::HfDir(dir) => load_hf_dir(dir, exec),
        ModelSpec::Gguf { file, tokenizer_dir } => load_gguf(file, tokenizer_dir.as_deref(), exec),
        ModelSpec::HubRepo { repo_id, revision } => {
            let dir = resolve_hub_repo(repo_id, revision.as_deref())?;
            load_hf_dir(&dir, exec)
        }
    }
}

/// Loads `spec` and, when given, a PEFT adapter directory on top of it (`--adapter`).
pub fn load_with_adapter(spec: &ModelSpec, adapter: Option<&Path>, exec: &ExecRequest) -> Result<LoadedModel> {
    let mut lm = load_model(spec, exec)?;
    if let Some(dir) = adapter {
        lm.load_adapter(dir)?;
    }
    Ok(lm)
}

/// Where weight sources put what they read (files are read, GGUF blocks dequantised, fresh
/// weights drawn in host memory); [`build_from_source`] then moves each tensor to the plan's
/// device.
pub(crate) fn host() -> candle_core::Device {
    candle_core::Device::Cpu
}

/// Yields the tensor for one Hugging Face parameter name.
pub(crate) trait WeightSource {
    /// The tensor named `name` (any float dtype, any device); `expected` is the shape the config
    /// implies, for sources that must reshape (GGUF).
    fn tensor(&mut self, name: &str, expected: &[usize]) -> Result<Tensor>;
    /// The file to name in an error about `name`.
    fn file_of(&self, name: &str) -> PathBuf;
}

/// Builds trainable variables and the transformer from a weight source, checking every shape;
/// the plan is decided first, so an unusable device or backend fails before any weight is read.
pub(crate) fn build_from_source(
    cfg: &ModelConfig,
    source: &mut dyn WeightSource,
    exec: &ExecRequest,
) -> Result<(VarMap, Transformer)> {
    let plan = ExecPlan::for_request(exec, cfg.arch)?;
    let (device, dtype) = (plan.device().clone(), plan.dtype());
    let varmap = VarMap::new();
    {
        let mut data =
            varmap.data().lock().map_err(|_| ModelError::InvalidConfig("variable map lock poisoned".into()))?;
        for spec in Transformer::parameter_specs(cfg) {
            let t = source.tensor(&spec.name, &spec.shape)?;
            if t.dims() != spec.shape.as_slice() {
                return Err(ModelError::Tensor {
                    path: source.file_of(&spec.name),
                    tensor: spec.name.clone(),
                    reason: format!("shape {:?}, but config.json implies {:?}", t.dims(), spec.shape),
                });
            }
            let t = t.to_dtype(dtype)?.to_device(&device)?;
            data.insert(spec.name, Var::from_tensor(&t)?);
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, dtype, &device);
    let model = Transformer::with_plan(cfg, vb, plan)?;
    Ok((varmap, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            ModelSpec::parse("HuggingFaceTB/SmolLM2-135M-Instruct"),
            ModelSpec::HubRepo { repo_id: "HuggingFaceTB/SmolLM2-135M-Instruct".into(), revision: None }
        );
        assert!(matches!(ModelSpec::parse("a/b@v1"), ModelSpec::HubRepo { revision: Some(r), .. } if r == "v1"));
        assert!(matches!(ModelSpec::parse("/x/model.Q4_1.gguf"), ModelSpec::Gguf { .. }));
        assert!(matches!(ModelSpec::parse("./runs/ckpt"), ModelSpec::HfDir(_)));
        assert!(matches!(ModelSpec::parse("/abs/dir"), ModelSpec::HfDir(_)));
    }
}
