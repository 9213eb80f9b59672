//! Reward-model training ([`train_reward_model`]): the config, the loop and its report.
//!
//! The story: base model (any HF directory, GGUF or `aha init` directory) → classifier with a
//! small fresh head → rows read, split (prompt hash or a held-out file), templated and
//! tokenised once (too-long rows dropped and counted) → AdamW steps over batches drawn by a
//! seeded cursor, with micro-batch accumulation → held-out evaluation every N steps and at the
//! end → `final/` (a Hugging Face sequence-classification directory), `metrics.jsonl` +
//! TensorBoard, and `report.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aha_metrics::{Metrics, MetricsWriter, TrainProgress};
use aha_model::io::ModelSpec;
use aha_model::ExecRequest;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;
use crate::config::OptimConfig;
use crate::data::{CursorState, DataCursor, Skipped};
use crate::error::{Result, TrainError};
use crate::optim::{named_vars, AdamW, Grads};
use crate::rm::data::{read_rm_jsonl, Objective};
use crate::rm::eval::{evaluate, Example, HeldOut};
use crate::rm::model::RewardModel;
use crate::template::PromptTemplate;

/// The final model's directory under `output_dir`.
pub const FINAL_DIR: &str = "final";
/// The report file under `output_dir`.
pub const REPORT_FILE: &str = "report.json";

/// `[data]` of `aha rm train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmDataConfig {
    /// The JSONL rows (`{prompt, chosen, rejected}` or `{prompt, response, label}`).
    pub path: PathBuf,
    /// A held-out JSONL file of the same shape; without it `test_percent` of prompts are held
    /// out by hash. Default none.
    #[serde(default)]
    pub eval_path: Option<PathBuf>,
    /// Percentage of prompts held out when `eval_path` is absent. Default 10.
    #[serde(default = "default_test_percent")]
    pub test_percent: u64,
    /// How prompts are templated (`chat`, `r1_zero`, `raw`). Default `chat`.
    #[serde(default)]
    pub template: PromptTemplate,
    /// Longest sequence kept (prompt + response tokens); 0: the model's context. Default 0.
    #[serde(default)]
    pub max_length: usize,
}

fn default_test_percent() -> u64 {
    10
}

/// `[train]` of `aha rm train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RmTrainSettings {
    /// Optimiser steps; 0 derives them from `epochs`. Default 0.
    pub max_steps: usize,
    /// Passes over the training rows when `max_steps` is 0. Default 1.
    pub epochs: usize,
    /// Rows (pairs or labelled responses) per optimiser step. Default 16.
    pub batch_size: usize,
    /// Rows per forward/backward (gradient accumulation); 0 = the whole batch. Default 0.
    pub micro_batch_size: usize,
    /// Evaluate on the held-out rows every N steps (0: only at the end). Default 0.
    pub eval_every: usize,
    /// Sequences per forward when evaluating. Default 32.
    pub eval_batch_size: usize,
    /// Standard deviation of the fresh head's initialisation. Default 0.02.
    pub head_std: f64,
    /// Show a progress bar. Default true.
    pub progress: bool,
}

impl Default for RmTrainSettings {
    fn default() -> Self {
        Self {
            max_steps: 0,
            epochs: 1,
            batch_size: 16,
            micro_batch_size: 0,
            eval_every: 0,
            eval_batch_size: 32,
            head_std: 0.02,
            progress: true,
        }
    }
}

/// The whole `aha rm train` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmConfig {
    /// The base model (or a reward model to continue): HF directory, `.gguf` file, repo id.
    pub model: String,
    /// Where and how the model runs (`[exec]`: `device`, `dtype`, `backend`); `--device`,
    /// `--dtype` and `--backend` override it. Default CPU, f32, auto.
    #[serde(default)]
    pub exec: ExecRequest,
    /// The run directory (`final/`, metrics, report).
    pub output_dir: PathBuf,
    /// Seed of the head's initialisation and the data order. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// `pairwise` (Bradley–Terry) or `pointwise` (binary cross-entropy).
    pub objective: Objective,
    /// The data.
    pub data: RmDataConfig,
    /// Steps, batches, evaluation.
    #[serde(default)]
    pub train: RmTrainSettings,
    /// AdamW and schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// LoRA on the body (`[lora]`), the head trained in full; `final/` is saved merged.
    /// Default none (every parameter trains).
    #[serde(default)]
    pub lora: Option<aha_model::LoraConfig>,
}

impl RmConfig {
    /// Checks ranges once, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.train.batch_size == 0 || self.train.eval_batch_size == 0 {
            return bad("[train].batch_size and eval_batch_size must be positive");
        }
        if self.train.max_steps == 0 && self.train.epochs == 0 {
            return bad("[train]: give max_steps > 0 or epochs > 0");
        }
        if let Some(lora) = &self.lora {
            lora.validate("[lora]")?;
        }
        if self.data.eval_path.is_none() && !(1..100).contains(&self.data.test_percent) {
            return bad("[data].test_percent must lie in 1..=99 without an eval_path");
        }
        if !(self.optim.learning_rate > 0.0 && self.optim.learning_rate.is_finite()) {
            return bad("[optim].learning_rate must be a finite value > 0");
        }
        if !(self.train.head_std >= 0.0 && self.train.head_std.is_finite()) {
            return bad("[train].head_std must be a finite value >= 0");
        }
        Ok(())
    }

    /// Optimiser steps for `rows` training rows.
    pub fn total_steps(&self, rows: usize) -> usize {
        if self.train.max_steps > 0 {
            self.train.max_steps
        } else {
            self.train.epochs * rows.div_ceil(self.train.batch_size)
        }
    }
}

/// What a training run did and how well the model ranks held-out data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RmReport {
    /// The objective.
    pub objective: Objective,
    /// Training rows used.
    pub train_rows: usize,
    /// Held-out rows evaluated.
    pub eval_rows: usize,
    /// Where the held-out rows came from (`hash:<pct>%` or the file).
    pub eval_source: String,
    /// Rows dropped as longer than `max_length` (train + held-out).
    pub dropped_too_long: usize,
    /// Malformed rows skipped while reading (train + held-out).
    pub skipped_rows: usize,
    /// Optimiser steps run.
    pub steps: usize,
    /// Steps whose update was skipped (non-finite loss or gradient).
    pub skipped_steps: usize,
    /// Wall time in seconds.
    pub wall_s: f64,
    /// The saved model.
    pub final_dir: PathBuf,
    /// Held-out results over training (the last is the final model's).
    pub evals: Vec<HeldOut>,
}

impl RmReport {
    /// The final held-out result.
    pub fn last(&self) -> Option<&HeldOut> {
        self.evals.last()
    }
}

/// Trains a reward model as `cfg` says, writing the run directory; returns the report.
pub fn train_reward_model(cfg: &RmConfig) -> Result<RmReport> {
    cfg.validate()?;
    let t0 = Instant::now();
    let spec = ModelSpec::parse(&cfg.model);
    let mut rm = RewardModel::load(&spec, Some(cfg.data.template), cfg.train.head_std, cfg.seed, &cfg.exec)?;
    rm.objective = cfg.objective;
    if let Some(lora) = &cfg.lora {
        rm.apply_lora(lora, "[lora]")?;
    }
    let data = prepare_data(cfg, &rm)?;
    let total = cfg.total_steps(data.train.len());
    let out = &cfg.output_dir;
    std::fs::create_dir_all(out).map_err(crate::error::io_err(out))?;
    let mut writer = MetricsWriter::create(out).map_err(|e| TrainError::Other(e.to_string()))?;
    let header = crate::run::run_header("rm", &rm.inner.backbone, 0);
    writer.log_run_header(&header).map_err(|e| TrainError::Other(e.to_string()))?;
    let mut opt = AdamW::new(named_vars(&rm.inner.varmap), cfg.optim.clone())?;
    let mut cursor = DataCursor::new(data.train.len(), cfg.seed, CursorState::default());
    let mut bar =
        if cfg.train.progress { TrainProgress::new(total as u64) } else { TrainProgress::hidden(total as u64) };
    let mut evals = Vec::new();
    let mut skipped_steps = 0;
    let mut consecutive = 0;
    for step in 1..=total {
        let ts = Instant::now();
        let batch: Vec<&Example> = cursor.take(cfg.train.batch_size).into_iter().map(|i| &data.train[i]).collect();
        let st = train_step(&rm, &mut opt, &batch, cfg.train.micro_batch_size, total)?;
        if st.applied {
            consecutive = 0;
        } else {
            skipped_steps += 1;
            consecutive += 1;
            if consecutive >= 5 {
                return Err(TrainError::Diverged(consecutive, step));
            }
        }
        let mut m = Metrics::new();
        m.set("loss", st.loss);
        m.set("accuracy", st.accuracy);
        m.set("lr", st.lr);
        m.set("grad_norm", st.grad_norm);
        m.set("step_time", ts.elapsed().as_secs_f64());
        if step == total || (cfg.train.eval_every > 0 && step.is_multiple_of(cfg.train.eval_every)) {
            let h = evaluate(&rm, &data.eval, cfg.train.eval_batch_size, step)?;
            h.log_into(&mut m);
            bar.println(h.summary());
            evals.push(h);
        }
        writer.log(step as u64, &m).map_err(|e| TrainError::Other(e.to_string()))?;
        bar.set_metrics(&m);
        bar.set_step(step as u64);
    }
    bar.finish();
    let final_dir = out.join(FINAL_DIR);
    rm.save(&final_dir)?;
    let report = RmReport {
        objective: cfg.objective,
        train_rows: data.train.len(),
        eval_rows: data.eval.len(),
        eval_source: data.eval_source,
        dropped_too_long: data.too_long,
        skipped_rows: data.skipped,
        steps: total,
        skipped_steps,
        wall_s: t0.elapsed().as_secs_f64(),
        final_dir,
        evals,
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| TrainError::Other(e.to_string()))?;
    write_atomic(&out.join(REPORT_FILE), &json)?;
    Ok(report)
}

/// Tokenised train and held-out examples.
struct Prepared {
    train: Vec<Example>,
    eval: Vec<Example>,
    eval_source: String,
    too_long: usize,
    skipped: usize,
}

fn prepare_data(cfg: &RmConfig, rm: &RewardModel) -> Result<Prepared> {
    let (rows, skipped) = read_rm_jsonl(&cfg.data.path, cfg.objective)?;
    let mut skipped_n = report_skipped(&cfg.data.path, &skipped);
    let (train, held, source) = match &cfg.data.eval_path {
        Some(p) => {
            let (held, s) = read_rm_jsonl(p, cfg.objective)?;
            skipped_n += report_skipped(p, &s);
            (rows, held, p.display().to_string())
        }
        None => {
            let (a, b) = rows.split(cfg.data.test_percent);
            (a, b, format!("hash:{}%", cfg.data.test_percent))
        }
    };
    let limit = if cfg.data.max_length == 0 { rm.max_length() } else { cfg.data.max_length.min(rm.max_length()) };
    let (train, t1) = Example::encode_all(rm, &train, limit)?;
    let (eval, t2) = Example::encode_all(rm, &held, limit)?;
    if t1 + t2 > 0 {
        eprintln!("dropped {} row(s) longer than {limit} tokens", t1 + t2);
    }
    if train.is_empty() || eval.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: {} training and {} held-out rows left after the split and the length limit; both must be non-empty",
            cfg.data.path.display(),
            train.len(),
            eval.len()
        )));
    }
    Ok(Prepared { train, eval, eval_source: source, too_long: t1 + t2, skipped: skipped_n })
}

fn report_skipped(path: &Path, skipped: &Skipped) -> usize {
    for (line, reason) in skipped.0.iter().take(5) {
        eprintln!("{}:{line}: skipped: {reason}", path.display());
    }
    skipped.0.len()
}

/// One optimiser step's figures.
struct StepFigures {
    loss: f64,
    accuracy: f64,
    lr: f64,
    grad_norm: f64,
    applied: bool,
}

/// One AdamW step over `batch`, accumulated over micro-batches; the loss is the batch mean.
fn train_step(
    rm: &RewardModel,
    opt: &mut AdamW,
    batch: &[&Example],
    micro: usize,
    total: usize,
) -> Result<StepFigures> {
    let n = batch.len().max(1) as f64;
    let micro = if micro == 0 { batch.len() } else { micro };
    let mut grads = Grads::default();
    let (mut loss_sum, mut correct) = (0.0, 0.0);
    for chunk in batch.chunks(micro.max(1)) {
        let (loss, right) = batch_loss(rm, chunk)?;
        let loss = (loss * (chunk.len() as f64 / n))?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Ok(StepFigures {
                loss: f64::NAN,
                accuracy: f64::NAN,
                lr: 0.0,
                grad_norm: f64::NAN,
                applied: false,
            });
        }
        loss_sum += value;
        correct += right;
        grads.accumulate(opt.collect(&loss.backward()?))?;
    }
    let r = opt.step(&grads, total)?;
    Ok(StepFigures { loss: loss_sum, accuracy: correct / n, lr: r.lr, grad_norm: r.grad_norm, applied: r.applied })
}

/// The mean loss of a chunk (differentiable) and how many of its rows the model gets right.
fn batch_loss(rm: &RewardModel, chunk: &[&Example]) -> Result<(Tensor, f64)> {
    let dev = rm.inner.score.device().clone();
    match chunk.first() {
        Some(Example::Pair { .. }) => {
            let mut seqs: Vec<&[u32]> = Vec::with_capacity(2 * chunk.len());
            for e in chunk {
                if let Example::Pair { chosen, .. } = e {
                    seqs.push(chosen);
                }
            }
            for e in chunk {
                if let Example::Pair { rejected, .. } = e {
                    seqs.push(rejected);
                }
            }
            let b = seqs.len() / 2;
            let r = rm.forward(&seqs)?;
            let margin = (r.narrow(0, 0, b)? - r.narrow(0, b, b)?)?;
            let right = margin.to_vec1::<f32>()?.iter().filter(|&&d| d > 0.0).count() as f64;
            Ok((softplus(&margin.neg()?)?.mean_all()?, right))
        }
        Some(Example::Point { .. }) => {
            let mut seqs: Vec<&[u32]> = Vec::with_capacity(chunk.len());
            let mut labels = Vec::with_capacity(chunk.len());
            for e in chunk {
                if let Example::Point { ids, label, .. } = e {
                    seqs.push(ids);
                    labels.push(if *label { 1f32 } else { 0.0 });
                }
            }
            let r = rm.forward(&seqs)?;
            let right = r.to_vec1::<f32>()?.iter().zip(&labels).filter(|(s, y)| (**s >= 0.0) == (**y > 0.5)).count();
            let y = Tensor::from_vec(labels, chunk.len(), &dev)?;
            Ok(((softplus(&r)? - (r * y)?)?.mean_all()?, right as f64))
        }
        None => Err(TrainError::Other("empty reward-model batch".into())),
    }
}

/// log(1 + eˣ), stable for any x, written with differentiable ops.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = ((x.abs()?.neg()?.exp()? + 1.0)?).log()?;
    Ok((x.relu()? + tail)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn softplus_matches_its_closed_form_and_gives_the_bradley_terry_loss() {
        let xs = [-40.0f32, -2.0, 0.0, 0.5, 3.0, 40.0];
        let t = Tensor::new(&xs, &Device::Cpu).unwrap();
        let got = softplus(&t).unwrap().to_vec1::<f32>().unwrap();
        for (x, g) in xs.iter().zip(got) {
            let want = (1.0f64 + (*x as f64).exp()).ln();
            assert!((g as f64 - want).abs() < 1e-5 * want.max(1.0), "softplus({x}) = {g}, want {want}");
        }
        // −log σ(d) = softplus(−d): for a margin of 0 that is ln 2.
        let d = Tensor::new(&[0.0f32], &Device::Cpu).unwrap();
        let bt = softplus(&d.neg().unwrap()).unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((bt - std::f32::consts::LN_2).abs() < 1e-6);
    }

    #[test]
    fn config_denies_unknown_fields_and_derives_steps() {
        let text = "model = \"m\"\noutput_dir = \"o\"\nobjective = \"pairwise\"\n[data]\npath = \"d.jsonl\"\n";
        let cfg: RmConfig = toml_parse(text);
        assert_eq!(cfg.total_steps(33), 3);
        assert!(cfg.validate().is_ok());
        let err = toml::from_str::<RmConfig>(&format!("{text}[train]\nbatch_sise = 2\n")).unwrap_err();
        assert!(err.to_string().contains("batch_sise"), "{err}");
    }

    fn toml_parse(text: &str) -> RmConfig {
        toml::from_str(text).unwrap()
    }
}
