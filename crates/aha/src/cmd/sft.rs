//! `aha sft --config FILE [--resume]`: supervised fine-tuning on chat or prompt/completion JSONL.
//!
//! Chat rows train on the final assistant message only; prompt/completion rows train on the
//! completion (plus EOS). This file reads the config, loads the model (or the latest checkpoint
//! on `--resume`) and builds the examples; the loop — optimiser, schedule, non-finite guard,
//! checkpoints (Hugging Face directory + trainer state), metrics (`metrics.jsonl`, TensorBoard,
//! progress bar) — is `aha_train::sft::SftRun`, the one the pipeline and the demo run too.

use aha_model::LoadedModel;
use aha_train::collective::Collective;
use aha_train::sft::{SftCheckpoints, SftExample, SftMetrics, SftOptions, SftRun};
use aha_train::sft_data::{read_sft_jsonl, to_example};
use anyhow::{bail, Context, Result};

use crate::config::{load_sft, SftConfig};
use crate::runs::{draw_plots, load_start, report_skipped, write_resolved_config, Start};

/// Arguments of `aha sft`.
pub use crate::runs::ConfigArgs as Args;

/// Runs `aha sft`.
pub fn run(args: Args) -> Result<()> {
    let mut cfg = load_sft(&args.config)?;
    cfg.exec = args.exec.over(cfg.exec);
    run_config(&cfg, args.resume)
}

/// Runs the SFT of a parsed, validated config (`aha sft` and pipeline SFT stages): the model
/// or, with `resume`, the run directory's latest checkpoint; the examples; the loop; the plots.
/// Started by `mpirun -np N`, it is one rank of a data-parallel run (rank 0 writes).
pub fn run_config(cfg: &SftConfig, resume: bool) -> Result<()> {
    crate::dp::as_rank(&serde_json::to_value(cfg)?, |world| run_config_on(cfg, resume, world))
}

/// [`run_config`] as a rank of `world` (a pipeline stage under `mpirun`).
pub fn run_config_on(cfg: &SftConfig, resume: bool, world: &dyn Collective) -> Result<()> {
    let config_json = &serde_json::to_value(cfg)?;
    let run_dir = &cfg.output_dir;
    let (lm, from) = load_start(&start(cfg), run_dir, resume)?;
    let examples = load_examples(cfg, &lm)?;
    let mut sft =
        SftRun::new(&lm, &examples, cfg.optim.clone(), options(cfg, config_json.clone()))?.with_collective(world);
    if let Some(dir) = &from {
        sft.restore(dir).with_context(|| format!("resuming from {}", dir.display()))?;
    }
    if !world.is_writer() {
        return Ok(sft.run()?);
    }
    write_resolved_config(run_dir, config_json)?;
    eprintln!(
        "SFT: {} steps × {} examples over {} examples → {}",
        sft.total_steps(),
        cfg.sft.batch_size,
        examples.len(),
        run_dir.display()
    );
    sft.run().with_context(|| format!("SFT run {}", run_dir.display()))?;
    draw_plots(run_dir);
    Ok(())
}

/// The loop's options: every figure logged, checkpoints as `[run]` says.
fn options(cfg: &SftConfig, config_json: serde_json::Value) -> SftOptions {
    SftOptions {
        sft: cfg.sft.clone(),
        seed: cfg.seed,
        run_dir: cfg.output_dir.clone(),
        progress: cfg.run.progress,
        metrics: SftMetrics::Full,
        checkpoints: Some(SftCheckpoints {
            save_steps: cfg.run.save_steps,
            keep_last: cfg.run.keep_last,
            config: config_json,
        }),
    }
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

/// Where the run's weights start (`model`, `adapter`, `[lora]`, `[exec]`).
fn start(cfg: &SftConfig) -> Start<'_> {
    Start { model: &cfg.model, adapter: cfg.adapter.as_deref(), lora: cfg.lora.as_ref(), exec: &cfg.exec }
}
