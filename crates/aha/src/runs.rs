//! What `aha grpo` and `aha sft` share around a run directory: where the starting weights
//! come from (the model or, on `--resume`, the latest checkpoint), the resolved config file,
//! and reports of skipped dataset rows.

use std::path::{Path, PathBuf};

use aha_model::{load_model, ExecRequest, LoadedModel, ModelSpec};
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

/// Loads the starting model: the latest checkpoint of `run_dir` when resuming, else `model`.
/// Returns the checkpoint used, if any. A run directory that already holds checkpoints is not
/// overwritten without `--resume`.
pub fn load_start(
    model: &str,
    run_dir: &Path,
    resume: bool,
    exec: &ExecRequest,
) -> Result<(LoadedModel, Option<PathBuf>)> {
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
    let spec = match &from {
        Some(dir) => ModelSpec::HfDir(dir.clone()),
        None => ModelSpec::parse(model),
    };
    let what = from.as_ref().map_or_else(|| model.to_string(), |d| d.display().to_string());
    let lm = load_model(&spec, exec).with_context(|| format!("loading the model from {what}"))?;
    Ok((lm, from))
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
