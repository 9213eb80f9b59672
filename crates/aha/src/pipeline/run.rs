//! Runs a [`Recipe`]'s stages in order: each reads the model of the stage it starts `from`,
//! writes under `<output_dir>/<NN-name>/`, is evaluated, and is marked done atomically
//! (`stage.json`). With `--resume`, done stages are skipped and an interrupted sft/grpo stage
//! continues from its latest checkpoint (their own exact resume). An sft/grpo stage that
//! continues an evaluated stage gets that evaluation as its step 0, so its plots show the
//! starting point.
//!
//! Under `mpirun -np N` the sft and grpo stages are data parallel (every rank trains, rank 0
//! writes); everything else — evaluations, rejection sampling, reward models, the report — runs
//! on rank 0 while the other ranks wait without spinning, and they read each stage's outcome
//! from its `stage.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aha_metrics::{write_eval, EvalRecord, TrainProgress};
use aha_model::{init_tiny, load_model, ExecRequest, LoadedModel, ModelSpec};
use aha_reward::extract::thought;
use aha_reward::language::consistency;
use aha_train::checkpoint::{latest_checkpoint, write_atomic};
use aha_train::collective::Collective;
use aha_train::eval::{run_eval, EvalJob};
use aha_train::rejection::run_rejection;
use aha_train::rm::synth::write_jsonl;
use aha_train::rm::{make_rows, train_reward_model};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::recipe::{PipelineEval, Recipe, SftData, Stage, StageConfig, StageKind, BASE_DIR};
use super::recipe::{SAMPLES_FILE, SAMPLE_SFT_FILE, TEACHER_FILE};
use super::report::{print_table, write_report};
use crate::runs::draw_plots;

/// The file marking a stage done, with its record.
pub const DONE_FILE: &str = "stage.json";

/// What a finished stage left behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage's name.
    pub name: String,
    /// Its kind.
    pub kind: StageKind,
    /// Its directory.
    pub dir: PathBuf,
    /// The policy after the stage (its own checkpoint for sft/grpo, else the one it read).
    pub model: String,
    /// The evaluation of `model`, when there is one.
    pub eval: Option<EvalRecord>,
    /// Mean fraction of the chain of thought's words in `[eval].language`.
    pub cot_language: Option<f64>,
    /// Kind-specific figures (filter counts, reward-model accuracy, …).
    pub summary: serde_json::Value,
    /// Wall time of the stage (its evaluation included), in seconds.
    pub wall_s: f64,
}

/// How `aha pipeline` runs a recipe.
pub struct Options {
    /// Skip done stages and continue interrupted ones.
    pub resume: bool,
    /// Run the stages up to and including this one.
    pub until: Option<String>,
}

/// Runs the recipe; returns every stage's record.
pub fn run(recipe: &Recipe, opts: &Options) -> Result<Vec<StageRecord>> {
    crate::dp::as_rank(&serde_json::to_value(&recipe.table)?, |world| {
        if world.is_writer() {
            run_all(recipe, opts, world)
        } else {
            follow(recipe, opts, world)
        }
    })
}

/// A data-parallel rank other than 0: takes part in the sft/grpo stages rank 0 runs, in order.
fn follow(recipe: &Recipe, opts: &Options, world: &dyn Collective) -> Result<Vec<StageRecord>> {
    let upto = recipe.upto(opts.until.as_deref())?;
    // The path `ensure_base` gives rank 0 (which alone creates an `[init]` model).
    let base = recipe.base_model();
    for stage in &recipe.stages[..upto] {
        world.wait_idle("pipeline stage start")?;
        if stage.dir.join(DONE_FILE).exists() || !matches!(stage.kind, StageKind::Sft | StageKind::Grpo) {
            continue;
        }
        let model = match stage.from {
            Some(i) => read_record(&recipe.stages[i].dir.join(DONE_FILE))?.model,
            None => base.clone(),
        };
        world.wait_idle("pipeline stage data")?;
        match recipe.materialize(stage, &model)? {
            StageConfig::Sft(sft, _) => crate::cmd::sft::run_config_on(&sft, opts.resume, world)?,
            StageConfig::Grpo(grpo, _) => crate::cmd::grpo::run_config_on(&grpo, opts.resume, world)?,
            _ => {}
        }
    }
    world.wait_idle("pipeline end")?;
    Ok(Vec::new())
}

/// Rank 0 (or the only process): runs every stage and writes everything.
fn run_all(recipe: &Recipe, opts: &Options, world: &dyn Collective) -> Result<Vec<StageRecord>> {
    let t0 = Instant::now();
    let upto = recipe.upto(opts.until.as_deref())?;
    check_fresh(recipe, opts.resume)?;
    std::fs::create_dir_all(&recipe.output_dir).with_context(|| format!("creating {}", recipe.output_dir.display()))?;
    let resolved = recipe.output_dir.join("recipe.toml");
    std::fs::write(&resolved, toml::to_string(&recipe.table)?)
        .with_context(|| format!("writing {}", resolved.display()))?;
    let base = ensure_base(recipe)?;
    let mut records: Vec<StageRecord> = Vec::new();
    for stage in &recipe.stages[..upto] {
        world.wait_idle("pipeline stage start")?;
        let done = stage.dir.join(DONE_FILE);
        let record = if done.exists() {
            let rec = read_record(&done)?;
            eprintln!("== stage {} `{}`: done, skipped ({})", stage.index + 1, stage.name, done.display());
            rec
        } else {
            let model = match stage.from {
                Some(i) => records[i].model.clone(),
                None => base.clone(),
            };
            eprintln!(
                "== stage {}/{} `{}` ({:?}) from {model} → {}",
                stage.index + 1,
                recipe.stages.len(),
                stage.name,
                stage.kind,
                stage.dir.display()
            );
            let rec = run_stage(recipe, stage, &model, &records, opts.resume, world)
                .with_context(|| format!("stage `{}` ({:?})", stage.name, stage.kind))?;
            write_atomic(&done, serde_json::to_string_pretty(&rec)?.as_bytes())?;
            rec
        };
        records.push(record);
        print_table(recipe, &records);
    }
    world.wait_idle("pipeline end")?;
    let report = write_report(recipe, &records, t0.elapsed().as_secs_f64())?;
    eprintln!(
        "pipeline: {} stage(s) in {:.0} s; report {}",
        records.len(),
        t0.elapsed().as_secs_f64(),
        report.display()
    );
    Ok(records)
}

/// Without `--resume`, a directory that already holds stages is not overwritten.
fn check_fresh(recipe: &Recipe, resume: bool) -> Result<()> {
    if resume {
        return Ok(());
    }
    for s in &recipe.stages {
        if s.dir.join(DONE_FILE).exists() || s.dir.join("checkpoints").exists() {
            bail!(
                "{} already holds stage `{}`; pass --resume to continue, or choose another output_dir",
                recipe.output_dir.display(),
                s.name
            );
        }
    }
    Ok(())
}

fn read_record(path: &Path) -> Result<StageRecord> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a stage record", path.display()))
}

/// The base model: `model`, or the `[init]` tiny model (made once, kept on resume).
fn ensure_base(recipe: &Recipe) -> Result<String> {
    let Some(init) = &recipe.init else { return Ok(recipe.base_model()) };
    let dir = recipe.output_dir.join(BASE_DIR);
    if !dir.join("config.json").exists() {
        let lm = init_tiny(&dir, &init.model, init.seed).context("creating the [init] model")?;
        let params: usize = lm.model.named_parameters().iter().map(|(_, t)| t.elem_count()).sum();
        eprintln!("base: tiny model of {params} parameters → {}", dir.display());
    }
    Ok(dir.display().to_string())
}

fn run_stage(
    recipe: &Recipe,
    stage: &Stage,
    model: &str,
    records: &[StageRecord],
    resume: bool,
    world: &dyn Collective,
) -> Result<StageRecord> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&stage.dir).with_context(|| format!("creating {}", stage.dir.display()))?;
    let config = recipe.materialize(stage, model)?;
    write_start_eval(recipe, stage, records)?;
    let (out_model, summary, eval) = match config {
        StageConfig::Sft(sft, text) => {
            write_teacher(stage)?;
            if !sft.data.path.exists() {
                bail!("[data].path {} does not exist", sft.data.path.display());
            }
            write_stage_config(stage, &text)?;
            world.wait_idle("pipeline stage data")?;
            crate::cmd::sft::run_config_on(&sft, resume, world)?;
            (policy_of(stage)?, json!({}), None)
        }
        StageConfig::Grpo(grpo, text) => {
            if let Some(m) = grpo.model_rewards().iter().find(|m| !m.path.exists()) {
                bail!("reward `{}`: the reward model {} does not exist", m.name, m.path.display());
            }
            write_stage_config(stage, &text)?;
            world.wait_idle("pipeline stage data")?;
            crate::cmd::grpo::run_config_on(&grpo, resume, world)?;
            (policy_of(stage)?, json!({}), None)
        }
        StageConfig::Sample(job) => {
            let lm = load(model, &recipe.exec)?;
            let mut bar = TrainProgress::new(0);
            let samples = stage.dir.join(SAMPLES_FILE);
            let report = run_rejection(&lm, &job, &samples, &stage.dir.join(SAMPLE_SFT_FILE), &mut bar)?;
            bar.finish();
            let f = &report.filter;
            eprintln!(
                "rejection sampling: {} samples, {} kept ({} incorrect, {} malformed, {} duplicate, {} over cap); {} SFT rows",
                f.total, f.kept, f.incorrect, f.malformed, f.duplicate, f.over_cap, report.mix.total
            );
            (model.to_string(), serde_json::to_value(&report)?, None)
        }
        StageConfig::Rm(cfg) => {
            if let Some(m) = &stage.make_data {
                write_jsonl(&recipe.rm_data(stage), &make_rows(m.kind, m.n, m.seed))?;
            }
            let report = train_reward_model(&cfg)?;
            if let Some(h) = report.last() {
                eprintln!("reward model: {}", h.summary());
            }
            draw_plots(&stage.dir);
            (model.to_string(), serde_json::to_value(&report)?, None)
        }
        StageConfig::Eval(e) => {
            (model.to_string(), json!({}), Some(evaluate(model, &recipe.exec, &e, &stage.dir, &stage.name)?))
        }
    };
    let eval = match (eval, &recipe.eval) {
        (Some(e), _) => Some(e),
        (None, Some(pe)) if stage.kind.makes_policy() && stage.eval_after => {
            Some(evaluate(&out_model, &recipe.exec, pe, &stage.dir, &stage.name)?)
        }
        // The policy did not change: carry the latest evaluation forward.
        _ => records.last().and_then(|r| r.eval.clone().map(|e| (e, r.cot_language))),
    };
    if stage.kind.makes_policy() {
        draw_plots(&stage.dir);
    }
    Ok(StageRecord {
        name: stage.name.clone(),
        kind: stage.kind,
        dir: stage.dir.clone(),
        model: out_model,
        cot_language: eval.as_ref().and_then(|e| e.1),
        eval: eval.map(|e| e.0),
        summary,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

/// The label of the evaluation a policy stage starts from, written as its step 0.
fn start_label(from: &str) -> String {
    format!("{from} (start)")
}

/// Writes the evaluation of the model an sft/grpo stage starts from into the stage directory
/// as step 0 (`eval_00000000_<from>__start_.json`), so the stage's accuracy plot starts where
/// the stage it continues ended. Only an evaluation made of that stage's own output counts
/// (not one carried forward from an earlier stage).
fn write_start_eval(recipe: &Recipe, stage: &Stage, records: &[StageRecord]) -> Result<()> {
    let Some(i) = stage.from.filter(|_| stage.kind.makes_policy()) else { return Ok(()) };
    if recipe.eval.is_none() || !recipe.stages[i].eval_after {
        return Ok(());
    }
    let Some(mut e) = records.get(i).and_then(|r| r.eval.clone()) else { return Ok(()) };
    e.step = 0;
    e.label = Some(start_label(&records[i].name));
    write_eval(&stage.dir, &e)?;
    Ok(())
}

/// Writes the teacher's SFT data of an SFT stage (deterministic; kept when already there).
fn write_teacher(stage: &Stage) -> Result<()> {
    if let Some(SftData::Teacher(t)) = &stage.sft_data {
        let path = stage.dir.join(TEACHER_FILE);
        if !path.exists() {
            let n = t.write(&path)?;
            eprintln!("teacher: {n} traces → {}", path.display());
        }
    }
    Ok(())
}

/// Writes the stage's resolved config as `stage.toml` (what `aha sft`/`aha grpo --config`
/// would run; the stage itself runs the parsed config).
fn write_stage_config(stage: &Stage, text: &str) -> Result<()> {
    let path = stage.dir.join("stage.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The latest checkpoint an sft/grpo stage saved.
fn policy_of(stage: &Stage) -> Result<String> {
    let dir = latest_checkpoint(&stage.dir)?.ok_or_else(|| anyhow!("{} saved no checkpoint", stage.dir.display()))?;
    Ok(dir.display().to_string())
}

fn load(model: &str, exec: &ExecRequest) -> Result<LoadedModel> {
    load_model(&ModelSpec::parse(model), exec).with_context(|| format!("loading {model}"))
}

/// Evaluates `model` as `pe` says, writing `eval/` (record and samples) and an eval record
/// the stage's plots pick up; returns the record and the CoT language fraction.
fn evaluate(
    model: &str,
    exec: &ExecRequest,
    pe: &PipelineEval,
    dir: &Path,
    label: &str,
) -> Result<(EvalRecord, Option<f64>)> {
    let lm = load(model, exec)?;
    let job = EvalJob {
        data: pe.data.clone(),
        sampling: pe.sampling.clone(),
        rewards: pe.rewards.clone(),
        out_dir: Some(dir.join("eval")),
    };
    eprintln!("eval of `{label}`: {} questions × k {}", pe.data.limit, pe.sampling.generation.k);
    let mut bar = TrainProgress::new(0);
    let out = run_eval(&lm, &job, &mut bar)?;
    bar.finish();
    let mut record = out.record;
    record.label = Some(label.to_string());
    record.step = trained_steps(model);
    write_eval(dir, &record)?;
    let language = pe.language.map(|lang| {
        let flat: Vec<f64> = out
            .samples
            .iter()
            .flatten()
            .map(|s| consistency(thought(&s.completion).unwrap_or(&s.completion), lang))
            .collect();
        flat.iter().sum::<f64>() / flat.len().max(1) as f64
    });
    Ok((record, language))
}

/// The step of a checkpoint directory (`step-000123` → 123), else 0.
fn trained_steps(model: &str) -> u64 {
    Path::new(model)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
