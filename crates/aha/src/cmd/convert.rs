//! `aha convert`: load any model aha reads (HF directory, GGUF file, cached repo id) and save it
//! as a Hugging Face directory (f32 safetensors, config, tokenizer files, chat template).

use std::path::PathBuf;

use aha_model::{load_model, ExecRequest, ModelSpec};
use anyhow::Context;

/// Convert a model to a Hugging Face directory.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: Hugging Face directory, `.gguf` file, or `org/name` (HF cache, downloaded when missing).
    #[arg(long)]
    pub model: String,
    /// Output directory (replaced atomically if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// For a GGUF model: a directory with `tokenizer.json` to use instead of the GGUF metadata.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

/// Runs `aha convert`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = with_tokenizer(ModelSpec::parse(&args.model), args.tokenizer);
    // A file-format conversion: read into host memory in f32, whatever device training uses.
    let m = load_model(&spec, &ExecRequest::default()).with_context(|| format!("loading {}", args.model))?;
    m.save_pretrained(&args.out).with_context(|| format!("saving {}", args.out.display()))?;
    println!("wrote {} ({:?}, {} layers)", args.out.display(), m.config.arch, m.config.num_hidden_layers);
    Ok(())
}

/// Attaches an explicit tokenizer directory to a GGUF spec (ignored for other specs).
pub fn with_tokenizer(spec: ModelSpec, tokenizer: Option<PathBuf>) -> ModelSpec {
    match (spec, tokenizer) {
        (ModelSpec::Gguf { file, .. }, Some(dir)) => ModelSpec::Gguf { file, tokenizer_dir: Some(dir) },
        (spec, _) => spec,
    }
}
