//! LoRA: low-rank adapters on the seven linear projections of each block, in PEFT's terms.
//!
//! A projection `y = x·Wᵀ` with an adapter computes `y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ`, `A`
//! `[r, in]`, `B` `[out, r]`, `s = alpha / r` (`alpha / √r` with rsLoRA). The base weights are
//! frozen (plain tensors, no gradient, no optimiser state) and only `A` and `B` train. A fresh
//! adapter starts as PEFT's default: `A` Kaiming-uniform (bound `1/√in`), `B` zero, so the
//! adapted model equals the base at step 0.
//!
//! This file holds what every path shares: the typed `[lora]` table ([`LoraConfig`]), the
//! projections it may target ([`Module`]), PEFT's tensor names ([`peft_key`]), the seeded
//! initialisation and the dropout masks. The forward and backward live with the model
//! (`transformer.rs`, `cpu/handgrad.rs`); reading and writing PEFT directories is `io/adapter.rs`.
//!
//! Dropout masks are a pure function of the batch's token ids, the layer and the projection
//! ([`forward_seed`], [`dropout_mask`]): no RNG state, so a resumed run draws the masks an
//! uninterrupted one would. Dropout applies in training forwards only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// A linear projection of a block that an adapter can wrap (Hugging Face module names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Module {
    /// `self_attn.q_proj`.
    Q,
    /// `self_attn.k_proj`.
    K,
    /// `self_attn.v_proj`.
    V,
    /// `self_attn.o_proj`.
    O,
    /// `mlp.gate_proj`.
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

impl Module {
    /// Every projection, in block order.
    pub const ALL: [Module; 7] = [Module::Q, Module::K, Module::V, Module::O, Module::Gate, Module::Up, Module::Down];

    /// The Hugging Face module name (`q_proj`, …).
    pub fn hf_name(self) -> &'static str {
        match self {
            Module::Q => "q_proj",
            Module::K => "k_proj",
            Module::V => "v_proj",
            Module::O => "o_proj",
            Module::Gate => "gate_proj",
            Module::Up => "up_proj",
            Module::Down => "down_proj",
        }
    }

    /// The submodule holding it (`self_attn` or `mlp`).
    pub fn parent(self) -> &'static str {
        match self {
            Module::Q | Module::K | Module::V | Module::O => "self_attn",
            Module::Gate | Module::Up | Module::Down => "mlp",
        }
    }

    /// The module of a Hugging Face name (`q_proj`), if it is one of the seven.
    pub fn parse(name: &str) -> Option<Module> {
        Module::ALL.into_iter().find(|m| m.hf_name() == name)
    }

    /// `(in, out)` features of this projection in a model of `cfg`.
    pub fn features(self, cfg: &ModelConfig) -> (usize, usize) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        match self {
            Module::Q => (h, q),
            Module::K | Module::V => (h, kv),
            Module::O => (q, h),
            Module::Gate | Module::Up => (h, i),
            Module::Down => (i, h),
        }
    }

    fn index(self) -> u64 {
        Module::ALL.iter().position(|&m| m == self).unwrap_or(0) as u64
    }
}

/// The `[lora]` table of `aha sft`, `aha grpo`, `aha rm train` and pipeline stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of each adapter (`r` in PEFT). Default 16.
    #[serde(default = "default_r")]
    pub r: usize,
    /// Scaling numerator (`lora_alpha`): the update is scaled by `alpha / r`. Default 32.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Dropout on the adapter's input during training (`lora_dropout`). Default 0.
    #[serde(default)]
    pub dropout: f64,
    /// Hugging Face names of the adapted projections; default all seven.
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
    /// Seed of `A`'s initialisation.
    #[serde(default)]
    pub init_seed: u64,
    /// rsLoRA scaling `alpha / √r` (PEFT's `use_rslora`). Default false.
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_r() -> usize {
    16
}

fn default_alpha() -> f64 {
    32.0
}

fn default_targets() -> Vec<String> {
    Module::ALL.iter().map(|m| m.hf_name().to_string()).collect()
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            target_modules: default_targets(),
            init_seed: 0,
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// Checks every field; `origin` names where the table came from (a config file, an adapter
    /// directory) in the error. Returns the targeted projections in block order.
    pub fn validate(&self, origin: &str) -> Result<Vec<Module>> {
        let bad = |field: &str, reason: String| ModelError::Config {
            path: PathBuf::from(origin),
            field: format!("lora.{field}"),
            reason,
        };
        if self.r == 0 {
            return Err(bad("r", "must be at least 1 (the adapter's rank)".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(bad("alpha", format!("must be a positive number, got {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad("dropout", format!("must be in [0, 1), got {}", self.dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(bad("target_modules", "is empty: name at least one projection".into()));
        }
        let mut modules = Vec::new();
        for name in &self.target_modules {
            let m = Module::parse(name).ok_or_else(|| {
                bad("target_modules", format!("unknown module `{name}`: aha adapts {}", default_targets().join(", ")))
            })?;
            if !modules.contains(&m) {
                modules.push(m);
            }
        }
        modules.sort();
        Ok(modules)
    }

    /// The factor `s` of the low-rank update.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// One adapter's matrices: `a` `[r, in]`, `b` `[out, r]`.
#[derive(Debug, Clone)]
pub struct AdapterPair {
    /// `lora_A`.
    pub a: Tensor,
    /// `lora_B`.
    pub b: Tensor,
}

/// Every adapter of a model, by `(layer, projection)`.
pub type AdapterSet = BTreeMap<(usize, Module), AdapterPair>;

/// PEFT's name of an adapter tensor in `adapter_model.safetensors` for a causal LM (`which` is
/// `'A'` or `'B'`): `base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight`.
pub fn peft_key(layer: usize, m: Module, which: char) -> String {
    format!("base_model.model.model.layers.{layer}.{}.{}.lora_{which}.weight", m.parent(), m.hf_name())
}

/// Parses a PEFT adapter tensor name (saved form, or with the `.default` adapter name) into
/// `(layer, projection, 'A' | 'B')`; `None` for anything else.
pub fn parse_peft_key(key: &str) -> Option<(usize, Module, char)> {
    let rest = key.strip_prefix("base_model.model.model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    let (path, which) = match rest.rsplit_once(".lora_") {
        Some((p, "A")) => (p, 'A'),
        Some((p, "B")) => (p, 'B'),
        _ => return None,
    };
    let (parent, name) = path.split_once('.')?;
    let m = Module::parse(name)?;
    (m.parent() == parent).then_some((layer, m, which))
}

/// Fresh adapters for every layer and targeted projection of `cfg`: `A` uniform in
/// `±1/√in` (PEFT's `kaiming_uniform_(a=√5)`), `B` zero, from `lora.init_seed`, in f32 on the
/// host (the caller moves them to the model's device and dtype).
pub fn init_adapters(cfg: &ModelConfig, lora: &LoraConfig, modules: &[Module]) -> Result<AdapterSet> {
    let mut set = AdapterSet::new();
    for layer in 0..cfg.num_hidden_layers {
        for &m in modules {
            let (inp, out) = m.features(cfg);
            let bound = 1.0 / (inp as f64).sqrt();
            let mut state = mix(lora.init_seed ^ mix((layer as u64) << 8 | m.index()));
            let a: Vec<f32> = (0..lora.r * inp).map(|_| ((2.0 * unit(&mut state) - 1.0) * bound) as f32).collect();
            let a = Tensor::from_vec(a, (lora.r, inp), &Device::Cpu)?;
            let b = Tensor::zeros((out, lora.r), candle_core::DType::F32, &Device::Cpu)?;
            set.insert((layer, m), AdapterPair { a, b });
        }
    }
    Ok(set)
}

/// The seed of one training forward's dropout masks: a hash of its token ids and the
/// adapter's init seed.
pub fn forward_seed(ids: &[u32], init_seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ init_seed;
    for &id in ids {
        h = (h ^ id as u64).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// The seed of one projection's mask within a forward.
pub fn module_seed(forward: u64, layer: usize, m: Module) -> u64 {
    mix(forward ^ mix((layer as u64) << 8 | m.index()))
}

/// An inverted-dropout mask of `len` elements: 0 with probability `p`, else `1/(1−p)`.
pub fn dropout_mask(seed: u64, len: usize, p: f64) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut state = seed;
    (0..len).map(|_| if unit(&mut state) < p { 0.0 } else { keep }).collect()
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The next uniform draw in `[0, 1)` of a SplitMix64 stream.
fn unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (mix(*state) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_keys_round_trip() {
        for m in Module::ALL {
            for which in ['A', 'B'] {
                assert_eq!(parse_peft_key(&peft_key(3, m, which)), Some((3, m, which)));
            }
        }
        assert_eq!(
            parse_peft_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"),
            Some((0, Module::Q, 'A'))
        );
        assert_eq!(parse_peft_key("base_model.model.model.layers.0.mlp.q_proj.lora_A.weight"), None);
        assert_eq!(parse_peft_key("model.layers.0.self_attn.q_proj.weight"), None);
    }

    #[test]
    fn validation_names_the_field() {
        let err = LoraConfig { r: 0, ..Default::default() }.validate("grpo.toml").unwrap_err().to_string();
        assert!(err.contains("grpo.toml") && err.contains("lora.r"), "{err}");
        let cfg = LoraConfig { target_modules: vec!["q_proj".into(), "qkv".into()], ..Default::default() };
        let err = cfg.validate("x.toml").unwrap_err().to_string();
        assert!(err.contains("lora.target_modules") && err.contains("`qkv`"), "{err}");
        let err = LoraConfig { dropout: 1.0, ..Default::default() }.validate("x").unwrap_err().to_string();
        assert!(err.contains("lora.dropout"), "{err}");
        assert_eq!(LoraConfig::default().validate("x").unwrap(), Module::ALL.to_vec());
    }

    #[test]
    fn dropout_masks_are_inverted_and_seeded() {
        let m = dropout_mask(7, 100_000, 0.25);
        let zeros = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((zeros - 0.25).abs() < 0.01, "{zeros}");
        let mean = m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert_eq!(m, dropout_mask(7, 100_000, 0.25));
        assert_ne!(m, dropout_mask(8, 100_000, 0.25));
        assert_ne!(forward_seed(&[1, 2, 3], 0), forward_seed(&[1, 2, 4], 0));
    }

    #[test]
    fn fresh_adapters_start_as_the_base() {
        let cfg = ModelConfig::small(crate::config::Arch::Llama);
        let lora = LoraConfig { r: 4, ..Default::default() };
        let set = init_adapters(&cfg, &lora, &Module::ALL).unwrap();
        assert_eq!(set.len(), cfg.num_hidden_layers * 7);
        let pair = &set[&(0, Module::Down)];
        assert_eq!(pair.a.dims(), &[4, cfg.intermediate_size]);
        assert_eq!(pair.b.dims(), &[cfg.hidden_size, 4]);
        assert_eq!(pair.b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let bound = 1.0 / (cfg.intermediate_size as f32).sqrt();
        let amax = pair.a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(amax <= bound && amax > 0.5 * bound, "{amax} vs {bound}");
    }
}
