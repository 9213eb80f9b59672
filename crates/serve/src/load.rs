//! Loading the weights `aha serve` starts with, and the weights `/update_weights_from_disk`
//! swaps in: a full Hugging Face model directory, or a PEFT adapter directory applied to the
//! base `--model`. A reload must have the serving model's shape (the running KV caches and the
//! tokenizer depend on it).

use std::path::{Path, PathBuf};

use aha_model::{load_model, load_with_adapter, ExecRequest, LoadedModel, ModelConfig, ModelSpec, Transformer};

/// File that marks a PEFT adapter directory.
const ADAPTER_CONFIG: &str = "adapter_config.json";
/// File that marks a full model directory.
const MODEL_CONFIG: &str = "config.json";

/// Where the serving model comes from.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The base model (`--model`).
    pub spec: ModelSpec,
    /// The adapter applied at start (`--adapter`).
    pub adapter: Option<PathBuf>,
    /// Device, dtype and backend.
    pub exec: ExecRequest,
}

/// The dimensions a reloaded model must share with the serving one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Vocabulary size (embedding rows).
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Head width.
    pub head_dim: usize,
}

impl Shape {
    /// The shape of a configuration.
    pub fn of(c: &ModelConfig) -> Self {
        Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        }
    }
}

/// Loads the model to serve at start (`--model` plus `--adapter`).
pub fn load_initial(source: &ModelSource) -> aha_model::Result<LoadedModel> {
    load_with_adapter(&source.spec, source.adapter.as_deref(), &source.exec)
}

/// Loads the weights at `path` for a swap (a model directory, or an adapter over the base) and
/// checks their shape against `expected`. The error message names the path.
pub fn load_update(source: &ModelSource, path: &Path, expected: &Shape) -> Result<Transformer, String> {
    let lm = read_update(source, path)?;
    let got = Shape::of(&lm.config);
    if got != *expected {
        return Err(format!(
            "{}: the model's shape {got:?} differs from the serving model's {expected:?}",
            path.display()
        ));
    }
    lm.model.detached().map_err(|e| format!("{}: {e}", path.display()))
}

fn read_update(source: &ModelSource, path: &Path) -> Result<LoadedModel, String> {
    let named = |e: aha_model::ModelError| format!("loading {}: {e}", path.display());
    if !path.is_dir() {
        return Err(format!("{}: no such directory", path.display()));
    }
    if path.join(ADAPTER_CONFIG).is_file() {
        return load_with_adapter(&source.spec, Some(path), &source.exec).map_err(named);
    }
    if path.join(MODEL_CONFIG).is_file() {
        return load_model(&ModelSpec::HfDir(path.to_path_buf()), &source.exec).map_err(named);
    }
    Err(format!("{}: neither a model directory ({MODEL_CONFIG}) nor a PEFT adapter ({ADAPTER_CONFIG})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> ModelSource {
        ModelSource { spec: ModelSpec::HfDir("/nonexistent".into()), adapter: None, exec: ExecRequest::default() }
    }

    const SHAPE: Shape = Shape {
        vocab_size: 1,
        hidden_size: 1,
        num_hidden_layers: 1,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        head_dim: 1,
    };

    #[test]
    fn missing_path_is_named() {
        let e = load_update(&source(), Path::new("/no/such/dir"), &SHAPE).err().unwrap();
        assert!(e.contains("/no/such/dir"), "{e}");
    }

    #[test]
    fn reloads_a_model_or_an_adapter_of_the_same_shape() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        let mut lm = aha_model::init_tiny(&base, &aha_model::TinySpec::default(), 1).unwrap();
        let shape = Shape::of(&lm.config);
        let source = ModelSource { spec: ModelSpec::HfDir(base.clone()), adapter: None, exec: ExecRequest::default() };
        assert!(load_update(&source, &base, &shape).unwrap().lora().is_none());
        lm.apply_lora(&aha_model::LoraConfig::default(), "test").unwrap();
        let adapter = tmp.path().join("adapter");
        aha_model::save_adapter(&adapter, &lm.model, &lm.tokenizer, &base.display().to_string()).unwrap();
        assert!(load_update(&source, &adapter, &shape).unwrap().lora().is_some());
        let other = tmp.path().join("other");
        let spec = aha_model::TinySpec { hidden_size: 32, ..aha_model::TinySpec::default() };
        aha_model::init_tiny(&other, &spec, 1).unwrap();
        let e = load_update(&source, &other, &shape).err().unwrap();
        assert!(e.contains("shape") && e.contains(&other.display().to_string()), "{e}");
    }

    #[test]
    fn unrecognised_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_update(&source(), dir.path(), &SHAPE).err().unwrap();
        assert!(e.contains(&dir.path().display().to_string()) && e.contains("adapter"), "{e}");
    }
}
