//! `aha bench grpo`: the GRPO step of TRL's CPU benchmark (`bench_trl.py`, TRL `GRPOTrainer`),
//! mirrored exactly and measured the same way, so `bench/trl_grpo.sh` can put the two side by side.
//!
//! The spec (its README; see `BENCHMARKS.md`): the byte-level BPE `tokenizer.json` and the 512 prompts of its
//! `artifacts/` (plain text, no chat template, no BOS; `<|endoftext|>` = id 1 ends a completion),
//! Qwen2 "config A" (vocab 512, hidden 256, 4 layers, 4 heads, 2 KV heads, intermediate 768, tied,
//! q/k/v biases; ideally the very seed-0 weights `bench_trl.py` saved, via `--model`), 8 prompts ×
//! 8 samples, 64 completion tokens, temperature 1, no top-k/top-p, AdamW 1e-5 decaying linearly to
//! 0 over the steps, clip norm 1, ε 0.2, loss `grpo`, group-scaled advantages, one iteration, no
//! dynamic sampling (a random model scores 0 everywhere: the zero-advantage batch still goes
//! through the full forward, backward and AdamW), rewards `accuracy_reward` + `format_reward`
//! with Python's semantics ([`super::trl_rewards`]), β 0 (no reference) or 0.001 (a frozen copy).
//!
//! Measured as the TRL script does: wall time per step (between consecutive steps, so data and
//! metrics are included), median and min over steps 3..N, split by the trainer's phase timers
//! ([`aha_train::timing`]); completion tokens per step (the completion mask's sum, EOS
//! included); peak RSS (`getrusage` `ru_maxrss`). `--generate-only` times the rollout alone:
//! 64 rows × 64 tokens with EOS not ending rows, 1 warm-up + 5 timed calls.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aha_model::rollout::{rollout, RolloutConfig};
use aha_model::{AhaTokenizer, Arch, ExecRequest, ModelConfig, Transformer};
use aha_reward::Registry;
use aha_train::config::{GrpoLossConfig, ImportanceLevel, LossType, LrSchedule, OptimConfig, ScaleRewards};
use aha_train::data::{read_jsonl, ColumnMap, PromptRow};
use aha_train::grpo::{sampling_params, GrpoSettings, GrpoTrainer, StepMetrics, TextCodec};
use aha_train::optim::{named_vars, AdamW};
use anyhow::{bail, Context, Result};
use candle_nn::VarMap;
use serde_json::{json, Map, Value};

use super::trl_rewards::{TrlAccuracy, TrlCodec, TrlFormat};
use crate::exec_args::ExecArgs;

/// Options of `aha bench grpo`.
#[derive(clap::Args, Debug)]
pub struct GrpoOpts {
    /// KL coefficient: 0 (no reference model) or 0.001 (a frozen reference, one extra forward).
    #[arg(long, default_value_t = 0.0)]
    beta: f64,
    /// Optimizer steps (TRL `max_steps`); steps 3..N are timed.
    #[arg(long, default_value_t = 12)]
    steps: usize,
    /// The seed-0 Hugging Face model directory `bench_trl.py` saved (`<workdir>/model`); without
    /// it, config A is initialised randomly here (same shape, different weights).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The directory with the spec's `tokenizer.json` and `dataset.jsonl`.
    #[arg(long, default_value = "crates/aha/tests/fixtures/trl_grpo")]
    artifacts: PathBuf,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Time the rollout alone (TRL's `generate_only`) instead of GRPO steps.
    #[arg(long)]
    generate_only: bool,
    /// Timed calls of `--generate-only` (after one warm-up).
    #[arg(long, default_value_t = 5)]
    gen_repeats: usize,
    /// Seed of data order and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device, dtype and backend.
    #[command(flatten)]
    exec: ExecArgs,
}

/// The spec's constants (`bench_trl.py`).
const PROMPTS_PER_STEP: usize = 8;
const NUM_GENERATIONS: usize = 8;
const MAX_COMPLETION_LENGTH: usize = 64;
const LEARNING_RATE: f64 = 1e-5;
const TIMED_FROM_STEP: usize = 3;
const PAD_TOKEN: &str = "<|pad|>";
const EOS_TOKEN: &str = "<|endoftext|>";

/// Runs `aha bench grpo`.
pub fn run(o: GrpoOpts) -> Result<()> {
    let tokenizer = load_tokenizer(&o.artifacts)?;
    let rows = load_rows(&o.artifacts)?;
    let policy = load_policy(o.model.as_deref(), &o.exec.request())?;
    println!("{}", policy.model.plan().describe());
    let threads = candle_core::utils::get_num_threads();
    println!("aha bench grpo | model: {} | threads {threads} | allocator {}", policy.source, crate::alloc::describe());
    let mut result = if o.generate_only {
        bench_generate(&o, &tokenizer, &rows, &policy)?
    } else {
        bench_train(&o, &tokenizer, &rows, &policy)?
    };
    result["tool"] = json!("aha");
    result["model_source"] = json!(policy.source);
    result["threads"] = json!(threads);
    result["peak_rss_mib"] = json!(peak_rss_mib());
    println!("peak RSS {:.0} MiB", peak_rss_mib());
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The spec's tokenizer: `tokenizer.json` alone, with `<|pad|>` and `<|endoftext|>` (EOS).
fn load_tokenizer(artifacts: &Path) -> Result<AhaTokenizer> {
    let path = artifacts.join("tokenizer.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {} (pass --artifacts DIR)", path.display()))?;
    let mut config = Map::new();
    config.insert("eos_token".into(), json!(EOS_TOKEN));
    config.insert("pad_token".into(), json!(PAD_TOKEN));
    let tok = AhaTokenizer::from_parts(&text, &path, config, &Map::new(), None)?;
    let ids = (tok.token_to_id(PAD_TOKEN), tok.token_to_id(EOS_TOKEN));
    if ids != (Some(0), Some(1)) || tok.eos_token_ids() != [1] {
        bail!("{}: expected {PAD_TOKEN} = 0 and {EOS_TOKEN} = 1 (the only EOS), got {ids:?}", path.display());
    }
    Ok(tok)
}

fn load_rows(artifacts: &Path) -> Result<Vec<PromptRow>> {
    let path = artifacts.join("dataset.jsonl");
    let (rows, skipped) = read_jsonl(&path, &ColumnMap::default())?;
    if !skipped.0.is_empty() {
        bail!("{}: {} malformed rows (first: {:?})", path.display(), skipped.0.len(), skipped.0[0]);
    }
    Ok(rows)
}

/// The policy's variables, the transformer on them, and where the weights came from.
pub struct Policy {
    varmap: VarMap,
    model: Transformer,
    source: String,
}

/// Qwen2 config A of the spec.
fn config_a() -> ModelConfig {
    ModelConfig {
        arch: Arch::Qwen2,
        vocab_size: 512,
        hidden_size: 256,
        intermediate_size: 768,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_scaling: None,
        tie_word_embeddings: true,
        attention_bias: true,
        max_position_embeddings: 512,
        bos_token_id: None,
        eos_token_ids: vec![1],
    }
}

/// Loads `dir` (checked to be config A) or initialises config A randomly.
fn load_policy(dir: Option<&Path>, exec: &ExecRequest) -> Result<Policy> {
    let Some(dir) = dir else {
        let (model, varmap) = Transformer::random(&config_a(), exec)?;
        let source = "random init of config A (not TRL's seed-0 weights; pass --model for those)".to_string();
        return Ok(Policy { varmap, model, source });
    };
    let lm = aha_model::io::load_hf_dir(dir, exec).with_context(|| format!("loading {}", dir.display()))?;
    let (got, want) = (&lm.config, config_a());
    let shape = |c: &ModelConfig| {
        (c.arch, c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads)
    };
    let rest = |c: &ModelConfig| (c.num_key_value_heads, c.head_dim, c.tie_word_embeddings, c.attention_bias);
    if shape(got) != shape(&want) || rest(got) != rest(&want) || got.rope_theta != want.rope_theta {
        bail!("{} is not config A: {got:?}", dir.display());
    }
    Ok(Policy { varmap: lm.varmap, model: lm.model, source: format!("{} (HF dir)", dir.display()) })
}

/// The spec's trainer settings.
fn settings(steps: usize, beta: f64) -> (GrpoSettings, OptimConfig) {
    let grpo = GrpoSettings {
        max_steps: steps,
        prompts_per_step: PROMPTS_PER_STEP,
        group_size: NUM_GENERATIONS,
        max_completion_length: MAX_COMPLETION_LENGTH,
        length_schedule: Vec::new(),
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        min_p: 0.0,
        num_iterations: 1,
        minibatches: 1,
        micro_batch_size: 0,
        ref_sync_steps: 0,
        mask_truncated_completions: false,
        dynamic_sampling: false,
        stop_strings: Vec::new(),
        loss: GrpoLossConfig {
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta,
            loss_type: LossType::Grpo,
            importance_sampling: ImportanceLevel::Token,
            scale_rewards: ScaleRewards::Group,
        },
        ..GrpoSettings::default()
    };
    let optim = OptimConfig {
        learning_rate: LEARNING_RATE,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        warmup_steps: 0,
        schedule: LrSchedule::Linear,
    };
    (grpo, optim)
}

/// One step's figures, named as in `bench_trl.py`'s `per_step` records.
#[derive(Debug, Clone, serde::Serialize)]
struct StepRecord {
    step: usize,
    step_s: f64,
    generate_s: f64,
    nograd_logps_fwd_s: f64,
    rewards_s: f64,
    gen_and_score_s: f64,
    rest_s: f64,
    loss_forward_s: f64,
    backward_s: f64,
    optimizer_s: f64,
    optimizer_and_other_s: f64,
    completion_tokens: usize,
    loss: f64,
    reward: f64,
    grad_norm: f64,
    kl: f64,
    lr: f64,
}

impl StepRecord {
    fn new(step: usize, step_s: f64, m: &StepMetrics, completion_tokens: usize) -> Self {
        let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        let (generate_s, nograd, rewards_s) = (g("time/rollout_s"), g("time/nograd_logps_s"), g("time/rewards_s"));
        let gen_and_score_s = generate_s + nograd + rewards_s;
        let rest_s = step_s - gen_and_score_s;
        let (loss_forward_s, backward_s) = (g("time/loss_forward_s"), g("time/backward_s"));
        Self {
            step,
            step_s,
            generate_s,
            nograd_logps_fwd_s: nograd,
            rewards_s,
            gen_and_score_s,
            rest_s,
            loss_forward_s,
            backward_s,
            optimizer_s: g("time/optimizer_s"),
            optimizer_and_other_s: rest_s - loss_forward_s - backward_s,
            completion_tokens,
            loss: g("loss"),
            reward: g("reward"),
            grad_norm: g("grad_norm"),
            kl: g("kl"),
            lr: g("lr"),
        }
    }
}

fn bench_train(o: &GrpoOpts, tokenizer: &AhaTokenizer, rows: &[PromptRow], policy: &Policy) -> Result<Value> {
    if o.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let (grpo, optim) = settings(o.steps, o.beta);
    grpo.validate()?;
    let codec = TrlCodec(tokenizer);
    let prompt_ids: Vec<Vec<u32>> = rows.iter().map(|r| codec.encode(&r.prompt)).collect::<aha_train::Result<_>>()?;
    let registry = Registry::from_rewards(
        vec![
            ("accuracy_reward".into(), 1.0, Box::new(TrlAccuracy)),
            ("format_reward".into(), 1.0, Box::new(TrlFormat)),
        ],
        0,
    );
    let opt = AdamW::new(named_vars(&policy.varmap), optim)?;
    let mut trainer = GrpoTrainer::new(grpo, &policy.model, opt, rows, prompt_ids, &registry, &codec, o.seed)?;
    let mut steps = Vec::with_capacity(o.steps);
    let start = Instant::now();
    let mut t = start;
    while trainer.step < o.steps {
        let out = trainer.step()?;
        let now = Instant::now();
        let tokens = out.samples.iter().map(|s| s.completion.completion_ids.len()).sum();
        let rec = StepRecord::new(trainer.step, (now - t).as_secs_f64(), &out.metrics, tokens);
        t = now;
        eprintln!(
            "step {:>2}: {:.3} s (rollout {:.3}, ref {:.3}, loss fwd {:.3}, backward {:.3}) | {} tokens | reward {:.3}",
            rec.step,
            rec.step_s,
            rec.generate_s,
            rec.nograd_logps_fwd_s,
            rec.loss_forward_s,
            rec.backward_s,
            rec.completion_tokens,
            rec.reward
        );
        steps.push(rec);
    }
    let total = start.elapsed().as_secs_f64();
    let result = train_summary(o, &steps, total, trainer.reference.is_some());
    print_train(o, &result);
    Ok(result)
}

/// Median, min, mean and count, as `bench_trl.py`'s `summarize`.
fn summarize(xs: &[f64]) -> Value {
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    let mean = if n == 0 { f64::NAN } else { v.iter().sum::<f64>() / n as f64 };
    json!({"median": median, "min": v.first().copied().unwrap_or(f64::NAN), "mean": mean, "n": n})
}

fn train_summary(o: &GrpoOpts, steps: &[StepRecord], total: f64, ref_loaded: bool) -> Value {
    // Steps 3..N as TRL; a run shorter than that (a smoke test) times every step.
    let timed: Vec<&StepRecord> = steps.iter().filter(|s| s.step >= TIMED_FROM_STEP).collect();
    let window: Vec<&StepRecord> = if timed.is_empty() { steps.iter().collect() } else { timed };
    let agg = |f: fn(&StepRecord) -> f64| summarize(&window.iter().map(|s| f(s)).collect::<Vec<_>>());
    let tokens: usize = window.iter().map(|s| s.completion_tokens).sum();
    let tokens_f: Vec<f64> = window.iter().map(|s| s.completion_tokens as f64).collect();
    let step_sum: f64 = window.iter().map(|s| s.step_s).sum();
    let gen_sum: f64 = window.iter().map(|s| s.generate_s).sum();
    json!({
        "beta": o.beta,
        "ref_model_loaded": ref_loaded,
        "max_steps": o.steps,
        "timed_steps": window.iter().map(|s| s.step).collect::<Vec<_>>(),
        "step_s": agg(|s| s.step_s),
        "gen_and_score_s": agg(|s| s.gen_and_score_s),
        "generate_s": agg(|s| s.generate_s),
        "nograd_logps_fwd_s": agg(|s| s.nograd_logps_fwd_s),
        "rewards_s": agg(|s| s.rewards_s),
        "rest_s": agg(|s| s.rest_s),
        "loss_forward_s": agg(|s| s.loss_forward_s),
        "backward_s": agg(|s| s.backward_s),
        "optimizer_s": agg(|s| s.optimizer_s),
        "optimizer_and_other_s": agg(|s| s.optimizer_and_other_s),
        "completion_tokens_per_step": summarize(&tokens_f),
        "completion_tokens_per_s_train": tokens as f64 / step_sum,
        "completion_tokens_per_s_generate": tokens as f64 / gen_sum,
        "rows_per_step": PROMPTS_PER_STEP * NUM_GENERATIONS,
        "train_total_s": total,
        "per_step": steps,
    })
}

fn print_train(o: &GrpoOpts, r: &Value) {
    let f = |k: &str, s: &str| r[k][s].as_f64().unwrap_or(f64::NAN);
    let timed = r["timed_steps"].as_array().map_or(0, Vec::len);
    println!("\nGRPO step, β = {} | {} steps, {timed} timed | 64 rows × ≤ 64 tokens", o.beta, o.steps);
    println!("| phase | median s | min s |\n|---|---|---|");
    for (label, key) in [
        ("step wall", "step_s"),
        ("rollout (prefill + decode + sampling)", "generate_s"),
        ("reference log-probs (no grad)", "nograd_logps_fwd_s"),
        ("rewards + advantages", "rewards_s"),
        ("loss forward (policy logps, loss, entropy)", "loss_forward_s"),
        ("backward", "backward_s"),
        ("optimizer (clip + AdamW)", "optimizer_s"),
        ("optimizer + other", "optimizer_and_other_s"),
    ] {
        println!("| {label} | {:.3} | {:.3} |", f(key, "median"), f(key, "min"));
    }
    println!(
        "completion tokens per step {:.0} (mean) | {:.0} tokens/s over the step | {:.0} tokens/s over the rollout",
        f("completion_tokens_per_step", "mean"),
        r["completion_tokens_per_s_train"].as_f64().unwrap_or(f64::NAN),
        r["completion_tokens_per_s_generate"].as_f64().unwrap_or(f64::NAN)
    );
}

/// TRL's `generate_only`: the first 8 prompts × 8, 64 new tokens each (EOS does not end a row;
/// HF suppresses it instead, same work), 1 warm-up + `--gen-repeats` (5) timed calls.
fn bench_generate(o: &GrpoOpts, tokenizer: &AhaTokenizer, rows: &[PromptRow], policy: &Policy) -> Result<Value> {
    let codec = TrlCodec(tokenizer);
    let prompts: Vec<Vec<u32>> =
        rows.iter().take(PROMPTS_PER_STEP).map(|r| codec.encode(&r.prompt)).collect::<aha_train::Result<_>>()?;
    let mut times = Vec::new();
    let mut new_tokens = 0;
    for i in 0..=o.gen_repeats.max(1) {
        let cfg = RolloutConfig {
            group_size: NUM_GENERATIONS,
            max_new_tokens: MAX_COMPLETION_LENGTH,
            sampling: sampling_params(1.0, 1.0, 0, 0.0),
            eos_ids: Vec::new(),
            seed: o.seed.wrapping_add(i as u64),
            ..RolloutConfig::default()
        };
        let t0 = Instant::now();
        let out = rollout(&policy.model, &prompts, &cfg, None)?;
        let dt = t0.elapsed().as_secs_f64();
        new_tokens = out.iter().flatten().map(|s| s.completion_ids.len()).sum::<usize>();
        if i > 0 {
            times.push(dt);
        }
    }
    let stats = summarize(&times);
    let median = stats["median"].as_f64().unwrap_or(f64::NAN);
    let best = stats["min"].as_f64().unwrap_or(f64::NAN);
    println!(
        "\ngenerate_only: {} rows, {new_tokens} new tokens per call | median {median:.3} s ({:.0} tokens/s, {:.1} ms per \
         decode step) | best {best:.3} s ({:.0} tokens/s)",
        PROMPTS_PER_STEP * NUM_GENERATIONS,
        new_tokens as f64 / median,
        1000.0 * median / MAX_COMPLETION_LENGTH as f64,
        new_tokens as f64 / best
    );
    Ok(json!({
        "rows": PROMPTS_PER_STEP * NUM_GENERATIONS,
        "prompt_width_tokens": prompts.iter().map(Vec::len).max().unwrap_or(0),
        "new_tokens_per_call": new_tokens,
        "call_s": stats,
        "call_times_s": times,
        "tokens_per_s_median": new_tokens as f64 / median,
        "tokens_per_s_best": new_tokens as f64 / best,
        "ms_per_decode_step_median": 1000.0 * median / MAX_COMPLETION_LENGTH as f64,
    }))
}

/// Peak resident set size of this process (`getrusage(RUSAGE_SELF).ru_maxrss`, KiB on Linux), in MiB.
fn peak_rss_mib() -> f64 {
    // SAFETY: `rusage` is plain data; all-zero is a valid value and getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a live `rusage` owned by this frame.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}
