//! `aha init`: a tiny random model from nothing (byte-level tokenizer, ChatML template), saved as
//! a Hugging Face directory. The demo and the tests start from these; nothing is downloaded.

use std::path::PathBuf;

use aha_model::tiny::TINY_VOCAB_SIZE;
use aha_model::{init_tiny, Arch, TinySpec};
use anyhow::{bail, Context};

/// The transformer family of the new model.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ArchArg {
    /// Qwen2 / Qwen2.5 (q/k/v biases).
    Qwen2,
    /// Qwen3 (q/k RMSNorm).
    Qwen3,
    /// Llama 3 / SmolLM2.
    Llama,
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Self {
        match a {
            ArchArg::Qwen2 => Arch::Qwen2,
            ArchArg::Qwen3 => Arch::Qwen3,
            ArchArg::Llama => Arch::Llama,
        }
    }
}

/// Create a tiny random model with an offline byte-level tokenizer.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output directory (Hugging Face layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Architecture.
    #[arg(long, value_enum, default_value = "qwen2")]
    pub arch: ArchArg,
    /// Residual width.
    #[arg(long, default_value_t = 64)]
    pub hidden_size: usize,
    /// SwiGLU inner width.
    #[arg(long, default_value_t = 192)]
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Query heads (must divide hidden size).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Key/value heads (must divide heads).
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    /// Maximum context length.
    #[arg(long, default_value_t = 512)]
    pub max_position_embeddings: usize,
    /// RoPE base.
    #[arg(long, default_value_t = 10_000.0)]
    pub rope_theta: f64,
    /// Give the LM head its own matrix instead of sharing the embedding.
    #[arg(long)]
    pub untied: bool,
    /// Seed of the random initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace an existing output directory.
    #[arg(long)]
    pub force: bool,
}

/// Runs `aha init`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.out.exists() && !args.force {
        bail!("{} already exists (pass --force to replace it)", args.out.display());
    }
    let spec = TinySpec {
        arch: args.arch.into(),
        hidden_size: args.hidden_size,
        intermediate_size: args.intermediate_size,
        num_hidden_layers: args.layers,
        num_attention_heads: args.heads,
        num_key_value_heads: args.kv_heads,
        max_position_embeddings: args.max_position_embeddings,
        rope_theta: args.rope_theta,
        tie_word_embeddings: !args.untied,
    };
    let m = init_tiny(&args.out, &spec, args.seed).with_context(|| format!("creating {}", args.out.display()))?;
    let params: usize = m.model.named_parameters().iter().map(|(_, t)| t.elem_count()).sum();
    println!(
        "wrote {} ({:?}, {} parameters, vocab {TINY_VOCAB_SIZE}, seed {})",
        args.out.display(),
        spec.arch,
        params,
        args.seed
    );
    Ok(())
}
