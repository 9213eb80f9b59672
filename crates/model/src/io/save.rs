//! `save_pretrained`: a Hugging Face directory `transformers` loads as is (`model.safetensors`
//! with `format: pt` metadata, `config.json`, `generation_config.json`, tokenizer files with the
//! chat template).
//!
//! The directory appears atomically: everything is written to a hidden temporary directory
//! beside the target, each file and the directory are fsync'ed, then it is renamed into place.
//! An existing target is first renamed aside and removed only after the new one is in place,
//! so a crash leaves either the old or the new checkpoint, never a half-written one.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::{json, Value as Json};

use super::hf::{CONFIG_JSON, SAFETENSORS_FILE};
use super::LoadedModel;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::{write_file, AhaTokenizer, GENERATION_CONFIG_JSON};
use crate::transformer::Transformer;

impl LoadedModel {
    /// Saves this model with [`save_pretrained`].
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        save_pretrained(dir, &self.config, &self.model, &self.tokenizer)
    }
}

/// Writes `model`'s parameters, `config` and `tokenizer` as a Hugging Face directory at `dir`,
/// atomically (see the module docs). Parameters are saved in their current dtype.
pub fn save_pretrained(dir: &Path, config: &ModelConfig, model: &Transformer, tokenizer: &AhaTokenizer) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = model.named_parameters();
    save_parts(dir, config, &tensors, tokenizer)
}

/// Like [`save_pretrained`] for an explicit list of (Hugging Face name, tensor).
pub fn save_parts(
    dir: &Path,
    config: &ModelConfig,
    tensors: &[(String, Tensor)],
    tokenizer: &AhaTokenizer,
) -> Result<()> {
    save_parts_with(dir, config, tensors, tokenizer, &serde_json::Map::new())
}

/// Like [`save_parts`], with `extra` keys written into `config.json` over the config's own
/// (e.g. `architectures` and `id2label` of a sequence-classification checkpoint).
pub fn save_parts_with(
    dir: &Path,
    config: &ModelConfig,
    tensors: &[(String, Tensor)],
    tokenizer: &AhaTokenizer,
    extra: &serde_json::Map<String, Json>,
) -> Result<()> {
    write_dir_atomically(dir, |tmp| write_contents(tmp, config, tensors, tokenizer, extra))
}

/// Creates `dir` atomically with what `fill` writes into a temporary sibling (see the module
/// docs): fsync'ed, renamed into place, an existing `dir` replaced only once the new one is whole.
pub(crate) fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, "tmp")?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let written = fill(&tmp).and_then(|()| sync_dir_files(&tmp));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = sibling(dir, "old")?;
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent).and_then(|f| f.sync_all()).map_err(io(parent))?;
    }
    Ok(())
}

/// A hidden sibling path `.<name>.<tag>-<pid>` next to `dir`.
fn sibling(dir: &Path, tag: &str) -> Result<PathBuf> {
    let name = dir.file_name().ok_or_else(|| ModelError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "output path has no final component"),
    })?;
    let hidden = format!(".{}.{tag}-{}", name.to_string_lossy(), std::process::id());
    Ok(dir.with_file_name(hidden))
}

fn write_contents(
    dir: &Path,
    config: &ModelConfig,
    tensors: &[(String, Tensor)],
    tokenizer: &AhaTokenizer,
    extra: &serde_json::Map<String, Json>,
) -> Result<()> {
    let dtype = tensors.first().map(|(_, t)| t.dtype()).unwrap_or(DType::F32);
    write_safetensors(&dir.join(SAFETENSORS_FILE), tensors)?;
    let mut cfg = config.to_hf_json();
    cfg["torch_dtype"] = json!(torch_dtype_name(dtype));
    for (key, value) in extra {
        cfg[key.as_str()] = value.clone();
    }
    write_json(&dir.join(CONFIG_JSON), &cfg)?;
    write_json(&dir.join(GENERATION_CONFIG_JSON), &generation_config(config, tokenizer))?;
    tokenizer.save(dir)
}

/// `float32`, `bfloat16`, ... as `config.json` spells it.
fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// `generation_config.json`: BOS, every EOS id (tokenizer's first, then the config's), PAD.
fn generation_config(config: &ModelConfig, tokenizer: &AhaTokenizer) -> Json {
    let mut eos: Vec<u32> = tokenizer.eos_token_ids().to_vec();
    for id in &config.eos_token_ids {
        if !eos.contains(id) {
            eos.push(*id);
        }
    }
    let mut g = json!({ "_from_model_config": false });
    if let Some(bos) = tokenizer.bos_token_id().or(config.bos_token_id) {
        g["bos_token_id"] = json!(bos);
    }
    match eos.as_slice() {
        [] => {}
        [one] => g["eos_token_id"] = json!(one),
        many => g["eos_token_id"] = json!(many),
    }
    if let Some(pad) = tokenizer.pad_token_id() {
        g["pad_token_id"] = json!(pad);
    }
    g
}

pub(crate) fn write_json(path: &Path, v: &Json) -> Result<()> {
    let text =
        serde_json::to_string_pretty(v).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
    write_file(path, text.as_bytes())
}

/// Writes tensors with the `{"format": "pt"}` metadata `transformers` requires.
pub(crate) fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let contiguous =
        tensors.iter().map(|(n, t)| Ok((n.clone(), t.contiguous()?))).collect::<Result<Vec<(String, Tensor)>>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(contiguous.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata), path)
        .map_err(|e| ModelError::WeightsFile { path: path.to_path_buf(), reason: format!("cannot write: {e}") })
}

/// fsyncs every file of `dir`, then `dir` itself.
fn sync_dir_files(dir: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
    }
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}
