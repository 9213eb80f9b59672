//! One module per `aha` subcommand; `main.rs` dispatches to their `run` functions.
pub mod bench;
pub mod convert;
pub mod demo;
pub mod eval;
pub mod filter;
pub mod generate;
pub mod grpo;
pub mod init;
pub mod math_equal;
pub mod merge;
pub mod pipeline;
pub mod report;
pub mod reward;
pub mod rm;
pub mod sample;
pub mod sandbox;
pub mod sft;
