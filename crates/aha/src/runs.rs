//! What `aha grpo` and `aha sft` share around a run directory: where the starting weights
//! come from (the model or, on `--resume`, the latest checkpoint), the resolved config file,
//! and reports of skipped dataset rows.

use std::path::{Path, PathBuf};

use aha_model::{load_model, load_with_adapter, ExecRequest, LoadedModel, LoraConfig, ModelSpec};
use aha_train::checkpoint::latest_checkpoint;
use aha_train::data::Skipped;
use anyhow::{bail, Context, Result};

/// Arguments of `aha sft` and `aha grpo`: the config, resume, and the exec flags over its
/// `[exec]`.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// The TOML config (see `examples/sft-arithmetic.toml`, `examples/grpo-arithmetic.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from the run directory's latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Device, dtype and backend (over the config's `[exec]`).
    #[command(flatten)]
    pub exec: crate::exec_args::ExecArgs,
}

/// The resolved config, beside the run's metrics (checkpoints hold it in `trainer_state.json`).
pub const RESOLVED_CONFIG: &str = "aha_config.json";

/// Where a run's weights start: the model, an adapter on it to continue, fresh LoRA adapters.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    /// The model spec (HF directory, `.gguf`, hub repo id, or a PEFT adapter directory).
    pub model: &'a str,
    /// A PEFT adapter directory to continue training, on top of `model`.
    pub adapter: Option<&'a Path>,
    /// Fresh LoRA adapters to train on the frozen model.
    pub lora: Option<&'a LoraConfig>,
    /// Where and how the model runs.
    pub exec: &'a ExecRequest,
}

/// Loads the starting model: the latest checkpoint of `run_dir` when resuming (a LoRA run's
/// checkpoint is an adapter directory: its base with the adapter on top), else `start`'s model
/// with its adapter or fresh LoRA adapters. Returns the checkpoint used, if any. A run directory
/// that already holds checkpoints is not overwritten without `--resume`.
pub fn load_start(start: &Start, run_dir: &Path, resume: bool) -> Result<(LoadedModel, Option<PathBuf>)> {
    let model = start.model;
    let latest = latest_checkpoint(run_dir)?;
    let from = match (latest, resume) {
        (Some(dir), true) => Some(dir),
        (Some(dir), false) => {
            bail!(
                "{} already holds checkpoints (latest {}); pass --resume or choose another output_dir",
                run_dir.display(),
                dir.display()
            )
        }
        (None, true) => {
            eprintln!("--resume: {} has no checkpoint yet, starting from {model}", run_dir.display());
            None
        }
        (None, false) => None,
    };
    let lm = match &from {
        Some(dir) => {
            let lm = load_model(&ModelSpec::HfDir(dir.clone()), start.exec)
                .with_context(|| format!("loading the model from {}", dir.display()))?;
            let adapted = start.lora.is_some() || start.adapter.is_some();
            if adapted != lm.model.lora().is_some() {
                bail!(
                    "{}: the checkpoint {} LoRA adapters but the config {} `[lora]` or `adapter`",
                    dir.display(),
                    if lm.model.lora().is_some() { "holds" } else { "holds no" },
                    if adapted { "has" } else { "has no" }
                );
            }
            lm
        }
        None => fresh_start(start)?,
    };
    Ok((lm, from))
}

/// The model of a run that starts fresh, with the adapter to continue or new LoRA adapters.
fn fresh_start(start: &Start) -> Result<LoadedModel> {
    let what = match start.adapter {
        Some(a) => format!("{} with the adapter {}", start.model, a.display()),
        None => start.model.to_string(),
    };
    let mut lm = load_with_adapter(&ModelSpec::parse(start.model), start.adapter, start.exec)
        .with_context(|| format!("loading the model from {what}"))?;
    if let Some(lora) = start.lora {
        if lm.model.lora().is_some() {
            bail!("{what} already carries LoRA adapters and the config asks for new ones (`[lora]`): fold them into the base first with `aha merge`");
        }
        lm.apply_lora(lora, "[lora]")?;
    }
    if let Some(l) = lm.model.lora() {
        eprintln!("{}", lora_summary(&lm, l));
    }
    Ok(lm)
}

/// `LoRA r 16, alpha 32 on 7 projections: 4.9 M trainable parameters, base of 134.5 M frozen`.
pub fn lora_summary(lm: &LoadedModel, l: &LoraConfig) -> String {
    let count =
        |ps: Vec<(String, candle_core::Tensor)>| ps.iter().map(|(_, t)| t.elem_count()).sum::<usize>() as f64 / 1e6;
    format!(
        "LoRA r {}, alpha {} on {}: {:.2} M trainable parameters, base of {:.1} M frozen",
        l.r,
        l.alpha,
        l.target_modules.join("/"),
        count(lm.model.adapter_parameters()),
        count(lm.model.named_parameters())
    )
}

/// Writes the resolved config as pretty JSON into the run directory.
pub fn write_resolved_config(run_dir: &Path, config: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let path = run_dir.join(RESOLVED_CONFIG);
    std::fs::write(&path, serde_json::to_string_pretty(config)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Prints skipped rows (line numbers and reasons, the first 10) and their count.
pub fn report_skipped(path: &Path, skipped: &Skipped) {
    if skipped.0.is_empty() {
        return;
    }
    eprintln!("{}: skipped {} malformed row(s):", path.display(), skipped.0.len());
    for (line, reason) in skipped.0.iter().take(10) {
        eprintln!("  line {line}: {reason}");
    }
    if skipped.0.len() > 10 {
        eprintln!("  … and {} more", skipped.0.len() - 10);
    }
}

/// Draws the run's plots; a plotting failure is reported, not fatal, after a finished run.
pub fn draw_plots(run_dir: &Path) {
    match aha_metrics::draw_report(run_dir) {
        Ok(files) => eprintln!("report: {} file(s) under {}", files.len(), run_dir.display()),
        Err(e) => eprintln!("warning: no report drawn for {}: {e}", run_dir.display()),
    }
}
