//! `aha sample --model M (--data D.jsonl | --task NAME) --k K [--out samples.jsonl]`: the first
//! half of rejection sampling. Writes every sample, one JSON object a line, with its rewards
//! (per component and the weighted total), extracted answer (under `--extract r1|free`) and
//! verdicts (`correct`, `well_formed`); `aha filter` turns them into SFT data. A `--task` is sampled on its train
//! split unless `--split test` is given.

use std::path::PathBuf;

use aha_metrics::TrainProgress;
use aha_train::rejection::{sample, write_samples, SampleJob};
use aha_train::tasks::Split;
use anyhow::{Context, Result};

use super::eval::SamplingArgs;

/// Arguments of `aha sample`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Where to write the samples (JSONL).
    #[arg(long, default_value = "samples.jsonl")]
    pub out: PathBuf,
}

/// Runs `aha sample`.
pub fn run(args: Args) -> Result<()> {
    let s = &args.sampling;
    let job = SampleJob { data: s.source(Split::Train), sampling: s.generation(), rewards: s.rewards()? };
    let lm = s.load_model()?;
    eprintln!("sample: {}", s.describe());
    let mut bar = TrainProgress::new(0);
    let records = sample(&lm, &job, &mut bar)?;
    write_samples(&args.out, &records).with_context(|| format!("writing {}", args.out.display()))?;
    let correct = records.iter().filter(|r| r.correct).count();
    let formed = records.iter().filter(|r| r.well_formed).count();
    let both = records.iter().filter(|r| r.correct && r.well_formed).count();
    let extracted = records.iter().filter(|r| r.extracted.is_some()).count();
    println!(
        "{} samples → {}: {correct} correct, {formed} well formed, {both} both; {extracted} answered ({} extraction)",
        records.len(),
        args.out.display(),
        s.extract
    );
    Ok(())
}
