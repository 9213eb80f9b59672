//! aha-metrics: observability for training runs, with no tensor dependency.
//!
//! - [`MetricsWriter`] appends one JSON object per step to `RUN_DIR/metrics.jsonl` and writes TensorBoard
//!   event files under `RUN_DIR/tb/` (TFRecord framing and the `Event` protobuf are encoded by hand in
//!   [`tensorboard`]); [`MetricsWriter::log_samples`] appends sample completions to `samples.jsonl`.
//! - [`read_metrics`] reads `metrics.jsonl` back, tolerating a truncated last line.
//! - [`reflection_frequency`] counts the reflection words of docs/DESIGN.md §1 per 1 000 words.
//! - [`pass_at_k`], [`majority_vote`], [`mean`], [`median`]: evaluation statistics; [`EvalRecord`] is the
//!   `eval_*.json` schema.
//! - [`draw_report`] draws PNG plots and `report.md` for a run directory (`aha report`).
//! - [`TrainProgress`] is the training progress bar.
//!
//! ```
//! use aha_metrics::{names, Metrics, MetricsWriter};
//! # let dir = tempfile::tempdir().unwrap();
//! let mut writer = MetricsWriter::create(dir.path())?;
//! let mut step = Metrics::new();
//! step.set(names::REWARD, 0.75).set(names::reward_mean("format"), 1.0);
//! writer.log(1, &step)?;
//! let log = aha_metrics::read_metrics(&dir.path().join("metrics.jsonl"))?;
//! assert_eq!(log.series("reward"), vec![(1, 0.75)]);
//! # Ok::<(), aha_metrics::MetricsError>(())
//! ```

mod crc32c;
mod error;
mod eval;
mod metrics;
mod progress;
mod reader;
mod reflection;
mod report;
mod stats;
pub mod tensorboard;
mod writer;

pub use crc32c::{crc32c, masked_crc32c};
pub use error::{MetricsError, Result};
pub use eval::{
    eval_summary_markdown, eval_table_markdown, extraction_cell, read_evals, write_eval, EvalRecord, TaskEval,
};
pub use metrics::{names, Metrics};
pub use progress::{format_metrics, TrainProgress};
pub use reader::{read_metrics, MetricsLog, StepRecord};
pub use reflection::{reflection_frequency, ReflectionCounts, REFLECTION_WORDS};
pub use report::{draw_report, smooth, PLOTS_DIR, REPORT_MD, REPORT_PNG};
pub use stats::{majority_vote, majority_vote_by, mean, median, pass_at_k, Vote};
pub use writer::{MetricsWriter, SampleLog, METRICS_FILE, RESERVED_KEYS, SAMPLES_FILE, TB_DIR};
