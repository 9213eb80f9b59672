//! `aha filter --input samples.jsonl --out sft.jsonl [--cap N] [--mix FILE:RATIO]…`: the second
//! half of rejection sampling. Keeps the correct, well-formed samples of `aha sample` (with an
//! optional per-prompt cap, exact-duplicate removal and length bounds), writes them as SFT
//! JSONL that `aha sft` reads, mixed with other SFT JSONL files at `RATIO` rows per kept row,
//! and prints how many were kept and why the rest were dropped.

use std::path::PathBuf;

use aha_train::rejection::{filter, mix_files, read_samples, write_sft_jsonl, FilterConfig, MixSource, SftFormat};
use anyhow::{Context, Result};

/// Arguments of `aha filter`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Samples written by `aha sample`.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the SFT JSONL.
    #[arg(long)]
    pub out: PathBuf,
    /// Most samples kept per prompt (0: no cap).
    #[arg(long, default_value_t = 0)]
    pub cap: usize,
    /// Keep exact duplicates (same prompt, same completion text).
    #[arg(long)]
    pub keep_duplicates: bool,
    /// Keep samples the correctness reward rejected.
    #[arg(long)]
    pub keep_incorrect: bool,
    /// Keep samples that are not well formed.
    #[arg(long)]
    pub keep_malformed: bool,
    /// Fewest completion tokens.
    #[arg(long)]
    pub min_tokens: Option<usize>,
    /// Most completion tokens.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Fewest completion characters.
    #[arg(long)]
    pub min_chars: Option<usize>,
    /// Most completion characters.
    #[arg(long)]
    pub max_chars: Option<usize>,
    /// Row shape: `messages` (for the `chat` template) or `prompt-completion`.
    #[arg(long, default_value = "messages", value_parser = parse_format)]
    pub format: SftFormat,
    /// Another SFT JSONL file and its ratio, rows per kept row (`chat.jsonl:0.33`); repeatable.
    #[arg(long)]
    pub mix: Vec<MixSource>,
    /// Seed of the mixing draw and the final shuffle.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_format(s: &str) -> std::result::Result<SftFormat, String> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_"))).map_err(|e| e.to_string())
}

impl Args {
    fn config(&self) -> FilterConfig {
        FilterConfig {
            require_correct: !self.keep_incorrect,
            require_well_formed: !self.keep_malformed,
            per_prompt_cap: self.cap,
            dedup: !self.keep_duplicates,
            min_tokens: self.min_tokens,
            max_tokens: self.max_tokens,
            min_chars: self.min_chars,
            max_chars: self.max_chars,
            format: self.format,
        }
    }
}

/// Runs `aha filter`.
pub fn run(args: Args) -> Result<()> {
    let records = read_samples(&args.input)?;
    let (kept, stats) = filter(&records, &args.config());
    let (rows, mixed) = mix_files(kept, &args.mix, args.seed)?;
    write_sft_jsonl(&args.out, &rows).with_context(|| format!("writing {}", args.out.display()))?;
    println!("| | samples |\n| --- | ---: |");
    for (what, n) in [
        ("in", stats.total),
        ("kept", stats.kept),
        ("dropped: incorrect", stats.incorrect),
        ("dropped: malformed", stats.malformed),
        ("dropped: too short", stats.too_short),
        ("dropped: too long", stats.too_long),
        ("dropped: duplicate", stats.duplicate),
        ("dropped: over the per-prompt cap", stats.over_cap),
    ] {
        println!("| {what} | {n} |");
    }
    println!("\n{} of {} prompts kept at least one sample.", stats.prompts_kept, stats.prompts);
    for (source, (available, taken)) in args.mix.iter().zip(&mixed.sources) {
        println!("mixed {taken} rows of {} ({available} available, ratio {})", source.path.display(), source.ratio);
    }
    println!("{} SFT rows → {}", mixed.total, args.out.display());
    Ok(())
}
