//! `aha sft --config FILE [--resume]`: supervised fine-tuning on chat or prompt/completion JSONL.
//!
//! Chat rows train on the final assistant message only; prompt/completion rows train on the
//! completion (plus EOS). The optimiser, schedule, non-finite guard, checkpoints (Hugging Face
//! directory + trainer state) and metrics (`metrics.jsonl`, TensorBoard, progress bar) are the
//! ones GRPO uses.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aha_metrics::{Metrics, MetricsWriter, TrainProgress};
use aha_model::LoadedModel;
use aha_train::checkpoint::{load_state, save_checkpoint, TrainerState};
use aha_train::data::{CursorState, DataCursor};
use aha_train::optim::{named_vars, AdamW};
use aha_train::run::ensure_finite;
use aha_train::sft::{sft_step, SftExample, SftStep};
use aha_train::sft_data::{read_sft_jsonl, to_example};
use anyhow::{bail, Context, Result};

use crate::config::{load_sft, SftConfig};
use crate::exec_args::ExecArgs;
use crate::runs::{draw_plots, load_start, report_skipped, write_resolved_config};

/// Non-finite steps in a row that abort the run.
const MAX_CONSECUTIVE_SKIPS: usize = 5;

/// Arguments of `aha sft`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The TOML config (see `examples/sft-arithmetic.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from the run directory's latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Device, dtype and backend (over the config's `[exec]`).
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Where an SFT run stands.
struct SftRun {
    step: usize,
    cursor: DataCursor,
    consecutive_skips: usize,
    total_skips: usize,
}

/// Runs `aha sft`.
pub fn run(args: Args) -> Result<()> {
    let mut cfg = load_sft(&args.config)?;
    cfg.exec = args.exec.over(cfg.exec);
    let config_json = serde_json::to_value(&cfg)?;
    let run_dir = cfg.output_dir.clone();
    let (lm, from) = load_start(&cfg.model, &run_dir, args.resume, &cfg.exec)?;
    let examples = load_examples(&cfg, &lm)?;
    let total = cfg.sft.total_steps(examples.len());
    let mut opt = AdamW::new(named_vars(&lm.varmap), cfg.optim.clone())?;
    let mut state = SftRun {
        step: 0,
        cursor: DataCursor::new(examples.len(), cfg.seed, CursorState::default()),
        consecutive_skips: 0,
        total_skips: 0,
    };
    if let Some(dir) = &from {
        restore(dir, &lm, &mut opt, &mut state, examples.len(), cfg.seed)?;
    }
    write_resolved_config(&run_dir, &config_json)?;
    eprintln!(
        "SFT: {total} steps × {} examples over {} examples → {}",
        cfg.sft.batch_size,
        examples.len(),
        run_dir.display()
    );
    let mut writer = MetricsWriter::create(&run_dir)?;
    writer.log_run_header(&aha_train::run::run_header("sft", &lm.model, state.step))?;
    let mut bar = if cfg.run.progress { TrainProgress::new(total as u64) } else { TrainProgress::hidden(total as u64) };
    bar.set_step(state.step as u64);
    while state.step < total {
        let t0 = Instant::now();
        let batch: Vec<SftExample> =
            state.cursor.take(cfg.sft.batch_size).into_iter().map(|i| examples[i].clone()).collect();
        let micro = if cfg.sft.micro_batch_size == 0 { batch.len() } else { cfg.sft.micro_batch_size };
        let out = sft_step(&lm.model, &mut opt, &batch, micro, total)?;
        state.step += 1;
        guard(&mut state, &out)?;
        let m = step_metrics(&out, &state, t0.elapsed().as_secs_f64());
        writer.log(state.step as u64, &m)?;
        bar.set_metrics(&m);
        bar.set_step(state.step as u64);
        let due = (cfg.run.save_steps > 0 && state.step.is_multiple_of(cfg.run.save_steps)) || state.step == total;
        if due {
            save(&cfg, &lm, &opt, &state, &config_json)?;
        }
    }
    bar.finish();
    draw_plots(&run_dir);
    Ok(())
}

/// Reads, tokenises and length-filters the dataset (bad rows and too-long examples reported).
fn load_examples(cfg: &SftConfig, lm: &LoadedModel) -> Result<Vec<SftExample>> {
    let path = &cfg.data.path;
    let (rows, skipped) = read_sft_jsonl(path, &cfg.data.columns)?;
    report_skipped(path, &skipped);
    let limit = lm.config.max_position_embeddings;
    let mut examples = Vec::with_capacity(rows.len());
    let mut too_long = 0;
    for row in &rows {
        let ex = to_example(row, &lm.tokenizer, cfg.data.template)?;
        if ex.prompt_ids.len() + ex.completion_ids.len() > limit || ex.completion_ids.is_empty() {
            too_long += 1;
        } else {
            examples.push(ex);
        }
    }
    if too_long > 0 {
        eprintln!(
            "{}: dropped {too_long} example(s) longer than the context ({limit} tokens) or empty",
            path.display()
        );
    }
    if examples.is_empty() {
        bail!("{}: no example fits the model's context of {limit} tokens", path.display());
    }
    Ok(examples)
}

fn restore(dir: &Path, lm: &LoadedModel, opt: &mut AdamW, state: &mut SftRun, rows: usize, seed: u64) -> Result<()> {
    let (saved, moments) = load_state(dir, lm.model.device())?;
    opt.restore(&moments, saved.optimizer_steps)?;
    state.step = saved.step;
    state.cursor = DataCursor::new(rows, seed, saved.cursor);
    state.consecutive_skips = saved.consecutive_skips;
    state.total_skips = saved.total_skips;
    eprintln!("resumed from {} at step {}", dir.display(), state.step);
    Ok(())
}

/// Counts a skipped (non-finite) step; aborts after too many in a row.
fn guard(state: &mut SftRun, out: &SftStep) -> Result<()> {
    if out.report.is_some_and(|r| r.applied) {
        state.consecutive_skips = 0;
        return Ok(());
    }
    state.consecutive_skips += 1;
    state.total_skips += 1;
    if state.consecutive_skips >= MAX_CONSECUTIVE_SKIPS {
        bail!(
            "aborting: {} consecutive SFT steps had a non-finite loss or gradient (last at step {})",
            state.consecutive_skips,
            state.step
        );
    }
    Ok(())
}

fn step_metrics(out: &SftStep, state: &SftRun, step_time: f64) -> Metrics {
    let mut m = Metrics::new();
    m.set("loss", out.loss);
    m.set("lr", out.report.map_or(0.0, |r| r.lr));
    m.set("grad_norm", out.report.map_or(f64::NAN, |r| r.grad_norm));
    m.set("tokens", out.tokens as f64);
    m.set("tokens_per_s", out.tokens as f64 / step_time.max(1e-9));
    m.set("step_time", step_time);
    m.set("epoch", state.cursor.state().epoch as f64);
    m.set("skipped_steps_total", state.total_skips as f64);
    m
}

fn save(cfg: &SftConfig, lm: &LoadedModel, opt: &AdamW, state: &SftRun, config: &serde_json::Value) -> Result<()> {
    ensure_finite(&lm.model)?;
    let ts = TrainerState {
        step: state.step,
        optimizer_steps: opt.steps_done(),
        cursor: state.cursor.state(),
        consecutive_skips: state.consecutive_skips,
        total_skips: state.total_skips,
        seed: cfg.seed,
        config: config.clone(),
    };
    save_checkpoint(&cfg.output_dir, &lm.model, &lm.tokenizer, opt, &ts, None, cfg.run.keep_last)
        .with_context(|| format!("saving a checkpoint at step {}", state.step))?;
    Ok(())
}
