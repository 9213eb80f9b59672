//! The error type of the reward crate.

/// Everything that can go wrong while building or running rewards (not a per-sample verdict:
/// those are [`crate::Score::Unscorable`]).
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// The rewards config could not be parsed.
    #[error("invalid rewards config: {0}")]
    Config(String),
    /// Too many panics were caught while scoring: a bug, not a verdict.
    #[error("{count} panics caught while scoring (limit {limit}); last: {last}")]
    TooManyPanics {
        /// Panics caught so far.
        count: usize,
        /// The configured limit.
        limit: usize,
        /// The message of the last panic.
        last: String,
    },
    /// An I/O error (sandbox set-up, fixtures).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}
