//! The `aha` command line: R1-style reinforcement learning for reasoning language models.
//!
//! Each subcommand lives in its own file under `cmd/`, exposing an `Args` struct (clap) and a
//! `run(args) -> anyhow::Result<()>` function. This file only dispatches.

mod alloc;
mod cmd;
mod config;
mod dp;
mod exec_args;
mod model_args;
mod pipeline;
mod runs;
mod threads;

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
    /// Run the demo: a tiny model learns multi-step arithmetic by SFT then GRPO.
    Demo(cmd::demo::Args),
    /// Draw PNG plots and a markdown report of a run directory.
    Report(cmd::report::Args),
    /// Create a tiny random model with an offline byte-level tokenizer.
    Init(cmd::init::Args),
    /// Answer one prompt with a model, streaming to stdout.
    Generate(cmd::generate::Args),
    /// Load a model (HF directory, GGUF, hub repo id) and save it as a HF directory.
    Convert(cmd::convert::Args),
    /// Fold a LoRA adapter (PEFT directory) into its base and save a HF directory.
    Merge(cmd::merge::Args),
    /// Train a model with GRPO from a TOML config.
    Grpo(cmd::grpo::Args),
    /// Supervised fine-tuning from a TOML config.
    Sft(cmd::sft::Args),
    /// Evaluate a model the R1 way: k samples per question, pass@1, cons@k, pass@k, lengths.
    Eval(cmd::eval::Args),
    /// Rejection sampling, step 1: sample k answers per question and score them (JSONL).
    Sample(cmd::sample::Args),
    /// Rejection sampling, step 2: keep the correct, well-formed samples as SFT JSONL, mixed.
    Filter(cmd::filter::Args),
    /// Reward models: train (pairwise or pointwise), score JSONL, make synthetic data.
    Rm(cmd::rm::Args),
    /// Run a recipe of stages (sft, grpo, sample, rm, eval): the R1 pipeline.
    Pipeline(cmd::pipeline::Args),
    /// Serve a model over an OpenAI-compatible HTTP API (completions, chat, weight reloads).
    Serve(cmd::serve::Args),
}

fn main() -> anyhow::Result<()> {
    alloc::init();
    threads::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Reward(args) => cmd::reward::run(args),
        Command::MathEqual(args) => cmd::math_equal::run(args),
        Command::Sandbox(args) => cmd::sandbox::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Report(args) => cmd::report::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Init(args) => cmd::init::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::Grpo(args) => cmd::grpo::run(args),
        Command::Sft(args) => cmd::sft::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Sample(args) => cmd::sample::run(args),
        Command::Filter(args) => cmd::filter::run(args),
        Command::Rm(args) => cmd::rm::run(args),
        Command::Pipeline(args) => cmd::pipeline::run(args),
        Command::Serve(args) => cmd::serve::run(args),
    }
}
