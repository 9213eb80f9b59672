//! The GRPO run loop around [`GrpoTrainer::step`]: metrics every step (JSONL + TensorBoard),
//! a progress bar, sample logging, checkpoints, and resume from the latest checkpoint. In a
//! data-parallel run every rank steps and rank 0 alone writes (metrics, samples, checkpoints).

use std::path::{Path, PathBuf};

use aha_metrics::{Metrics, MetricsWriter, SampleLog, TrainProgress};
use aha_model::AhaTokenizer;

use crate::checkpoint::{latest_checkpoint, load_state, save_checkpoint, TrainerState, REFERENCE_FILE};
use crate::data::DataCursor;
use crate::error::{Result, TrainError};
use crate::grpo::{GrpoTrainer, StepMetrics};

/// Where and how often a run writes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunOptions {
    /// Save a checkpoint every N steps (0: only at the end). Default 0.
    pub save_steps: usize,
    /// Checkpoints kept (0 keeps all). Default 2.
    pub keep_last: usize,
    /// Log sample completions every N steps (0 never). Default 10.
    pub log_samples_every: usize,
    /// Show a progress bar. Default true.
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { save_steps: 0, keep_last: 2, log_samples_every: 10, progress: true }
    }
}

/// Restores the trainer from the run's latest checkpoint, if any. Returns the checkpoint used.
///
/// The caller must have built `trainer.policy` from that checkpoint's weights (see
/// [`latest_checkpoint`]); this restores the optimiser, step, cursor and guard counters.
pub fn restore(trainer: &mut GrpoTrainer, run_dir: &Path) -> Result<Option<PathBuf>> {
    let Some(dir) = latest_checkpoint(run_dir)? else { return Ok(None) };
    let (state, optim) = load_state(&dir, trainer.policy.device())?;
    trainer.opt.restore(&optim, state.optimizer_steps)?;
    trainer.step = state.step;
    trainer.cursor = DataCursor::new(trainer.rows.len(), trainer.seed, state.cursor);
    trainer.consecutive_skips = state.consecutive_skips;
    trainer.total_skips = state.total_skips;
    if trainer.reference.is_some() {
        trainer.reference = Some(match trainer.policy.lora() {
            Some(_) if !dir.join(REFERENCE_FILE).exists() => trainer.policy.reference_copy()?,
            _ => load_reference(&dir, &trainer.policy)?,
        });
    }
    Ok(Some(dir))
}

/// The run header of a training run's `metrics.jsonl`: what is trained (`kind`), the model's
/// execution plan (backend, device, dtype), the step it starts from and aha's version. Also
/// printed, so the log says which code path runs.
pub fn run_header(kind: &str, model: &aha_model::Transformer, start_step: usize) -> serde_json::Value {
    eprintln!("{kind}: {} ({:?} model)", model.plan().describe(), model.config().arch);
    serde_json::json!({
        "kind": kind,
        "exec": model.plan().to_json(),
        "arch": format!("{:?}", model.config().arch),
        "start_step": start_step,
        "aha_version": env!("CARGO_PKG_VERSION"),
    })
}

/// Runs steps until `settings.max_steps`, writing metrics, samples and checkpoints.
pub fn train(
    trainer: &mut GrpoTrainer,
    tokenizer: &AhaTokenizer,
    run_dir: &Path,
    opts: &RunOptions,
    config_json: &serde_json::Value,
    mut on_step: impl FnMut(usize, &StepMetrics) -> Result<()>,
) -> Result<()> {
    let writes = trainer.collective.is_writer();
    let mut writer = if writes { Some(open_metrics(trainer, run_dir)?) } else { None };
    let total = trainer.settings.max_steps;
    let shown = opts.progress && writes;
    let mut bar = if shown { TrainProgress::new(total as u64) } else { TrainProgress::hidden(total as u64) };
    bar.set_step(trainer.step as u64);
    while trainer.step < total {
        let out = trainer.step()?;
        let step = trainer.step;
        let mut m = Metrics::new();
        for (k, v) in &out.metrics {
            m.set(k.clone(), *v);
        }
        m.set("skipped_steps_total", trainer.total_skips as f64);
        if let Some(writer) = writer.as_mut() {
            writer.log(step as u64, &m).map_err(|e| TrainError::Other(e.to_string()))?;
            if opts.log_samples_every > 0 && step.is_multiple_of(opts.log_samples_every) {
                let logs: Vec<SampleLog> =
                    out.samples.iter().take(4).map(|s| sample_log(trainer, tokenizer, s)).collect();
                writer.log_samples(step as u64, &logs).map_err(|e| TrainError::Other(e.to_string()))?;
            }
        }
        bar.set_metrics(&m);
        bar.set_step(step as u64);
        on_step(step, &out.metrics)?;
        let due = (opts.save_steps > 0 && step.is_multiple_of(opts.save_steps)) || step == total;
        if due && writes {
            save(trainer, tokenizer, run_dir, opts, config_json)?;
        }
    }
    bar.finish();
    Ok(())
}

/// The run's `metrics.jsonl` (and TensorBoard), opened with the run header.
fn open_metrics(trainer: &GrpoTrainer, run_dir: &Path) -> Result<MetricsWriter> {
    let mut writer = MetricsWriter::create(run_dir).map_err(|e| TrainError::Other(e.to_string()))?;
    let header = run_header("grpo", &trainer.policy, trainer.step);
    writer.log_run_header(&header).map_err(|e| TrainError::Other(e.to_string()))?;
    Ok(writer)
}

fn sample_log(trainer: &GrpoTrainer, tokenizer: &AhaTokenizer, s: &crate::grpo::Scored) -> SampleLog {
    SampleLog {
        prompt: tokenizer.decode(&s.prompt_ids, false).unwrap_or_default(),
        completion: s.text.clone(),
        reward: s.scored.reward,
        rewards: s.scored.rewards.clone(),
        advantage: Some(s.advantage),
        answer: Some(trainer.rows[s.row].answer.clone()),
        ..Default::default()
    }
}

/// Saves the trainer's checkpoint (refusing to save a model with non-finite weights).
pub fn save(
    trainer: &GrpoTrainer,
    tokenizer: &AhaTokenizer,
    run_dir: &Path,
    opts: &RunOptions,
    config_json: &serde_json::Value,
) -> Result<PathBuf> {
    ensure_finite(&trainer.policy)?;
    let state = TrainerState {
        step: trainer.step,
        optimizer_steps: trainer.opt.steps_done(),
        cursor: trainer.cursor.state(),
        consecutive_skips: trainer.consecutive_skips,
        total_skips: trainer.total_skips,
        seed: trainer.seed,
        config: config_json.clone(),
    };
    let reference = trainer.reference.as_ref();
    save_checkpoint(run_dir, &trainer.policy, tokenizer, &trainer.opt, &state, reference, opts.keep_last)
}

fn load_reference(dir: &Path, policy: &aha_model::Transformer) -> Result<aha_model::Transformer> {
    let path = dir.join(REFERENCE_FILE);
    if !path.exists() {
        return Err(TrainError::Checkpoint {
            path,
            reason: "beta > 0 but the checkpoint holds no reference weights".into(),
        });
    }
    let tensors = candle_core::safetensors::load(&path, policy.device())?;
    let vb = candle_nn::VarBuilder::from_tensors(tensors, policy.dtype(), policy.device());
    Ok(aha_model::Transformer::new(policy.config(), vb)?)
}

/// Errors if any parameter holds a NaN or infinity: a poisoned model is never saved.
pub fn ensure_finite(model: &aha_model::Transformer) -> Result<()> {
    for (name, t) in model.named_parameters().into_iter().chain(model.adapter_parameters()) {
        let s = t.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !s.is_finite() {
            return Err(TrainError::Other(format!("refusing to save: parameter `{name}` is not finite")));
        }
    }
    Ok(())
}
