//! `aha grpo --config FILE [--resume]`: GRPO on a model with a task or JSONL prompts.
//!
//! The story: config → model (or the latest checkpoint on `--resume`) → prompts templated and
//! tokenised once (too-long prompts dropped and counted) → rewards → trainer (reference model
//! when β > 0) → the run loop with metrics, checkpoints and held-out evaluation → plots.
//! With `[rollout] engine = "openai"` the completions come from inference servers, which are
//! sent the trainer's weights before the first step (`aha_train::remote`).

use std::path::Path;

use aha_metrics::write_eval;
use aha_model::LoadedModel;
use aha_reward::Registry;
use aha_train::collective::Collective;
use aha_train::data::{read_jsonl, DataConfig, PromptRow};
use aha_train::eval::evaluate;
use aha_train::grpo::GrpoTrainer;
use aha_train::optim::{named_vars, AdamW};
use aha_train::remote::RemoteRollout;
use aha_train::rm::ModelRewards;
use aha_train::run::{restore, train};
use aha_train::tasks::Split;
use aha_train::template::{encode_prompts, EncodedPrompts};
use aha_train::TrainError;
use anyhow::{bail, Context, Result};

use crate::config::{load_grpo, EvalConfig, GrpoConfig};
use crate::runs::{draw_plots, load_start, report_skipped, write_resolved_config, Start};

/// Arguments of `aha grpo`.
pub use crate::runs::ConfigArgs as Args;

/// Runs `aha grpo`.
pub fn run(args: Args) -> Result<()> {
    let mut cfg = load_grpo(&args.config)?;
    cfg.exec = args.exec.over(cfg.exec);
    run_config(&cfg, args.resume)
}

/// Runs the GRPO of a parsed, validated config (`aha grpo` and pipeline GRPO stages): the model
/// or, with `resume`, the run directory's latest checkpoint; prompts; rewards; the trainer and
/// its loop with held-out evaluation; the plots. Started by `mpirun -np N`, it is one rank of a
/// data-parallel run (rank 0 writes).
pub fn run_config(cfg: &GrpoConfig, resume: bool) -> Result<()> {
    crate::dp::as_rank(&serde_json::to_value(cfg)?, |world| run_config_on(cfg, resume, world))
}

/// [`run_config`] as a rank of `world` (also a pipeline stage under `mpirun`). Every rank
/// evaluates (so none waits for rank 0's evaluation in a collective); rank 0 writes.
pub fn run_config_on(cfg: &GrpoConfig, resume: bool, world: &dyn Collective) -> Result<()> {
    let config_json = serde_json::to_value(cfg)?;
    let run_dir = cfg.output_dir.clone();
    let writes = world.is_writer();
    let (lm, from) = load_start(&start(cfg), &run_dir, resume)?;
    let budget = prompt_budget(&lm, cfg.grpo.longest_completion()).context("[grpo].max_completion_length")?;
    let train_set = encode(train_rows(&cfg.data, cfg.seed)?, &lm, &cfg.data, budget)?;
    let registry = Registry::build(&cfg.rewards_config()).context("building the rewards")?;
    let eval_set = match &cfg.eval {
        Some(e) => Some(encode(eval_rows(&cfg.data, e, cfg.seed)?, &lm, &cfg.data, eval_budget(&lm, e)?)?),
        None => None,
    };
    if writes {
        write_resolved_config(&run_dir, &config_json)?;
    }
    let mut trainer = build_trainer(cfg, &lm, &train_set, &registry)?.with_collective(world)?;
    if from.is_some() {
        let dir = restore(&mut trainer, &run_dir)?;
        eprintln!("resumed from {} at step {}", dir.unwrap_or_default().display(), trainer.step);
    }
    trainer.join_ranks()?;
    if writes {
        announce(cfg, &train_set);
    }
    let mut on_step = |step: usize, _: &aha_train::grpo::StepMetrics| -> aha_train::Result<()> {
        match (&cfg.eval, &eval_set) {
            (Some(e), Some(set)) if eval_due(e, step, cfg.grpo.max_steps) => {
                let out = writes.then_some(run_dir.as_path());
                run_eval(&lm, set, &registry, e, out, step).map_err(|e| TrainError::Other(format!("{e:#}")))
            }
            _ => Ok(()),
        }
    };
    train(&mut trainer, &lm.tokenizer, &run_dir, &cfg.run, &config_json, &mut on_step)?;
    if writes {
        draw_plots(&run_dir);
    }
    Ok(())
}

/// The most prompt tokens that leave room for `completion` tokens in the context.
fn prompt_budget(lm: &LoadedModel, completion: usize) -> Result<usize> {
    let ctx = lm.config.max_position_embeddings;
    if completion >= ctx {
        bail!("the completion length {completion} leaves no room for a prompt in the model's context of {ctx} tokens");
    }
    Ok(ctx - completion)
}

fn eval_budget(lm: &LoadedModel, e: &EvalConfig) -> Result<usize> {
    prompt_budget(lm, e.sampling.generation.max_new_tokens).context("[eval.sampling].max_new_tokens")
}

/// The training prompts: the task's train split, or the JSONL file (bad rows reported).
fn train_rows(data: &DataConfig, seed: u64) -> Result<Vec<PromptRow>> {
    if let Some(task) = &data.task {
        let problems = task.generate(seed, Split::Train, data.task_size, data.test_percent);
        if problems.len() < data.task_size {
            eprintln!("note: the task's train split holds only {} distinct problems", problems.len());
        }
        return Ok(problems.iter().map(PromptRow::from).collect());
    }
    let path = data.path.as_deref().context("[data].path")?;
    jsonl_rows(path, data, usize::MAX)
}

/// The held-out prompts: the task's test split (disjoint from training), or `[eval].path`.
fn eval_rows(data: &DataConfig, e: &EvalConfig, seed: u64) -> Result<Vec<PromptRow>> {
    if let Some(task) = &data.task {
        return Ok(task
            .generate(seed, Split::Test, e.questions, data.test_percent)
            .iter()
            .map(PromptRow::from)
            .collect());
    }
    let path = e.path.as_deref().context("[eval].path")?;
    jsonl_rows(path, data, e.questions)
}

fn jsonl_rows(path: &Path, data: &DataConfig, limit: usize) -> Result<Vec<PromptRow>> {
    let (mut rows, skipped) = read_jsonl(path, &data.columns)?;
    report_skipped(path, &skipped);
    rows.truncate(limit);
    Ok(rows)
}

/// Templates and tokenises prompts once, reporting how many were too long.
fn encode(rows: Vec<PromptRow>, lm: &LoadedModel, data: &DataConfig, budget: usize) -> Result<EncodedPrompts> {
    let set = encode_prompts(rows, &lm.tokenizer, data.template, budget)?;
    if set.too_long > 0 {
        eprintln!("dropped {} prompt(s) longer than {budget} tokens; {} kept", set.too_long, set.rows.len());
    }
    Ok(set)
}

fn build_trainer<'a>(
    cfg: &GrpoConfig,
    lm: &'a LoadedModel,
    set: &'a EncodedPrompts,
    registry: &'a Registry,
) -> Result<GrpoTrainer<'a>> {
    let mut trainer = GrpoTrainer::new(
        cfg.grpo.clone(),
        &lm.model,
        AdamW::new(named_vars(&lm.varmap), cfg.optim.clone())?,
        &set.rows,
        set.ids.clone(),
        registry,
        &lm.tokenizer,
        cfg.seed,
    )?;
    trainer.model_rewards =
        ModelRewards::load(&cfg.model_rewards(), cfg.grpo.max_steps, &cfg.exec).context("loading the reward models")?;
    if cfg.rollout.is_remote() {
        let vocab = lm.config.vocab_size;
        trainer.remote =
            Some(RemoteRollout::new(cfg.rollout.clone(), &lm.tokenizer, &cfg.model, &cfg.output_dir, vocab));
    }
    Ok(trainer)
}

fn announce(cfg: &GrpoConfig, set: &EncodedPrompts) {
    let g = &cfg.grpo;
    eprintln!(
        "GRPO: {} steps × {} prompts × {} samples over {} prompts → {}",
        g.max_steps,
        g.prompts_per_step,
        g.group_size,
        set.rows.len(),
        cfg.output_dir.display()
    );
    if cfg.rollout.is_remote() {
        let r = &cfg.rollout;
        eprintln!(
            "rollouts on {} server(s) ({:?} API): {}; weights synced every {} step(s), max staleness {}",
            r.urls.len(),
            r.api,
            r.urls.join(", "),
            r.sync_every,
            r.max_staleness
        );
    }
    if g.num_iterations == 1 && g.minibatches == 1 {
        eprintln!("note: with one inner iteration π_old = π_θ, so the logged loss is ≈ 0 while its gradient is not");
    }
}

fn eval_due(e: &EvalConfig, step: usize, last: usize) -> bool {
    step == last || (e.every_steps > 0 && step.is_multiple_of(e.every_steps))
}

/// Evaluates the policy on the held-out prompts and writes `eval_<step>_heldout.json` into
/// `run_dir` (none: a data-parallel rank other than 0, which only keeps in step).
fn run_eval(
    lm: &LoadedModel,
    set: &EncodedPrompts,
    registry: &Registry,
    e: &EvalConfig,
    run_dir: Option<&Path>,
    step: usize,
) -> Result<()> {
    let (mut rec, _) = evaluate(&lm.model, &set.rows, &set.ids, &lm.tokenizer, registry, &e.sampling)?;
    let Some(run_dir) = run_dir else { return Ok(()) };
    rec.step = step as u64;
    rec.label = Some("heldout".into());
    write_eval(run_dir, &rec)?;
    eprintln!("eval @ step {step}: pass@1 {:.3}, cons@{} {:.3}", rec.pass_at_1, rec.k, rec.cons_at_k);
    Ok(())
}

/// Where the run's weights start (`model`, `adapter`, `[lora]`, `[exec]`).
fn start(cfg: &GrpoConfig) -> Start<'_> {
    Start { model: &cfg.model, adapter: cfg.adapter.as_deref(), lora: cfg.lora.as_ref(), exec: &cfg.exec }
}
