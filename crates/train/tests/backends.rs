//! Training on the paths CUDA and half precision take, on the CPU: one GRPO trainer step on the
//! `composite` backend (candle's composite ops and autograd for rollout, π_old, π_ref and the
//! policy gradient) against the same step on the default backend (`cpu-handwritten`): the same
//! completions, log-probs, loss, gradient norm and updated parameters; AdamW's candle-op update
//! (taken by every parameter that is not CPU f32/f64, so not by composite f32 on the CPU)
//! against its fused CPU update; and two bf16 GRPO steps (composite, candle-op AdamW) that run,
//! move the parameters and keep them finite.

use aha_model::{init_tiny_on, Backend, DTypeSpec, ExecRequest, LoadedModel};
use aha_reward::{Registry, Reward, Sample, Score};
use aha_train::config::{GrpoLossConfig, LossType, OptimConfig};
use aha_train::data::PromptRow;
use aha_train::grpo::{GrpoSettings, GrpoTrainer, StepOutput, TextCodec};
use aha_train::optim::NamedVar;
use aha_train::optim::{named_vars, AdamW};
use aha_train::tasks::{Split, TaskSpec};
use candle_core::{DType, Device, Tensor, Var};

mod common;
use common::tiny_spec;

/// A reward with spread on a random model: the completion's length mod 5, scaled.
struct LengthReward;
impl Reward for LengthReward {
    fn score(&self, s: &Sample) -> Score {
        Score::Value((s.completion.chars().count() % 5) as f64 / 4.0)
    }
}

/// β > 0 (a reference model's log-probs) and two minibatches (π_old computed up front), so every
/// no-grad and grad forward of the trainer runs.
fn settings() -> GrpoSettings {
    GrpoSettings {
        max_steps: 10,
        prompts_per_step: 2,
        group_size: 4,
        max_completion_length: 8,
        minibatches: 2,
        loss: GrpoLossConfig { loss_type: LossType::Grpo, beta: 0.04, ..GrpoLossConfig::default() },
        ..GrpoSettings::default()
    }
}

/// Parameters by name, in f64.
type Params = Vec<(String, Vec<f64>)>;

/// Runs `steps` trainer steps of a tiny model (seed 3) made where `exec` says; returns the
/// outputs and the parameters after them, in f64, by name.
fn train(exec: &ExecRequest, steps: usize, optim: OptimConfig) -> (LoadedModel, Vec<StepOutput>, Params) {
    let dir = tempfile::tempdir().unwrap();
    let lm = init_tiny_on(dir.path(), &tiny_spec(), 3, exec).unwrap();
    let task = TaskSpec::Arithmetic { min_operands: 2, max_operands: 3, max_value: 9 };
    let rows: Vec<PromptRow> = task.generate(5, Split::Train, 4, 10).iter().map(PromptRow::from).collect();
    let prompt_ids: Vec<Vec<u32>> =
        rows.iter().map(|r| TextCodec::encode(&lm.tokenizer, &format!("{}\n", r.prompt)).unwrap()).collect();
    let registry = Registry::from_rewards(vec![("r".into(), 1.0, Box::new(LengthReward))], 100);
    let opt = AdamW::new(named_vars(&lm.varmap), optim).unwrap();
    let mut t = GrpoTrainer::new(settings(), &lm.model, opt, &rows, prompt_ids, &registry, &lm.tokenizer, 11).unwrap();
    let outs = (0..steps).map(|_| t.step().unwrap()).collect();
    let params = t
        .policy
        .named_parameters()
        .into_iter()
        .map(|(n, p)| (n, p.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()))
        .collect();
    (lm, outs, params)
}

fn composite(dtype: DTypeSpec) -> ExecRequest {
    ExecRequest { backend: Backend::Composite, dtype, ..Default::default() }
}

/// A larger ε than the default 1e-8 keeps AdamW's first update `lr · g / (|g| + ε)` a smooth
/// function of the gradient; with 1e-8 it is nearly `lr · sign(g)`, which turns rounding-level
/// differences of near-zero gradient entries (the key-projection bias: softmax ignores a
/// per-query constant, so its exact gradient is zero) into differences of up to 2·lr.
fn optim() -> OptimConfig {
    OptimConfig { learning_rate: 1e-2, eps: 1e-4, max_grad_norm: 0.0, ..OptimConfig::default() }
}

#[test]
fn a_grpo_step_on_composite_matches_the_default_backend() {
    let (lc, oc, pc) = train(&composite(DTypeSpec::F32), 1, optim());
    let (ld, od, pd) = train(&ExecRequest::default(), 1, optim());
    assert_eq!(lc.model.plan().backend(), Backend::Composite);
    assert_eq!(ld.model.plan().backend(), Backend::CpuHandwritten);
    let (oc, od) = (&oc[0], &od[0]);

    assert_eq!(oc.samples.len(), od.samples.len());
    let mut d_lp = 0.0f32;
    for (a, b) in oc.samples.iter().zip(&od.samples) {
        assert_eq!((a.row, &a.completion.completion_ids), (b.row, &b.completion.completion_ids));
        for (x, y) in a.completion.logprobs.iter().zip(&b.completion.logprobs) {
            d_lp = d_lp.max((x - y).abs());
        }
    }
    assert!(oc.samples.iter().any(|s| s.advantage != 0.0), "precondition: the step has a non-zero loss gradient");
    assert!(d_lp <= 1e-5, "rollout log-probs differ by {d_lp}");
    for key in ["loss", "grad_norm", "kl", "entropy"] {
        let (a, b) = (oc.metrics[key], od.metrics[key]);
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{key}: composite {a} vs default {b}");
    }

    let (mut d, mut moved, mut worst) = (0.0f64, 0.0f64, String::new());
    for ((na, a), (nb, b)) in pc.iter().zip(&pd) {
        assert_eq!(na, nb);
        for (x, y) in a.iter().zip(b) {
            if (x - y).abs() > d {
                (d, worst) = ((x - y).abs(), na.clone());
            }
        }
    }
    let (_, _, initial) = train(&ExecRequest::default(), 0, optim());
    for ((_, a), (_, b)) in pd.iter().zip(&initial) {
        moved = a.iter().zip(b).fold(moved, |m, (x, y)| m.max((x - y).abs()));
    }
    println!(
        "composite vs cpu-handwritten after one step: max |Δparam| {d:.1e} ({worst}), step size {moved:.1e}, \
         |Δlogprob| {d_lp:.1e}, loss {} vs {}",
        oc.metrics["loss"], od.metrics["loss"]
    );
    assert!(moved > 1e-3, "precondition: the step moved the parameters ({moved})");
    assert!(d <= 1e-5, "parameter {worst} differs by {d} after one step");
}

#[test]
fn a_grpo_step_in_bf16_runs_and_moves_the_parameters() {
    let (lm, outs, after) = train(&composite(DTypeSpec::Bf16), 2, optim());
    assert_eq!((lm.model.plan().backend(), lm.model.dtype()), (Backend::Composite, DType::BF16));
    let (_, _, initial) = train(&composite(DTypeSpec::Bf16), 0, optim());
    for out in &outs {
        assert!(out.metrics["loss"].is_finite() && out.metrics["grad_norm"].is_finite(), "{:?}", out.metrics);
        assert_eq!(out.metrics["skipped_steps"], 0.0);
        for s in &out.samples {
            assert!(s.completion.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
        }
    }
    let mut moved = 0.0f64;
    for ((name, a), (_, b)) in after.iter().zip(&initial) {
        assert!(a.iter().all(|x| x.is_finite()), "{name} is not finite");
        moved = a.iter().zip(b).fold(moved, |m, (x, y)| m.max((x - y).abs()));
    }
    println!(
        "bf16: two steps, loss {:?}, max |Δparam| {moved:.1e}",
        outs.iter().map(|o| o.metrics["loss"]).collect::<Vec<_>>()
    );
    assert!(moved > 1e-3, "bf16 steps did not move the parameters ({moved})");
}

/// AdamW's candle-op update (bf16 and f16 here; CUDA parameters take it too) against its fused
/// one-pass CPU update (f32), with weight decay and clipping, over three steps whose gradients
/// change sign: equal to the half-precision format's resolution.
#[test]
fn adamw_candle_op_update_matches_the_fused_cpu_update() {
    let start = [1.0f32, -2.0, 0.5, 0.0, 3.0, -0.25];
    let grads =
        [[0.5f32, -1.0, 0.0, 2.0, -0.125, 4.0], [0.25, 0.75, -0.5, -1.0, 0.5, 1.0], [-1.0, 0.5, 1.0, 0.25, 0.0, -2.0]];
    let cfg = OptimConfig { learning_rate: 0.1, weight_decay: 0.1, max_grad_norm: 3.0, ..OptimConfig::default() };
    let run = |dtype: DType| {
        let var = Var::from_tensor(&Tensor::new(&start, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![NamedVar { name: "p".into(), var: var.clone() }], cfg.clone()).unwrap();
        for g in &grads {
            let g = Tensor::new(g, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let loss = (var.as_tensor() * g).unwrap().sum_all().unwrap();
            let report = opt.step(&opt.collect(&loss.backward().unwrap()), 10).unwrap();
            assert!(report.applied);
        }
        var.as_tensor().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
    };
    let fused = run(DType::F32);
    let moved = fused.iter().zip(&start).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 0.15, "precondition: the updates are large enough to compare ({moved})");
    // Tolerances: about one unit in the last place of each format at |p| ≈ 3.
    for (dtype, tol) in [(DType::BF16, 0.02), (DType::F16, 0.005)] {
        let ops = run(dtype);
        let d = fused.iter().zip(&ops).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!("AdamW {dtype:?} (candle ops) vs f32 (fused): max |Δ| {d:.1e}, parameters moved up to {moved:.2}");
        assert!(d <= tol, "{dtype:?}: the candle-op AdamW update differs from the fused one by {d}");
    }
}
