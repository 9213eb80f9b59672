//! The trainer crate's error type.

/// Errors from training: model and tensor failures, bad configuration, I/O, data.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A model-crate error (loading, shapes, ...).
    #[error(transparent)]
    Model(#[from] aha_model::ModelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration value is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// File I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint is missing, partial or inconsistent.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Too many consecutive non-finite steps: training is diverging.
    #[error("aborting: {0} consecutive steps had a non-finite loss or gradient (last at step {1})")]
    Diverged(usize, usize),
    /// Anything else worth a message.
    #[error("{0}")]
    Other(String),
}

/// Result alias for the trainer crate.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Wraps an I/O error with its path.
pub fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}
