//! `draw_report`: turns a run directory's `metrics.jsonl` and `eval_*.json` files into PNG plots (one per
//! metric under `plots/`, plus a combined `report.png` grid) and a `report.md` that links them.
//!
//! Panels, each drawn only when its data exists: reward, accuracy (training `accuracy`, or failing that
//! `rewards/accuracy/mean`, plus held-out pass@1 and cons@k from eval files), per-function reward means, completion length, KL, reflection-word
//! frequency, loss, gradient norm and entropy. Training series show faint raw points under a smoothed
//! line; evaluation series are marked points joined by a line.

mod plot;

use std::fs;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{MetricsError, Result};
use crate::eval::{eval_table_markdown, read_evals, EvalRecord};
use crate::metrics::names;
use crate::reader::{read_metrics, MetricsLog};
use crate::writer::METRICS_FILE;
pub use plot::smooth;
use plot::{draw_panel, ensure_font, Panel, Series, SeriesKind};

/// Directory of the per-metric PNGs inside a run directory.
pub const PLOTS_DIR: &str = "plots";
/// The combined grid image.
pub const REPORT_PNG: &str = "report.png";
/// The markdown report.
pub const REPORT_MD: &str = "report.md";

/// Size of a single-panel PNG.
const PANEL_SIZE: (u32, u32) = (960, 560);
/// Size of one cell of the grid.
const CELL_SIZE: (u32, u32) = (720, 440);

/// Draws the report of `run_dir` and returns the files written: `plots/<metric>.png` for each panel,
/// `report.png` and `report.md`. Fails with [`MetricsError::NothingToPlot`] when the directory has neither
/// metric records nor eval files.
pub fn draw_report(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let log = load_metrics(run_dir)?;
    let evals = read_evals(run_dir)?;
    let panels = build_panels(&log, &evals);
    if panels.is_empty() {
        return Err(MetricsError::NothingToPlot(run_dir.to_path_buf()));
    }
    ensure_font().map_err(|message| plot_error("font", message))?;
    let plots_dir = run_dir.join(PLOTS_DIR);
    fs::create_dir_all(&plots_dir).map_err(|e| MetricsError::io(&plots_dir, e))?;
    let mut written = Vec::new();
    for panel in &panels {
        let path = plots_dir.join(format!("{}.png", panel.stem));
        draw_single(&path, panel)?;
        written.push(path);
    }
    let grid = run_dir.join(REPORT_PNG);
    draw_grid(&grid, &panels)?;
    written.push(grid);
    let md = run_dir.join(REPORT_MD);
    let text = report_markdown(run_dir, &log, &evals, &panels);
    fs::write(&md, text).map_err(|e| MetricsError::io(&md, e))?;
    written.push(md);
    Ok(written)
}

/// Reads `metrics.jsonl` if present; an absent file is an empty log (an eval-only directory).
fn load_metrics(run_dir: &Path) -> Result<MetricsLog> {
    let path = run_dir.join(METRICS_FILE);
    if path.exists() {
        read_metrics(&path)
    } else {
        Ok(MetricsLog::default())
    }
}

fn plot_error(name: &str, message: impl ToString) -> MetricsError {
    MetricsError::Plot { name: name.to_string(), message: message.to_string() }
}

fn draw_single(path: &Path, panel: &Panel) -> Result<()> {
    let root = BitMapBackend::new(path, PANEL_SIZE).into_drawing_area();
    draw_panel(&root, panel).map_err(|m| plot_error(&panel.stem, m))?;
    root.present().map_err(|e| plot_error(&panel.stem, e))
}

fn draw_grid(path: &Path, panels: &[Panel]) -> Result<()> {
    let cols = if panels.len() <= 4 { 2.min(panels.len()) } else { 3 };
    let rows = panels.len().div_ceil(cols);
    let size = (CELL_SIZE.0 * cols as u32, CELL_SIZE.1 * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error("report", e))?;
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, panel).map_err(|m| plot_error(&panel.stem, m))?;
    }
    root.present().map_err(|e| plot_error("report", e))
}

/// A training series as plot points.
fn training(log: &MetricsLog, name: &str, label: &str) -> Option<Series> {
    let points: Vec<(f64, f64)> = log.series(name).into_iter().map(|(s, v)| (s as f64, v)).collect();
    (!points.is_empty()).then(|| Series { label: label.to_string(), points, kind: SeriesKind::RawAndSmoothed })
}

/// An evaluation series as plot points.
fn held_out(evals: &[EvalRecord], label: &str, value: impl Fn(&EvalRecord) -> Option<f64>) -> Option<Series> {
    let points: Vec<(f64, f64)> =
        evals.iter().filter_map(|e| value(e).map(|v| (e.step as f64, v))).filter(|(_, v)| v.is_finite()).collect();
    (!points.is_empty()).then(|| Series { label: label.to_string(), points, kind: SeriesKind::Markers })
}

fn panel(stem: &str, title: &str, y_desc: &str, series: Vec<Option<Series>>) -> Option<Panel> {
    let series: Vec<Series> = series.into_iter().flatten().collect();
    (!series.is_empty()).then(|| Panel {
        stem: stem.to_string(),
        title: title.to_string(),
        y_desc: y_desc.to_string(),
        unit_range: false,
        series,
    })
}

/// The per-function reward means (`rewards/<name>/mean`), one series each.
fn reward_components(log: &MetricsLog) -> Vec<Option<Series>> {
    log.names()
        .iter()
        .filter_map(|n| n.strip_prefix("rewards/")?.strip_suffix("/mean").map(|r| (n, r)))
        .map(|(name, reward)| training(log, name, reward))
        .collect()
}

fn build_panels(log: &MetricsLog, evals: &[EvalRecord]) -> Vec<Panel> {
    let accuracy = panel(
        "accuracy",
        "Accuracy",
        "fraction correct",
        vec![
            training(log, names::ACCURACY, "training samples")
                .or_else(|| training(log, &names::reward_mean("accuracy"), "training samples")),
            held_out(evals, "held-out pass@1", |e| Some(e.pass_at_1)),
            held_out(evals, "held-out cons@k", |e| Some(e.cons_at_k)),
        ],
    )
    .map(|p| Panel { unit_range: true, ..p });
    let length = vec![
        training(log, names::COMPLETION_MEAN_LENGTH, "training mean"),
        held_out(evals, "held-out mean", |e| Some(e.mean_completion_tokens)),
    ];
    let reflection = vec![
        training(log, names::REFLECTION_PER_1K_WORDS, "training"),
        held_out(evals, "held-out", |e| e.reflection_per_1k_words),
    ];
    let one = |name: &str| vec![training(log, name, name)];
    [
        panel("reward", "Reward", "mean reward", one(names::REWARD)),
        accuracy,
        panel("reward_components", "Rewards by function", "mean reward", reward_components(log)),
        panel("completion_length", "Completion length", "tokens", length),
        panel("kl", "KL to reference", "k3 estimate", one(names::KL)),
        panel("reflection", "Reflection words", "per 1 000 words", reflection),
        panel("loss", "Loss", "loss", one(names::LOSS)),
        panel("grad_norm", "Gradient norm", "norm before clipping", one(names::GRAD_NORM)),
        panel("entropy", "Entropy", "nats per token", one(names::ENTROPY)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn report_markdown(run_dir: &Path, log: &MetricsLog, evals: &[EvalRecord], panels: &[Panel]) -> String {
    let name =
        run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| run_dir.display().to_string());
    let mut md = format!("# Training report: {name}\n\n");
    if let (Some(first), Some(last)) = (log.records.first(), log.records.last()) {
        md.push_str(&format!("{} logged steps, {} to {}.\n\n", log.records.len(), first.step, last.step));
        md.push_str(&summary_table(log));
    }
    if !evals.is_empty() {
        md.push_str("\n## Evaluation\n\n");
        md.push_str(&eval_table_markdown(evals));
    }
    md.push_str(&format!("\n## Plots\n\n![All panels]({REPORT_PNG})\n\n"));
    for p in panels {
        md.push_str(&format!("### {}\n\n![{}]({PLOTS_DIR}/{}.png)\n\n", p.title, p.title, p.stem));
    }
    md
}

/// First, last, min and max of each metric.
fn summary_table(log: &MetricsLog) -> String {
    let mut table = String::from("| metric | first | last | min | max |\n| --- | ---: | ---: | ---: | ---: |\n");
    for name in log.names() {
        let values: Vec<f64> = log.series(&name).into_iter().map(|(_, v)| v).collect();
        let (Some(first), Some(last)) = (values.first(), values.last()) else {
            continue;
        };
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        table.push_str(&format!("| `{name}` | {} | {} | {} | {} |\n", num(*first), num(*last), num(min), num(max)));
    }
    table
}

/// Four decimals, scientific notation for very small or large magnitudes.
fn num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests;
