//! `aha demo`: a model learns to reason on a laptop CPU, from nothing, in minutes.
//!
//! 1. make a tiny Qwen2-shaped model and a byte-level tokenizer;
//! 2. cold-start it by SFT on `<think>…</think><answer>…</answer>` traces of multi-step
//!    arithmetic written by an *imperfect teacher* that answers from intuition (`<think>9?`, a
//!    guess that slips by ±1 half the time) and only in one trace in ten says `wait` and works
//!    the chain out step by step — a rare, latent self-check (`aha_train::teacher::guess_example`);
//! 3. evaluate on the held-out split (k samples per question: pass@1, majority vote, length,
//!    reflection words, checks, self-corrections that fixed an error);
//! 4. GRPO with accuracy + format rewards only (nothing rewards length or the word `wait`),
//!    with held-out evaluations every `--eval-every` steps;
//! 5. evaluate again; print the table and one held-out self-correction (the "aha"), write
//!    `summary.json`, metrics and plots.
//!
//! `--ablation` runs the same budget with no self-check in the cold start (check rate 0): what RL
//! does without the latent behaviour to amplify (docs/DESIGN.md §1.5).

use std::path::{Path, PathBuf};
use std::time::Instant;

use aha_metrics::{draw_report, write_eval, EvalRecord};
use aha_model::{init_tiny_on, LoadedModel, TinySpec};
use aha_reward::{Registry, RewardsConfig};
use aha_train::config::{GrpoLossConfig, LrSchedule, OptimConfig};
use aha_train::data::PromptRow;
use aha_train::eval::{evaluate_set, EvalSettings};
use aha_train::grpo::{GrpoSettings, GrpoTrainer, TextCodec};
use aha_train::optim::{named_vars, AdamW};
use aha_train::remote::{Engine, RemoteRollout, RolloutSettings};
use aha_train::run::{train, RunOptions};
use aha_train::samples::GenSettings;
use aha_train::samples::SampleRecord;
use aha_train::sft::{SftExample, SftMetrics, SftOptions, SftRun, SftSettings};
use aha_train::tasks::{Problem, Split, TaskSpec};
use aha_train::teacher::{GuessFirst, GuessReading, TeacherConfig};
use aha_train::template::EncodedPrompts;
use anyhow::{Context, Result};
use serde_json::json;

use crate::exec_args::ExecArgs;

/// Arguments of `aha demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output directory (model, runs, plots, summary.json); default `runs/demo`, or
    /// `runs/demo-ablation` with `--ablation`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of everything: model init, data, sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// GRPO steps (the default fits the 10-minute budget on 2 cores).
    #[arg(long, default_value_t = 150)]
    pub grpo_steps: usize,
    /// Cold-start SFT steps (the worked chain must be reliable before RL for a check to pay).
    #[arg(long, default_value_t = 2500)]
    pub sft_steps: usize,
    /// Fraction of cold-start traces whose intuitive guess is off by ±1.
    #[arg(long, default_value_t = 0.5)]
    pub slip_rate: f64,
    /// Fraction of the guessed cold-start traces in which the teacher checks its guess (`wait`
    /// and the worked chain): the latent behaviour RL can amplify.
    #[arg(long, default_value_t = 0.1)]
    pub check_rate: f64,
    /// Fraction of the cold-start problems written as worked examples (`Work out …`, the exact
    /// chain): where the model learns the arithmetic of the steps.
    #[arg(long, default_value_t = 0.5)]
    pub worked_rate: f64,
    /// The ablation: no self-check in the cold start (check rate 0), everything else the same.
    #[arg(long, default_value_t = false, conflicts_with = "check_rate")]
    pub ablation: bool,
    /// Fewest operands of a problem (4–5 operands are long enough that the tiny model's
    /// intuitive guess is often wrong, and short enough that the worked chain is reliable).
    #[arg(long, default_value_t = 4)]
    pub min_operands: usize,
    /// Most operands of a problem.
    #[arg(long, default_value_t = 5)]
    pub max_operands: usize,
    /// Held-out evaluation every this many GRPO steps (0: only before and after).
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// GRPO learning rate (AdamW moves every weight by about this much per step, so RL needs a
    /// much smaller rate than SFT's 3e-3).
    #[arg(long, default_value_t = 1e-4)]
    pub grpo_lr: f64,
    /// Largest operand of the arithmetic problems (5, with 4 or 5 operands: 55 000 distinct
    /// problems, so the 90 % that GRPO trains on are not memorised).
    #[arg(long, default_value_t = 5)]
    pub max_value: i64,
    /// Held-out questions evaluated before, during (`--eval-every`) and after RL (fewer when the
    /// held-out split is smaller).
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
    /// GRPO rollouts on these OpenAI-compatible servers (`aha serve` processes; repeat the flag
    /// for several) instead of in process; the policy's weights are pushed to them before
    /// every step.
    #[arg(long = "rollout-url")]
    pub rollout_urls: Vec<String>,
    /// With `--rollout-url`: steps the rollouts may lag the policy (1 generates the next step's
    /// rollouts while this step trains).
    #[arg(long, default_value_t = 0, requires = "rollout_urls")]
    pub max_staleness: usize,
    /// Device, dtype and backend (the published figures are CPU, f32, auto).
    #[command(flatten)]
    pub exec: ExecArgs,
}

impl Args {
    /// Where this run writes.
    fn out_dir(&self) -> PathBuf {
        let default = if self.ablation { "runs/demo-ablation" } else { "runs/demo" };
        self.out.clone().unwrap_or_else(|| PathBuf::from(default))
    }
}

/// The demo's fixed recipe.
struct Plan {
    model: TinySpec,
    /// The task, its train split (`size`, `test_percent`, `seed`) and the imperfect teacher.
    teacher: TeacherConfig,
    eval_questions: usize,
    eval_every: usize,
    sft: SftSettings,
    sft_optim: OptimConfig,
    grpo: GrpoSettings,
    grpo_optim: OptimConfig,
    eval: EvalSettings,
    /// GRPO rollouts on servers (`--rollout-url`), or in process.
    rollout: Option<RolloutSettings>,
}

impl Plan {
    fn new(args: &Args) -> Self {
        // Room for the guess, `wait`, every step and the answer: with operands ≤ 9 a step such as
        // `-35-9=-44 ` takes ≤ 10 byte tokens (larger operands need more than this allows).
        let max_len = 16 + 10 * args.max_operands;
        let check_rate = if args.ablation { 0.0 } else { args.check_rate };
        Self {
            model: TinySpec {
                hidden_size: args.hidden_size,
                intermediate_size: 3 * args.hidden_size,
                num_hidden_layers: args.layers,
                num_attention_heads: args.heads,
                num_key_value_heads: 2,
                max_position_embeddings: 128.max(48 + max_len),
                ..TinySpec::default()
            },
            teacher: TeacherConfig {
                task: TaskSpec::Arithmetic {
                    min_operands: args.min_operands,
                    max_operands: args.max_operands,
                    max_value: args.max_value,
                },
                size: 8000,
                test_percent: 10,
                slip_rate: args.slip_rate,
                cot_words: None,
                guess: Some(GuessFirst { check_rate, worked_rate: args.worked_rate }),
                seed: args.seed,
            },
            eval_questions: args.eval_questions,
            eval_every: args.eval_every,
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
            rollout: (!args.rollout_urls.is_empty()).then(|| RolloutSettings {
                engine: Engine::Openai,
                urls: args.rollout_urls.clone(),
                max_staleness: args.max_staleness,
                ..RolloutSettings::default()
            }),
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
    plan.teacher.validate().context("--slip-rate / --check-rate / --worked-rate")?;
    if let Some(r) = &plan.rollout {
        r.validate(false).context("--rollout-url / --max-staleness")?;
    }
    anyhow::ensure!(
        (1..=9).contains(&args.max_value),
        "--max-value {}: must lie in 1..=9 (single-digit operands; the completion limit allows no more)",
        args.max_value
    );
    let out = args.out_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    clear_previous_run(&out)?;
    let lm = init_tiny_on(&out.join("model-init"), &plan.model, args.seed, &args.exec.request())
        .context("creating the tiny model")?;
    eprintln!("[1/5] tiny model: {} parameters, {}", param_count(&lm), lm.model.plan().describe());
    let t = &plan.teacher;
    let train_set = t.problems();
    let test_set = t.task.generate(t.seed, Split::Test, plan.eval_questions, t.test_percent);
    let registry = Registry::build(&RewardsConfig::from_toml_str(REWARDS_TOML)?)?;
    cold_start(&lm, &plan, &train_set, &out, args.seed)?;
    let run_dir = out.join("grpo");
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let test_rows: Vec<PromptRow> = test_set.iter().map(PromptRow::from).collect();
    let ids = encode_prompts(&lm.tokenizer, &test_rows)?;
    let held_out =
        HeldOut { set: EncodedPrompts { rows: test_rows, ids, too_long: 0 }, registry: &registry, plan: &plan };
    eprintln!("[3/5] evaluating the SFT model on {} held-out questions", held_out.set.rows.len());
    let before = held_out.eval(&lm, &run_dir, 0, "after_sft")?;
    reinforce(&lm, &plan, &train_set, &held_out, &run_dir, args.seed)?;
    eprintln!("[5/5] evaluating the GRPO model");
    let after = held_out.eval(&lm, &run_dir, plan.grpo.max_steps as u64, "after_grpo")?;
    let plots = draw_report(&run_dir).context("drawing plots")?;
    let wall = start.elapsed().as_secs_f64();
    print_table(&before, &after, wall);
    print_aha(&after);
    write_summary(&args, &plan, &before, &after, wall, &plots, lm.model.plan().to_json())?;
    Ok(())
}

/// The held-out questions and how they are scored.
struct HeldOut<'a> {
    set: EncodedPrompts,
    registry: &'a Registry,
    plan: &'a Plan,
}

impl HeldOut<'_> {
    /// Evaluates the model as it is now, writes the record under `run_dir`, reads the behaviour.
    fn eval(&self, lm: &LoadedModel, run_dir: &Path, step: u64, label: &str) -> Result<Outcome> {
        let mut bar = aha_metrics::TrainProgress::hidden(self.set.rows.len() as u64);
        let out = evaluate_set(&lm.model, &self.set, &lm.tokenizer, self.registry, &self.plan.eval, &mut bar)?;
        let mut record = out.record;
        record.step = step;
        record.label = Some(label.to_string());
        write_eval(run_dir, &record)?;
        Ok(Outcome { record, behaviour: Behaviour::of(out.samples.iter().flatten()) })
    }
}

/// An evaluation's summary and the self-checking seen in its completions.
struct Outcome {
    record: EvalRecord,
    behaviour: Behaviour,
}

/// How often completions check their guess, and how often a check fixed a wrong guess.
#[derive(Default)]
struct Behaviour {
    completions: usize,
    checked: usize,
    /// The check changed the guess and the answer is right: a self-correction that fixed an error.
    fixed: usize,
    /// The first such completion: (question, completion).
    example: Option<(String, String)>,
}

impl Behaviour {
    fn of<'a>(samples: impl Iterator<Item = &'a SampleRecord>) -> Self {
        let mut b = Behaviour::default();
        for s in samples {
            let reading = GuessReading::of(&s.completion);
            b.completions += 1;
            b.checked += usize::from(reading.checked);
            if reading.corrected() && s.correct {
                b.fixed += 1;
                b.example.get_or_insert_with(|| (s.prompt.clone(), s.completion.clone()));
            }
        }
        b
    }

    fn share(&self, n: usize) -> f64 {
        if self.completions == 0 {
            0.0
        } else {
            n as f64 / self.completions as f64
        }
    }
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
fn cold_start(lm: &LoadedModel, plan: &Plan, train_set: &[Problem], out: &Path, seed: u64) -> Result<()> {
    let codec: &dyn TextCodec = &lm.tokenizer;
    let eos = *codec.eos_ids().first().context("the tokenizer has no EOS id")?;
    let mut examples = Vec::with_capacity(train_set.len());
    for (prompt, trace) in plan.teacher.examples(train_set) {
        let mut completion_ids = codec.encode(&trace)?;
        completion_ids.push(eos);
        examples.push(SftExample { prompt_ids: codec.encode(&prompt_text(&prompt))?, completion_ids });
    }
    let opts = SftOptions {
        sft: plan.sft.clone(),
        seed,
        run_dir: out.join("sft"),
        progress: true,
        metrics: SftMetrics::Loss,
        checkpoints: None,
    };
    let mut sft = SftRun::new(lm, &examples, plan.sft_optim.clone(), opts)?;
    eprintln!(
        "[2/5] cold-start SFT: {} steps × {} traces ({:.0}% worked examples; of the rest, guesses off by one in {:.0}%, checked in {:.0}%)",
        sft.total_steps(),
        plan.sft.batch_size,
        plan.teacher.guess.map_or(0.0, |g| g.worked_rate) * 100.0,
        plan.teacher.slip_rate * 100.0,
        plan.teacher.guess.map_or(0.0, |g| g.check_rate) * 100.0
    );
    sft.run().context("cold-start SFT")?;
    Ok(())
}

/// GRPO with accuracy + format rewards on the training split.
fn reinforce(
    lm: &LoadedModel,
    plan: &Plan,
    train_set: &[Problem],
    held_out: &HeldOut,
    run_dir: &Path,
    seed: u64,
) -> Result<()> {
    let registry = held_out.registry;
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
    if let Some(r) = plan.rollout.as_ref() {
        eprintln!("      rollouts on {} (max staleness {})", r.urls.join(", "), r.max_staleness);
        let base = lm.source.display().to_string();
        trainer.remote = Some(RemoteRollout::new(r.clone(), &lm.tokenizer, &base, run_dir, lm.config.vocab_size));
    }
    eprintln!(
        "[4/5] GRPO: {} steps × {} prompts × {} samples",
        plan.grpo.max_steps, plan.grpo.prompts_per_step, plan.grpo.group_size
    );
    let opts = RunOptions { save_steps: 0, keep_last: 1, log_samples_every: 10, progress: true };
    let config = json!({"grpo": plan.grpo, "optim": plan.grpo_optim});
    let every = plan.eval_every;
    train(&mut trainer, &lm.tokenizer, run_dir, &opts, &config, |step, _| {
        if every == 0 || !step.is_multiple_of(every) || step == plan.grpo.max_steps {
            return Ok(());
        }
        let out = held_out
            .eval(lm, run_dir, step as u64, "during_grpo")
            .map_err(|e| aha_train::error::TrainError::Other(format!("held-out evaluation at step {step}: {e:#}")))?;
        eprintln!(
            "  held-out at step {step}: pass@1 {:.1}%, {:.1} tokens, {:.0} reflection words per 1k, checks {:.0}%",
            out.record.pass_at_1 * 100.0,
            out.record.mean_completion_tokens,
            out.record.reflection_per_1k_words.unwrap_or(0.0),
            out.behaviour.share(out.behaviour.checked) * 100.0
        );
        Ok(())
    })?;
    Ok(())
}

fn print_table(before: &Outcome, after: &Outcome, wall: f64) {
    let (b, a) = (&before.record, &after.record);
    println!("\n| held-out ({} questions, k = {}) | after SFT | after GRPO |", b.questions, b.k);
    println!("|---|---|---|");
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let row = |name: &str, x: String, y: String| println!("| {name} | {x} | {y} |");
    row("pass@1", pct(b.pass_at_1), pct(a.pass_at_1));
    row(&format!("cons@{} (majority vote)", b.k), pct(b.cons_at_k), pct(a.cons_at_k));
    row(
        "mean completion tokens",
        format!("{:.1}", b.mean_completion_tokens),
        format!("{:.1}", a.mean_completion_tokens),
    );
    let refl = |r: &EvalRecord| format!("{:.1}", r.reflection_per_1k_words.unwrap_or(0.0));
    row("reflection words per 1 000 words", refl(b), refl(a));
    let (hb, ha) = (&before.behaviour, &after.behaviour);
    row("completions that check (`wait`)", pct(hb.share(hb.checked)), pct(ha.share(ha.checked)));
    row("self-corrections that fixed an error", pct(hb.share(hb.fixed)), pct(ha.share(ha.fixed)));
    println!("\nwall time: {wall:.0} s");
}

/// Prints one held-out completion in which the trained model caught and corrected its guess.
fn print_aha(after: &Outcome) {
    match &after.behaviour.example {
        Some((question, completion)) => {
            println!("\nthe aha: a held-out question the trained model got right by checking its guess");
            println!("  question:   {question}");
            println!("  completion: {completion}");
        }
        None => println!("\nno held-out completion of the trained model corrected its guess"),
    }
}

fn write_summary(
    args: &Args,
    plan: &Plan,
    before: &Outcome,
    after: &Outcome,
    wall: f64,
    plots: &[PathBuf],
    plan_json: serde_json::Value,
) -> Result<()> {
    let (hb, ha) = (&before.behaviour, &after.behaviour);
    let (before, after) = (&before.record, &after.record);
    let summary = json!({
        "seed": args.seed,
        "k": before.k,
        "eval_questions": before.questions,
        "eval_temperature": plan.eval.generation.temperature,
        "teacher_slip_rate": plan.teacher.slip_rate,
        "teacher_check_rate": plan.teacher.guess.map_or(0.0, |g| g.check_rate),
        "teacher_worked_rate": plan.teacher.guess.map_or(0.0, |g| g.worked_rate),
        "eval_every": plan.eval_every,
        "ablation": args.ablation,
        "operands": [args.min_operands, args.max_operands],
        "max_value": args.max_value,
        "pass_at_1_before_rl": before.pass_at_1,
        "pass_at_1_after_rl": after.pass_at_1,
        "cons_at_k_before_rl": before.cons_at_k,
        "cons_at_k_after_rl": after.cons_at_k,
        "mean_completion_tokens_before_rl": before.mean_completion_tokens,
        "mean_completion_tokens_after_rl": after.mean_completion_tokens,
        "reflection_per_1k_before_rl": before.reflection_per_1k_words.unwrap_or(0.0),
        "reflection_per_1k_after_rl": after.reflection_per_1k_words.unwrap_or(0.0),
        "check_share_before_rl": hb.share(hb.checked),
        "check_share_after_rl": ha.share(ha.checked),
        "self_correction_fixed_share_before_rl": hb.share(hb.fixed),
        "self_correction_fixed_share_after_rl": ha.share(ha.fixed),
        "aha_example": ha.example.as_ref().map(|(q, c)| json!({"question": q, "completion": c})),
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
    let path = args.out_dir().join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("summary: {}", path.display());
    Ok(())
}
