//! Supervised fine-tuning: next-token loss on completion (assistant) tokens only.
//!
//! Shares the batch layout, optimiser, schedule, guards and checkpoints with GRPO. The loss of
//! an optimiser step is the token mean over all completion tokens of the accumulated batch, so
//! the split into micro-batches does not change the gradient.
//!
//! [`sft_step_on`] is one optimiser step (of one rank); [`SftRun`] is the one SFT loop, which
//! `aha sft`, the pipeline's SFT stages and `aha demo`'s cold start all run: steps over a
//! [`DataCursor`], micro-batches, the non-finite guard, metrics (`metrics.jsonl` with its run
//! header, TensorBoard, progress bar) and, when asked, checkpoints with exact resume.
//!
//! Data parallel ([`SftRun::with_collective`]): every rank draws the same batch, works on every
//! `size`-th micro-batch of it, and the gradients are summed over ranks before the same AdamW
//! step on every rank; the loss keeps its global token normaliser, so the update is the
//! one-process update. Rank 0 alone writes metrics and checkpoints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aha_metrics::{Metrics, MetricsWriter, TrainProgress};
use aha_model::{LoadedModel, Transformer};
use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::batch::{build_batch, policy_forward};
use crate::checkpoint::{load_state, save_checkpoint, TrainerState};
use crate::collective::{all_reduce_grads, join_ranks, sum_scalars, Collective, ALONE};
use crate::config::OptimConfig;
use crate::data::{CursorState, DataCursor};
use crate::error::{Result, TrainError};
use crate::optim::{named_vars, AdamW, Grads, StepReport};
use crate::run::{ensure_finite, run_header};

/// One training example: prompt tokens (no loss) and completion tokens (loss).
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Context tokens (template, question); never trained on.
    pub prompt_ids: Vec<u32>,
    /// Target tokens (the assistant's answer, EOS included).
    pub completion_ids: Vec<u32>,
}

/// The result of one SFT optimiser step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftStep {
    /// Mean token cross-entropy over the step's completion tokens (NaN when skipped).
    pub loss: f64,
    /// Completion tokens trained on.
    pub tokens: usize,
    /// The optimiser's report (`None` when the loss was non-finite and nothing ran).
    pub report: Option<StepReport>,
}

/// One optimiser step over `examples`, split into micro-batches of `micro` examples, as one
/// rank of `c` (`SingleProcess`: the whole step): `examples` is the whole step's batch (the
/// same on every rank); this rank runs micro-batches `rank, rank + size, …`, and gradients, the
/// loss and the non-finite flag are summed over ranks before the step. A non-finite loss skips
/// the step without touching the parameters.
pub fn sft_step_on(
    c: &dyn Collective,
    model: &Transformer,
    opt: &mut AdamW,
    examples: &[SftExample],
    micro: usize,
    total_steps: usize,
) -> Result<SftStep> {
    let tokens: usize = examples.iter().map(|e| e.completion_ids.len()).sum();
    let denom = tokens.max(1) as f64;
    let mut grads = Grads::default();
    let mut loss_sum = 0.0;
    let mut finite = true;
    for (j, chunk) in examples.chunks(micro.max(1)).enumerate() {
        if j % c.size() != c.rank() {
            continue;
        }
        let pairs: Vec<(&[u32], &[u32])> =
            chunk.iter().map(|e| (e.prompt_ids.as_slice(), e.completion_ids.as_slice())).collect();
        let batch = build_batch(&pairs, model.device())?;
        let fwd = policy_forward(model, &batch)?;
        let loss = ((fwd.logps() * &batch.completion_mask)?.sum_all()?.neg()? / denom)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            finite = false;
            break;
        }
        loss_sum += value;
        grads.accumulate(fwd.gradients(&loss, opt)?)?;
    }
    let [loss_sum, non_finite] = sum_scalars(c, "SFT loss", [loss_sum, f64::from(u8::from(!finite))])?;
    if non_finite > 0.0 {
        return Ok(SftStep { loss: f64::NAN, tokens, report: None });
    }
    all_reduce_grads(c, &mut grads, opt.params())?;
    let report = opt.step(&grads, total_steps)?;
    Ok(SftStep { loss: loss_sum, tokens, report: Some(report) })
}

/// Non-finite steps in a row that abort an SFT run.
pub const MAX_CONSECUTIVE_SKIPS: usize = 5;

/// Batch and length settings of SFT (`[sft]` of `aha sft` and pipeline SFT stages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSettings {
    /// Passes over the data (used when `max_steps` is 0). Default 1.
    pub epochs: usize,
    /// Optimiser steps; 0 derives them from `epochs`. Default 0.
    pub max_steps: usize,
    /// Examples per optimiser step. Default 8.
    pub batch_size: usize,
    /// Examples per forward/backward (gradient accumulation); 0 = the whole batch. Default 0.
    pub micro_batch_size: usize,
}

impl Default for SftSettings {
    fn default() -> Self {
        Self { epochs: 1, max_steps: 0, batch_size: 8, micro_batch_size: 0 }
    }
}

impl SftSettings {
    /// Optimiser steps for a dataset of `rows` examples.
    pub fn total_steps(&self, rows: usize) -> usize {
        if self.max_steps > 0 {
            self.max_steps
        } else {
            self.epochs * rows.div_ceil(self.batch_size.max(1))
        }
    }

    /// Examples per forward/backward for a batch of `batch` examples.
    fn micro(&self, batch: usize) -> usize {
        if self.micro_batch_size == 0 {
            batch
        } else {
            self.micro_batch_size
        }
    }
}

/// Which figures each step writes to `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SftMetrics {
    /// `loss`, `lr`, `grad_norm`, `tokens`, `tokens_per_s`, `step_time`, `epoch`,
    /// `skipped_steps_total` (`aha sft`, pipeline stages).
    Full,
    /// `loss`, `lr`, `grad_norm` (the demo's cold start).
    Loss,
}

/// Checkpoints of an SFT run: `checkpoints/step-N/` under the run directory, the model, the
/// optimiser moments and the trainer state (step, cursor, guard counters, seed, config).
#[derive(Debug, Clone, PartialEq)]
pub struct SftCheckpoints {
    /// Save every N steps (0: only at the end); the last step always saves.
    pub save_steps: usize,
    /// Checkpoints kept (0 keeps all).
    pub keep_last: usize,
    /// The resolved config saved in every trainer state.
    pub config: serde_json::Value,
}

/// How an SFT run runs and what it writes.
#[derive(Debug, Clone, PartialEq)]
pub struct SftOptions {
    /// Steps, batch and micro-batch sizes.
    pub sft: SftSettings,
    /// Seed of the data order.
    pub seed: u64,
    /// The run directory: `metrics.jsonl`, `tb/`, `checkpoints/`.
    pub run_dir: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
    /// The figures each step logs.
    pub metrics: SftMetrics,
    /// Checkpoints; `None` saves none (the demo's cold start).
    pub checkpoints: Option<SftCheckpoints>,
}

/// An SFT run over `examples`: where it stands (step, data cursor, optimiser, guard counters)
/// and the loop that advances it.
pub struct SftRun<'a> {
    lm: &'a LoadedModel,
    examples: &'a [SftExample],
    opts: SftOptions,
    total: usize,
    /// The optimiser over the model's variables.
    pub opt: AdamW,
    /// Steps completed.
    pub step: usize,
    /// The data order.
    pub cursor: DataCursor,
    /// Non-finite steps in a row.
    pub consecutive_skips: usize,
    /// Non-finite steps so far.
    pub total_skips: usize,
    /// The data-parallel ranks this run is one of (one process by default).
    collective: &'a dyn Collective,
}

impl<'a> SftRun<'a> {
    /// A run at step 0 over `examples` (at least one; batches of at least one) with a fresh
    /// optimiser.
    pub fn new(lm: &'a LoadedModel, examples: &'a [SftExample], optim: OptimConfig, opts: SftOptions) -> Result<Self> {
        if examples.is_empty() {
            return Err(TrainError::Config("SFT: no training example".into()));
        }
        if opts.sft.batch_size == 0 {
            return Err(TrainError::Config("[sft].batch_size must be positive".into()));
        }
        let total = opts.sft.total_steps(examples.len());
        Ok(Self {
            lm,
            examples,
            total,
            opt: AdamW::new(named_vars(&lm.varmap), optim)?,
            step: 0,
            cursor: DataCursor::new(examples.len(), opts.seed, CursorState::default()),
            consecutive_skips: 0,
            total_skips: 0,
            opts,
            collective: &ALONE,
        })
    }

    /// Makes the run one rank of a data-parallel job (see the module doc).
    pub fn with_collective(mut self, c: &'a dyn Collective) -> Self {
        self.collective = c;
        self
    }

    /// The step the run ends at.
    pub fn total_steps(&self) -> usize {
        self.total
    }

    /// Continues from the checkpoint `dir` (the model must already hold its weights): the
    /// optimiser moments and steps, the step, the data cursor and the guard counters.
    pub fn restore(&mut self, dir: &Path) -> Result<()> {
        let (saved, moments) = load_state(dir, self.lm.model.device())?;
        self.opt.restore(&moments, saved.optimizer_steps)?;
        self.step = saved.step;
        self.cursor = DataCursor::new(self.examples.len(), self.opts.seed, saved.cursor);
        self.consecutive_skips = saved.consecutive_skips;
        self.total_skips = saved.total_skips;
        eprintln!("resumed from {} at step {}", dir.display(), self.step);
        Ok(())
    }

    /// Runs the steps left, writing metrics (after a run header) and the checkpoints due.
    pub fn run(&mut self) -> Result<()> {
        join_ranks(self.collective, self.step, &self.opt)?;
        let writes = self.collective.is_writer();
        let mut writer =
            if writes { Some(MetricsWriter::create(&self.opts.run_dir).map_err(metrics_err)?) } else { None };
        if let Some(w) = writer.as_mut() {
            w.log_run_header(&run_header("sft", &self.lm.model, self.step)).map_err(metrics_err)?;
        }
        let total = self.total as u64;
        let shown = self.opts.progress && writes;
        let mut bar = if shown { TrainProgress::new(total) } else { TrainProgress::hidden(total) };
        bar.set_step(self.step as u64);
        while self.step < self.total {
            let m = self.train_step()?;
            if let Some(w) = writer.as_mut() {
                w.log(self.step as u64, &m).map_err(metrics_err)?;
            }
            bar.set_metrics(&m);
            bar.set_step(self.step as u64);
            if self.save_due() {
                self.save()?;
            }
        }
        bar.finish();
        Ok(())
    }

    /// One optimiser step on the cursor's next batch; returns its metrics.
    fn train_step(&mut self) -> Result<Metrics> {
        let t0 = Instant::now();
        let batch: Vec<SftExample> =
            self.cursor.take(self.opts.sft.batch_size).into_iter().map(|i| self.examples[i].clone()).collect();
        // Data parallel without a micro-batch size: one micro-batch per rank.
        let micro = self.opts.sft.micro(batch.len().div_ceil(self.collective.size()));
        let out = sft_step_on(self.collective, &self.lm.model, &mut self.opt, &batch, micro, self.total)?;
        self.step += 1;
        self.guard(&out)?;
        Ok(self.step_metrics(&out, t0.elapsed().as_secs_f64()))
    }

    /// Counts a skipped (non-finite) step; aborts after too many in a row.
    fn guard(&mut self, out: &SftStep) -> Result<()> {
        if out.report.is_some_and(|r| r.applied) {
            self.consecutive_skips = 0;
            return Ok(());
        }
        self.consecutive_skips += 1;
        self.total_skips += 1;
        if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS {
            return Err(TrainError::Diverged(self.consecutive_skips, self.step));
        }
        Ok(())
    }

    fn step_metrics(&self, out: &SftStep, step_time: f64) -> Metrics {
        let mut m = Metrics::new();
        m.set("loss", out.loss);
        m.set("lr", out.report.map_or(0.0, |r| r.lr));
        m.set("grad_norm", out.report.map_or(f64::NAN, |r| r.grad_norm));
        if self.opts.metrics == SftMetrics::Full {
            m.set("tokens", out.tokens as f64);
            m.set("tokens_per_s", out.tokens as f64 / step_time.max(1e-9));
            m.set("step_time", step_time);
            m.set("epoch", self.cursor.state().epoch as f64);
            m.set("skipped_steps_total", self.total_skips as f64);
        }
        m
    }

    fn save_due(&self) -> bool {
        self.opts
            .checkpoints
            .as_ref()
            .is_some_and(|c| (c.save_steps > 0 && self.step.is_multiple_of(c.save_steps)) || self.step == self.total)
    }

    /// Saves a checkpoint (refusing a model with non-finite weights); a no-op without
    /// [`SftOptions::checkpoints`] and on every data-parallel rank but 0.
    pub fn save(&self) -> Result<()> {
        let Some(c) = &self.opts.checkpoints.as_ref().filter(|_| self.collective.is_writer()) else { return Ok(()) };
        ensure_finite(&self.lm.model)?;
        let state = TrainerState {
            step: self.step,
            optimizer_steps: self.opt.steps_done(),
            cursor: self.cursor.state(),
            consecutive_skips: self.consecutive_skips,
            total_skips: self.total_skips,
            seed: self.opts.seed,
            config: c.config.clone(),
        };
        save_checkpoint(&self.opts.run_dir, &self.lm.model, &self.lm.tokenizer, &self.opt, &state, None, c.keep_last)?;
        Ok(())
    }
}

fn metrics_err(e: aha_metrics::MetricsError) -> TrainError {
    TrainError::Other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aha_model::{init_tiny, load_model, ExecRequest, ModelSpec, TinySpec};

    fn examples() -> Vec<SftExample> {
        (0..6u32).map(|i| SftExample { prompt_ids: vec![40 + i, 41], completion_ids: vec![50 + i, 60, 258] }).collect()
    }

    fn options(run_dir: &Path, max_steps: usize) -> SftOptions {
        SftOptions {
            sft: SftSettings { max_steps, batch_size: 4, micro_batch_size: 3, ..SftSettings::default() },
            seed: 2,
            run_dir: run_dir.to_path_buf(),
            progress: false,
            metrics: SftMetrics::Full,
            checkpoints: Some(SftCheckpoints { save_steps: 2, keep_last: 0, config: serde_json::json!({}) }),
        }
    }

    fn optim() -> OptimConfig {
        OptimConfig { learning_rate: 1e-2, ..OptimConfig::default() }
    }

    fn weights(run_dir: &Path, step: usize) -> Vec<(String, Vec<f32>)> {
        let path = run_dir.join(format!("checkpoints/step-{step:06}/model.safetensors"));
        let mut named: Vec<_> =
            candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
    }

    fn losses(run_dir: &Path) -> Vec<f64> {
        let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines[0]["run"]["kind"] == "sft", "the run header comes first: {}", lines[0]);
        lines.iter().filter_map(|l| l["loss"].as_f64()).collect()
    }

    #[test]
    fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TinySpec { hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, ..TinySpec::default() };
        let ex = examples();
        let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
        let lm = init_tiny(&dir.path().join("m"), &spec, 1).unwrap();
        SftRun::new(&lm, &ex, optim(), options(&whole, 4)).unwrap().run().unwrap();

        let lm = init_tiny(&dir.path().join("m"), &spec, 1).unwrap();
        SftRun::new(&lm, &ex, optim(), options(&split, 2)).unwrap().run().unwrap();
        let ckpt = split.join("checkpoints/step-000002");
        let lm = load_model(&ModelSpec::HfDir(ckpt.clone()), &ExecRequest::default()).unwrap();
        let mut run = SftRun::new(&lm, &ex, optim(), options(&split, 4)).unwrap();
        run.restore(&ckpt).unwrap();
        assert_eq!((run.step, run.opt.steps_done(), run.cursor.state().index), (2, 2, 2));
        run.run().unwrap();

        assert_eq!(weights(&split, 4), weights(&whole, 4), "same weights after 4 steps");
        assert_ne!(weights(&whole, 2), weights(&whole, 4), "training moved the weights");
        assert_eq!(losses(&split), losses(&whole), "same loss at every step");
    }

    #[test]
    fn without_checkpoints_nothing_is_saved_and_the_short_metrics_are_logged() {
        let dir = tempfile::tempdir().unwrap();
        let lm =
            init_tiny(&dir.path().join("m"), &TinySpec { num_hidden_layers: 1, ..TinySpec::default() }, 1).unwrap();
        let ex = examples();
        let run_dir = dir.path().join("run");
        let opts = SftOptions { metrics: SftMetrics::Loss, checkpoints: None, ..options(&run_dir, 2) };
        SftRun::new(&lm, &ex, optim(), opts).unwrap().run().unwrap();
        assert!(!run_dir.join("checkpoints").exists());
        let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["step"], 2);
        assert!(last["loss"].is_number() && last.get("tokens").is_none(), "{last}");
        assert!(SftRun::new(&lm, &[], optim(), options(&run_dir, 2)).is_err(), "no examples, no run");
    }
}
