//! `aha generate`: apply the model's chat template to a prompt and stream the answer to stdout,
//! sampling token by token against a KV cache.

use std::io::Write;
use std::time::Instant;

use aha_model::{load_with_adapter, sample_rng, sample_token, ChatMessage, KvCache, SamplingParams};
use anyhow::{bail, Context};
use candle_core::{DType, Device, IndexOp, Tensor};

use crate::exec_args::ExecArgs;
use crate::model_args::ModelArgs;

/// Generate an answer to one prompt.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model, its adapter and tokenizer.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user message.
    #[arg(long)]
    pub prompt: String,
    /// An optional system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Stop after this many new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Nucleus sampling threshold (0 < p <= 1).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the sampling stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device, dtype and backend.
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Runs `aha generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let params = SamplingParams { temperature: args.temperature, top_p: args.top_p, ..SamplingParams::default() };
    params.validate()?;
    let m = load_with_adapter(&args.model.spec(), args.model.adapter.as_deref(), &args.exec.request())
        .with_context(|| format!("loading {}", args.model.model))?;
    let model = m.model.detached()?;
    let device = model.device().clone();
    eprintln!("{}", model.plan().describe());
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(ChatMessage::new("system", s.clone()));
    }
    messages.push(ChatMessage::new("user", args.prompt.clone()));
    let prompt = m.tokenizer.encode_chat(&messages, true)?;
    let max_len = (prompt.len() + args.max_new_tokens).min(m.config.max_position_embeddings);
    if prompt.len() >= max_len {
        bail!("the prompt has {} tokens, the model's context is {}", prompt.len(), m.config.max_position_embeddings);
    }
    let mut cache = KvCache::new(&m.config, 1, max_len, model.dtype(), &device)?;
    let mut rng = sample_rng(args.seed, 0, 0);
    let mut stream = m.tokenizer.stream(true);
    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    let mut logits = step(&model, &prompt, 0, &mut cache, &device)?;
    let mut generated = 0;
    for pos in prompt.len()..max_len {
        let s = sample_token(&logits, &params, &mut rng)?;
        if m.tokenizer.eos_token_ids().contains(&s.token) {
            break;
        }
        write!(out, "{}", stream.push(s.token)?)?;
        out.flush()?;
        generated += 1;
        if pos + 1 < max_len {
            logits = step(&model, &[s.token], pos, &mut cache, &device)?;
        }
    }
    writeln!(out)?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "[{} prompt tokens, {generated} generated, {:.1} tok/s]",
        prompt.len(),
        generated as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Runs `ids` (at positions `start..`) through the model and returns the last position's logits.
fn step(
    model: &aha_model::Transformer,
    ids: &[u32],
    start: usize,
    cache: &mut KvCache,
    device: &Device,
) -> anyhow::Result<Vec<f32>> {
    let n = ids.len();
    let x = Tensor::new(ids, device)?.unsqueeze(0)?;
    let mask = Tensor::ones((1, n), DType::U32, device)?;
    let pos: Vec<u32> = (start as u32..(start + n) as u32).collect();
    let pos = Tensor::new(pos.as_slice(), device)?.unsqueeze(0)?;
    let logits = model.decode(&x, &mask, &pos, cache)?;
    Ok(logits.i((0, n - 1))?.to_dtype(DType::F32)?.to_vec1()?)
}
