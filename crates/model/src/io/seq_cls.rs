//! Sequence-classification checkpoints, the layout of a reward model: the policy architecture's
//! transformer body (`model.*`) plus a linear `score` head without bias, exactly as Hugging
//! Face's `Qwen2ForSequenceClassification`, `Qwen3ForSequenceClassification` and
//! `LlamaForSequenceClassification` store them (`score.weight` of shape `[num_labels, hidden]`,
//! `architectures`, `num_labels` and `id2label` in `config.json`).
//!
//! The body is built with `tie_word_embeddings` forced on, so no LM head is read or allocated
//! (a classification checkpoint has none); the `config.json` written back keeps the base
//! model's own value. The score of a sequence is the head applied to the final hidden state of
//! its last real token (the last position whose attention mask is 1), as `transformers` pools
//! it at the last non-padding token.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value as Json};

use super::hf::{SafetensorsSource, CONFIG_JSON};
use super::{build_from_source, load_gguf, resolve_hub_repo, save_parts_with, ModelSpec, WeightSource};
use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::exec::ExecRequest;
use crate::tokenizer::AhaTokenizer;
use crate::transformer::Transformer;

/// The head's parameter name.
pub const SCORE_WEIGHT: &str = "score.weight";
/// Labels of a reward model's head: one scalar.
pub const NUM_LABELS: usize = 1;

/// The `architectures[0]` class of a sequence classifier of `arch`.
pub fn seq_cls_class(arch: Arch) -> &'static str {
    match arch {
        Arch::Qwen2 => "Qwen2ForSequenceClassification",
        Arch::Qwen3 => "Qwen3ForSequenceClassification",
        Arch::Llama => "LlamaForSequenceClassification",
    }
}

/// A transformer body with a scalar head: a reward model ready to train or score.
pub struct SequenceClassifier {
    /// The configuration as written in `config.json` (the base model's tie flag kept).
    pub config: ModelConfig,
    /// Trainable variables: the body's parameters and [`SCORE_WEIGHT`].
    pub varmap: VarMap,
    /// The body, built without an LM head.
    pub backbone: Transformer,
    /// The head `[NUM_LABELS, hidden]`, backed by a variable of `varmap`.
    pub score: Tensor,
    /// The tokenizer with its chat template.
    pub tokenizer: AhaTokenizer,
    /// Where the weights were read from.
    pub source: PathBuf,
    /// Whether the head came from the checkpoint (false: freshly initialised).
    pub head_loaded: bool,
}

impl std::fmt::Debug for SequenceClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SequenceClassifier")
            .field("config", &self.config)
            .field("source", &self.source)
            .field("head_loaded", &self.head_loaded)
            .finish_non_exhaustive()
    }
}

impl SequenceClassifier {
    /// Scores a padded batch: `input_ids`, `attention_mask` (1 real, 0 padding, any padding
    /// side) and `position_ids` are `[B, T]`; returns `[B]` in the model dtype, pooled at each
    /// row's last real token. Differentiable.
    pub fn forward_scores(&self, input_ids: &Tensor, attention_mask: &Tensor, position_ids: &Tensor) -> Result<Tensor> {
        pooled_scores(&self.backbone, &self.score, input_ids, attention_mask, position_ids)
    }

    /// Saves this classifier with [`save_sequence_classifier`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_sequence_classifier(dir, self)
    }
}

/// [`SequenceClassifier::forward_scores`] for a given body and head (e.g. detached views of
/// them, to score without building a graph).
pub fn pooled_scores(
    backbone: &Transformer,
    score: &Tensor,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    position_ids: &Tensor,
) -> Result<Tensor> {
    let (b, t) = input_ids.dims2()?;
    let hidden = backbone.forward_hidden(input_ids, attention_mask, position_ids)?;
    let mask = attention_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut rows = Vec::with_capacity(b);
    for (r, m) in mask.iter().enumerate() {
        let last = m.iter().rposition(|&v| v > 0.0).ok_or_else(|| {
            ModelError::InvalidConfig(format!("sequence {r} of the batch has no real token to score"))
        })?;
        rows.push((r * t + last) as u32);
    }
    let index = Tensor::from_vec(rows, b, hidden.device())?;
    let h = hidden.dims3()?.2;
    let pooled = hidden.reshape((b * t, h))?.index_select(&index, 0)?;
    Ok(pooled.matmul(&score.t()?)?.squeeze(1)?)
}

/// Loads a reward model, or a base model to turn into one: the body from any [`ModelSpec`]
/// (an LM head, if present, is ignored) and `score.weight` from the checkpoint when it holds
/// one, else drawn from Normal(0, `head_std`) with `seed`.
pub fn load_sequence_classifier(
    spec: &ModelSpec,
    exec: &ExecRequest,
    head_std: f64,
    seed: u64,
) -> Result<SequenceClassifier> {
    let parts = match spec {
        ModelSpec::HfDir(dir) => load_dir(dir, exec)?,
        ModelSpec::HubRepo { repo_id, revision } => load_dir(&resolve_hub_repo(repo_id, revision.as_deref())?, exec)?,
        ModelSpec::Gguf { file, tokenizer_dir } => {
            let lm = load_gguf(file, tokenizer_dir.as_deref(), exec)?;
            let body_cfg = body_config(&lm.config);
            lock(&lm.varmap)?.remove("lm_head.weight");
            let plan = lm.model.plan().clone();
            let vb = VarBuilder::from_varmap(&lm.varmap, plan.dtype(), plan.device());
            let backbone = Transformer::with_plan(&body_cfg, vb, plan)?;
            Parts {
                config: lm.config,
                varmap: lm.varmap,
                backbone,
                score: None,
                tokenizer: lm.tokenizer,
                source: lm.source,
            }
        }
    };
    let h = parts.config.hidden_size;
    let head_loaded = parts.score.is_some();
    let (device, dtype) = (parts.backbone.device().clone(), parts.backbone.dtype());
    let device = &device;
    let score = match parts.score {
        Some(t) => t.to_dtype(dtype)?.to_device(device)?,
        None => init_head(h, head_std, seed, device)?.to_dtype(dtype)?,
    };
    let var = Var::from_tensor(&score)?;
    let score = var.as_tensor().clone();
    lock(&parts.varmap)?.insert(SCORE_WEIGHT.to_string(), var);
    Ok(SequenceClassifier {
        config: parts.config,
        varmap: parts.varmap,
        backbone: parts.backbone,
        score,
        tokenizer: parts.tokenizer,
        source: parts.source,
        head_loaded,
    })
}

impl SequenceClassifier {
    /// LoRA on the body: fresh adapters (the only trainable body parameters, the base frozen)
    /// and the score head trained in full, as PEFT's `modules_to_save = ["score"]`.
    pub fn apply_lora(&mut self, lora: &crate::lora::LoraConfig, origin: &str) -> Result<()> {
        let modules = lora.validate(origin)?;
        let set = crate::lora::init_adapters(&self.config, lora, &modules)?;
        let (dtype, device) = (self.backbone.dtype(), self.backbone.device().clone());
        let varmap = VarMap::new();
        let mut vars = crate::lora::AdapterSet::new();
        {
            let mut data = lock(&varmap)?;
            for ((l, m), pair) in set {
                let a = Var::from_tensor(&pair.a.to_dtype(dtype)?.to_device(&device)?)?;
                let b = Var::from_tensor(&pair.b.to_dtype(dtype)?.to_device(&device)?)?;
                vars.insert((l, m), crate::lora::AdapterPair { a: a.as_tensor().clone(), b: b.as_tensor().clone() });
                data.insert(crate::lora::peft_key(l, m, 'A'), a);
                data.insert(crate::lora::peft_key(l, m, 'B'), b);
            }
            let score = lock(&self.varmap)?.remove(SCORE_WEIGHT);
            if let Some(score) = score {
                data.insert(SCORE_WEIGHT.to_string(), score);
            }
        }
        self.backbone = self.backbone.with_adapters(lora, vars)?;
        self.varmap = varmap;
        Ok(())
    }
}

/// Writes the classifier as a Hugging Face sequence-classification directory, atomically (a
/// body with LoRA adapters is saved merged: a plain classifier any tool loads).
pub fn save_sequence_classifier(dir: &Path, m: &SequenceClassifier) -> Result<()> {
    let body = if m.backbone.lora().is_some() { m.backbone.merged()? } else { m.backbone.clone() };
    let mut tensors = body.named_parameters();
    tensors.push((SCORE_WEIGHT.to_string(), m.score.clone()));
    let mut extra = Map::new();
    extra.insert("architectures".into(), json!([seq_cls_class(m.config.arch)]));
    extra.insert("num_labels".into(), json!(NUM_LABELS));
    extra.insert("id2label".into(), json!({ "0": "LABEL_0" }));
    extra.insert("label2id".into(), json!({ "LABEL_0": 0 }));
    if let Some(pad) = m.tokenizer.pad_token_id() {
        extra.insert("pad_token_id".into(), Json::from(pad));
    }
    save_parts_with(dir, &m.config, &tensors, &m.tokenizer, &extra)
}

/// What a loader yields before the head is settled.
struct Parts {
    config: ModelConfig,
    varmap: VarMap,
    backbone: Transformer,
    score: Option<Tensor>,
    tokenizer: AhaTokenizer,
    source: PathBuf,
}

/// The config the body is built from: the same, with the LM head tied (so never read).
fn body_config(config: &ModelConfig) -> ModelConfig {
    ModelConfig { tie_word_embeddings: true, ..config.clone() }
}

fn lock(varmap: &VarMap) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Var>>> {
    varmap.data().lock().map_err(|_| ModelError::InvalidConfig("variable map lock poisoned".into()))
}

fn load_dir(dir: &Path, exec: &ExecRequest) -> Result<Parts> {
    let config_path = dir.join(CONFIG_JSON);
    if !config_path.is_file() {
        return Err(ModelError::MissingFile {
            path: config_path,
            hint: "the model config of a Hugging Face (reward) model directory".into(),
        });
    }
    let config = ModelConfig::from_hf_json_file(&config_path)?;
    check_num_labels(&config_path)?;
    let mut source = SafetensorsSource::open(dir)?;
    let (varmap, backbone) = build_from_source(&body_config(&config), &mut source, exec)?;
    let expected = [NUM_LABELS, config.hidden_size];
    let score = if source.has(SCORE_WEIGHT) {
        let t = source.tensor(SCORE_WEIGHT, &expected)?;
        if t.dims() != expected {
            return Err(ModelError::Tensor {
                path: source.file_of(SCORE_WEIGHT),
                tensor: SCORE_WEIGHT.into(),
                reason: format!("shape {:?}, but a reward model's head is {expected:?}", t.dims()),
            });
        }
        Some(t)
    } else {
        None
    };
    let tokenizer = AhaTokenizer::from_dir(dir)?;
    Ok(Parts { config, varmap, backbone, score, tokenizer, source: dir.to_path_buf() })
}

/// A classification config with several labels is not a reward model.
fn check_num_labels(config_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|source| ModelError::Io { path: config_path.to_path_buf(), source })?;
    let v: Json =
        serde_json::from_str(&text).map_err(|source| ModelError::Json { path: config_path.to_path_buf(), source })?;
    let labels = v
        .get("num_labels")
        .and_then(Json::as_u64)
        .or_else(|| v.get("id2label").and_then(Json::as_object).map(|m| m.len() as u64));
    match labels {
        Some(n) if n as usize != NUM_LABELS => Err(ModelError::Config {
            path: config_path.to_path_buf(),
            field: "num_labels".into(),
            reason: format!("{n} labels, but a reward model has one"),
        }),
        _ => Ok(()),
    }
}

/// A `[1, hidden]` f32 head drawn from Normal(0, std) (Box–Muller over a seeded ChaCha8).
fn init_head(hidden: usize, std: f64, seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5c0e_4ead);
    let data: Vec<f32> = (0..hidden)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(data, (NUM_LABELS, hidden), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny::{init_tiny, TinySpec};

    fn tiny(dir: &Path, tie: bool) -> crate::io::LoadedModel {
        let spec = TinySpec {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 64,
            tie_word_embeddings: tie,
            ..TinySpec::default()
        };
        init_tiny(dir, &spec, 1).unwrap()
    }

    fn batch(rows: &[&[u32]], left: bool) -> (Tensor, Tensor, Tensor) {
        let t = rows.iter().map(|r| r.len()).max().unwrap();
        let (mut ids, mut mask, mut pos) = (vec![], vec![], vec![]);
        for r in rows {
            let pad = t - r.len();
            let lead = if left { pad } else { 0 };
            for j in 0..t {
                let k = j as isize - lead as isize;
                let real = k >= 0 && (k as usize) < r.len();
                ids.push(if real { r[k as usize] } else { 0 });
                mask.push(if real { 1f32 } else { 0.0 });
                pos.push(if real { k as u32 } else { 0 });
            }
        }
        let d = &Device::Cpu;
        let n = rows.len();
        (
            Tensor::from_vec(ids, (n, t), d).unwrap(),
            Tensor::from_vec(mask, (n, t), d).unwrap(),
            Tensor::from_vec(pos, (n, t), d).unwrap(),
        )
    }

    #[test]
    fn scores_pool_the_last_real_token_whatever_the_padding() {
        let dir = tempfile::tempdir().unwrap();
        tiny(&dir.path().join("base"), true);
        let spec = ModelSpec::HfDir(dir.path().join("base"));
        let m = load_sequence_classifier(&spec, &ExecRequest::default(), 0.5, 7).unwrap();
        assert!(!m.head_loaded);
        let (a, b): (&[u32], &[u32]) = (&[5, 6, 7, 8, 9], &[10, 11]);
        let alone = |r: &[u32]| {
            let (i, k, p) = batch(&[r], false);
            m.forward_scores(&i, &k, &p).unwrap().to_vec1::<f32>().unwrap()[0]
        };
        for left in [false, true] {
            let (i, k, p) = batch(&[a, b], left);
            let s = m.forward_scores(&i, &k, &p).unwrap().to_vec1::<f32>().unwrap();
            assert!((s[0] - alone(a)).abs() < 1e-5 && (s[1] - alone(b)).abs() < 1e-5, "left={left}: {s:?}");
        }
        assert!((alone(a) - alone(&a[..4])).abs() > 1e-6, "the last token decides the pooled state");
    }

    #[test]
    fn saves_the_hf_classification_layout_and_reloads_the_same_scores() {
        let dir = tempfile::tempdir().unwrap();
        tiny(&dir.path().join("base"), false);
        let m = load_sequence_classifier(&ModelSpec::HfDir(dir.path().join("base")), &ExecRequest::default(), 0.5, 3)
            .unwrap();
        assert!(lock(&m.varmap).unwrap().get("lm_head.weight").is_none(), "no LM head is trained");
        let out = dir.path().join("rm");
        m.save(&out).unwrap();
        let cfg: Json = serde_json::from_str(&std::fs::read_to_string(out.join(CONFIG_JSON)).unwrap()).unwrap();
        assert_eq!(cfg["architectures"], json!(["Qwen2ForSequenceClassification"]));
        assert_eq!((cfg["num_labels"].clone(), cfg["id2label"]["0"].clone()), (json!(1), json!("LABEL_0")));
        assert_eq!(cfg["tie_word_embeddings"], json!(false), "the base model's flag is kept");
        let st = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(st[SCORE_WEIGHT].dims(), &[1, 16]);
        assert!(!st.contains_key("lm_head.weight") && st.contains_key("model.norm.weight"));
        let back = load_sequence_classifier(&ModelSpec::HfDir(out), &ExecRequest::default(), 0.5, 99).unwrap();
        assert!(back.head_loaded);
        let (i, k, p) = batch(&[&[1, 2, 3], &[4]], false);
        let s0 = m.forward_scores(&i, &k, &p).unwrap().to_vec1::<f32>().unwrap();
        let s1 = back.forward_scores(&i, &k, &p).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(s0, s1);
    }
}
