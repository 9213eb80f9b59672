//! `aha merge --base DIR --adapter DIR --out DIR`: fold a PEFT LoRA adapter into its base
//! (`W + s·B·A` for every adapted projection) and save a plain Hugging Face directory that any
//! tool loads without `peft` — what `PeftModel.merge_and_unload()` then `save_pretrained` does.

use std::path::PathBuf;

use aha_model::{load_with_adapter, ExecRequest, ModelSpec};
use anyhow::Context;

/// Merge a LoRA adapter into its base model.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model: Hugging Face directory, `.gguf` file or `org/name`.
    #[arg(long)]
    pub base: String,
    /// The PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory (replaced atomically if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `aha merge`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut lm = load_with_adapter(&ModelSpec::parse(&args.base), Some(&args.adapter), &ExecRequest::default())
        .with_context(|| format!("loading {} with the adapter {}", args.base, args.adapter.display()))?;
    let lora = lm.model.lora().cloned().context("the adapter directory holds no LoRA adapter")?;
    lm.model = lm.model.merged()?;
    lm.save_pretrained(&args.out).with_context(|| format!("saving {}", args.out.display()))?;
    println!(
        "wrote {}: {} with the adapter {} merged (r {}, alpha {}, {})",
        args.out.display(),
        args.base,
        args.adapter.display(),
        lora.r,
        lora.alpha,
        lora.target_modules.join("/")
    );
    Ok(())
}
