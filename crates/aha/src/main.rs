//! The `aha` command line: R1-style reinforcement learning for reasoning language models.
//!
//! Each subcommand lives in its own file under `cmd/`, exposing an `Args` struct (clap) and a
//! `run(args) -> anyhow::Result<()>` function. This file only dispatches.

mod alloc;
mod cmd;

use clap::{Parser, Subcommand};

/// R1-style reinforcement learning for reasoning language models.
#[derive(Parser)]
#[command(name = "aha", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score completions with the configured rewards (JSONL in, JSONL out).
    Reward(cmd::reward::Args),
    /// Decide math equivalence of gold/pred pairs (JSONL).
    MathEqual(cmd::math_equal::Args),
    /// Run a program in the OS sandbox.
    Sandbox(cmd::sandbox::Args),
    /// Measure rollout or training speed on fixed model shapes.
    Bench(cmd::bench::Args),
    /// Draw PNG plots and a markdown report of a run directory.
    Report(cmd::report::Args),
}

fn main() -> anyhow::Result<()> {
    alloc::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Reward(args) => cmd::reward::run(args),
        Command::MathEqual(args) => cmd::math_equal::run(args),
        Command::Sandbox(args) => cmd::sandbox::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Report(args) => cmd::report::run(args),
    }
}
