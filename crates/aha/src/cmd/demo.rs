//! `aha demo`: a model learns to reason on a laptop CPU, from nothing, in minutes.
//!
//! 1. make a tiny Qwen2-shaped model and a byte-level tokenizer;
//! 2. cold-start it by SFT on `<think>…</think><answer>…</answer>` traces of multi-step
//!    arithmetic written by an *imperfect teacher* (a fraction of traces slip by ±1 in one step
//!    and carry the mistake to the answer, as real cold-start data is imperfect);
//! 3. evaluate on the held-out split (k samples per question: pass@1, majority vote);
//! 4. GRPO with accuracy + format rewards;
//! 5. evaluate again; print the table, write `summary.json`, metrics and plots.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aha_metrics::{draw_report, write_eval, EvalRecord};
use aha_model::{init_tiny_on, LoadedModel, TinySpec};
use aha_reward::{Registry, RewardsConfig};
use aha_train::config::{GrpoLossConfig, LrSchedule, OptimConfig};
use aha_train::data::PromptRow;
use aha_train::eval::{evaluate, EvalSettings};
use aha_train::grpo::{GrpoSettings, GrpoTrainer, TextCodec};
use aha_train::optim::{named_vars, AdamW};
use aha_train::run::{train, RunOptions};
use aha_train::samples::GenSettings;
use aha_train::sft::{SftExample, SftMetrics, SftOptions, SftRun, SftSettings};
use aha_train::tasks::{Problem, Split, TaskSpec};
use aha_train::teacher::TeacherConfig;
use anyhow::{Context, Result};
use serde_json::json;

use crate::exec_args::ExecArgs;

/// Arguments of `aha demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output directory (model, runs, plots, summary.json).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Seed of everything: model init, data, sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// GRPO steps (the default fits the 10-minute budget on 2 cores).
    #[arg(long, default_value_t = 150)]
    pub grpo_steps: usize,
    /// Cold-start SFT steps (a cold start that has learned the arithmetic well leaves RL the
    /// teacher's slips to remove; with 800 steps one seed in three started RL below 45 %, and
    /// with 1500 one in three still did after a change of float rounding).
    #[arg(long, default_value_t = 2500)]
    pub sft_steps: usize,
    /// Fraction of cold-start traces in which the teacher slips by ±1 in one step.
    #[arg(long, default_value_t = 0.5)]
    pub slip_rate: f64,
    /// GRPO learning rate (AdamW moves every weight by about this much per step, so RL needs a
    /// much smaller rate than SFT's 3e-3).
    #[arg(long, default_value_t = 1e-4)]
    pub grpo_lr: f64,
    /// Largest operand of the arithmetic problems (5: 5 500 distinct problems, so the 90 % that
    /// GRPO trains on are not memorised; with 3 there are 756, and RL gains on them did not carry
    /// over to the held-out ones).
    #[arg(long, default_value_t = 5)]
    pub max_value: i64,
    /// Held-out questions evaluated before and after RL (fewer when the held-out split is smaller).
    #[arg(long, default_value_t = 200)]
    pub eval_questions: usize,
    /// Prompts per GRPO step.
    #[arg(long, default_value_t = 16)]
    pub prompts_per_step: usize,
    /// Samples per prompt (G).
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    /// DAPO dynamic sampling: drop groups whose rewards are all equal and refill (up to 3 rounds).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub dynamic_sampling: bool,
    /// Sampling temperature of the GRPO rollouts (above 1 explores the alternatives the SFT
    /// policy rarely samples, such as the right copy of an operand it tends to miscopy).
    #[arg(long, default_value_t = 1.2)]
    pub grpo_temperature: f64,
    /// GRPO iterations (μ) over each step's rollouts: the second pass reuses the rollouts with
    /// the clipped importance ratio, which fixed more of the model's systematic errors than fresh
    /// rollouts did for the same compute.
    #[arg(long, default_value_t = 2)]
    pub num_iterations: usize,
    /// Hidden size of the tiny model (intermediate size is 3×).
    #[arg(long, default_value_t = 128)]
    pub hidden_size: usize,
    /// Transformer layers of the tiny model.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads of the tiny model (2 KV heads).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Device, dtype and backend (the published figures are CPU, f32, auto).
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// The demo's fixed recipe.
struct Plan {
    model: TinySpec,
    /// The task, its train split (`size`, `test_percent`, `seed`) and the imperfect teacher.
    teacher: TeacherConfig,
    eval_questions: usize,
    sft: SftSettings,
    sft_optim: OptimConfig,
    grpo: GrpoSettings,
    grpo_optim: OptimConfig,
    eval: EvalSettings,
}

impl Plan {
    fn new(args: &Args) -> Self {
        let max_len = 48;
        Self {
            model: TinySpec {
                hidden_size: args.hidden_size,
                intermediate_size: 3 * args.hidden_size,
                num_hidden_layers: args.layers,
                num_attention_heads: args.heads,
                num_key_value_heads: 2,
                max_position_embeddings: 128,
                ..TinySpec::default()
            },
            teacher: TeacherConfig {
                task: TaskSpec::Arithmetic { min_operands: 3, max_operands: 4, max_value: args.max_value },
                size: 8000,
                test_percent: 10,
                slip_rate: args.slip_rate,
                cot_words: None,
                seed: args.seed,
            },
            eval_questions: args.eval_questions,
            // Exactly `--sft-steps` steps, 0 included (no epochs to fall back on).
            sft: SftSettings { epochs: 0, max_steps: args.sft_steps, batch_size: 32, micro_batch_size: 0 },
            sft_optim: OptimConfig {
                learning_rate: 3e-3,
                warmup_steps: 20,
                schedule: LrSchedule::Cosine,
                ..OptimConfig::default()
            },
            grpo: GrpoSettings {
                max_steps: args.grpo_steps,
                prompts_per_step: args.prompts_per_step,
                group_size: args.group_size,
                dynamic_sampling: args.dynamic_sampling,
                temperature: args.grpo_temperature,
                num_iterations: args.num_iterations,
                max_completion_length: max_len,
                loss: GrpoLossConfig::default(),
                ..GrpoSettings::default()
            },
            grpo_optim: OptimConfig { learning_rate: args.grpo_lr, ..OptimConfig::default() },
            eval: EvalSettings {
                generation: GenSettings {
                    k: 4,
                    temperature: 1.0,
                    top_p: 1.0,
                    max_new_tokens: max_len,
                    ..GenSettings::default()
                },
                ..EvalSettings::default()
            },
        }
    }
}

const REWARDS_TOML: &str = r#"
[[rewards]]
name = "accuracy"
kind = "numeric"

[[rewards]]
name = "format"
kind = "format"
"#;

/// Runs the demo.
pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let plan = Plan::new(&args);
    plan.teacher.validate().context("--slip-rate")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    clear_previous_run(&args.out)?;
    let lm = init_tiny_on(&args.out.join("model-init"), &plan.model, args.seed, &args.exec.request())
        .context("creating the tiny model")?;
    eprintln!("[1/5] tiny model: {} parameters, {}", param_count(&lm), lm.model.plan().describe());
    let t = &plan.teacher;
    let train_set = t.problems();
    let test_set = t.task.generate(t.seed, Split::Test, plan.eval_questions, t.test_percent);
    let registry = Registry::build(&RewardsConfig::from_toml_str(REWARDS_TOML)?)?;
    cold_start(&lm, &plan, &train_set, &args)?;
    let run_dir = args.out.join("grpo");
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let test_rows: Vec<PromptRow> = test_set.iter().map(PromptRow::from).collect();
    let test_ids = encode_prompts(&lm.tokenizer, &test_rows)?;
    eprintln!("[3/5] evaluating the SFT model on {} held-out questions", test_rows.len());
    let before = eval_and_record(&lm, &test_rows, &test_ids, &registry, &plan, &run_dir, 0, "after_sft")?;
    reinforce(&lm, &plan, &train_set, &registry, &run_dir, args.seed)?;
    eprintln!("[5/5] evaluating the GRPO model");
    let step = plan.grpo.max_steps as u64;
    let after = eval_and_record(&lm, &test_rows, &test_ids, &registry, &plan, &run_dir, step, "after_grpo")?;
    let plots = draw_report(&run_dir).context("drawing plots")?;
    let wall = start.elapsed().as_secs_f64();
    print_table(&before, &after, wall);
    write_summary(&args, &plan, &before, &after, wall, &plots, lm.model.plan().to_json())?;
    Ok(())
}

/// Removes what an earlier demo left in `out` (the demo starts from nothing every time).
fn clear_previous_run(out: &Path) -> Result<()> {
    for sub in ["model-init", "sft", "grpo", "summary.json"] {
        let p = out.join(sub);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        } else if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

fn param_count(lm: &LoadedModel) -> usize {
    lm.model.named_parameters().iter().map(|(_, t)| t.elem_count()).sum()
}

fn encode_prompts(codec: &dyn TextCodec, rows: &[PromptRow]) -> Result<Vec<Vec<u32>>> {
    rows.iter().map(|r| Ok(codec.encode(&prompt_text(&r.prompt))?)).collect()
}

/// The demo's prompt template: the question and a newline (no chat markup: fewer tokens).
fn prompt_text(question: &str) -> String {
    format!("{question}\n")
}

/// Cold-start SFT on the teacher's traces of the training split (no checkpoints: GRPO goes on
/// from the model in memory).
fn cold_start(lm: &LoadedModel, plan: &Plan, train_set: &[Problem], args: &Args) -> Result<()> {
    let codec: &dyn TextCodec = &lm.tokenizer;
    let eos = *codec.eos_ids().first().context("the tokenizer has no EOS id")?;
    let mut examples = Vec::with_capacity(train_set.len());
    for (p, trace) in train_set.iter().zip(plan.teacher.traces(train_set)) {
        let mut completion_ids = codec.encode(&trace)?;
        completion_ids.push(eos);
        examples.push(SftExample { prompt_ids: codec.encode(&prompt_text(&p.prompt))?, completion_ids });
    }
    let opts = SftOptions {
        sft: plan.sft.clone(),
        seed: args.seed,
        run_dir: args.out.join("sft"),
        progress: true,
        metrics: SftMetrics::Loss,
        checkpoints: None,
    };
    let mut sft = SftRun::new(lm, &examples, plan.sft_optim.clone(), opts)?;
    eprintln!(
        "[2/5] cold-start SFT: {} steps × {} traces ({}% with a slip)",
        sft.total_steps(),
        plan.sft.batch_size,
        plan.teacher.slip_rate * 100.0
    );
    sft.run().context("cold-start SFT")?;
    Ok(())
}

/// GRPO with accuracy + format rewards on the training split.
fn reinforce(
    lm: &LoadedModel,
    plan: &Plan,
    train_set: &[Problem],
    registry: &Registry,
    run_dir: &Path,
    seed: u64,
) -> Result<()> {
    let rows: Vec<PromptRow> = train_set.iter().map(PromptRow::from).collect();
    let prompt_ids = encode_prompts(&lm.tokenizer, &rows)?;
    let mut trainer = GrpoTrainer::new(
        plan.grpo.clone(),
        &lm.model,
        AdamW::new(named_vars(&lm.varmap), plan.grpo_optim.clone())?,
        &rows,
        prompt_ids,
        registry,
        &lm.tokenizer,
        seed,
    )?;
    eprintln!(
        "[4/5] GRPO: {} steps × {} prompts × {} samples",
        plan.grpo.max_steps, plan.grpo.prompts_per_step, plan.grpo.group_size
    );
    let opts = RunOptions { save_steps: 0, keep_last: 1, log_samples_every: 10, progress: true };
    let config = json!({"grpo": plan.grpo, "optim": plan.grpo_optim});
    train(&mut trainer, &lm.tokenizer, run_dir, &opts, &config, |_, _| Ok(()))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn eval_and_record(
    lm: &LoadedModel,
    rows: &[PromptRow],
    ids: &[Vec<u32>],
    registry: &Registry,
    plan: &Plan,
    run_dir: &Path,
    step: u64,
    label: &str,
) -> Result<EvalRecord> {
    let (mut rec, _) = evaluate(&lm.model, rows, ids, &lm.tokenizer, registry, &plan.eval)?;
    rec.step = step;
    rec.label = Some(label.to_string());
    write_eval(run_dir, &rec)?;
    Ok(rec)
}

fn print_table(before: &EvalRecord, after: &EvalRecord, wall: f64) {
    println!("\n| held-out ({} questions, k = {}) | after SFT | after GRPO |", before.questions, before.k);
    println!("|---|---|---|");
    println!("| pass@1 | {:.1}% | {:.1}% |", before.pass_at_1 * 100.0, after.pass_at_1 * 100.0);
    println!(
        "| cons@{} (majority vote) | {:.1}% | {:.1}% |",
        before.k,
        before.cons_at_k * 100.0,
        after.cons_at_k * 100.0
    );
    println!("| mean completion tokens | {:.1} | {:.1} |", before.mean_completion_tokens, after.mean_completion_tokens);
    println!("\nwall time: {wall:.0} s");
}

fn write_summary(
    args: &Args,
    plan: &Plan,
    before: &EvalRecord,
    after: &EvalRecord,
    wall: f64,
    plots: &[PathBuf],
    plan_json: serde_json::Value,
) -> Result<()> {
    let summary = json!({
        "seed": args.seed,
        "k": before.k,
        "eval_questions": before.questions,
        "eval_temperature": plan.eval.generation.temperature,
        "teacher_slip_rate": plan.teacher.slip_rate,
        "max_value": args.max_value,
        "pass_at_1_before_rl": before.pass_at_1,
        "pass_at_1_after_rl": after.pass_at_1,
        "cons_at_k_before_rl": before.cons_at_k,
        "cons_at_k_after_rl": after.cons_at_k,
        "mean_completion_tokens_before_rl": before.mean_completion_tokens,
        "mean_completion_tokens_after_rl": after.mean_completion_tokens,
        "sft_steps": args.sft_steps,
        "grpo_steps": plan.grpo.max_steps,
        "grpo_lr": args.grpo_lr,
        "prompts_per_step": plan.grpo.prompts_per_step,
        "group_size": plan.grpo.group_size,
        "dynamic_sampling": plan.grpo.dynamic_sampling,
        "grpo_temperature": plan.grpo.temperature,
        "num_iterations": plan.grpo.num_iterations,
        "wall_s": wall,
        "exec": plan_json,
        "plots": plots,
    });
    let path = args.out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("summary: {}", path.display());
    Ok(())
}
