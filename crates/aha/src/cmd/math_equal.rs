//! `aha math-equal`: decides math equivalence for JSONL pairs.
//!
//! Each input line is `{"gold": ..., "pred": ...}` (`pred` may be a whole answer text); each output
//! line is the same object plus `"equal": true | false | null` (null: could not decide within the
//! bounds, or the gold answer could not be parsed).

use aha_reward::math::{math_equal_with, MathOptions};
use anyhow::{bail, Context};
use serde_json::Value;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

/// Math equivalence of gold/pred pairs.
#[derive(clap::Args)]
pub struct Args {
    /// Input JSONL with `gold` and `pred` strings.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL (default: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Decimal digits of tolerance when a decimal is involved.
    #[arg(long, default_value_t = 6)]
    precision: u32,
    /// Let a gold interval accept an inequality.
    #[arg(long)]
    allow_set_relation_comp: bool,
}

/// Runs `aha math-equal`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = MathOptions {
        precision: args.precision,
        allow_set_relation_comp: args.allow_set_relation_comp,
        ..MathOptions::default()
    };
    let input = std::fs::File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let sink: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    for (i, line) in std::io::BufReader::new(input).lines().enumerate() {
        let line = line.context("reading input")?;
        if line.trim().is_empty() {
            continue;
        }
        let mut value: Value = serde_json::from_str(&line).with_context(|| format!("line {}: invalid JSON", i + 1))?;
        let (Some(gold), Some(pred)) = (text_of(&value["gold"]), text_of(&value["pred"])) else {
            bail!("line {}: needs `gold` and `pred`", i + 1);
        };
        let equal = math_equal_with(&gold, &pred, &opts).as_bool();
        if let Value::Object(map) = &mut value {
            map.insert("equal".into(), serde_json::to_value(equal)?);
        }
        serde_json::to_writer(&mut out, &value)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Strings as they are; numbers as written in JSON.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
