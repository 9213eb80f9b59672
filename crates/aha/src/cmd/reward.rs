//! `aha reward score`: scores a JSONL file of completions with the rewards named in a TOML config.
//!
//! Each input line is a JSON object (`completion`, `answer`, optional task fields such as `numbers`,
//! `target`, `tests`); each output line is the same object plus `rewards` ({name: score | null}),
//! `reward` (the weighted total, null when every reward was unscorable) and `unscorable`
//! ({name: reason}).

use aha_reward::{Registry, RewardsConfig, Sample};
use anyhow::{bail, Context};
use serde_json::Value;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

/// Reward tools.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: RewardCommand,
}

#[derive(clap::Subcommand)]
enum RewardCommand {
    /// Score completions: IN.jsonl → OUT.jsonl with `rewards`, `reward`, `unscorable` added.
    Score(ScoreArgs),
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// TOML file with `[[rewards]]` tables (kind, weight, options).
    #[arg(long)]
    config: PathBuf,
    /// Input JSONL.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL.
    #[arg(long)]
    output: PathBuf,
    /// Samples scored per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

/// Runs `aha reward …`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        RewardCommand::Score(a) => score(a),
    }
}

fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let config = RewardsConfig::from_toml_str(&text)?;
    let registry = Registry::build(&config)?;
    let input = std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let output = std::fs::File::create(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let mut out = BufWriter::new(output);
    let mut batch: Vec<Value> = Vec::new();
    for (i, line) in std::io::BufReader::new(input).lines().enumerate() {
        let line = line.context("reading input")?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).with_context(|| format!("line {}: invalid JSON", i + 1))?;
        if !value.is_object() {
            bail!("line {}: expected a JSON object", i + 1);
        }
        batch.push(value);
        if batch.len() >= args.batch.max(1) {
            flush(&registry, &mut batch, &mut out)?;
        }
    }
    flush(&registry, &mut batch, &mut out)?;
    out.flush()?;
    Ok(())
}

fn flush(registry: &Registry, batch: &mut Vec<Value>, out: &mut impl Write) -> anyhow::Result<()> {
    let samples = batch
        .iter()
        .map(|v| serde_json::from_value::<Sample>(v.clone()))
        .collect::<Result<Vec<_>, _>>()
        .context("a line lacks a string `completion`")?;
    let scored = registry.score_batch(&samples)?;
    for (mut value, s) in batch.drain(..).zip(scored) {
        if let Value::Object(map) = &mut value {
            map.insert("rewards".into(), serde_json::to_value(&s.rewards)?);
            map.insert("reward".into(), serde_json::to_value(s.reward)?);
            map.insert("unscorable".into(), serde_json::to_value(&s.unscorable)?);
        }
        serde_json::to_writer(&mut *out, &value)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
