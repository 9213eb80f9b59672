//! `aha bench rollout|train`: raw speed of sampling and of a training step on two fixed
//! Qwen2-shaped models with random weights, reported as tokens/s, GFLOP/s and % of this CPU's
//! fp32 peak. `bench/compare.sh` runs the same workloads in PyTorch for ratios.
//! `aha bench grpo` (in `bench/grpo.rs`) mirrors TRL's GRPO benchmark; `bench/trl_grpo.sh`
//! runs the two interleaved. `aha bench serve` (in `bench/serve.rs`) load-tests `aha serve`.
//!
//! FLOP accounting (per token, counted the same way in `bench/reference.py`): a forward costs
//! 2 × (every matmul weight, LM head included, embedding lookup excluded) + 4 × layers × heads ×
//! head_dim × context (scores and weighted values over the context actually computed: the full
//! T for training, the cache length for decoding). A training step costs 3 × the forward.

mod cpu;
mod grpo;
mod serve;
mod trl_rewards;

use std::time::Instant;

use aha_model::cpu::handgrad;
use aha_model::rollout::{rollout, RolloutConfig};
use aha_model::{Arch, ModelConfig, Transformer};
use aha_train::config::OptimConfig;
use aha_train::optim::{named_vars, AdamW};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use clap::{Subcommand, ValueEnum};

use crate::exec_args::ExecArgs;

use cpu::CpuInfo;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Benchmark rollout or training speed.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// Sampling: 16 sequences, 16-token random prompts, 128 new tokens (no EOS).
    Rollout(Opts),
    /// Training: batch 16 × 128 random tokens, forward + cross-entropy + backward + AdamW.
    Train(Opts),
    /// GRPO steps exactly as TRL's GRPOTrainer benchmark (`bench/trl_grpo.sh`), phase by phase.
    Grpo(grpo::GrpoOpts),
    /// Load test of `aha serve`: concurrent vs one-at-a-time requests vs the in-process rollout.
    Serve(serve::ServeOpts),
}

#[derive(clap::Args, Debug)]
struct Opts {
    /// Model shape: A (≈3.3 M parameters) or B (≈125 M).
    #[arg(long, value_enum, ignore_case = true, default_value_t = Shape::A)]
    config: Shape,
    /// Measured repetitions (default: 5 for A, 2 for B).
    #[arg(long)]
    iters: Option<usize>,
    /// Unmeasured warm-up repetitions.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Device, dtype and backend (`--backend cpu-autograd` measures candle's autograd).
    #[command(flatten)]
    exec: ExecArgs,
    /// Also print one JSON line (`BENCH {...}`) for scripts.
    #[arg(long)]
    json: bool,
}

/// The two fixed model shapes of `aha bench rollout|train` (see `BENCHMARKS.md`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// vocab 512, hidden 256, 4 layers, 4 heads, 2 KV heads, intermediate 768, tied head.
    A,
    /// vocab 32 000, hidden 768, 12 layers, 12 heads, 4 KV heads, intermediate 2048.
    B,
}

impl Shape {
    fn config(self) -> ModelConfig {
        let (vocab, hidden, layers, heads, kv, inter, tied) = match self {
            Shape::A => (512, 256, 4, 4, 2, 768, true),
            Shape::B => (32_000, 768, 12, 12, 4, 2048, false),
        };
        ModelConfig {
            arch: Arch::Qwen2,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: None,
            tie_word_embeddings: tied,
            attention_bias: true,
            max_position_embeddings: 1024,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    fn default_iters(self) -> usize {
        match self {
            Shape::A => 5,
            Shape::B => 2,
        }
    }
}

/// Batch rows for both workloads.
const BATCH: usize = 16;
/// Training sequence length.
const TRAIN_LEN: usize = 128;
/// Rollout prompt length.
const PROMPT_LEN: usize = 16;
/// Rollout completion length.
const NEW_TOKENS: usize = 128;

/// Runs the chosen benchmark.
pub fn run(args: Args) -> Result<()> {
    if let Workload::Grpo(o) = args.what {
        return grpo::run(o);
    }
    if let Workload::Serve(o) = args.what {
        return serve::run(o);
    }
    let threads = candle_core::utils::get_num_threads();
    let cpu = CpuInfo::detect();
    println!("{}", cpu.header());
    println!("threads: {threads} ({}) | allocator: {}", crate::threads::describe(), crate::alloc::describe());
    let (name, opts, report) = match args.what {
        Workload::Rollout(o) => {
            let r = bench_rollout(&o)?;
            ("rollout", o, r)
        }
        Workload::Train(o) => {
            let r = bench_train(&o)?;
            ("train", o, r)
        }
        Workload::Grpo(_) | Workload::Serve(_) => return Ok(()),
    };
    report.print(name, opts.config, &cpu, opts.json);
    Ok(())
}

/// What one benchmark measured.
struct Report {
    tokens: usize,
    seconds: f64,
    flops: f64,
    params: usize,
}

impl Report {
    fn print(&self, name: &str, shape: Shape, cpu: &CpuInfo, json: bool) {
        let tok_s = self.tokens as f64 / self.seconds;
        let gflops = self.flops / self.seconds / 1e9;
        let pct = 100.0 * gflops / cpu.peak_gflops();
        let rss_mb = peak_rss_mb();
        println!(
            "{name} {shape:?}: {} params | {:.0} tokens/s | {gflops:.1} GFLOP/s | {pct:.1}% of fp32 peak | peak RSS {rss_mb:.0} MB",
            self.params, tok_s
        );
        if json {
            let v = serde_json::json!({
                "workload": name, "config": format!("{shape:?}"), "tokens_per_s": tok_s,
                "gflops": gflops, "peak_pct": pct, "peak_rss_mb": rss_mb, "params": self.params,
                "seconds": self.seconds, "tokens": self.tokens,
            });
            println!("BENCH {v}");
        }
    }
}

/// Peak resident set size of this process (`VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    vm_hwm_mib("self")
}

/// Peak resident set size (`VmHWM`) of process `pid` (`"self"`: this one), in MiB; 0 when
/// unreadable.
fn vm_hwm_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Matmul weights per token (LM head included even when tied; embedding lookup excluded).
fn matmul_params(cfg: &ModelConfig) -> usize {
    let (h, i, q) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim);
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let layer = h * q + 2 * h * kv + q * h + 3 * h * i;
    cfg.num_hidden_layers * layer + cfg.vocab_size * h
}

/// Forward FLOPs of one token attending over `context` positions.
fn forward_flops_per_token(cfg: &ModelConfig, context: usize) -> f64 {
    let attn = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * context;
    (2 * matmul_params(cfg) + attn) as f64
}

fn param_count(cfg: &ModelConfig) -> usize {
    Transformer::parameter_specs(cfg).iter().map(|s| s.shape.iter().product::<usize>()).sum()
}

fn random_ids(rng: &mut ChaCha8Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

fn bench_rollout(opts: &Opts) -> Result<Report> {
    let cfg = opts.config.config();
    let (model, _) = Transformer::random(&cfg, &opts.exec.request())?;
    println!("{}", model.plan().describe());
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let prompts: Vec<Vec<u32>> = (0..BATCH).map(|_| random_ids(&mut rng, PROMPT_LEN, cfg.vocab_size)).collect();
    let rcfg = RolloutConfig { group_size: 1, max_new_tokens: NEW_TOKENS, ..Default::default() };
    let iters = opts.iters.unwrap_or(opts.config.default_iters());
    for i in 0..opts.warmup {
        rollout(&model, &prompts, &RolloutConfig { seed: i as u64, ..rcfg.clone() }, None)?;
    }
    let start = Instant::now();
    let mut tokens = 0;
    for i in 0..iters {
        let out = rollout(&model, &prompts, &RolloutConfig { seed: 1000 + i as u64, ..rcfg.clone() }, None)?;
        tokens += out.iter().flatten().map(|s| s.completion_ids.len()).sum::<usize>();
    }
    let seconds = start.elapsed().as_secs_f64();
    // Prefill: PROMPT_LEN tokens over a PROMPT_LEN context; token k of the completion is fed at
    // context PROMPT_LEN + k (the last sampled token is never fed).
    let prefill = PROMPT_LEN as f64 * forward_flops_per_token(&cfg, PROMPT_LEN);
    let decode: f64 = (1..NEW_TOKENS).map(|k| forward_flops_per_token(&cfg, PROMPT_LEN + k)).sum();
    let flops = (BATCH * iters) as f64 * (prefill + decode);
    Ok(Report { tokens, seconds, flops, params: param_count(&cfg) })
}

fn bench_train(opts: &Opts) -> Result<Report> {
    let cfg = opts.config.config();
    let (model, varmap) = Transformer::random(&cfg, &opts.exec.request())?;
    println!("{}", model.plan().describe());
    let optim = OptimConfig { learning_rate: 1e-4, weight_decay: 0.01, max_grad_norm: 0.0, ..OptimConfig::default() };
    let mut opt = AdamW::new(named_vars(&varmap), optim)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let iters = opts.iters.unwrap_or(opts.config.default_iters());
    let mut batch = || -> Result<Tensor> {
        let ids = random_ids(&mut rng, BATCH * (TRAIN_LEN + 1), cfg.vocab_size);
        Ok(Tensor::from_vec(ids, (BATCH, TRAIN_LEN + 1), model.device())?)
    };
    for _ in 0..opts.warmup {
        train_step(&model, &mut opt, &batch()?)?;
    }
    let start = Instant::now();
    let mut last_loss = f32::NAN;
    for _ in 0..iters {
        last_loss = train_step(&model, &mut opt, &batch()?)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("last loss {last_loss:.4} (ln vocab = {:.4})", (cfg.vocab_size as f64).ln());
    let tokens = BATCH * TRAIN_LEN * iters;
    let flops = 3.0 * tokens as f64 * forward_flops_per_token(&cfg, TRAIN_LEN);
    Ok(Report { tokens, seconds, flops, params: param_count(&cfg) })
}

/// One training step: next-token cross-entropy over `seq` (`[B, T+1]` u32), backward, and aha's
/// AdamW (PyTorch's defaults: weight decay 0.01, no clipping). On CPU in f32 the gradient comes
/// from the model's plan, as in SFT and GRPO: the hand-written backward under `cpu-handwritten`,
/// candle's autograd otherwise.
fn train_step(model: &Transformer, opt: &mut AdamW, seq: &Tensor) -> Result<f32> {
    let (b, t1) = seq.dims2()?;
    let t = t1 - 1;
    let dev = model.device();
    let input = seq.narrow(1, 0, t)?.contiguous()?;
    let target = seq.narrow(1, 1, t)?.contiguous()?;
    let mask = Tensor::ones((b, t), DType::F32, dev)?;
    let pos = Tensor::arange(0u32, t as u32, dev)?.unsqueeze(0)?.repeat((b, 1))?;
    let (loss, grads) = if model.plan().hand_written_grads() {
        // Mean next-token cross-entropy: its gradient with respect to each log-prob is −1 / tokens.
        let fwd = handgrad::forward(model, &input, &mask, &pos, 0, &target)?;
        let tokens = target.elem_count() as f64;
        let loss = fwd.logps.sum_all()?.to_scalar::<f32>()? / -(tokens as f32);
        let dlogps = Tensor::full(-(1.0 / tokens) as f32, (b, t), dev)?;
        (loss, opt.collect_named(fwd.backward(&dlogps)?)?)
    } else {
        let logits = model.forward(&input, &mask, &pos)?.reshape((b * t, ()))?;
        let lp = aha_model::ops::gather_logprobs(&logits, &target.flatten_all()?, model.kernels())?;
        let loss = lp.mean_all()?.neg()?.to_dtype(DType::F32)?;
        (loss.to_scalar::<f32>()?, opt.collect(&loss.backward()?))
    };
    opt.step(&grads, usize::MAX).context("AdamW step")?;
    Ok(loss)
}
