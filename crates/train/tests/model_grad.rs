//! Gradient reach (docs/DESIGN.md §6): through the training forward and the GRPO loss, every trainable
//! parameter of a tiny model gets a non-zero gradient; and the model's analytic gradients match
//! central finite differences in f64 on a handful of parameter entries.

use aha_model::{init_tiny, Backend, TinySpec, Transformer};
use aha_train::batch::{build_batch, completion_logprobs, policy_forward, SeqBatch};
use aha_train::config::GrpoLossConfig;
use aha_train::loss::{grpo_loss, LossInputs, LossNorm};
use aha_train::optim::{named_vars, AdamW};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};

fn spec(tie: bool) -> TinySpec {
    TinySpec {
        hidden_size: 16,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 32,
        tie_word_embeddings: tie,
        ..TinySpec::default()
    }
}

/// Two rows of different lengths, so both prompt left-padding and completion padding occur.
fn batch(device: &Device) -> SeqBatch {
    let pairs: [(&[u32], &[u32]); 2] = [(&[40, 41, 42], &[50, 51, 52, 53]), (&[60, 61, 62, 63, 64], &[70, 71])];
    build_batch(&pairs, device).unwrap()
}

/// The GRPO loss of `logps` on [`batch`] with advantages ±1, π_old ≠ π_θ (so the ratio is not
/// 1) and β > 0 (so the KL path is in the graph too).
fn grpo_loss_with_kl(logps: &Tensor, b: &SeqBatch) -> Tensor {
    let adv = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
    let old = (logps.detach() - 0.05).unwrap();
    let reference = (logps.detach() + 0.1).unwrap();
    let inp =
        LossInputs { logps, old_logps: &old, ref_logps: Some(&reference), advantages: &adv, mask: &b.completion_mask };
    let cfg = GrpoLossConfig { beta: 0.04, ..Default::default() };
    let norm = LossNorm { max_completion_length: 4, grad_accum_steps: 1, dapo_active_tokens: 6.0 };
    grpo_loss(&inp, &cfg, &norm).unwrap().loss
}

#[test]
fn every_parameter_gets_a_gradient_through_the_grpo_loss() {
    for tie in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let lm = init_tiny(dir.path(), &spec(tie), 1).unwrap();
        let opt = AdamW::new(named_vars(&lm.varmap), Default::default()).unwrap();
        let b = batch(&Device::Cpu);
        let (logps, _) = completion_logprobs(&lm.model, &b).unwrap();
        let loss = grpo_loss_with_kl(&logps, &b);
        let grads = opt.collect(&loss.backward().unwrap());
        let missing: Vec<&str> = opt
            .params()
            .iter()
            .zip(&grads.0)
            .filter(|(_, g)| {
                g.as_ref().is_none_or(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0)
            })
            .map(|(p, _)| p.name.as_str())
            .collect();
        assert_eq!(opt.params().len(), lm.model.named_parameters().len());
        assert!(missing.is_empty(), "tie={tie}: no gradient reached {missing:?}");
        assert_eq!(grads.nonzero_count().unwrap(), opt.params().len());
        println!(
            "tie_word_embeddings={tie}: {} of {} parameters got a non-zero gradient",
            grads.nonzero_count().unwrap(),
            opt.params().len()
        );
    }
}

/// Σ w · log π(target) over the completion tokens, through the training forward
/// (`forward_hidden` → narrow → `logits`), in the model's dtype (f64 here).
fn objective(model: &Transformer, b: &SeqBatch, w: &Tensor) -> Tensor {
    let hidden = model.forward_hidden(&b.input_ids, &b.attention_mask, &b.position_ids).unwrap();
    let h = hidden.narrow(1, b.prompt_width - 1, b.completion_width).unwrap();
    let logp = candle_nn::ops::log_softmax(&model.logits(&h).unwrap(), D::Minus1).unwrap();
    let idx = b.completion_ids.unsqueeze(D::Minus1).unwrap().contiguous().unwrap();
    let lp = logp.gather(&idx, D::Minus1).unwrap().squeeze(D::Minus1).unwrap();
    let mask = b.completion_mask.to_dtype(DType::F64).unwrap();
    (lp * mask).unwrap().mul(w).unwrap().sum_all().unwrap()
}

fn set_entry(var: &Var, i: usize, value: f64) {
    let t = var.as_tensor();
    let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    v[i] = value;
    var.set(&Tensor::from_vec(v, t.shape(), t.device()).unwrap()).unwrap();
}

#[test]
fn model_gradients_match_finite_differences_in_f64() {
    let cfg = spec(true).config().unwrap();
    let varmap = VarMap::new();
    let model = Transformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu)).unwrap();
    assert_eq!(model.plan().backend(), Backend::Composite, "f64 runs on the composite ops");
    let vars = named_vars(&varmap);
    // Fixed, generic values instead of the random init (no RNG, so the test is reproducible):
    // norms around one, everything else small, biases non-zero.
    for (k, nv) in vars.iter().enumerate() {
        let t = nv.var.as_tensor();
        let base = if nv.name.contains("norm") { 1.0 } else { 0.0 };
        let values: Vec<f64> =
            (0..t.elem_count()).map(|i| base + 0.2 * (i as f64 * 1.7 + k as f64 * 0.37).sin()).collect();
        let values = Tensor::from_vec(values, t.shape(), t.device()).unwrap();
        nv.var.set(&values).unwrap();
    }
    let b = batch(&Device::Cpu);
    let w = Tensor::new(&[[0.3f64, -1.1, 0.7, 0.2], [-0.4, 0.9, 0.5, 1.3]], &Device::Cpu).unwrap();
    let grads = objective(&model, &b, &w).backward().unwrap();
    let h = 1e-5;
    let mut worst = 0.0f64;
    let mut checked = 0;
    for nv in vars.iter().filter(|v| {
        v.name.contains("embed_tokens")
            || v.name.contains("layers.0.self_attn")
            || v.name.contains("layers.1.mlp")
            || v.name.contains("layernorm")
            || v.name == "model.norm.weight"
    }) {
        let g = grads.get(nv.var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let n = g.len();
        // Embedding rows that occur in the batch, elsewhere a spread of entries.
        let picks: Vec<usize> = if nv.name.contains("embed_tokens") {
            vec![41 * 16 + 3, 70 * 16 + 5, 52 * 16]
        } else {
            vec![0, n / 3, n - 1]
        };
        for i in picks {
            let x0 = nv.var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap()[i];
            set_entry(&nv.var, i, x0 + h);
            let up = objective(&model, &b, &w).to_scalar::<f64>().unwrap();
            set_entry(&nv.var, i, x0 - h);
            let down = objective(&model, &b, &w).to_scalar::<f64>().unwrap();
            set_entry(&nv.var, i, x0);
            let numeric = (up - down) / (2.0 * h);
            let err = (numeric - g[i]).abs() / g[i].abs().max(1e-3);
            assert!(err < 1e-5, "{}[{i}]: analytic {} vs numeric {numeric}", nv.name, g[i]);
            worst = worst.max(err);
            checked += 1;
        }
    }
    assert!(checked >= 30, "checked only {checked} entries");
    println!(
        "finite differences (f64, h = 1e-5) on {checked} entries of {} parameters: max relative error {worst:e}",
        checked / 3
    );
}

/// The training path's gradients (`policy_forward`: the hand-written CPU backward for an f32
/// model) equal candle's autograd through the same variables on the `composite` backend (which
/// shares no row code with the hand-written path), for the full GRPO loss with KL, on a batch
/// with prompt and completion padding.
#[test]
fn policy_forward_gradients_match_autograd() {
    for tie in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let lm = init_tiny(dir.path(), &spec(tie), 3).unwrap();
        assert!(lm.model.plan().hand_written_grads(), "{}", lm.model.plan().describe());
        let vb = VarBuilder::from_varmap(&lm.varmap, DType::F32, &Device::Cpu);
        let reference = Transformer::with_backend(&lm.config, vb, Backend::Composite).unwrap();
        let opt = AdamW::new(named_vars(&lm.varmap), Default::default()).unwrap();
        let b = batch(&Device::Cpu);
        let loss_of = |logps: &Tensor| grpo_loss_with_kl(logps, &b);
        let (logps, _) = completion_logprobs(&reference, &b).unwrap();
        let want = opt.collect(&loss_of(&logps).backward().unwrap());
        let fwd = policy_forward(&lm.model, &b).unwrap();
        let mask = &b.completion_mask;
        let d_lp = ((fwd.logps() - &logps).unwrap() * mask).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d_lp.to_scalar::<f32>().unwrap() < 1e-5);
        let loss = loss_of(fwd.logps());
        let got = fwd.gradients(&loss, &opt).unwrap();
        for ((p, g), w) in opt.params().iter().zip(&got.0).zip(&want.0) {
            let (g, w) = (g.as_ref().unwrap(), w.as_ref().unwrap());
            let scale = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
            let d = (g - w).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d / scale < 1e-4, "tie={tie}: {}: gradient differs by {d} (scale {scale})", p.name);
        }
    }
}
