//! PEFT LoRA adapter directories: `adapter_config.json` + `adapter_model.safetensors`, in the
//! layout and tensor names Python `peft` writes for a causal LM (`PeftModel.from_pretrained(base,
//! dir)` loads what [`save_adapter`] writes, and [`read_adapter`] loads what `peft` saves).
//!
//! Also where a loaded model gets its adapters ([`LoadedModel::apply_lora`] for fresh ones,
//! [`LoadedModel::load_adapter`] from a directory): the adapters become the only variables of
//! the model's `VarMap` (what an optimiser steps), the base weights plain frozen tensors.
//!
//! What aha reads from a PEFT config: `peft_type` `LORA`, `r`, `lora_alpha`, `lora_dropout`,
//! `target_modules` (a list of the seven projection names, or `"all-linear"`), `use_rslora`,
//! `base_model_name_or_path`. Options aha does not implement (`use_dora`, `bias` other than
//! `none`, `lora_bias`, `modules_to_save`, `layers_to_transform`, `layer_replication`, trainable
//! tokens or parameters, rank or alpha patterns, `fan_in_fan_out`)
//! are refused by name rather than ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde_json::{json, Value as Json};

use super::save::{write_dir_atomically, write_json, write_safetensors};
use super::LoadedModel;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::lora::{self, AdapterPair, AdapterSet, LoraConfig, Module};
use crate::tokenizer::AhaTokenizer;
use crate::transformer::Transformer;

/// The adapter's config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// What aha keeps beside PEFT's config (`init_seed`, which seeds the dropout masks), in a file
/// of its own so `peft` never sees an unknown key.
pub const AHA_LORA_FILE: &str = "aha_lora.json";

/// Whether `dir` is a PEFT adapter directory (has `adapter_config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// The `base_model_name_or_path` an adapter directory names, if any.
pub fn adapter_base(dir: &Path) -> Result<Option<String>> {
    let (_, json) = read_config_json(dir)?;
    Ok(json.get("base_model_name_or_path").and_then(Json::as_str).filter(|s| !s.is_empty()).map(str::to_string))
}

/// Writes `model`'s adapters as a PEFT directory at `dir` (atomically), with the tokenizer files
/// beside them; `base` becomes `base_model_name_or_path`.
pub fn save_adapter(dir: &Path, model: &Transformer, tokenizer: &AhaTokenizer, base: &str) -> Result<()> {
    let cfg = model.lora().ok_or_else(|| ModelError::InvalidConfig("the model has no LoRA adapters to save".into()))?;
    let tensors = model
        .adapter_parameters()
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    let config = peft_config(cfg, base, model.config());
    write_dir_atomically(dir, |tmp| {
        write_safetensors(&tmp.join(ADAPTER_WEIGHTS), &tensors)?;
        write_json(&tmp.join(ADAPTER_CONFIG), &config)?;
        write_json(&tmp.join(AHA_LORA_FILE), &json!({ "init_seed": cfg.init_seed }))?;
        tokenizer.save(tmp)
    })
}

/// `adapter_config.json` as `peft` writes it for a causal-LM LoRA adapter.
fn peft_config(cfg: &LoraConfig, base: &str, model: &ModelConfig) -> Json {
    let targets: Vec<&str> = cfg.target_modules.iter().map(String::as_str).collect();
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": cfg.use_rslora,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
        "auto_mapping": {"base_model_class": model.arch.hf_class(), "parent_library": "transformers.models"}
    })
}

fn read_config_json(dir: &Path) -> Result<(PathBuf, Json)> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
    let json = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    Ok((path, json))
}

/// Reads a PEFT adapter directory into its settings and tensors (f32, host), checked against
/// the base model `base`: every tensor's name, and each `A` `[r, in]` / `B` `[out, r]` shape.
pub fn read_adapter(dir: &Path, base: &ModelConfig) -> Result<(LoraConfig, AdapterSet)> {
    let (path, json) = read_config_json(dir)?;
    let mut cfg = lora_from_peft(&path, &json)?;
    cfg.init_seed = read_init_seed(dir)?;
    let modules = cfg.validate(&path.display().to_string())?;
    let file = dir.join(ADAPTER_WEIGHTS);
    if !file.is_file() {
        return Err(ModelError::MissingFile { path: file, hint: "the adapter's weights (PEFT layout)".into() });
    }
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .map_err(|e| ModelError::WeightsFile { path: file.clone(), reason: e.to_string() })?;
    let bad = |tensor: &str, reason: String| ModelError::Tensor { path: file.clone(), tensor: tensor.into(), reason };
    let mut halves: BTreeMap<(usize, Module), (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (key, t) in tensors {
        let (layer, m, which) = lora::parse_peft_key(&key).ok_or_else(|| {
            bad(&key, "not a LoRA tensor of a decoder projection (aha adapts q/k/v/o/gate/up/down)".into())
        })?;
        if layer >= base.num_hidden_layers {
            return Err(bad(&key, format!("layer {layer}, but the base model has {}", base.num_hidden_layers)));
        }
        if !modules.contains(&m) {
            return Err(bad(&key, format!("{} is not in the config's target_modules", m.hf_name())));
        }
        let (inp, out) = m.features(base);
        let want = if which == 'A' { [cfg.r, inp] } else { [out, cfg.r] };
        if t.dims() != want {
            return Err(bad(
                &key,
                format!(
                    "shape {:?}, but the base's {} is [{out}, {inp}] and r = {}, so {want:?} is expected",
                    t.dims(),
                    m.hf_name(),
                    cfg.r
                ),
            ));
        }
        let slot = halves.entry((layer, m)).or_default();
        let t = t.to_dtype(DType::F32)?;
        if which == 'A' {
            slot.0 = Some(t);
        } else {
            slot.1 = Some(t);
        }
    }
    let mut set = AdapterSet::new();
    for layer in 0..base.num_hidden_layers {
        for &m in &modules {
            match halves.remove(&(layer, m)) {
                Some((Some(a), Some(b))) => {
                    set.insert((layer, m), AdapterPair { a, b });
                }
                Some((None, _)) | None => return Err(bad(&lora::peft_key(layer, m, 'A'), "missing".into())),
                Some((_, None)) => return Err(bad(&lora::peft_key(layer, m, 'B'), "missing".into())),
            }
        }
    }
    Ok((cfg, set))
}

/// `init_seed` from [`AHA_LORA_FILE`]; 0 for an adapter made elsewhere.
fn read_init_seed(dir: &Path) -> Result<u64> {
    let path = dir.join(AHA_LORA_FILE);
    if !path.is_file() {
        return Ok(0);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
    let json: Json = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.clone(), source })?;
    json.get("init_seed").and_then(Json::as_u64).ok_or_else(|| ModelError::Config {
        path,
        field: "init_seed".into(),
        reason: "missing or not a non-negative integer".into(),
    })
}

/// The LoRA settings of a PEFT `adapter_config.json`; options aha does not implement are
/// errors naming the field.
fn lora_from_peft(path: &Path, json: &Json) -> Result<LoraConfig> {
    let field = |name: &str, reason: String| ModelError::Config { path: path.into(), field: name.into(), reason };
    let peft_type = json.get("peft_type").and_then(Json::as_str).unwrap_or("");
    if peft_type != "LORA" {
        return Err(field("peft_type", format!("`{peft_type}`: aha loads LoRA adapters only")));
    }
    let refuse = |name: &str, ok: fn(&Json) -> bool| match json.get(name) {
        Some(v) if !ok(v) => Err(field(name, format!("{v} is not supported by aha"))),
        _ => Ok(()),
    };
    refuse("use_dora", |v| v.as_bool() == Some(false))?;
    refuse("bias", |v| v.as_str() == Some("none"))?;
    refuse("fan_in_fan_out", |v| v.as_bool() == Some(false))?;
    refuse("modules_to_save", |v| v.is_null() || v.as_array().is_some_and(Vec::is_empty))?;
    refuse("layers_to_transform", Json::is_null)?;
    refuse("lora_bias", |v| v.as_bool() == Some(false))?;
    refuse("layer_replication", Json::is_null)?;
    refuse("trainable_token_indices", Json::is_null)?;
    refuse("target_parameters", Json::is_null)?;
    refuse("rank_pattern", |v| v.as_object().is_some_and(|o| o.is_empty()))?;
    refuse("alpha_pattern", |v| v.as_object().is_some_and(|o| o.is_empty()))?;
    let r = json.get("r").and_then(Json::as_u64).ok_or_else(|| field("r", "missing or not an integer".into()))?;
    let alpha = json.get("lora_alpha").and_then(Json::as_f64).unwrap_or(8.0);
    let target_modules = match json.get("target_modules") {
        Some(Json::String(s)) if s == "all-linear" => Module::ALL.iter().map(|m| m.hf_name().to_string()).collect(),
        Some(Json::Array(items)) => items
            .iter()
            .map(|v| {
                let name = v.as_str().ok_or_else(|| field("target_modules", format!("{v} is not a module name")))?;
                // PEFT matches by suffix: `model.layers.0.self_attn.q_proj` means `q_proj`.
                Ok(name.rsplit('.').next().unwrap_or(name).to_string())
            })
            .collect::<Result<Vec<_>>>()?,
        other => {
            return Err(field(
                "target_modules",
                format!("{}: aha needs a list of projection names or \"all-linear\"", other.unwrap_or(&Json::Null)),
            ))
        }
    };
    Ok(LoraConfig {
        r: r as usize,
        alpha,
        dropout: json.get("lora_dropout").and_then(Json::as_f64).unwrap_or(0.0),
        target_modules,
        init_seed: 0,
        use_rslora: json.get("use_rslora").and_then(Json::as_bool).unwrap_or(false),
    })
}

impl LoadedModel {
    /// Adds fresh trainable adapters (`A` seeded, `B` zero: the model's outputs are unchanged)
    /// and freezes the base; `origin` names the config the table came from in errors.
    pub fn apply_lora(&mut self, lora: &LoraConfig, origin: &str) -> Result<()> {
        let modules = lora.validate(origin)?;
        let set = lora::init_adapters(&self.config, lora, &modules)?;
        self.install(lora, set)
    }

    /// Adds the adapters of a PEFT directory, trainable, and freezes the base. Returns their
    /// settings.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<LoraConfig> {
        let (lora, set) = read_adapter(dir, &self.config)?;
        self.install(&lora, set)?;
        Ok(lora)
    }

    /// Replaces the variables by the adapters' and rebuilds the model on them.
    fn install(&mut self, lora: &LoraConfig, set: AdapterSet) -> Result<()> {
        if self.model.lora().is_some() {
            return Err(ModelError::InvalidConfig(format!(
                "{} already carries LoRA adapters: merge them first (`aha merge`) to add new ones",
                self.source.display()
            )));
        }
        let (dtype, device) = (self.model.dtype(), self.model.device().clone());
        let varmap = VarMap::new();
        let mut vars = AdapterSet::new();
        {
            let mut data =
                varmap.data().lock().map_err(|_| ModelError::InvalidConfig("variable map lock poisoned".into()))?;
            for ((l, m), pair) in set {
                let a = Var::from_tensor(&pair.a.to_dtype(dtype)?.to_device(&device)?)?;
                let b = Var::from_tensor(&pair.b.to_dtype(dtype)?.to_device(&device)?)?;
                vars.insert((l, m), AdapterPair { a: a.as_tensor().clone(), b: b.as_tensor().clone() });
                data.insert(lora::peft_key(l, m, 'A'), a);
                data.insert(lora::peft_key(l, m, 'B'), b);
            }
        }
        self.model = self.model.with_adapters(lora, vars)?;
        self.model.set_adapter_base(self.source.display().to_string());
        self.varmap = varmap;
        Ok(())
    }
}
