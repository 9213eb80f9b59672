//! The one error type of this crate: every fallible function returns `Result<T, MetricsError>`.

use std::path::PathBuf;

/// What can go wrong while writing, reading or drawing metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A file could not be created, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of a JSONL or JSON file is not what this crate wrote (not counting a truncated last line).
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The 1-based line number (1 for a whole-file JSON document).
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A metric used a name that the JSONL format reserves for itself (`step`, `wall_time`).
    #[error("metric name {0:?} is reserved")]
    ReservedName(String),
    /// An event file record has a bad length, a bad checksum or a malformed protobuf.
    #[error("event file: {0}")]
    Event(String),
    /// Arguments that make no sense for an estimator (for example pass@k with k > n).
    #[error("invalid estimator arguments: {0}")]
    Estimator(String),
    /// A run directory holds nothing to report (no metrics.jsonl records and no eval files).
    #[error("{0}: nothing to plot (no metrics.jsonl records, no eval_*.json files)")]
    NothingToPlot(PathBuf),
    /// Drawing a plot failed.
    #[error("plot {name}: {message}")]
    Plot {
        /// The plot that failed.
        name: String,
        /// The backend's message.
        message: String,
    },
}

impl MetricsError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MetricsError::Io { path: path.into(), source }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = MetricsError> = std::result::Result<T, E>;
