//! The model crate's error type: every failure names the file, tensor or field it concerns.

use std::path::PathBuf;

/// Errors from building, loading, saving or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor operation failed (shape mismatch, device error, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A JSON file (config.json, tokenizer_config.json, ...) is malformed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file concerned.
        path: PathBuf,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },
    /// A configuration field is missing or has a value aha cannot use.
    #[error("{path}: field `{field}`: {reason}")]
    Config {
        /// The config file (or a description of where the config came from).
        path: PathBuf,
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A device, dtype or backend that cannot be used (names the flag or field and the feature).
    #[error("{0}")]
    Device(String),
    /// A configuration that is internally inconsistent (no file involved).
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// A required file is absent (the hint says what it is for or where it is looked for).
    #[error("{path}: file not found ({hint})")]
    MissingFile {
        /// The path looked for.
        path: PathBuf,
        /// What the file is and why it is needed.
        hint: String,
    },
    /// A weights file (safetensors or GGUF) is truncated, corrupt or of an unsupported kind.
    #[error("{path}: {reason}")]
    WeightsFile {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// One tensor of a weights file is missing, has the wrong shape or an unsupported type.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        /// The weights file (or the directory when the tensor is missing from every shard).
        path: PathBuf,
        /// The tensor's name (Hugging Face name, GGUF name in parentheses where it differs).
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tokenizer could not be loaded or failed to encode or decode.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file (or a description of its origin).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The chat template failed to compile or render (including `raise_exception` from it).
    #[error("chat template ({origin}): {reason}")]
    ChatTemplate {
        /// Where the template came from (file and key).
        origin: String,
        /// The Jinja error, with line where known.
        reason: String,
    },
    /// A model specification (path or repo id) could not be resolved.
    #[error("cannot resolve model `{spec}`: {reason}")]
    Resolve {
        /// The specification as given by the user.
        spec: String,
        /// Why it could not be resolved.
        reason: String,
    },
}

/// Result alias for the model crate.
pub type Result<T> = std::result::Result<T, ModelError>;
