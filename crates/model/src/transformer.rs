//! The decoder-only transformer shared by Qwen2, Qwen3 and Llama, written for training as well
//! as sampling.
//!
//! Reads top to bottom: RMSNorm → RoPE → attention → MLP → block → model. Parameter names are
//! Hugging Face's, so a `safetensors` file from `transformers` loads without renaming.
//!
//! The model carries its execution plan (`exec.rs`) and a [`Mode`]: every row op goes through
//! `ops.rs` with the [`Kernels`] the plan gives for that mode, so which code runs is decided
//! once, when the model is built, and read here. In [`Mode::Train`] every op has a backward.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::config::{Arch, Llama3RopeScaling, ModelConfig};
use crate::cpu::infer;
use crate::error::{ModelError, Result};
use crate::exec::{Backend, ExecPlan, Kernels, Mode};
use crate::kv_cache::KvCache;
use crate::lora::{self, AdapterPair, AdapterSet, LoraConfig, Module};
use crate::ops;

/// Additive attention bias for disallowed positions (scores are f32 when it is applied).
const MASKED: f64 = -1e30;

/// Standard deviation of `transformers`' default `initializer_range`.
const INIT_STD: f64 = 0.02;

/// How a parameter is initialised when a model is created from nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    /// Normal(0, std).
    Normal(f64),
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases).
    Zeros,
}

/// One parameter's HF name, shape and initialisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Shape, PyTorch convention (`[out, in]` for linear weights).
    pub shape: Vec<usize>,
    /// Initialisation for a fresh model.
    pub init: ParamInit,
}

fn get(vb: &VarBuilder, shape: &[usize], name: &str, init: ParamInit) -> Result<Tensor> {
    let hint = match init {
        ParamInit::Normal(std) => Init::Randn { mean: 0.0, stdev: std },
        ParamInit::Ones => Init::Const(1.0),
        ParamInit::Zeros => Init::Const(0.0),
    };
    Ok(vb.get_with_hints(shape, name, hint)?)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// Root-mean-square norm, x · rsqrt(mean(x²) + ε) · w.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: get(&vb, &[dim], "weight", ParamInit::Ones)?, eps })
    }

    /// `x`: `[..., dim]` → same shape. Computed in f32 (f64 stays f64), returned in `x`'s dtype.
    fn forward(&self, x: &Tensor, k: Kernels) -> Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps, k)
    }
}

// ---------------------------------------------------------------------------------------------
// Linear

/// A linear layer with PyTorch's `[out, in]` weight; inputs of any rank are flattened to one
/// gemm. With a LoRA adapter (`lora.rs`) it adds `s·(drop(x)·Aᵀ)·Bᵀ`.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
}

/// A LoRA adapter on one projection, and where it sits (for its dropout masks).
#[derive(Debug, Clone)]
struct Adapter {
    pair: AdapterPair,
    scale: f64,
    dropout: f64,
    layer: usize,
    module: Module,
}

impl Linear {
    fn new(inp: usize, out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = get(&vb, &[out, inp], "weight", ParamInit::Normal(INIT_STD))?;
        let bias = if bias { Some(get(&vb, &[out], "bias", ParamInit::Zeros)?) } else { None };
        Ok(Self { weight, bias, adapter: None })
    }

    /// `x`: `[..., in]` → `[..., out]`. `drop` is the forward's dropout seed (training forwards
    /// of a model whose adapters have dropout).
    fn forward(&self, x: &Tensor, k: Kernels, drop: Option<u64>) -> Result<Tensor> {
        let y = linear_nd(x, &self.weight, self.bias.as_ref(), k)?;
        let Some(ad) = &self.adapter else { return Ok(y) };
        let xd = match drop {
            Some(seed) if ad.dropout > 0.0 => {
                let mask = lora::dropout_mask(lora::module_seed(seed, ad.layer, ad.module), x.elem_count(), ad.dropout);
                (x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)?
            }
            _ => x.clone(),
        };
        let u = linear_nd(&xd, &ad.pair.a, None, k)?;
        Ok((y + (linear_nd(&u, &ad.pair.b, None, k)? * ad.scale)?)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary position embedding (HF "rotate_half" layout)

/// RoPE inverse frequencies, with Llama-3 scaling applied when configured.
#[derive(Debug, Clone)]
struct Rope {
    /// `[head_dim / 2]` f32.
    inv_freq: Tensor,
}

impl Rope {
    fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / cfg.head_dim as f32;
                1.0 / (cfg.rope_theta as f32).powf(exponent)
            })
            .map(|f| match &cfg.rope_scaling {
                Some(s) => llama3_scale(f, s),
                None => f,
            })
            .collect();
        Ok(Self { inv_freq: Tensor::from_vec(freqs, half, device)? })
    }

    /// `positions`: `[B, T]` u32 → `(cos, sin)`, each `[B, 1, T, head_dim]` in `dtype`.
    fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // [B, T, 1]
        let freqs = pos.broadcast_mul(&self.inv_freq.reshape((1, 1, ()))?)?; // [B, T, hd/2]
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?; // [B, 1, T, hd]
        Ok((emb.cos()?.to_dtype(dtype)?, emb.sin()?.to_dtype(dtype)?))
    }
}

/// Llama-3 frequency scaling, exactly as `transformers`' `_compute_llama3_parameters`.
fn llama3_scale(freq: f32, s: &Llama3RopeScaling) -> f32 {
    let old_len = s.original_max_position_embeddings as f32;
    let low_wavelen = old_len / s.low_freq_factor as f32;
    let high_wavelen = old_len / s.high_freq_factor as f32;
    let wavelen = 2.0 * std::f32::consts::PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor as f32
    } else {
        let smooth =
            (old_len / wavelen - s.low_freq_factor as f32) / (s.high_freq_factor as f32 - s.low_freq_factor as f32);
        (1.0 - smooth) * freq / s.factor as f32 + smooth * freq
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

/// What every block of one training forward shares: RoPE tables, the attention bias, the
/// kernels and the adapters' dropout seed.
struct Pass<'a> {
    rope: &'a (Tensor, Tensor),
    bias: &'a Tensor,
    k: Kernels,
    drop: Option<u64>,
}

/// Grouped-query self-attention with optional q/k/v bias (Qwen2) and q/k norms (Qwen3).
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let bias = cfg.attention_bias;
        let qk_norm = cfg.arch == Arch::Qwen3;
        let norm = |name: &str| RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp(name));
        Ok(Self {
            q_proj: Linear::new(h, nh * hd, bias, vb.pp("q_proj"))?,
            k_proj: Linear::new(h, nkv * hd, bias, vb.pp("k_proj"))?,
            v_proj: Linear::new(h, nkv * hd, bias, vb.pp("v_proj"))?,
            o_proj: Linear::new(nh * hd, h, false, vb.pp("o_proj"))?,
            q_norm: if qk_norm { Some(norm("q_norm")?) } else { None },
            k_norm: if qk_norm { Some(norm("k_norm")?) } else { None },
            n_heads: nh,
            n_kv: nkv,
            head_dim: hd,
        })
    }

    /// Projects `x` `[B, T, H]` to `q` `[B, nh, T, hd]` and `k`, `v` `[B, nkv, T, hd]`, with RoPE.
    fn qkv(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        kn: Kernels,
        drop: Option<u64>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (cos, sin) = rope;
        // `[B, T, n·hd]` → `[B, n, T, hd]` (q/k norm first, RoPE when `rotate`).
        let heads = |y: Tensor, n: usize, norm: &Option<RmsNorm>, rotate: bool| -> Result<Tensor> {
            let y = y.reshape((b, t, n, self.head_dim))?;
            let y = match norm {
                Some(nm) => nm.forward(&y, kn)?,
                None => y,
            };
            if rotate {
                return ops::rope_transposed(&y, cos, sin, kn);
            }
            Ok(y.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(self.q_proj.forward(x, kn, drop)?, self.n_heads, &self.q_norm, true)?;
        let k = heads(self.k_proj.forward(x, kn, drop)?, self.n_kv, &self.k_norm, true)?;
        let v = heads(self.v_proj.forward(x, kn, drop)?, self.n_kv, &None, false)?;
        Ok((q, k, v))
    }

    /// Scaled dot-product attention. `q`: `[B, nh, T, hd]`; `k`, `v`: `[B, nkv, S, hd]`;
    /// `bias`: `[B, 1, T, S]` f32 additive mask. Returns `[B, T, nh·hd]`.
    ///
    /// GQA without copying keys: the `g` query heads of one KV head are folded into the query
    /// length (`[B, nkv, g·T, hd]`), matching HF's `repeat_kv` head order.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, kn: Kernels) -> Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        let s = k.dim(2)?;
        let g = nh / self.n_kv;
        let q = q.reshape((b, self.n_kv, g * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = q.matmul(&k.t()?)?.reshape((b, nh, t, s))?;
        let probs = ops::masked_softmax(&scores, bias, scale, kn)?;
        let out = probs.reshape((b, self.n_kv, g * t, s))?.matmul(v)?; // [B, nkv, g·T, hd]
        let out = out.reshape((b, nh, t, hd))?.transpose(1, 2)?; // [B, T, nh, hd]
        Ok(out.reshape((b, t, nh * hd))?)
    }

    /// One new token per row against the cache (after `append`): the CPU inference kernel, or
    /// `None` when a buffer is not contiguous f32.
    fn attend_one(&self, q: &Tensor, cache: &KvCache, layer: usize) -> Result<Option<Tensor>> {
        let (keys, values, valid) = cache.buffers(layer);
        let shape = infer::AttnShape {
            batch: q.dim(0)?,
            heads: self.n_heads,
            kv_heads: self.n_kv,
            head_dim: self.head_dim,
            max_len: cache.max_len(),
            total: cache.len() + 1,
        };
        infer::decode_attention(q, keys, values, valid, shape)
    }

    fn forward(&self, x: &Tensor, p: &Pass) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, p.rope, p.k, p.drop)?;
        self.o_proj.forward(&self.attend(&q, &k, &v, p.bias, p.k)?, p.k, p.drop)
    }

    fn forward_cached(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        bias: &Tensor,
        cache: &mut KvCache,
        layer: usize,
        kn: Kernels,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, rope, kn, None)?;
        let (k, v) = cache.append(layer, &k, &v)?;
        if q.dim(2)? == 1 && kn == Kernels::CpuInfer {
            if let Some(out) = self.attend_one(&q, cache, layer)? {
                return self.o_proj.forward(&out, kn, None);
            }
        }
        self.o_proj.forward(&self.attend(&q, &k, &v, bias, kn)?, kn, None)
    }
}

// ---------------------------------------------------------------------------------------------
// MLP and block

/// SwiGLU feed-forward: down(silu(gate(x)) · up(x)).
#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::new(h, i, false, vb.pp("gate_proj"))?,
            up_proj: Linear::new(h, i, false, vb.pp("up_proj"))?,
            down_proj: Linear::new(i, h, false, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor, k: Kernels, drop: Option<u64>) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x, k, drop)?, self.up_proj.forward(x, k, drop)?);
        self.down_proj.forward(&ops::swiglu(&gate, &up, k)?, k, drop)
    }
}

/// Pre-norm transformer block.
#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::new(cfg.hidden_size, eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(cfg.hidden_size, eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn residual_mlp(&self, x: Tensor, k: Kernels, drop: Option<u64>) -> Result<Tensor> {
        let h = self.mlp.forward(&self.post_attention_layernorm.forward(&x, k)?, k, drop)?;
        Ok((x + h)?)
    }

    fn forward(&self, x: &Tensor, p: &Pass) -> Result<Tensor> {
        let a = self.self_attn.forward(&self.input_layernorm.forward(x, p.k)?, p)?;
        self.residual_mlp((x + a)?, p.k, p.drop)
    }

    /// The projection `m` of this block.
    fn linear(&self, m: Module) -> &Linear {
        let (a, f) = (&self.self_attn, &self.mlp);
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &f.gate_proj, &f.up_proj, &f.down_proj][m as usize]
    }

    /// The projection `m` of this block, mutably.
    fn linear_mut(&mut self, m: Module) -> &mut Linear {
        let (a, f) = (&mut self.self_attn, &mut self.mlp);
        match m {
            Module::Q => &mut a.q_proj,
            Module::K => &mut a.k_proj,
            Module::V => &mut a.v_proj,
            Module::O => &mut a.o_proj,
            Module::Gate => &mut f.gate_proj,
            Module::Up => &mut f.up_proj,
            Module::Down => &mut f.down_proj,
        }
    }

    fn forward_cached(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        bias: &Tensor,
        cache: &mut KvCache,
        layer: usize,
        k: Kernels,
    ) -> Result<Tensor> {
        let normed = self.input_layernorm.forward(x, k)?;
        let a = self.self_attn.forward_cached(&normed, rope, bias, cache, layer, k)?;
        self.residual_mlp((x + a)?, k, None)
    }
}

// ---------------------------------------------------------------------------------------------
// Model

/// A causal language model: embeddings, blocks, final norm, LM head — and the execution plan
/// and mode it runs with.
#[derive(Debug, Clone)]
pub struct Transformer {
    cfg: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
    plan: ExecPlan,
    mode: Mode,
    /// The adapters' settings when the model carries LoRA adapters (its base is then frozen).
    lora: Option<LoraConfig>,
    /// Where the base weights of an adapted model were read from (an adapter directory's
    /// `base_model_name_or_path`).
    adapter_base: Option<String>,
}

impl Transformer {
    /// Builds the model from `vb` (HF names) with the backend `auto` picks for its device, dtype
    /// and architecture, in [`Mode::Train`]. With a `VarMap`-backed builder the parameters are
    /// trainable variables; missing ones are created with `transformers`' default init.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Self::with_backend(cfg, vb, Backend::Auto)
    }

    /// Like [`Transformer::new`] with the backend requested explicitly (an error when it does
    /// not apply to the device, dtype or architecture).
    pub fn with_backend(cfg: &ModelConfig, vb: VarBuilder, backend: Backend) -> Result<Self> {
        let plan = ExecPlan::decide(vb.device(), vb.dtype(), cfg.arch, backend)?;
        Self::with_plan(cfg, vb, plan)
    }

    /// A model with fresh trainable variables (`transformers`' default init, from candle's RNG)
    /// where `exec` says, and the variable map an optimiser steps.
    pub fn random(cfg: &ModelConfig, exec: &crate::exec::ExecRequest) -> Result<(Self, candle_nn::VarMap)> {
        let plan = ExecPlan::for_request(exec, cfg.arch)?;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, plan.dtype(), plan.device());
        Ok((Self::with_plan(cfg, vb, plan)?, varmap))
    }

    /// Builds the model in [`Mode::Train`] on a plan already decided for its device and dtype.
    pub fn with_plan(cfg: &ModelConfig, vb: VarBuilder, plan: ExecPlan) -> Result<Self> {
        Self::build(cfg, vb, plan, Mode::Train)
    }

    fn build(cfg: &ModelConfig, vb: VarBuilder, plan: ExecPlan, mode: Mode) -> Result<Self> {
        cfg.check()?;
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = get(&vb.pp("model.embed_tokens"), &[v, h], "weight", ParamInit::Normal(INIT_STD))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, vb.pp(format!("model.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("model.norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            get(&vb.pp("lm_head"), &[v, h], "weight", ParamInit::Normal(INIT_STD))?
        };
        let rope = Rope::new(cfg, vb.device())?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            plan,
            mode,
            lora: None,
            adapter_base: None,
        })
    }

    /// The execution plan (backend, device, dtype) this model was built with.
    pub fn plan(&self) -> &ExecPlan {
        &self.plan
    }

    /// Whether the model runs with gradients or for inference only.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The kernels its forward calls: the plan's for its mode.
    pub fn kernels(&self) -> Kernels {
        self.plan.kernels(self.mode)
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Every parameter's HF name, shape and fresh-model initialisation, in a stable order.
    pub fn parameter_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
        let (v, h, i) = (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size);
        let (q, kv, hd) =
            (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.head_dim);
        let w = |name: String, shape: Vec<usize>| ParamSpec { name, shape, init: ParamInit::Normal(INIT_STD) };
        let ones = |name: String, n: usize| ParamSpec { name, shape: vec![n], init: ParamInit::Ones };
        let zeros = |name: String, n: usize| ParamSpec { name, shape: vec![n], init: ParamInit::Zeros };
        let mut specs = vec![w("model.embed_tokens.weight".into(), vec![v, h])];
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            specs.push(ones(format!("{p}.input_layernorm.weight"), h));
            for (name, out) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                specs.push(w(format!("{p}.self_attn.{name}.weight"), vec![out, h]));
                if cfg.attention_bias {
                    specs.push(zeros(format!("{p}.self_attn.{name}.bias"), out));
                }
            }
            specs.push(w(format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            if cfg.arch == Arch::Qwen3 {
                specs.push(ones(format!("{p}.self_attn.q_norm.weight"), hd));
                specs.push(ones(format!("{p}.self_attn.k_norm.weight"), hd));
            }
            specs.push(ones(format!("{p}.post_attention_layernorm.weight"), h));
            specs.push(w(format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            specs.push(w(format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            specs.push(w(format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        specs.push(ones("model.norm.weight".into(), h));
        if !cfg.tie_word_embeddings {
            specs.push(w("lm_head.weight".into(), vec![v, h]));
        }
        specs
    }

    /// The parameters by HF name, in [`Transformer::parameter_specs`] order (tied heads once).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.clone())];
        for (l, b) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            let a = &b.self_attn;
            out.push((format!("{p}.input_layernorm.weight"), b.input_layernorm.weight.clone()));
            for (name, lin) in [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj)] {
                out.push((format!("{p}.self_attn.{name}.weight"), lin.weight.clone()));
                if let Some(bias) = &lin.bias {
                    out.push((format!("{p}.self_attn.{name}.bias"), bias.clone()));
                }
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), a.o_proj.weight.clone()));
            for (name, n) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
                if let Some(n) = n {
                    out.push((format!("{p}.self_attn.{name}.weight"), n.weight.clone()));
                }
            }
            out.push((format!("{p}.post_attention_layernorm.weight"), b.post_attention_layernorm.weight.clone()));
            out.push((format!("{p}.mlp.gate_proj.weight"), b.mlp.gate_proj.weight.clone()));
            out.push((format!("{p}.mlp.up_proj.weight"), b.mlp.up_proj.weight.clone()));
            out.push((format!("{p}.mlp.down_proj.weight"), b.mlp.down_proj.weight.clone()));
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.clone()));
        if !self.cfg.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        }
        out
    }

    /// Rebuilds the model in `mode` with every parameter (adapters included) passed through `f`
    /// (detach, deep copy), on the same plan.
    fn map_parameters(&self, mode: Mode, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Self> {
        let mut map = std::collections::HashMap::new();
        for (name, t) in self.named_parameters() {
            map.insert(name, f(&t)?);
        }
        let vb = VarBuilder::from_tensors(map, self.dtype(), self.device());
        let mut out = Self::build(&self.cfg, vb, self.plan.clone(), mode)?;
        if let Some(cfg) = &self.lora {
            let mut set = AdapterSet::new();
            for (key, pair) in self.adapters() {
                set.insert(key, AdapterPair { a: f(&pair.a)?, b: f(&pair.b)? });
            }
            out.attach(cfg, set)?;
            out.adapter_base = self.adapter_base.clone();
        }
        Ok(out)
    }

    /// Where the base of an adapted model was read from, when known.
    pub fn adapter_base(&self) -> Option<&str> {
        self.adapter_base.as_deref()
    }

    /// Records where the base weights came from (saved as the adapter's base).
    pub fn set_adapter_base(&mut self, base: impl Into<String>) {
        self.adapter_base = Some(base.into());
    }

    /// The adapters' settings, when the model carries LoRA adapters.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// The adapters by `(layer, projection)`, in that order (empty without LoRA).
    pub fn adapters(&self) -> AdapterSet {
        let mut set = AdapterSet::new();
        for (l, block) in self.layers.iter().enumerate() {
            for m in Module::ALL {
                if let Some(ad) = &block.linear(m).adapter {
                    set.insert((l, m), ad.pair.clone());
                }
            }
        }
        set
    }

    /// The adapter tensors by PEFT name (`…q_proj.lora_A.weight`), `A` before `B`, in
    /// `(layer, projection)` order: what a LoRA run trains and saves.
    pub fn adapter_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((l, m), pair) in self.adapters() {
            out.push((lora::peft_key(l, m, 'A'), pair.a));
            out.push((lora::peft_key(l, m, 'B'), pair.b));
        }
        out
    }

    /// The parameters an optimiser steps: the adapters of a LoRA model, else every parameter.
    pub fn trainable_parameters(&self) -> Vec<(String, Tensor)> {
        if self.lora.is_some() {
            self.adapter_parameters()
        } else {
            self.named_parameters()
        }
    }

    /// This model with LoRA adapters attached: its base parameters detached (frozen: no
    /// gradient reaches them) and sharing storage with `self`, the adapters as given (make them
    /// variables to train them). Every `(layer, projection)` `lora` targets must be in `set`,
    /// with `A` `[r, in]` and `B` `[out, r]`.
    pub fn with_adapters(&self, lora: &LoraConfig, set: AdapterSet) -> Result<Self> {
        let mut out = self.map_parameters(self.mode, |t| Ok(t.detach()))?;
        out.lora = None;
        out.layers.iter_mut().for_each(|b| Module::ALL.iter().for_each(|&m| b.linear_mut(m).adapter = None));
        out.attach(lora, set)?;
        Ok(out)
    }

    /// Sets the adapters of a model built without them (checks coverage and shapes).
    fn attach(&mut self, lora: &LoraConfig, mut set: AdapterSet) -> Result<()> {
        let modules = lora.validate("[lora]")?;
        let (dtype, device) = (self.dtype(), self.device().clone());
        let (scale, dropout) = (lora.scale(), lora.dropout);
        let layers = self.layers.len();
        for (l, block) in self.layers.iter_mut().enumerate() {
            for &m in &modules {
                let pair = set.remove(&(l, m)).ok_or_else(|| {
                    ModelError::InvalidConfig(format!("adapter `{}` is missing", lora::peft_key(l, m, 'A')))
                })?;
                let lin = block.linear_mut(m);
                let (out, inp) = lin.weight.dims2()?;
                for (which, t, want) in [('A', &pair.a, [lora.r, inp]), ('B', &pair.b, [out, lora.r])] {
                    if t.dims() != want {
                        return Err(ModelError::InvalidConfig(format!(
                            "adapter `{}` has shape {:?}; the base's {} is [{out}, {inp}] and r = {}, so {want:?} is expected",
                            lora::peft_key(l, m, which),
                            t.dims(),
                            m.hf_name(),
                            lora.r
                        )));
                    }
                }
                let pair = AdapterPair { a: on(&pair.a, dtype, &device)?, b: on(&pair.b, dtype, &device)? };
                lin.adapter = Some(Adapter { pair, scale, dropout, layer: l, module: m });
            }
        }
        if let Some(&(l, m)) = set.keys().next() {
            let what = if l >= layers {
                format!("layer {l}, but the model has {layers}")
            } else {
                "a projection `target_modules` does not name".into()
            };
            return Err(ModelError::InvalidConfig(format!("adapter `{}` is for {what}", lora::peft_key(l, m, 'A'))));
        }
        self.lora = Some(lora.clone());
        Ok(())
    }

    /// The base model alone, in [`Mode::Infer`], sharing the base's storage: the KL reference
    /// of a LoRA run (adapters switched off, no second copy of the weights).
    pub fn without_adapters(&self) -> Self {
        let mut out = self.clone();
        out.layers.iter_mut().for_each(|b| Module::ALL.iter().for_each(|&m| b.linear_mut(m).adapter = None));
        out.lora = None;
        out.adapter_base = None;
        out.mode = Mode::Infer;
        out
    }

    /// A plain model with every adapter folded into its weight (`W + s·B·A`), new storage, in
    /// this model's mode; a model without adapters is copied.
    pub fn merged(&self) -> Result<Self> {
        let mut out = self.without_adapters().map_parameters(self.mode, |t| t.detach().copy())?;
        for (l, block) in self.layers.iter().enumerate() {
            for m in Module::ALL {
                if let Some(ad) = &block.linear(m).adapter {
                    let lin = out.layers[l].linear_mut(m);
                    let delta = (ad.pair.b.to_dtype(DType::F32)?.matmul(&ad.pair.a.to_dtype(DType::F32)?)? * ad.scale)?;
                    lin.weight = (lin.weight.to_dtype(DType::F32)? + delta)?.to_dtype(lin.weight.dtype())?;
                }
            }
        }
        Ok(out)
    }

    /// The KL reference for this policy: the base with adapters off for a LoRA model (shared
    /// storage), otherwise an independent frozen copy.
    pub fn reference_copy(&self) -> Result<Self> {
        if self.lora.is_some() {
            Ok(self.without_adapters())
        } else {
            self.frozen_copy()
        }
    }

    /// The dropout seed of a training forward over `input_ids`: `Some` only in
    /// [`Mode::Train`] with adapters whose dropout is positive.
    pub(crate) fn dropout_seed(&self, input_ids: &Tensor) -> Result<Option<u64>> {
        match &self.lora {
            Some(l) if l.dropout > 0.0 && self.mode == Mode::Train => {
                let ids = input_ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                Ok(Some(lora::forward_seed(&ids, l.init_seed)))
            }
            _ => Ok(None),
        }
    }

    /// A view sharing storage with `self` but outside the autograd graph, in [`Mode::Infer`]:
    /// sampling with it builds no backward graph and may use inference kernels, and it sees
    /// in-place optimiser updates of the original's variables.
    pub fn detached(&self) -> Result<Self> {
        self.map_parameters(Mode::Infer, |t| Ok(t.detach()))
    }

    /// An independent frozen copy in [`Mode::Infer`] (a reference model or π_old snapshot).
    pub fn frozen_copy(&self) -> Result<Self> {
        self.map_parameters(Mode::Infer, |t| t.detach().copy())
    }

    /// Training forward over a padded batch.
    ///
    /// `input_ids`: `[B, T]` u32; `attention_mask`: `[B, T]` (1 real, 0 padding; any dtype);
    /// `position_ids`: `[B, T]` u32. Returns logits `[B, T, vocab]`. Differentiable.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, position_ids: &Tensor) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, attention_mask, position_ids)?;
        self.logits(&hidden)
    }

    /// Like [`Transformer::forward`] but stops before the LM head: returns the final normed
    /// hidden states `[B, T, hidden]`, so callers can project only the positions they need.
    pub fn forward_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor, position_ids: &Tensor) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        let causal = Tensor::tril2(t, DType::F32, self.device())?.unsqueeze(0)?.unsqueeze(0)?;
        let bias = attention_bias(&causal, attention_mask)?;
        let rope = self.rope.cos_sin(position_ids, self.dtype())?;
        let k = self.kernels();
        let pass = Pass { rope: &rope, bias: &bias, k, drop: self.dropout_seed(input_ids)? };
        let mut x = self.embed(input_ids)?;
        for block in &self.layers {
            x = block.forward(&x, &pass)?;
        }
        self.norm.forward(&x, k)
    }

    /// Projects hidden states `[..., hidden]` to logits `[..., vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        linear_nd(hidden, &self.lm_head, None, self.kernels())
    }

    /// Incremental decode: runs `t` new tokens per row against the caller's cache and appends
    /// them to it.
    ///
    /// `input_ids`: `[B, t]` u32; `attention_mask`: `[B, t]` (0 marks left padding of a
    /// prefill); `position_ids`: `[B, t]` u32. Returns logits `[B, t, vocab]`.
    pub fn decode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let hidden = self.decode_hidden(input_ids, attention_mask, position_ids, cache)?;
        self.logits(&hidden)
    }

    /// Like [`Transformer::decode`] but stops before the LM head: returns the final normed hidden
    /// states `[B, t, hidden]`, so a prefill can project only its last position.
    pub fn decode_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        let past = cache.len();
        cache.push_mask(attention_mask)?;
        let causal = offset_causal(t, past, self.device())?;
        let bias = attention_bias(&causal, &cache.valid_prefix(past + t)?)?;
        let rope = self.rope.cos_sin(position_ids, self.dtype())?;
        let k = self.kernels();
        let mut x = self.embed(input_ids)?;
        for (i, block) in self.layers.iter().enumerate() {
            x = block.forward_cached(&x, &rope, &bias, cache, i, k)?;
        }
        cache.advance(t);
        self.norm.forward(&x, k)
    }

    /// RoPE tables `(cos, sin)` for `positions` `[B, T]` u32, each `[B, 1, T, head_dim]` f32.
    pub(crate) fn rope_tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        self.rope.cos_sin(positions, DType::F32)
    }

    /// `[B, T]` ids → `[B, T, hidden]` embeddings.
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?.contiguous()?;
        Ok(self.embed_tokens.index_select(&flat, 0)?.reshape((b, t, self.cfg.hidden_size))?)
    }
}

/// `t` in `dtype` on `device` (a no-op when it is already there).
fn on(t: &Tensor, dtype: DType, device: &Device) -> Result<Tensor> {
    Ok(t.to_dtype(dtype)?.to_device(device)?)
}

/// `[1, 1, t, past + t]` f32: 1 where new token `i` may see slot `j` (`j <= past + i`).
fn offset_causal(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let s = past + t;
    let data: Vec<f32> = (0..t).flat_map(|i| (0..s).map(move |j| if j <= past + i { 1.0 } else { 0.0 })).collect();
    Ok(Tensor::from_vec(data, (1, 1, t, s), device)?)
}

/// `x` `[..., in]` · `w` `[out, in]`ᵀ (+ bias) → `[..., out]`, as one 2-D product.
fn linear_nd(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, k: Kernels) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let inp = dims.pop().unwrap_or(1);
    let rows: usize = dims.iter().product();
    dims.push(w.dim(0)?);
    Ok(ops::linear(&x.reshape((rows, inp))?, w, bias, k)?.reshape(dims)?)
}

/// Combines a `[1, 1, T, S]` causal pattern with a `[B, S]` key validity mask into the additive
/// f32 bias `[B, 1, T, S]`: 0 where attention is allowed, −1e30 elsewhere.
fn attention_bias(causal: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
    let keys = key_mask.to_dtype(DType::F32)?.unsqueeze(1)?.unsqueeze(1)?; // [B, 1, 1, S]
    let allowed = causal.broadcast_mul(&keys)?;
    Ok(((allowed - 1.0)? * -MASKED)?)
}
