//! Rejection sampling (R1 stage 3): sample k answers per prompt, keep the correct, well-formed
//! ones, and write them as SFT data mixed with other SFT data in a given ratio.
//!
//! - [`sample`] / [`sample_set`]: every sample with its rewards (per component and total), its
//!   extracted answer and its verdicts ([`SampleRecord`]).
//! - [`filter`]: a pure function of the records and a [`FilterConfig`]. Each dropped sample is
//!   counted under the first reason that applies, in this order: incorrect, malformed, too
//!   short, too long, duplicate (same prompt and exact same completion text as a sample kept
//!   before it), over the per-prompt cap (the first `per_prompt_cap` survivors of a prompt, in
//!   sample order, are kept). Prompts are told apart by their text.
//! - [`mix`]: adds `round(ratio × kept)` rows of each other source, drawn without replacement
//!   (a source smaller than that is used whole, as often as needed, plus a seeded sample of
//!   the remainder), then shuffles everything with the seed. `ratio` is rows of that source
//!   per kept row: the paper's 600k reasoning + 200k non-reasoning samples is a ratio of 1/3.
//! - [`run_rejection`]: all three from a serde-typed [`RejectionJob`], writing both files.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use aha_metrics::TrainProgress;
use aha_model::{ChatMessage, LoadedModel, Transformer};
use aha_reward::{Registry, RewardSpec};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{io_err, Result, TrainError};
use crate::eval::{build_registry, load_questions};
use crate::grpo::TextCodec;
use crate::samples::{generate_scored, GenSettings, SampleRecord};
use crate::sft_data::{read_sft_jsonl, SftColumns, SftRow};
use crate::source::PromptSource;
use crate::template::EncodedPrompts;

/// What `aha sample` runs: questions, sampling, rewards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleJob {
    /// The questions.
    pub data: PromptSource,
    /// Sampling and judging (`[sampling]`).
    #[serde(default)]
    pub sampling: GenSettings,
    /// Rewards; empty: the data's default `accuracy` + `format`. Default empty.
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
}

/// Samples `job.sampling.k` completions per question of `job.data` from a loaded model.
pub fn sample(lm: &LoadedModel, job: &SampleJob, progress: &mut TrainProgress) -> Result<Vec<SampleRecord>> {
    let set = load_questions(lm, &job.data, job.sampling.max_new_tokens)?;
    let registry = build_registry(&job.data, &job.rewards)?;
    sample_set(&lm.model, &set, &lm.tokenizer, &registry, &job.sampling, progress)
}

/// Samples and scores already-encoded prompts; the records of all prompts, in order.
pub fn sample_set(
    model: &Transformer,
    set: &EncodedPrompts,
    codec: &dyn TextCodec,
    registry: &Registry,
    settings: &GenSettings,
    progress: &mut TrainProgress,
) -> Result<Vec<SampleRecord>> {
    Ok(generate_scored(model, set, codec, registry, settings, progress)?.into_iter().flatten().collect())
}

/// How kept samples are written as SFT rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SftFormat {
    /// `{"messages": [{user: prompt}, {assistant: completion}]}`: for prompts sampled with the
    /// `chat` template. Default.
    #[default]
    Messages,
    /// `{"prompt", "completion"}`: for the `r1_zero` and `raw` templates (set the same template
    /// in `aha sft`'s `[data]`).
    PromptCompletion,
}

/// What the filter keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Keep only samples the correctness reward accepted. Default true.
    pub require_correct: bool,
    /// Keep only well-formed samples. Default true.
    pub require_well_formed: bool,
    /// Most samples kept per prompt (0: no cap). Default 0.
    pub per_prompt_cap: usize,
    /// Drop a sample whose completion text equals one already kept for the same prompt. Default true.
    pub dedup: bool,
    /// Fewest completion tokens. Default none.
    pub min_tokens: Option<usize>,
    /// Most completion tokens. Default none.
    pub max_tokens: Option<usize>,
    /// Fewest completion characters. Default none.
    pub min_chars: Option<usize>,
    /// Most completion characters. Default none.
    pub max_chars: Option<usize>,
    /// How kept samples become SFT rows. Default `messages`.
    pub format: SftFormat,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            require_correct: true,
            require_well_formed: true,
            per_prompt_cap: 0,
            dedup: true,
            min_tokens: None,
            max_tokens: None,
            min_chars: None,
            max_chars: None,
            format: SftFormat::default(),
        }
    }
}

/// What the filter kept and why it dropped the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStats {
    /// Samples in.
    pub total: usize,
    /// Samples kept.
    pub kept: usize,
    /// Dropped: not correct.
    pub incorrect: usize,
    /// Dropped: not well formed.
    pub malformed: usize,
    /// Dropped: shorter than the minimum.
    pub too_short: usize,
    /// Dropped: longer than the maximum.
    pub too_long: usize,
    /// Dropped: same prompt and completion as a kept sample.
    pub duplicate: usize,
    /// Dropped: the prompt already had `per_prompt_cap` samples kept.
    pub over_cap: usize,
    /// Distinct prompts in.
    pub prompts: usize,
    /// Distinct prompts with at least one sample kept.
    pub prompts_kept: usize,
}

/// Why a sample is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    Incorrect,
    Malformed,
    TooShort,
    TooLong,
}

impl FilterConfig {
    /// The first per-sample reason to drop `r`, if any (duplicates and the cap need context).
    fn reject(&self, r: &SampleRecord) -> Option<Reject> {
        let chars = r.completion.chars().count();
        let below = |v: usize, min: Option<usize>| min.is_some_and(|m| v < m);
        let above = |v: usize, max: Option<usize>| max.is_some_and(|m| v > m);
        if self.require_correct && !r.correct {
            Some(Reject::Incorrect)
        } else if self.require_well_formed && !r.well_formed {
            Some(Reject::Malformed)
        } else if below(r.completion_tokens, self.min_tokens) || below(chars, self.min_chars) {
            Some(Reject::TooShort)
        } else if above(r.completion_tokens, self.max_tokens) || above(chars, self.max_chars) {
            Some(Reject::TooLong)
        } else {
            None
        }
    }

    /// The SFT row of a kept sample.
    fn row(&self, r: &SampleRecord) -> SftRow {
        match self.format {
            SftFormat::Messages => SftRow::Chat(vec![
                ChatMessage::new("user", r.prompt.clone()),
                ChatMessage::new("assistant", r.completion.clone()),
            ]),
            SftFormat::PromptCompletion => {
                SftRow::PromptCompletion { prompt: r.prompt.clone(), completion: r.completion.clone() }
            }
        }
    }
}

/// Keeps the samples `cfg` accepts (see the module docs for the order of the checks), in
/// input order, as SFT rows.
pub fn filter(records: &[SampleRecord], cfg: &FilterConfig) -> (Vec<SftRow>, FilterStats) {
    let mut stats = FilterStats { total: records.len(), ..FilterStats::default() };
    let mut per_prompt: HashMap<&str, usize> = HashMap::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut rows = Vec::new();
    for r in records {
        let count = per_prompt.entry(r.prompt.as_str()).or_insert(0);
        match cfg.reject(r) {
            Some(Reject::Incorrect) => stats.incorrect += 1,
            Some(Reject::Malformed) => stats.malformed += 1,
            Some(Reject::TooShort) => stats.too_short += 1,
            Some(Reject::TooLong) => stats.too_long += 1,
            None if cfg.dedup && seen.contains(&(r.prompt.as_str(), r.completion.as_str())) => stats.duplicate += 1,
            None if cfg.per_prompt_cap > 0 && *count >= cfg.per_prompt_cap => stats.over_cap += 1,
            None => {
                *count += 1;
                seen.insert((r.prompt.as_str(), r.completion.as_str()));
                rows.push(cfg.row(r));
            }
        }
    }
    stats.kept = rows.len();
    stats.prompts = per_prompt.len();
    stats.prompts_kept = per_prompt.values().filter(|&&n| n > 0).count();
    (rows, stats)
}

/// Another SFT JSONL file mixed in at `ratio` rows per kept row (`--mix FILE:RATIO`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixSource {
    /// An SFT JSONL file (`messages` or prompt/completion rows).
    pub path: PathBuf,
    /// Rows of this file per kept row (≥ 0).
    pub ratio: f64,
}

impl std::str::FromStr for MixSource {
    type Err = String;

    /// Parses `FILE:RATIO` (the ratio after the last colon).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (path, ratio) = s.rsplit_once(':').ok_or_else(|| format!("`{s}`: expected FILE:RATIO"))?;
        let ratio: f64 = ratio.parse().map_err(|e| format!("`{s}`: bad ratio `{ratio}`: {e}"))?;
        if path.is_empty() || !(ratio >= 0.0 && ratio.is_finite()) {
            return Err(format!("`{s}`: expected FILE:RATIO with a finite ratio >= 0"));
        }
        Ok(MixSource { path: PathBuf::from(path), ratio })
    }
}

/// How many rows each mixed source gave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixStats {
    /// Rows from rejection sampling.
    pub kept: usize,
    /// Per source: (rows available, rows taken), in the order given.
    pub sources: Vec<(usize, usize)>,
    /// Rows out.
    pub total: usize,
}

/// Rows of a source for `kept` kept rows at `ratio`: `round(ratio × kept)`.
pub fn mix_count(kept: usize, ratio: f64) -> usize {
    (ratio * kept as f64).round() as usize
}

/// Mixes `kept` with `round(ratio × kept)` rows of each `(rows, ratio)` source and shuffles
/// the result, all deterministic in `seed`.
pub fn mix(kept: Vec<SftRow>, sources: &[(Vec<SftRow>, f64)], seed: u64) -> Result<(Vec<SftRow>, MixStats)> {
    let mut stats = MixStats { kept: kept.len(), ..MixStats::default() };
    let base = kept.len();
    let mut out = kept;
    for (i, (rows, ratio)) in sources.iter().enumerate() {
        if !(*ratio >= 0.0 && ratio.is_finite()) {
            return Err(TrainError::Config(format!("mix source {i}: ratio must be a finite value >= 0, got {ratio}")));
        }
        let want = mix_count(base, *ratio);
        if want > 0 && rows.is_empty() {
            return Err(TrainError::Config(format!("mix source {i} has no rows but {want} are wanted")));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x6d69_7800 + i as u64));
        out.extend(draw(rows, want, &mut rng));
        stats.sources.push((rows.len(), want));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5348_5546);
    out.shuffle(&mut rng);
    stats.total = out.len();
    Ok((out, stats))
}

/// `want` rows of `rows`: whole copies while `want ≥ len`, then a seeded sample without
/// replacement of the remainder.
fn draw(rows: &[SftRow], want: usize, rng: &mut ChaCha8Rng) -> Vec<SftRow> {
    if rows.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(want);
    for _ in 0..want / rows.len() {
        out.extend_from_slice(rows);
    }
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    idx.shuffle(rng);
    out.extend(idx[..want % rows.len()].iter().map(|&i| rows[i].clone()));
    out
}

/// Reads each `--mix` file (malformed rows skipped and counted) and mixes it into `kept`.
pub fn mix_files(kept: Vec<SftRow>, sources: &[MixSource], seed: u64) -> Result<(Vec<SftRow>, MixStats)> {
    let mut loaded = Vec::with_capacity(sources.len());
    for s in sources {
        let (rows, skipped) = read_sft_jsonl(&s.path, &SftColumns::default())?;
        if !skipped.0.is_empty() {
            eprintln!("{}: skipped {} malformed row(s)", s.path.display(), skipped.0.len());
        }
        loaded.push((rows, s.ratio));
    }
    mix(kept, &loaded, seed)
}

/// Rejection sampling from start to end, as a pipeline stage runs it: sample, filter, mix.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectionJob {
    /// What to sample (`[sample]`, `[sample.data]`, `[sample.sampling]`).
    pub sample: SampleJob,
    /// What to keep (`[filter]`). Default: correct and well formed, deduplicated, no cap.
    #[serde(default)]
    pub filter: FilterConfig,
    /// Other SFT files mixed in (`[[mix]]`, each `path` and `ratio`). Default none.
    #[serde(default)]
    pub mix: Vec<MixSource>,
    /// Seed of the mixing draw and the shuffle. Default 0.
    #[serde(default)]
    pub seed: u64,
}

/// What [`run_rejection`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionReport {
    /// Kept and dropped samples.
    pub filter: FilterStats,
    /// Rows per mixed source and in all.
    pub mix: MixStats,
}

/// Samples with `lm`, writes every sample to `samples_out`, filters and mixes, and writes the
/// SFT JSONL to `sft_out`.
pub fn run_rejection(
    lm: &LoadedModel,
    job: &RejectionJob,
    samples_out: &Path,
    sft_out: &Path,
    progress: &mut TrainProgress,
) -> Result<RejectionReport> {
    let records = sample(lm, &job.sample, progress)?;
    write_samples(samples_out, &records)?;
    let (kept, filter_stats) = filter(&records, &job.filter);
    let (rows, mix_stats) = mix_files(kept, &job.mix, job.seed)?;
    write_sft_jsonl(sft_out, &rows)?;
    Ok(RejectionReport { filter: filter_stats, mix: mix_stats })
}

/// The JSON line of an SFT row, in the shape `aha sft` reads.
pub fn sft_row_json(row: &SftRow) -> serde_json::Value {
    match row {
        SftRow::Chat(messages) => json!({ "messages": messages }),
        SftRow::PromptCompletion { prompt, completion } => json!({ "prompt": prompt, "completion": completion }),
    }
}

/// Writes SFT rows as JSONL.
pub fn write_sft_jsonl(path: &Path, rows: &[SftRow]) -> Result<()> {
    write_lines(path, rows.iter().map(sft_row_json))
}

/// Writes sample records as JSONL.
pub fn write_samples<'a>(path: &Path, records: impl IntoIterator<Item = &'a SampleRecord>) -> Result<()> {
    let mut values = Vec::new();
    for r in records {
        values.push(serde_json::to_value(r).map_err(|e| TrainError::Other(e.to_string()))?);
    }
    write_lines(path, values)
}

fn write_lines(path: &Path, values: impl IntoIterator<Item = serde_json::Value>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut out = BufWriter::new(file);
    for v in values {
        writeln!(out, "{v}").map_err(io_err(path))?;
    }
    out.flush().map_err(io_err(path))
}

/// Reads sample records written by [`write_samples`]; a malformed line is an error naming it.
pub fn read_samples(path: &Path) -> Result<Vec<SampleRecord>> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str(&line)
            .map_err(|e| TrainError::Other(format!("{}:{}: not a sample record: {e}", path.display(), i + 1)))?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
