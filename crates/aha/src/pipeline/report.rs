//! What `aha pipeline` shows: the eval table after every stage (pass@1, cons@k, mean length,
//! reflection-word frequency, format rate, extraction rate and, when `[eval].language` is set, the chain of
//! thought's target-language fraction) and, at the end, `report.md` + `report.json` in the
//! output directory, listing every stage's evaluation, figures and plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use aha_metrics::extraction_cell;
use anyhow::{Context, Result};
use serde_json::json;

use super::recipe::Recipe;
use super::run::StageRecord;

/// The markdown eval table of the stages so far.
pub fn eval_table(recipe: &Recipe, records: &[StageRecord]) -> String {
    let lang = recipe.eval.as_ref().and_then(|e| e.language).map(|l| format!("{l:?}").to_lowercase());
    let mut md =
        String::from("| stage | kind | pass@1 | cons@k | mean tokens | reflection /1k words | format | extracted |");
    if let Some(l) = &lang {
        let _ = write!(md, " CoT {l} fraction |");
    }
    md.push_str(" wall s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    if lang.is_some() {
        md.push_str(" ---: |");
    }
    md.push_str(" ---: |\n");
    for r in records {
        let _ = write!(md, "| {} | {:?} |", r.name, r.kind);
        match &r.eval {
            Some(e) => {
                let _ = write!(
                    md,
                    " {:.3} | {:.3} (k={}) | {:.1} | {} | {} | {} |",
                    e.pass_at_1,
                    e.cons_at_k,
                    e.k,
                    e.mean_completion_tokens,
                    opt(e.reflection_per_1k_words, 2),
                    opt(e.format_rate, 3),
                    extraction_cell(e, 3)
                );
            }
            None => md.push_str(" – | – | – | – | – | – |"),
        }
        if lang.is_some() {
            let _ = write!(md, " {} |", opt(r.cot_language, 3));
        }
        let _ = writeln!(md, " {:.0} |", r.wall_s);
    }
    md
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "–".into())
}

/// Prints the table of the stages so far to stdout.
pub fn print_table(recipe: &Recipe, records: &[StageRecord]) {
    println!("\n{}", eval_table(recipe, records));
}

/// Writes `report.md` and `report.json` into the output directory; returns the markdown path.
pub fn write_report(recipe: &Recipe, records: &[StageRecord], wall_s: f64) -> Result<PathBuf> {
    let out = &recipe.output_dir;
    let mut md = format!(
        "# Pipeline report\n\nRecipe `{}`, {} stage(s), {wall_s:.0} s wall.\n\n## Evaluation after each stage\n\n",
        recipe.path.display(),
        records.len()
    );
    if let Some(e) = &recipe.eval {
        let g = &e.sampling.generation;
        let _ = writeln!(
            md,
            "k = {} samples per question at T {} / top-p {}, ≤ {} new tokens; a stage that does not change \
             the policy repeats the last evaluation.\n",
            g.k, g.temperature, g.top_p, g.max_new_tokens
        );
    }
    md.push_str(&eval_table(recipe, records));
    for r in records {
        stage_section(&mut md, out, r);
    }
    let path = out.join("report.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    let json_path = out.join("report.json");
    let value = json!({ "recipe": recipe.path, "wall_s": wall_s, "stages": records });
    std::fs::write(&json_path, serde_json::to_string_pretty(&value)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(path)
}

fn stage_section(md: &mut String, out: &Path, r: &StageRecord) {
    let rel = r.dir.strip_prefix(out).unwrap_or(&r.dir).display().to_string();
    let _ = writeln!(md, "\n## `{}` ({:?})\n\nDirectory `{rel}`; model `{}`.\n", r.name, r.kind, r.model);
    if let Some(s) = summary_line(r) {
        let _ = writeln!(md, "{s}\n");
    }
    if r.dir.join("report.png").exists() {
        let _ = writeln!(md, "![{} curves]({rel}/report.png)\n", r.name);
    }
    let plots = r.dir.join("plots");
    if let Ok(entries) = std::fs::read_dir(&plots) {
        let mut names: Vec<String> =
            entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let links: Vec<String> = names.iter().map(|n| format!("[{n}]({rel}/plots/{n})")).collect();
        if !links.is_empty() {
            let _ = writeln!(md, "Plots: {}\n", links.join(", "));
        }
    }
}

/// One line of kind-specific figures.
fn summary_line(r: &StageRecord) -> Option<String> {
    let s = &r.summary;
    if let Some(f) = s.get("filter") {
        let n = |k: &str| f.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let total = s.get("mix").and_then(|m| m.get("total")).and_then(|v| v.as_u64()).unwrap_or(0);
        return Some(format!(
            "Rejection sampling: {} samples, {} kept ({} incorrect, {} malformed, {} duplicate, {} over the cap); \
             {total} SFT rows after mixing.",
            n("total"),
            n("kept"),
            n("incorrect"),
            n("malformed"),
            n("duplicate"),
            n("over_cap")
        ));
    }
    let last = s.get("evals").and_then(|e| e.as_array()).and_then(|a| a.last())?;
    let num = |k: &str| last.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut line = format!("Reward model, held-out: accuracy {:.3} over {} rows", num("accuracy"), num("n"));
    if let Some(c) = last.get("confusion").filter(|c| !c.is_null()) {
        let c = |k: &str| c.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let _ = write!(line, ", precision {:.3}, recall {:.3}, F1 {:.3}", c("precision"), c("recall"), c("f1"));
    }
    Some(line + ".")
}
