//! AdamW with inspectable state (for exact resume), global grad-norm clipping and LR schedules.
//!
//! The update is PyTorch's `AdamW` (decoupled weight decay, bias-corrected moments). Moments are
//! kept per parameter name so a checkpoint can save and restore them bit for bit.

use std::collections::BTreeMap;

use aha_model::cpu::autograd::cpu_slices;
use aha_model::exec::cpu_float;
use candle_core::{backprop::GradStore, DType, Tensor, Var, WithDType};
use rayon::prelude::*;

use crate::config::{LrSchedule, OptimConfig};
use crate::error::Result;

/// One trainable parameter with its HF name.
#[derive(Debug, Clone)]
pub struct NamedVar {
    /// Hugging Face parameter name.
    pub name: String,
    /// The variable.
    pub var: Var,
}

/// Gradients aligned with an optimiser's parameters; summed across micro-batches.
#[derive(Debug, Clone, Default)]
pub struct Grads(pub Vec<Option<Tensor>>);

impl Grads {
    /// Adds `other` into `self` (gradient accumulation); an empty `self` takes `other` as is.
    pub fn accumulate(&mut self, other: Grads) -> Result<()> {
        if self.0.is_empty() {
            *self = other;
            return Ok(());
        }
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = match (a.take(), b) {
                (Some(x), Some(y)) => Some((x + y)?),
                (x, y) => x.or(y),
            };
        }
        Ok(())
    }

    /// Global L2 norm (missing gradients count as 0).
    pub fn norm(&self) -> Result<f64> {
        let mut total = 0f64;
        for g in self.0.iter().flatten() {
            total += match g.dtype() {
                DType::F32 if cpu_float(g.device(), g.dtype()) => cpu_slices::<f32, _>(&[g], |x| sum_squares(x[0]))?,
                DType::F64 if cpu_float(g.device(), g.dtype()) => cpu_slices::<f64, _>(&[g], |x| sum_squares(x[0]))?,
                _ => g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            };
        }
        Ok(total.sqrt())
    }

    /// Number of parameters that received a non-zero gradient.
    pub fn nonzero_count(&self) -> Result<usize> {
        let mut n = 0;
        for g in self.0.iter().flatten() {
            if g.abs()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? > 0.0 {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The trainable variables of a `VarMap`, sorted by name (a stable order for checkpoints).
pub fn named_vars(varmap: &candle_nn::VarMap) -> Vec<NamedVar> {
    let data = varmap.data().lock().map(|d| d.clone()).unwrap_or_else(|p| p.into_inner().clone());
    let mut vars: Vec<NamedVar> = data.into_iter().map(|(name, var)| NamedVar { name, var }).collect();
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    vars
}

/// AdamW's per-parameter state.
#[derive(Debug, Clone)]
pub struct Moments {
    /// First moment.
    pub m: Tensor,
    /// Second moment.
    pub v: Tensor,
}

/// AdamW over a fixed set of named variables.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<NamedVar>,
    moments: BTreeMap<String, Moments>,
    /// Optimiser steps taken so far (bias correction uses `step + 1`).
    step: usize,
    cfg: OptimConfig,
}

/// What one call to [`AdamW::step`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// False when the gradient was non-finite and the update was skipped.
    pub applied: bool,
}

impl AdamW {
    /// Creates an optimiser with zero moments.
    pub fn new(params: Vec<NamedVar>, cfg: OptimConfig) -> Result<Self> {
        let mut moments = BTreeMap::new();
        for p in &params {
            let z = p.var.as_tensor().zeros_like()?;
            moments.insert(p.name.clone(), Moments { m: z.clone(), v: z });
        }
        Ok(Self { params, moments, step: 0, cfg })
    }

    /// The parameters being optimised.
    pub fn params(&self) -> &[NamedVar] {
        &self.params
    }

    /// Optimiser steps applied so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// The state for checkpoints: `(name.m | name.v) → tensor`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.moments.len() * 2);
        for (name, mo) in &self.moments {
            out.push((format!("{name}.exp_avg"), mo.m.clone()));
            out.push((format!("{name}.exp_avg_sq"), mo.v.clone()));
        }
        out
    }

    /// Restores moments and step counter saved by [`AdamW::state_tensors`].
    pub fn restore(&mut self, tensors: &std::collections::HashMap<String, Tensor>, step: usize) -> Result<()> {
        for (name, mo) in self.moments.iter_mut() {
            let get = |suffix: &str| {
                tensors
                    .get(&format!("{name}.{suffix}"))
                    .cloned()
                    .ok_or_else(|| crate::error::TrainError::Other(format!("optimizer state lacks `{name}.{suffix}`")))
            };
            mo.m = get("exp_avg")?;
            mo.v = get("exp_avg_sq")?;
        }
        self.step = step;
        Ok(())
    }

    /// Picks this optimiser's parameters' gradients out of a backward pass, aligned with
    /// [`AdamW::params`] (`None` where a parameter got no gradient).
    pub fn collect(&self, grads: &GradStore) -> Grads {
        Grads(self.params.iter().map(|p| grads.get(p.var.as_tensor()).cloned()).collect())
    }

    /// Gradients given by parameter name (the hand-written backward's output), in this
    /// optimiser's parameter order; a parameter without one gets none. A gradient for a name
    /// this optimiser does not hold is an error (the model and the optimiser disagree).
    pub fn collect_named(&self, grads: Vec<(String, Tensor)>) -> Result<Grads> {
        let mut by_name: std::collections::HashMap<String, Tensor> = grads.into_iter().collect();
        let out = Grads(self.params.iter().map(|p| by_name.remove(&p.name)).collect());
        if let Some(name) = by_name.keys().min() {
            return Err(crate::error::TrainError::Other(format!(
                "gradient for `{name}`, which the optimiser does not hold ({} such names)",
                by_name.len()
            )));
        }
        Ok(out)
    }

    /// Clips to `max_grad_norm` (if set) and applies one AdamW update at the scheduled LR.
    /// A non-finite gradient norm skips the update (nothing is changed) and reports it.
    pub fn step(&mut self, grads: &Grads, total_steps: usize) -> Result<StepReport> {
        let grad_norm = grads.norm()?;
        let lr = scheduled_lr(&self.cfg, self.step, total_steps);
        if !grad_norm.is_finite() {
            return Ok(StepReport { grad_norm, lr, applied: false });
        }
        let clip =
            if self.cfg.max_grad_norm > 0.0 { (self.cfg.max_grad_norm / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
        let t = (self.step + 1) as i32;
        let bc1 = 1.0 - self.cfg.beta1.powi(t);
        let bc2 = 1.0 - self.cfg.beta2.powi(t);
        for (p, g) in self.params.iter().zip(&grads.0) {
            let Some(g) = g else { continue };
            let mo = self
                .moments
                .get_mut(&p.name)
                .ok_or_else(|| crate::error::TrainError::Other(format!("no optimizer state for `{}`", p.name)))?;
            update_one(&p.var, g, clip, mo, &self.cfg, lr, (bc1, bc2))?;
        }
        self.step += 1;
        Ok(StepReport { grad_norm, lr, applied: true })
    }
}

/// Σ x² in f64, over fixed blocks summed in block order (the result does not depend on the
/// thread count).
fn sum_squares<T: WithDType>(x: &[T]) -> f64 {
    const BLOCK: usize = 1 << 14;
    let parts: Vec<f64> = x.par_chunks(BLOCK).map(|c| c.iter().map(|v| v.to_f64() * v.to_f64()).sum()).collect();
    parts.iter().sum()
}

/// The scalars of one AdamW update.
#[derive(Clone, Copy)]
struct Coeffs {
    /// Gradient scale (clipping).
    clip: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// `lr / bc1`.
    step_size: f64,
    /// `1 − lr · weight_decay`.
    decay: f64,
    bc2: f64,
}

/// One element's update: `(p, m, v)` → new `(p, m, v)`, computed in f64.
fn adamw_elem(c: Coeffs, p: f64, g: f64, m: f64, v: f64) -> (f64, f64, f64) {
    let g = g * c.clip;
    let m = c.beta1 * m + (1.0 - c.beta1) * g;
    let v = c.beta2 * v + (1.0 - c.beta2) * g * g;
    let denom = (v / c.bc2).sqrt() + c.eps;
    (p * c.decay - c.step_size * (m / denom), m, v)
}

/// The update in one pass over flat CPU data (parallel over blocks): reads the parameter, its
/// gradient and moments, returns the new parameter and moments.
fn adamw_flat<T: WithDType>(c: Coeffs, p: &[T], g: &[T], m: &[T], v: &[T]) -> (Vec<T>, Vec<T>, Vec<T>) {
    const BLOCK: usize = 1 << 14;
    let zero = || vec![T::zero(); p.len()];
    let (mut np, mut nm, mut nv) = (zero(), zero(), zero());
    np.par_chunks_mut(BLOCK)
        .zip(nm.par_chunks_mut(BLOCK))
        .zip(nv.par_chunks_mut(BLOCK))
        .zip(p.par_chunks(BLOCK).zip(g.par_chunks(BLOCK)).zip(m.par_chunks(BLOCK).zip(v.par_chunks(BLOCK))))
        .for_each(|(((pb, mb), vb), ((po, gb), (mo, vo)))| {
            for i in 0..pb.len() {
                let (x, y, z) = adamw_elem(c, po[i].to_f64(), gb[i].to_f64(), mo[i].to_f64(), vo[i].to_f64());
                (pb[i], mb[i], vb[i]) = (T::from_f64(x), T::from_f64(y), T::from_f64(z));
            }
        });
    (np, nm, nv)
}

/// The fused update for CPU f32/f64 parameters; `false` when it does not apply.
fn update_fused(var: &Var, g: &Tensor, mo: &mut Moments, c: Coeffs) -> Result<bool> {
    let p = var.as_tensor();
    if !cpu_float(p.device(), p.dtype()) || g.dtype() != p.dtype() {
        return Ok(false);
    }
    match p.dtype() {
        DType::F32 => update_typed::<f32>(var, g, mo, c)?,
        DType::F64 => update_typed::<f64>(var, g, mo, c)?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn update_typed<T: WithDType>(var: &Var, g: &Tensor, mo: &mut Moments, c: Coeffs) -> Result<()> {
    let p = var.as_tensor();
    // Reads every input in place (no copies); one pass writes the three results.
    let (np, nm, nv) = cpu_slices::<T, _>(&[p, g, &mo.m, &mo.v], |x| adamw_flat(c, x[0], x[1], x[2], x[3]))?;
    let (shape, dev) = (p.shape().clone(), p.device().clone());
    mo.m = Tensor::from_vec(nm, shape.clone(), &dev)?;
    mo.v = Tensor::from_vec(nv, shape.clone(), &dev)?;
    var.set(&Tensor::from_vec(np, shape, &dev)?)?;
    Ok(())
}

/// One parameter's AdamW update, exactly PyTorch's order of operations: one fused pass on CPU,
/// candle tensor ops elsewhere.
fn update_one(
    var: &Var,
    g: &Tensor,
    clip: f64,
    mo: &mut Moments,
    cfg: &OptimConfig,
    lr: f64,
    (bc1, bc2): (f64, f64),
) -> Result<()> {
    let c = Coeffs {
        clip,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        step_size: lr / bc1,
        decay: 1.0 - lr * cfg.weight_decay,
        bc2,
    };
    if update_fused(var, g, mo, c)? {
        return Ok(());
    }
    let g = &(g * clip)?;
    mo.m = ((&mo.m * cfg.beta1)? + (g * (1.0 - cfg.beta1))?)?;
    mo.v = ((&mo.v * cfg.beta2)? + (g.sqr()? * (1.0 - cfg.beta2))?)?;
    let denom = ((&mo.v / bc2)?.sqrt()? + cfg.eps)?;
    let update = ((&mo.m / denom)? * (lr / bc1))?;
    let p = var.as_tensor();
    let decayed = if cfg.weight_decay > 0.0 { (p * (1.0 - lr * cfg.weight_decay))? } else { p.clone() };
    var.set(&(decayed - update)?)?;
    Ok(())
}

/// The learning rate for optimiser step `step` (0-based) of `total` (`transformers`' schedules).
pub fn scheduled_lr(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    let (s, w) = (step as f64, cfg.warmup_steps as f64);
    if step < cfg.warmup_steps {
        return cfg.learning_rate * s / w.max(1.0);
    }
    let span = (total.saturating_sub(cfg.warmup_steps)).max(1) as f64;
    let progress = ((s - w) / span).clamp(0.0, 1.0);
    let factor = match cfg.schedule {
        LrSchedule::Constant => 1.0,
        LrSchedule::Linear => 1.0 - progress,
        LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    cfg.learning_rate * factor
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_pytorch_adamw_two_steps() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01) on p=[1,-2], grads [0.5,-1] then [0.2, 0.3]
        // gives p = [0.79004, -1.79794] (computed by hand from the documented update rule).
        let var = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
        let cfg = OptimConfig { learning_rate: 0.1, weight_decay: 0.01, max_grad_norm: 0.0, ..Default::default() };
        let mut opt = AdamW::new(vec![NamedVar { name: "p".into(), var: var.clone() }], cfg).unwrap();
        for g in [[0.5f64, -1.0], [0.2, 0.3]] {
            let loss = (var.as_tensor() * Tensor::new(&g, &Device::Cpu).unwrap()).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            assert!(opt.step(&opt.collect(&grads), 10).unwrap().applied);
        }
        let p = var.as_tensor().to_vec1::<f64>().unwrap();
        let expect = reference_adamw(&[1.0, -2.0], &[[0.5, -1.0], [0.2, 0.3]], 0.1, 0.01);
        for (a, b) in p.iter().zip(expect) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    /// Scalar AdamW exactly as `torch.optim.AdamW` documents it.
    fn reference_adamw(p0: &[f64], grads: &[[f64; 2]], lr: f64, wd: f64) -> Vec<f64> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let mut p = p0.to_vec();
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            for i in 0..p.len() {
                p[i] *= 1.0 - lr * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let mh = m[i] / (1.0 - b1.powi(t));
                let vh = v[i] / (1.0 - b2.powi(t));
                p[i] -= lr * mh / (vh.sqrt() + eps);
            }
        }
        p
    }

    #[test]
    fn schedules() {
        let mut cfg = OptimConfig { learning_rate: 1.0, warmup_steps: 2, ..Default::default() };
        assert_eq!(scheduled_lr(&cfg, 0, 10), 0.0);
        assert_eq!(scheduled_lr(&cfg, 1, 10), 0.5);
        assert_eq!(scheduled_lr(&cfg, 5, 10), 1.0);
        cfg.schedule = LrSchedule::Linear;
        cfg.warmup_steps = 0;
        assert_eq!(scheduled_lr(&cfg, 0, 12), 1.0);
        assert!((scheduled_lr(&cfg, 6, 12) - 0.5).abs() < 1e-12);
        cfg.schedule = LrSchedule::Cosine;
        assert!((scheduled_lr(&cfg, 6, 12) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn named_gradients_follow_parameter_order_and_unknown_names_are_errors() {
        let var = |v: f32| Var::new(&[v], &Device::Cpu).unwrap();
        let params = vec![NamedVar { name: "a".into(), var: var(1.0) }, NamedVar { name: "b".into(), var: var(2.0) }];
        let opt = AdamW::new(params, OptimConfig::default()).unwrap();
        let g = |v: f32| Tensor::new(&[v], &Device::Cpu).unwrap();
        let grads = opt.collect_named(vec![("b".into(), g(5.0))]).unwrap();
        assert!(grads.0[0].is_none());
        assert_eq!(grads.0[1].as_ref().unwrap().to_vec1::<f32>().unwrap(), vec![5.0]);
        let err = opt.collect_named(vec![("a".into(), g(1.0)), ("lm_head.weight".into(), g(1.0))]).unwrap_err();
        assert!(err.to_string().contains("`lm_head.weight`"), "{err}");
    }

    #[test]
    fn non_finite_gradient_skips_update() {
        let var = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let mut opt =
            AdamW::new(vec![NamedVar { name: "p".into(), var: var.clone() }], OptimConfig::default()).unwrap();
        let loss = (var.as_tensor() * f64::NAN).unwrap().sum_all().unwrap();
        let g = opt.collect(&loss.backward().unwrap());
        let r = opt.step(&g, 10).unwrap();
        assert!(!r.applied);
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert_eq!(opt.steps_done(), 0);
    }
}
