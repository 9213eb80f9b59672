//! `--model`, `--adapter`, `--tokenizer`: the flags naming the model a serving command loads
//! (`aha generate`, `aha serve`), flattened into each command's arguments.

use std::path::PathBuf;

use aha_model::ModelSpec;

/// The model to load.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model: Hugging Face directory, `.gguf` file, or `org/name` (HF cache, downloaded when missing).
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA adapter directory applied on top of `--model` (`adapter_config.json` +
    /// `adapter_model.safetensors`, from an aha LoRA run or Python `peft`).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// For a GGUF model: a directory with `tokenizer.json` to use instead of the GGUF metadata.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl ModelArgs {
    /// What `--model` names, with `--tokenizer` applied to a GGUF file.
    pub fn spec(&self) -> ModelSpec {
        crate::cmd::convert::with_tokenizer(ModelSpec::parse(&self.model), self.tokenizer.clone())
    }
}
