//! `aha report RUN_DIR`: draws a run's plots from its `metrics.jsonl` and `eval_*.json` files.
//!
//! Writes `plots/<metric>.png` (reward, accuracy, per-function rewards, completion length, KL,
//! reflection-word frequency, loss, …, each only when logged), a combined `report.png` grid and a
//! `report.md` linking them, all inside the run directory, and prints the paths it wrote.

use std::path::PathBuf;

use anyhow::Context;

/// Draw PNG plots and a markdown report for a run directory.
#[derive(clap::Args)]
pub struct Args {
    /// The run directory (holding `metrics.jsonl` and/or `eval_*.json`).
    run_dir: PathBuf,
}

/// Runs `aha report`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let written = aha_metrics::draw_report(&args.run_dir)
        .with_context(|| format!("drawing the report of {}", args.run_dir.display()))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}
