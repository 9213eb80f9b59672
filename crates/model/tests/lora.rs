//! LoRA (`lora.rs`, `io/adapter.rs`): the hand-written training path's adapter gradients against
//! candle's autograd through the composite model (with and without dropout, with no gradient
//! for the frozen base), a merged model against the adapted forward, the base with adapters
//! switched off against the plain base, adapters saved and read back, PEFT interop both ways
//! against the committed dumps of `scripts/make_lora_fixtures.py`, and the bad-input errors.

mod common;

use std::collections::HashMap;
use std::path::Path;

use aha_model::cpu::handgrad;
use aha_model::io::{load_hf_dir, read_adapter, save_adapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use aha_model::lora::{AdapterPair, AdapterSet, LoraConfig, Module};
use aha_model::{load_with_adapter, ops, Arch, Backend, ExecRequest, LoadedModel, ModelConfig, ModelSpec, Transformer};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(shape: &[usize], scale: f64, rng: &mut ChaCha8Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Qwen2 with q/k/v biases and a tied head, or Llama with an untied head.
fn config(arch: Arch) -> ModelConfig {
    match arch {
        Arch::Llama => ModelConfig { tie_word_embeddings: false, ..ModelConfig::small(arch) },
        _ => ModelConfig { attention_bias: true, ..ModelConfig::small(arch) },
    }
}

/// Base weights in ±0.3 (norms near 1) as trainable variables.
fn base_vars(cfg: &ModelConfig, seed: u64) -> VarMap {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vm = VarMap::new();
    let mut data = vm.data().lock().unwrap();
    for spec in Transformer::parameter_specs(cfg) {
        let t = match spec.init {
            aha_model::ParamInit::Ones => (uniform(&spec.shape, 0.2, &mut rng) + 1.0).unwrap(),
            _ => uniform(&spec.shape, 0.3, &mut rng),
        };
        data.insert(spec.name, Var::from_tensor(&t).unwrap());
    }
    drop(data);
    vm
}

/// Random non-zero adapters for `modules`, as variables (by PEFT name).
fn adapter_vars(cfg: &ModelConfig, lora: &LoraConfig, seed: u64) -> (AdapterSet, HashMap<String, Var>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut set, mut vars) = (AdapterSet::new(), HashMap::new());
    for layer in 0..cfg.num_hidden_layers {
        for m in lora.validate("test").unwrap() {
            let (inp, out) = m.features(cfg);
            let a = Var::from_tensor(&uniform(&[lora.r, inp], 0.3, &mut rng)).unwrap();
            let b = Var::from_tensor(&uniform(&[out, lora.r], 0.3, &mut rng)).unwrap();
            set.insert((layer, m), AdapterPair { a: a.as_tensor().clone(), b: b.as_tensor().clone() });
            vars.insert(aha_model::lora::peft_key(layer, m, 'A'), a);
            vars.insert(aha_model::lora::peft_key(layer, m, 'B'), b);
        }
    }
    (set, vars)
}

/// Two rows of 8 distinct random tokens (no shared prefix, so nothing is packed); the loss
/// covers positions 3..8.
fn batch(vocab: usize) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let dev = Device::Cpu;
    let ids: Vec<u32> = (0..16).map(|_| rng.random_range(1..vocab as u32)).collect();
    let ids = Tensor::from_vec(ids, (2, 8), &dev).unwrap();
    let mask = Tensor::ones((2, 8), DType::F32, &dev).unwrap();
    let pos = Tensor::arange(0u32, 8, &dev).unwrap().unsqueeze(0).unwrap().repeat((2, 1)).unwrap();
    let targets: Vec<u32> = (0..10).map(|_| rng.random_range(0..vocab as u32)).collect();
    let targets = Tensor::from_vec(targets, (2, 5), &dev).unwrap();
    let weights = uniform(&[2, 5], 1.0, &mut rng);
    (ids, mask, pos, targets, weights)
}

/// Adapter gradients of `Σ w·logp` through candle's autograd on the composite backend.
fn autograd_grads(m: &Transformer, vars: &HashMap<String, Var>) -> (Tensor, HashMap<String, Tensor>) {
    let (ids, mask, pos, targets, weights) = batch(m.config().vocab_size);
    let logits = m.forward(&ids, &mask, &pos).unwrap();
    let v = m.config().vocab_size;
    let span = logits.narrow(1, 2, 5).unwrap().reshape((10, v)).unwrap();
    let lp =
        ops::gather_logprobs(&span, &targets.flatten_all().unwrap(), m.kernels()).unwrap().reshape((2, 5)).unwrap();
    let store = (&lp * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = vars.iter().map(|(n, var)| (n.clone(), store.get(var.as_tensor()).unwrap().clone())).collect();
    (lp, grads)
}

/// The hand-written path's log-probs and gradients (by name) for the same loss.
fn handwritten_grads(m: &Transformer) -> (Tensor, HashMap<String, Tensor>) {
    let (ids, mask, pos, targets, weights) = batch(m.config().vocab_size);
    let fwd = handgrad::forward(m, &ids, &mask, &pos, 2, &targets).unwrap();
    let lp = fwd.logps.clone();
    (lp, fwd.backward(&weights).unwrap().into_iter().collect())
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn adapted(arch: Arch, backend: Backend, lora: &LoraConfig) -> (Transformer, HashMap<String, Var>) {
    let cfg = config(arch);
    let vm = base_vars(&cfg, 1);
    let base =
        Transformer::with_backend(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), backend).unwrap();
    let (set, vars) = adapter_vars(&cfg, lora, 2);
    (base.with_adapters(lora, set).unwrap(), vars)
}

fn check_gradients(arch: Arch, lora: &LoraConfig) {
    let (hand, _) = adapted(arch, Backend::CpuHandwritten, lora);
    let (reference, vars) = adapted(arch, Backend::Composite, lora);
    let (lp_h, g_h) = handwritten_grads(&hand);
    let (lp_r, g_r) = autograd_grads(&reference, &vars);
    assert!(common::max_abs_diff(&lp_h, &lp_r) < 2e-5, "{arch:?} log-probs differ");
    let mut names: Vec<&String> = g_h.keys().collect();
    names.sort();
    let mut want: Vec<&String> = vars.keys().collect();
    want.sort();
    assert_eq!(names, want, "the hand-written backward must return the adapters' gradients and nothing else");
    for (name, g) in &g_r {
        let rel = common::max_abs_diff(&g_h[name], g) / max_abs(g).max(1e-3);
        assert!(rel < 1e-4, "{arch:?} {name}: relative gradient difference {rel}");
    }
}

#[test]
fn handwritten_adapter_gradients_match_autograd() {
    for arch in [Arch::Qwen2, Arch::Llama] {
        check_gradients(arch, &LoraConfig { r: 3, alpha: 6.0, ..Default::default() });
    }
    let some = LoraConfig { r: 2, target_modules: vec!["v_proj".into(), "up_proj".into()], ..Default::default() };
    check_gradients(Arch::Qwen2, &some);
}

#[test]
fn dropout_masks_agree_between_the_paths_and_only_in_training() {
    let lora = LoraConfig { r: 3, dropout: 0.3, use_rslora: true, ..Default::default() };
    check_gradients(Arch::Llama, &lora);
    // Inference (detached) models never drop; training forwards of the same batch do.
    let (m, _) = adapted(Arch::Llama, Backend::Composite, &lora);
    let (ids, mask, pos, ..) = batch(m.config().vocab_size);
    let train = m.forward(&ids, &mask, &pos).unwrap();
    let infer = m.detached().unwrap().forward(&ids, &mask, &pos).unwrap();
    let no_drop = adapted(Arch::Llama, Backend::Composite, &LoraConfig { dropout: 0.0, ..lora.clone() }).0;
    let plain = no_drop.forward(&ids, &mask, &pos).unwrap();
    assert!(common::max_abs_diff(&infer, &plain) < 1e-6);
    assert!(common::max_abs_diff(&train, &plain) > 1e-3, "dropout had no effect in training");
}

#[test]
fn merge_without_adapters_and_fresh_adapters() {
    let lora = LoraConfig { r: 4, alpha: 8.0, ..Default::default() };
    let cfg = config(Arch::Qwen2);
    let vm = base_vars(&cfg, 1);
    let base = Transformer::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let (set, _) = adapter_vars(&cfg, &lora, 2);
    let m = base.with_adapters(&lora, set).unwrap();
    let (ids, mask, pos, ..) = batch(cfg.vocab_size);
    let run = |t: &Transformer| t.detached().unwrap().forward(&ids, &mask, &pos).unwrap();
    let (with, plain) = (run(&m), run(&base));
    assert!(common::max_abs_diff(&with, &plain) > 1e-2, "the adapters changed nothing");
    let merged = m.merged().unwrap();
    assert!(merged.lora().is_none());
    assert!(common::max_abs_diff(&run(&merged), &with) <= 1e-5, "merged differs from the adapted forward");
    let off = m.without_adapters();
    assert!(common::max_abs_diff(&run(&off), &plain) == 0.0, "adapters switched off must be the base");
    assert!(m.reference_copy().unwrap().lora().is_none());
    // PEFT's initialisation (B = 0) leaves the model unchanged.
    let modules = lora.validate("t").unwrap();
    let fresh = aha_model::lora::init_adapters(&cfg, &lora, &modules).unwrap();
    assert_eq!(
        run(&base.with_adapters(&lora, fresh).unwrap()).to_vec3::<f32>().unwrap(),
        plain.to_vec3::<f32>().unwrap()
    );
    // The base of an adapted model gets no gradient on the autograd path either.
    let logits = m.forward(&ids, &mask, &pos).unwrap();
    let store = logits.sum_all().unwrap().backward().unwrap();
    for (name, var) in vm.data().lock().unwrap().iter() {
        assert!(store.get(var.as_tensor()).is_none(), "frozen {name} got a gradient");
    }
}

fn tiny_llama() -> LoadedModel {
    load_hf_dir(&common::fixtures().join("tiny-llama"), &ExecRequest::default()).unwrap()
}

/// The adapter fixture aha writes: r 4, α 8, all seven projections, `B` drawn from seed 5.
fn aha_adapter() -> LoadedModel {
    let mut lm = tiny_llama();
    lm.apply_lora(&LoraConfig { r: 4, alpha: 8.0, init_seed: 3, ..Default::default() }, "test").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let data = lm.varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().filter(|n| n.contains("lora_B")).collect();
    names.sort();
    for name in names {
        let var = &data[name];
        var.set(&uniform(var.as_tensor().dims(), 0.2, &mut rng)).unwrap();
    }
    drop(data);
    lm
}

fn logits(lm: &LoadedModel, ids: &Tensor) -> Tensor {
    let (b, t) = ids.dims2().unwrap();
    let mask = Tensor::ones((b, t), DType::F32, &Device::Cpu).unwrap();
    let pos = Tensor::arange(0u32, t as u32, &Device::Cpu).unwrap().unsqueeze(0).unwrap().repeat((b, 1)).unwrap();
    lm.model.detached().unwrap().forward(&ids.to_dtype(DType::U32).unwrap(), &mask, &pos).unwrap()
}

fn safetensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Regenerates the aha-written adapter that `scripts/make_lora_fixtures.py` loads with `peft`
/// (`AHA_WRITE_LORA_FIXTURE=1`); otherwise checks the committed one is what aha writes today.
#[test]
fn aha_adapter_fixture_is_what_aha_writes() {
    let lm = aha_adapter();
    let committed = common::fixtures().join("lora/aha-adapter");
    if std::env::var_os("AHA_WRITE_LORA_FIXTURE").is_some() {
        save_adapter(&committed, &lm.model, &lm.tokenizer, "crates/model/tests/fixtures/tiny-llama").unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    save_adapter(tmp.path(), &lm.model, &lm.tokenizer, "crates/model/tests/fixtures/tiny-llama").unwrap();
    let (now, then) = (safetensors(&tmp.path().join(ADAPTER_WEIGHTS)), safetensors(&committed.join(ADAPTER_WEIGHTS)));
    assert_eq!(now.len(), 2 * 7 * 2);
    for (name, t) in &then {
        assert_eq!(common::max_abs_diff(&now[name], t), 0.0, "{name}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(committed.join(ADAPTER_CONFIG)).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
}

#[test]
fn peft_loads_aha_adapters_and_aha_loads_peft_adapters() {
    let dir = common::fixtures().join("lora");
    let reference = safetensors(&dir.join("reference.safetensors"));
    let ids = &reference["input_ids"];
    // aha's adapter, as `PeftModel.from_pretrained` computed it.
    let aha = logits(&aha_adapter(), ids);
    let diff = common::max_abs_diff(&aha, &reference["aha_adapter_logits"]);
    assert!(diff <= 1e-4, "aha adapter: peft logits differ by {diff}");
    // peft's adapter (q, v and down only, random A and B), loaded by aha.
    let spec = ModelSpec::HfDir(common::fixtures().join("tiny-llama"));
    let lm = load_with_adapter(&spec, Some(&dir.join("peft-adapter")), &ExecRequest::default()).unwrap();
    assert_eq!(lm.model.lora().unwrap().target_modules.len(), 3);
    let diff = common::max_abs_diff(&logits(&lm, ids), &reference["peft_adapter_logits"]);
    assert!(diff <= 1e-4, "peft adapter: aha logits differ by {diff}");
    // Merged: the same function.
    let merged = lm.model.merged().unwrap();
    let mask = Tensor::ones(ids.dims2().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let (b, t) = ids.dims2().unwrap();
    let pos = Tensor::arange(0u32, t as u32, &Device::Cpu).unwrap().unsqueeze(0).unwrap().repeat((b, 1)).unwrap();
    let m = merged.detached().unwrap().forward(&ids.to_dtype(DType::U32).unwrap(), &mask, &pos).unwrap();
    assert!(common::max_abs_diff(&m, &reference["peft_adapter_logits"]) <= 1e-4);
}

#[test]
fn adapter_directories_round_trip_and_load_as_models() {
    let lm = aha_adapter();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("adapter");
    let base = common::fixtures().join("tiny-llama");
    save_adapter(&dir, &lm.model, &lm.tokenizer, &base.display().to_string()).unwrap();
    let ids = Tensor::new(&[[5u32, 9, 20, 3, 7]], &Device::Cpu).unwrap();
    // As a model spec: the adapter directory names its base.
    let back = aha_model::load_model(&ModelSpec::HfDir(dir.clone()), &ExecRequest::default()).unwrap();
    assert_eq!(common::max_abs_diff(&logits(&back, &ids), &logits(&lm, &ids)), 0.0);
    // Its variables are the adapters only, by PEFT name.
    let names: Vec<String> = back.varmap.data().lock().unwrap().keys().cloned().collect();
    assert_eq!(names.len(), 28);
    assert!(names.iter().all(|n| n.starts_with("base_model.model.model.layers.") && n.contains(".lora_")));
    // A second adapter on an adapted model is refused.
    let mut twice = back;
    let err = twice.load_adapter(&dir).unwrap_err().to_string();
    assert!(err.contains("already carries LoRA adapters"), "{err}");
}

#[test]
fn bad_adapters_are_refused_by_name() {
    let mut lm = tiny_llama();
    let err = lm.apply_lora(&LoraConfig { r: 0, ..Default::default() }, "sft.toml").unwrap_err().to_string();
    assert!(err.contains("sft.toml") && err.contains("lora.r"), "{err}");
    let bad = LoraConfig { target_modules: vec!["lm_head".into()], ..Default::default() };
    let err = lm.apply_lora(&bad, "grpo.toml").unwrap_err().to_string();
    assert!(err.contains("lora.target_modules") && err.contains("`lm_head`"), "{err}");
    // An adapter for another base (Qwen2 tiny: other widths) names the first mismatching tensor.
    let src = aha_adapter();
    let tmp = tempfile::tempdir().unwrap();
    save_adapter(tmp.path(), &src.model, &src.tokenizer, "x").unwrap();
    let other = load_hf_dir(&common::fixtures().join("tiny-qwen2"), &ExecRequest::default()).unwrap();
    let err = read_adapter(tmp.path(), &other.config).unwrap_err().to_string();
    assert!(err.contains(ADAPTER_WEIGHTS) && err.contains("lora_") && err.contains("is expected"), "{err}");
    // Options aha does not implement are named.
    let cfg_path = tmp.path().join(ADAPTER_CONFIG);
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["use_dora"] = serde_json::json!(true);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = read_adapter(tmp.path(), &src.config).unwrap_err().to_string();
    assert!(err.contains("use_dora"), "{err}");
    // A missing tensor is named.
    cfg["use_dora"] = serde_json::json!(false);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut tensors = safetensors(&tmp.path().join(ADAPTER_WEIGHTS));
    tensors.remove(&aha_model::lora::peft_key(1, Module::Up, 'B'));
    candle_core::safetensors::save(&tensors, tmp.path().join(ADAPTER_WEIGHTS)).unwrap();
    let err = read_adapter(tmp.path(), &src.config).unwrap_err().to_string();
    assert!(err.contains("layers.1.mlp.up_proj.lora_B") && err.contains("missing"), "{err}");
}
