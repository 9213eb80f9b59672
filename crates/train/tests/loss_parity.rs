//! The GRPO loss against TRL's formulas (a naive torch re-implementation dumped by
//! `scripts/make_loss_fixtures.py`), a finite-difference gradient check in f64 (near the clip
//! boundaries too), and the REINFORCE gradient at ratio 1.

use aha_train::config::{GrpoLossConfig, ImportanceLevel, LossType};
use aha_train::loss::{grpo_loss, LossInputs, LossNorm};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpo_loss.json");

fn mat(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn t2(rows: &[Vec<f64>], dtype: DType) -> Tensor {
    let (b, l) = (rows.len(), rows[0].len());
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (b, l), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

/// A loss case: config, normaliser and the inputs besides the differentiable log-probs.
struct Case {
    cfg: GrpoLossConfig,
    norm: LossNorm,
    old: Vec<Vec<f64>>,
    reference: Vec<Vec<f64>>,
    adv: Vec<f64>,
    mask: Vec<Vec<f64>>,
}

impl Case {
    /// The loss and its gradient with respect to `logps`, in `dtype`.
    fn eval(&self, logps: &[Vec<f64>], dtype: DType) -> (f64, Vec<Vec<f64>>) {
        let x = Var::from_tensor(&t2(logps, dtype)).unwrap();
        let old = t2(&self.old, dtype);
        let reference = t2(&self.reference, dtype);
        let adv = Tensor::new(self.adv.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        let mask = t2(&self.mask, dtype);
        let inp = LossInputs {
            logps: x.as_tensor(),
            old_logps: &old,
            ref_logps: Some(&reference),
            advantages: &adv,
            mask: &mask,
        };
        let out = grpo_loss(&inp, &self.cfg, &self.norm).unwrap();
        let grads = out.loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        (out.loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), g)
    }

    fn loss(&self, logps: &[Vec<f64>]) -> f64 {
        self.eval(logps, DType::F64).0
    }
}

fn parse_case(c: &Value) -> (Case, Vec<Vec<f64>>, f64, Vec<Vec<f64>>) {
    let k = &c["config"];
    let loss_type = match k["loss_type"].as_str().unwrap() {
        "grpo" => LossType::Grpo,
        "bnpo" => LossType::Bnpo,
        "dr_grpo" => LossType::DrGrpo,
        "dapo" => LossType::Dapo,
        other => panic!("unknown loss type {other}"),
    };
    let level = match k["importance_sampling"].as_str().unwrap() {
        "token" => ImportanceLevel::Token,
        _ => ImportanceLevel::Sequence,
    };
    let cfg = GrpoLossConfig {
        epsilon_low: k["epsilon_low"].as_f64().unwrap(),
        epsilon_high: k["epsilon_high"].as_f64().unwrap(),
        beta: k["beta"].as_f64().unwrap(),
        loss_type,
        importance_sampling: level,
        ..GrpoLossConfig::default()
    };
    let norm = LossNorm {
        max_completion_length: k["max_completion_length"].as_u64().unwrap() as usize,
        grad_accum_steps: k["grad_accum_steps"].as_u64().unwrap() as usize,
        dapo_active_tokens: k["dapo_active_tokens"].as_f64().unwrap(),
    };
    let case = Case {
        cfg,
        norm,
        old: mat(&c["old_logps"]),
        reference: mat(&c["ref_logps"]),
        adv: serde_json::from_value(c["advantages"].clone()).unwrap(),
        mask: mat(&c["mask"]),
    };
    (case, mat(&c["logps"]), c["loss"].as_f64().unwrap(), mat(&c["grad"]))
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn matches_trl_reference_loss_and_gradient() {
    let text = std::fs::read_to_string(FIXTURE).expect("run scripts/make_loss_fixtures.sh to create the fixture");
    let json: Value = serde_json::from_str(&text).unwrap();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 32, "4 aggregations × 2 levels × 2 betas × 2 clip settings");
    let (mut worst_loss, mut worst_grad) = ([0.0f64; 2], [0.0f64; 2]);
    for (i, c) in cases.iter().enumerate() {
        let (case, logps, want_loss, want_grad) = parse_case(c);
        for (j, dtype) in [DType::F64, DType::F32].into_iter().enumerate() {
            let (loss, grad) = case.eval(&logps, dtype);
            let dl = (loss - want_loss).abs();
            let dg = max_abs_diff(&grad, &want_grad);
            assert!(
                dl <= 1e-5 && dg <= 1e-5,
                "case {i} ({:?}) {dtype:?}: loss diff {dl:e}, grad diff {dg:e}",
                c["config"]
            );
            worst_loss[j] = worst_loss[j].max(dl);
            worst_grad[j] = worst_grad[j].max(dg);
        }
    }
    println!(
        "TRL parity over {} cases: f64 max |Δloss| {:e}, max |Δgrad| {:e}; f32 max |Δloss| {:e}, max |Δgrad| {:e}",
        cases.len(),
        worst_loss[0],
        worst_grad[0],
        worst_loss[1],
        worst_grad[1]
    );
}

/// Central differences of the loss in f64 at every log-prob entry.
fn numeric_grad(case: &Case, logps: &[Vec<f64>], h: f64) -> Vec<Vec<f64>> {
    let mut g = vec![vec![0.0; logps[0].len()]; logps.len()];
    for i in 0..logps.len() {
        for t in 0..logps[0].len() {
            let mut p = logps.to_vec();
            p[i][t] += h;
            let up = case.loss(&p);
            p[i][t] -= 2.0 * h;
            let down = case.loss(&p);
            g[i][t] = (up - down) / (2.0 * h);
        }
    }
    g
}

/// Old log-probs placing the token ratios at `ratios` (log-probs fixed).
fn old_for_ratios(logps: &[Vec<f64>], ratios: &[Vec<f64>]) -> Vec<Vec<f64>> {
    logps.iter().zip(ratios).map(|(l, r)| l.iter().zip(r).map(|(l, r)| l - r.ln()).collect()).collect()
}

#[test]
fn finite_differences_match_including_near_the_clip_boundaries() {
    let logps = vec![vec![-0.7, -1.3, -2.1, -0.4], vec![-1.9, -0.2, -0.9, -1.1], vec![-0.5, -2.5, -1.0, -0.8]];
    let (lo, hi) = (0.2, 0.28);
    let d = 1e-3;
    // Ratios just inside and just outside 1 − ε_low and 1 + ε_high, and well inside.
    let ratios = vec![
        vec![1.0 + hi - d, 1.0 + hi + d, 1.0 - lo + d, 1.0 - lo - d],
        vec![1.0 - lo - d, 1.0 - lo + d, 1.0 + hi + d, 1.0 + hi - d],
        vec![1.05, 0.93, 1.0 + hi + d, 1.0 - lo - d],
    ];
    let mask = vec![vec![1.0; 4], vec![1.0, 1.0, 1.0, 0.0], vec![1.0, 1.0, 0.0, 0.0]];
    let mut worst = 0.0f64;
    for loss_type in [LossType::Grpo, LossType::Bnpo, LossType::DrGrpo, LossType::Dapo] {
        for level in [ImportanceLevel::Token, ImportanceLevel::Sequence] {
            for beta in [0.0, 0.04] {
                let case = Case {
                    cfg: GrpoLossConfig {
                        epsilon_low: lo,
                        epsilon_high: hi,
                        beta,
                        loss_type,
                        importance_sampling: level,
                        ..Default::default()
                    },
                    norm: LossNorm { max_completion_length: 6, grad_accum_steps: 2, dapo_active_tokens: 13.0 },
                    old: old_for_ratios(&logps, &ratios),
                    reference: logps.iter().map(|r| r.iter().map(|x| x - 0.3).collect()).collect(),
                    adv: vec![0.8, -1.2, 0.5],
                    mask: mask.clone(),
                };
                let (_, analytic) = case.eval(&logps, DType::F64);
                // h ≪ d, so no difference straddles a clip boundary.
                let numeric = numeric_grad(&case, &logps, 1e-6);
                let diff = max_abs_diff(&analytic, &numeric);
                assert!(diff < 1e-7, "{loss_type:?} {level:?} β={beta}: analytic {analytic:?} vs numeric {numeric:?}");
                worst = worst.max(diff);
            }
        }
    }
    println!("finite differences (f64, h = 1e-6, ratios within 1e-3 of the clip bounds): max |Δgrad| {worst:e}");
}

#[test]
fn clipped_tokens_get_no_surrogate_gradient() {
    // Token ratios just outside the clip range on the side where min() picks the clipped term.
    let logps = vec![vec![-0.7, -1.3]];
    let ratios = vec![vec![1.2 + 1e-3, 1.2 + 1e-3]];
    let case = Case {
        cfg: GrpoLossConfig::default(),
        norm: LossNorm { max_completion_length: 2, grad_accum_steps: 1, dapo_active_tokens: 2.0 },
        old: old_for_ratios(&logps, &ratios),
        reference: logps.clone(),
        adv: vec![1.0],
        mask: vec![vec![1.0, 1.0]],
    };
    let (_, g) = case.eval(&logps, DType::F64);
    assert_eq!(g, vec![vec![0.0, 0.0]]);
}

#[test]
fn at_ratio_one_the_gradient_is_reinforce() {
    // π_old = π_θ (μ = 1: the trainer passes the detached log-probs): for `grpo` aggregation
    // and β = 0 the gradient per real token is −A_i / (|o_i| · B), REINFORCE with a
    // per-sequence length normalisation; the loss itself is exactly 0 for zero-mean A.
    let logps = vec![vec![-0.7, -1.3, -2.1], vec![-1.9, -0.2, -0.9], vec![-0.5, -2.5, -1.0]];
    let mask = vec![vec![1.0, 1.0, 1.0], vec![1.0, 1.0, 0.0], vec![1.0, 0.0, 0.0]];
    let adv = [1.5, -0.5, -1.0];
    let x = Var::from_tensor(&t2(&logps, DType::F64)).unwrap();
    let old = x.as_tensor().detach();
    let adv_t = Tensor::new(&adv, &Device::Cpu).unwrap();
    let mask_t = t2(&mask, DType::F64);
    let inp = LossInputs { logps: x.as_tensor(), old_logps: &old, ref_logps: None, advantages: &adv_t, mask: &mask_t };
    let norm = LossNorm { max_completion_length: 3, grad_accum_steps: 1, dapo_active_tokens: 6.0 };
    for level in [ImportanceLevel::Token, ImportanceLevel::Sequence] {
        let cfg = GrpoLossConfig { importance_sampling: level, ..Default::default() };
        let out = grpo_loss(&inp, &cfg, &norm).unwrap();
        assert_eq!(out.loss.to_scalar::<f64>().unwrap(), 0.0);
        let g = out.loss.backward().unwrap().get(x.as_tensor()).unwrap().to_vec2::<f64>().unwrap();
        for i in 0..3 {
            let len: f64 = mask[i].iter().sum();
            for t in 0..3 {
                let want = -adv[i] * mask[i][t] / (len * 3.0);
                assert!((g[i][t] - want).abs() < 1e-15, "{level:?} [{i},{t}]: {} vs {want}", g[i][t]);
            }
        }
    }
}
