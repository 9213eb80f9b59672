//! `aha rm`: reward models. `train --config FILE` trains one (pairwise Bradley–Terry or
//! pointwise binary cross-entropy, see `examples/rm-helpful.toml` and `examples/rm-safety.toml`),
//! `score --model RM --data FILE` scores JSONL rows in batches, `make-data --kind helpful|safety`
//! writes the deterministic synthetic datasets.

use std::io::Write;
use std::path::{Path, PathBuf};

use aha_train::rm::eval::Confusion;
use aha_train::rm::synth::write_jsonl;
use aha_train::rm::{make_rows, train_reward_model, RewardModel, RmConfig, SynthKind};
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::exec_args::ExecArgs;
use crate::runs::{draw_plots, write_resolved_config};

/// Arguments of `aha rm`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: RmCommand,
}

/// The `aha rm` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum RmCommand {
    /// Train a reward model from a TOML config.
    Train(TrainArgs),
    /// Score JSONL rows (`prompt` + `response`, or `prompt` + `chosen` + `rejected`).
    Score(ScoreArgs),
    /// Write a deterministic synthetic dataset (helpfulness pairs or safety labels).
    MakeData(MakeDataArgs),
}

/// Arguments of `aha rm train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The TOML config (see `examples/rm-helpful.toml`).
    #[arg(long)]
    pub config: PathBuf,
    /// Device, dtype and backend (over the config's `[exec]`).
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Arguments of `aha rm score`.
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// The reward-model directory (`aha rm train`'s `final/`).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL rows to score.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the rows with their scores (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Sequences per forward.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Device, dtype and backend.
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Arguments of `aha rm make-data`.
#[derive(clap::Args, Debug)]
pub struct MakeDataArgs {
    /// `helpful` (pairs) or `safety` (labels).
    #[arg(long, value_parser = parse_kind)]
    pub kind: SynthKind,
    /// Rows to write.
    #[arg(long, default_value_t = 2000)]
    pub n: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The JSONL file to write.
    #[arg(long)]
    pub out: PathBuf,
}

fn parse_kind(s: &str) -> std::result::Result<SynthKind, String> {
    match s {
        "helpful" => Ok(SynthKind::Helpful),
        "safety" => Ok(SynthKind::Safety),
        other => Err(format!("unknown kind `{other}` (helpful or safety)")),
    }
}

/// Runs `aha rm`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        RmCommand::Train(a) => train(&a.config, &a.exec),
        RmCommand::Score(a) => score(&a),
        RmCommand::MakeData(a) => make_data(&a),
    }
}

/// Reads and validates an `aha rm train` config (errors name the file, TOML ones the line).
pub fn load_rm_config(path: &Path) -> Result<RmConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    let cfg: RmConfig = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    cfg.validate().with_context(|| format!("{}: invalid config", path.display()))?;
    Ok(cfg)
}

fn train(config: &Path, exec: &ExecArgs) -> Result<()> {
    let mut cfg = load_rm_config(config)?;
    cfg.exec = exec.over(cfg.exec);
    write_resolved_config(&cfg.output_dir, &serde_json::to_value(&cfg)?)?;
    eprintln!("reward model ({:?}) from {} → {}", cfg.objective, cfg.model, cfg.output_dir.display());
    let report = train_reward_model(&cfg)?;
    if let Some(h) = report.last() {
        eprintln!("{}", h.summary());
    }
    eprintln!(
        "{} training rows, {} held-out ({}), {} steps in {:.1} s → {}",
        report.train_rows,
        report.eval_rows,
        report.eval_source,
        report.steps,
        report.wall_s,
        report.final_dir.display()
    );
    draw_plots(&cfg.output_dir);
    Ok(())
}

/// How a row is scored.
enum RowKind {
    Single,
    Pair,
}

fn row_kind(obj: &Map<String, Value>) -> Option<RowKind> {
    let s = |k: &str| obj.get(k).is_some_and(Value::is_string);
    if !s("prompt") {
        return None;
    }
    if s("response") {
        Some(RowKind::Single)
    } else if s("chosen") && s("rejected") {
        Some(RowKind::Pair)
    } else {
        None
    }
}

fn score(a: &ScoreArgs) -> Result<()> {
    let rm =
        RewardModel::open(&a.model, &a.exec.request()).with_context(|| format!("loading {}", a.model.display()))?;
    let text = std::fs::read_to_string(&a.data).with_context(|| format!("reading {}", a.data.display()))?;
    let mut rows: Vec<Map<String, Value>> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let obj: Map<String, Value> =
            serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", a.data.display(), i + 1))?;
        if row_kind(&obj).is_none() {
            bail!("{}:{}: need `prompt` with `response`, or with `chosen` and `rejected`", a.data.display(), i + 1);
        }
        rows.push(obj);
    }
    let str_of = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut items: Vec<(String, String)> = Vec::new();
    for r in &rows {
        match row_kind(r) {
            Some(RowKind::Pair) => {
                items.push((str_of(r, "prompt"), str_of(r, "chosen")));
                items.push((str_of(r, "prompt"), str_of(r, "rejected")));
            }
            _ => items.push((str_of(r, "prompt"), str_of(r, "response"))),
        }
    }
    let refs: Vec<(&str, &str)> = items.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let scores = rm.score(&refs, a.batch_size)?;
    let mut it = scores.into_iter();
    let mut summary = Summary::default();
    for r in rows.iter_mut() {
        match row_kind(r) {
            Some(RowKind::Pair) => {
                let (c, j) = (it.next().flatten(), it.next().flatten());
                r.insert("score_chosen".into(), c.map_or(Value::Null, Value::from));
                r.insert("score_rejected".into(), j.map_or(Value::Null, Value::from));
                summary.add_pair(c, j);
            }
            _ => {
                let s = it.next().flatten();
                r.insert("score".into(), s.map_or(Value::Null, Value::from));
                summary.add_single(s, r.get("label"));
            }
        }
    }
    write_rows(a.out.as_deref(), &rows)?;
    summary.print(rows.len());
    Ok(())
}

fn write_rows(out: Option<&Path>, rows: &[Map<String, Value>]) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text += &serde_json::to_string(r)?;
        text.push('\n');
    }
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
        None => Ok(std::io::stdout().lock().write_all(text.as_bytes())?),
    }
}

/// Running figures of `aha rm score`.
#[derive(Default)]
struct Summary {
    scores: Vec<f64>,
    unscorable: usize,
    pairs: usize,
    pairs_right: usize,
    counts: [usize; 4],
    labelled: usize,
}

impl Summary {
    fn add_pair(&mut self, c: Option<f32>, r: Option<f32>) {
        match (c, r) {
            (Some(c), Some(r)) => {
                self.pairs += 1;
                self.pairs_right += usize::from(c > r);
                self.scores.extend([c as f64, r as f64]);
            }
            _ => self.unscorable += 1,
        }
    }

    fn add_single(&mut self, s: Option<f32>, label: Option<&Value>) {
        let Some(s) = s else {
            self.unscorable += 1;
            return;
        };
        self.scores.push(s as f64);
        let label = match label {
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::Number(n)) => n.as_f64().map(|x| x >= 0.5),
            _ => None,
        };
        if let Some(y) = label {
            self.labelled += 1;
            let i = match (s >= 0.0, y) {
                (true, true) => 0,
                (true, false) => 1,
                (false, false) => 2,
                (false, true) => 3,
            };
            self.counts[i] += 1;
        }
    }

    fn print(&self, rows: usize) {
        let mean = self.scores.iter().sum::<f64>() / self.scores.len().max(1) as f64;
        eprintln!("{rows} rows scored ({} unscorable: too long); mean score {mean:.4}", self.unscorable);
        if self.pairs > 0 {
            eprintln!("pairwise accuracy {:.4} over {} pairs", self.pairs_right as f64 / self.pairs as f64, self.pairs);
        }
        if self.labelled > 0 {
            let [tp, fp, tn, fn_] = self.counts;
            let c = Confusion::from_counts(tp, fp, tn, fn_);
            eprintln!(
                "labelled rows {}: accuracy {:.4}, precision {:.4}, recall {:.4}, F1 {:.4} (tp {tp} fp {fp} tn {tn} fn {fn_})",
                self.labelled,
                (tp + tn) as f64 / self.labelled as f64,
                c.precision,
                c.recall,
                c.f1
            );
        }
    }
}

fn make_data(a: &MakeDataArgs) -> Result<()> {
    let rows = make_rows(a.kind, a.n, a.seed);
    write_jsonl(&a.out, &rows)?;
    eprintln!("wrote {} {:?} rows to {}", rows.len(), a.kind, a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_parse_and_validate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let h = load_rm_config(&root.join("rm-helpful.toml")).unwrap();
        let s = load_rm_config(&root.join("rm-safety.toml")).unwrap();
        assert_eq!(
            (h.objective, s.objective),
            (aha_train::rm::Objective::Pairwise, aha_train::rm::Objective::Pointwise)
        );
        assert_eq!(h.total_steps(1), 300);
    }
}
