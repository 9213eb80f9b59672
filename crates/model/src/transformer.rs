//! The decoder-only transformer shared by Qwen2, Qwen3 and Llama, written for training as well
//! as sampling.
//!
//! Reads top to bottom: RMSNorm → RoPE → attention → MLP → block → model. Parameter names are
//! Hugging Face's, so a `safetensors` file from `transformers` loads without renaming. Every
//! op on the training path has a backward in candle (DESIGN §6: no fused `softmax_last_dim`,
//! `rms_norm` or `rope` kernels, which silently cut gradients). Attention softmax runs in f32
//! whatever the model dtype, as `transformers`' eager attention does.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::config::{Arch, Llama3RopeScaling, ModelConfig};
use crate::error::Result;
use crate::fast;
use crate::fused;
use crate::kv_cache::KvCache;

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

/// Root-mean-square norm written out (x · rsqrt(mean(x²) + ε) · w) so it is differentiable.
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
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fast::eligible(x) && fast::eligible(&self.weight) {
            // Inference: candle's fused kernel (same f32 arithmetic, no backward).
            return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32)?);
        }
        if fused::supported(x) {
            // Training on CPU: one fused kernel with its own backward.
            return Ok(fused::rms_norm(x, &self.weight, self.eps)?);
        }
        let dtype = x.dtype();
        let x = x.to_dtype(upcast(dtype))?;
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_mul(&(mean_sq + self.eps)?.sqrt()?.recip()?)?;
        Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Linear

/// A linear layer with PyTorch's `[out, in]` weight; inputs of any rank are flattened to one gemm.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn new(inp: usize, out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = get(&vb, &[out, inp], "weight", ParamInit::Normal(INIT_STD))?;
        let bias = if bias { Some(get(&vb, &[out], "bias", ParamInit::Zeros)?) } else { None };
        Ok(Self { weight, bias })
    }

    /// `x`: `[..., in]` → `[..., out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let inp = dims.pop().unwrap_or(1);
        let rows: usize = dims.iter().product();
        let x2 = x.reshape((rows, inp))?;
        dims.push(self.weight.dim(0)?);
        if let Some(y) = fast::linear(&x2, &self.weight, self.bias.as_ref())? {
            return Ok(y.reshape(dims)?);
        }
        let y = x2.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Ok(y.reshape(dims)?)
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

/// Applies RoPE to `x`: `[B, heads, T, head_dim]` with `cos`/`sin`: `[B, 1, T, head_dim]`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

// ---------------------------------------------------------------------------------------------
// Attention

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
    fn qkv(&self, x: &Tensor, rope: &(Tensor, Tensor)) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (cos, sin) = rope;
        // `[B, T, n·hd]` → `[B, n, T, hd]` (q/k norm first, RoPE when `rotate`).
        let heads = |y: Tensor, n: usize, norm: &Option<RmsNorm>, rotate: bool| -> Result<Tensor> {
            let y = y.reshape((b, t, n, self.head_dim))?;
            let y = match norm {
                Some(nm) => nm.forward(&y)?,
                None => y,
            };
            if rotate && fused::supported(&y) && fused::supported(cos) {
                return Ok(fused::rope_transposed(&y, cos, sin)?);
            }
            let y = y.transpose(1, 2)?.contiguous()?;
            if rotate {
                apply_rope(&y, cos, sin)
            } else {
                Ok(y)
            }
        };
        let q = heads(self.q_proj.forward(x)?, self.n_heads, &self.q_norm, true)?;
        let k = heads(self.k_proj.forward(x)?, self.n_kv, &self.k_norm, true)?;
        let v = heads(self.v_proj.forward(x)?, self.n_kv, &None, false)?;
        Ok((q, k, v))
    }

    /// Scaled dot-product attention. `q`: `[B, nh, T, hd]`; `k`, `v`: `[B, nkv, S, hd]`;
    /// `bias`: `[B, 1, T, S]` f32 additive mask. Returns `[B, T, nh·hd]`.
    ///
    /// GQA without copying keys: the `g` query heads of one KV head are folded into the query
    /// length (`[B, nkv, g·T, hd]`), matching HF's `repeat_kv` head order.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, nh, t, hd) = q.dims4()?;
        let s = k.dim(2)?;
        let g = nh / self.n_kv;
        let q = q.reshape((b, self.n_kv, g * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = q.matmul(&k.t()?)?.reshape((b, nh, t, s))?;
        let probs = if fused::supported(&scores) {
            fused::masked_softmax(&scores, &bias.to_dtype(scores.dtype())?, scale)?
        } else {
            let cd = upcast(v.dtype());
            let scores = (scores * scale)?.to_dtype(cd)?.broadcast_add(&bias.to_dtype(cd)?)?;
            candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?
        };
        let out = probs.reshape((b, self.n_kv, g * t, s))?.matmul(v)?; // [B, nkv, g·T, hd]
        let out = out.reshape((b, nh, t, hd))?.transpose(1, 2)?; // [B, T, nh, hd]
        Ok(out.reshape((b, t, nh * hd))?)
    }

    /// One new token per row against the cache (after `append`): the fused CPU kernel, or
    /// `None` when it does not apply.
    fn attend_one(&self, q: &Tensor, cache: &KvCache, layer: usize) -> Result<Option<Tensor>> {
        let (keys, values, valid) = cache.buffers(layer);
        let shape = fast::AttnShape {
            batch: q.dim(0)?,
            heads: self.n_heads,
            kv_heads: self.n_kv,
            head_dim: self.head_dim,
            max_len: cache.max_len(),
            total: cache.len() + 1,
        };
        fast::decode_attention(q, keys, values, valid, shape)
    }

    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), bias: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, rope)?;
        self.o_proj.forward(&self.attend(&q, &k, &v, bias)?)
    }

    fn forward_cached(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        bias: &Tensor,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, rope)?;
        let (k, v) = cache.append(layer, &k, &v)?;
        if q.dim(2)? == 1 {
            if let Some(out) = self.attend_one(&q, cache, layer)? {
                return self.o_proj.forward(&out);
            }
        }
        self.o_proj.forward(&self.attend(&q, &k, &v, bias)?)
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

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        if fused::supported(&gate) {
            return self.down_proj.forward(&fused::swiglu(&gate, &up)?);
        }
        let gate = candle_nn::Activation::Silu.forward(&gate)?;
        self.down_proj.forward(&(gate * up)?)
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

    fn residual_mlp(&self, x: Tensor) -> Result<Tensor> {
        let h = self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?;
        Ok((x + h)?)
    }

    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), bias: &Tensor) -> Result<Tensor> {
        let a = self.self_attn.forward(&self.input_layernorm.forward(x)?, rope, bias)?;
        self.residual_mlp((x + a)?)
    }

    fn forward_cached(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        bias: &Tensor,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let normed = self.input_layernorm.forward(x)?;
        let a = self.self_attn.forward_cached(&normed, rope, bias, cache, layer)?;
        self.residual_mlp((x + a)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Model

/// A causal language model: embeddings, blocks, final norm, LM head.
#[derive(Debug, Clone)]
pub struct Transformer {
    cfg: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
}

impl Transformer {
    /// Builds the model from `vb` (HF names). With a `VarMap`-backed builder the parameters are
    /// trainable variables; missing ones are created with `transformers`' default init.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
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
        Ok(Self { cfg: cfg.clone(), embed_tokens, layers, norm, lm_head, rope })
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

    /// Rebuilds the model with every parameter passed through `f` (e.g. detach, deep copy, cast).
    pub fn map_parameters(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Self> {
        let mut map = std::collections::HashMap::new();
        for (name, t) in self.named_parameters() {
            map.insert(name, f(&t)?);
        }
        let dtype = map.values().next().map(Tensor::dtype).unwrap_or(self.dtype());
        let vb = VarBuilder::from_tensors(map, dtype, self.device());
        Self::new(&self.cfg, vb)
    }

    /// A view sharing storage with `self` but outside the autograd graph: sampling with it builds
    /// no backward graph, and it sees in-place optimiser updates of the original's variables.
    pub fn detached(&self) -> Result<Self> {
        self.map_parameters(|t| Ok(t.detach()))
    }

    /// An independent frozen copy (a reference model or π_old snapshot).
    pub fn frozen_copy(&self) -> Result<Self> {
        self.map_parameters(|t| t.detach().copy())
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
        let mut x = self.embed(input_ids)?;
        for block in &self.layers {
            x = block.forward(&x, &rope, &bias)?;
        }
        self.norm.forward(&x)
    }

    /// Projects hidden states `[..., hidden]` to logits `[..., vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let mut dims = hidden.dims().to_vec();
        let h = dims.pop().unwrap_or(1);
        let rows: usize = dims.iter().product();
        let x2 = hidden.reshape((rows, h))?;
        dims.push(self.cfg.vocab_size);
        if let Some(y) = fast::linear(&x2, &self.lm_head, None)? {
            return Ok(y.reshape(dims)?);
        }
        let logits = x2.matmul(&self.lm_head.t()?)?;
        Ok(logits.reshape(dims)?)
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
        let mut x = self.embed(input_ids)?;
        for (i, block) in self.layers.iter().enumerate() {
            x = block.forward_cached(&x, &rope, &bias, cache, i)?;
        }
        cache.advance(t);
        self.norm.forward(&x)
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

/// `[1, 1, t, past + t]` f32: 1 where new token `i` may see slot `j` (`j <= past + i`).
fn offset_causal(t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let s = past + t;
    let data: Vec<f32> = (0..t).flat_map(|i| (0..s).map(move |j| if j <= past + i { 1.0 } else { 0.0 })).collect();
    Ok(Tensor::from_vec(data, (1, 1, t, s), device)?)
}

/// The dtype softmax and RMS statistics are computed in: f32, or f64 for an f64 model (so an
/// f64 model is f64 throughout, which finite-difference gradient checks rely on).
fn upcast(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Combines a `[1, 1, T, S]` causal pattern with a `[B, S]` key validity mask into the additive
/// f32 bias `[B, 1, T, S]`: 0 where attention is allowed, −1e30 elsewhere.
fn attention_bias(causal: &Tensor, key_mask: &Tensor) -> Result<Tensor> {
    let keys = key_mask.to_dtype(DType::F32)?.unsqueeze(1)?.unsqueeze(1)?; // [B, 1, 1, S]
    let allowed = causal.broadcast_mul(&keys)?;
    Ok(((allowed - 1.0)? * -MASKED)?)
}
