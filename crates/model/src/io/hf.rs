//! Hugging Face model directories: `config.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`, and the tokenizer files.
//!
//! Safetensors files are read into memory (no `unsafe` memory map) and validated by the
//! `safetensors` crate, so a truncated or corrupt file is reported with its path instead of
//! crashing later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::Tensor;
use safetensors::SafeTensors;
use serde_json::Value as Json;

use super::{build_from_source, LoadedModel, WeightSource};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::exec::ExecRequest;
use crate::tokenizer::{read_text, AhaTokenizer};

/// The single-file weights name.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
/// The model config.
pub const CONFIG_JSON: &str = "config.json";

/// Loads a Hugging Face model directory.
pub fn load_hf_dir(dir: &Path, exec: &ExecRequest) -> Result<LoadedModel> {
    if !dir.is_dir() {
        return Err(ModelError::MissingFile {
            path: dir.to_path_buf(),
            hint: "expected a Hugging Face model directory (config.json, model.safetensors, tokenizer.json) or a .gguf file".into(),
        });
    }
    let config_path = dir.join(CONFIG_JSON);
    if !config_path.is_file() {
        return Err(ModelError::MissingFile {
            path: config_path,
            hint: "the model config of a Hugging Face directory".into(),
        });
    }
    let config = ModelConfig::from_hf_json_file(&config_path)?;
    let mut source = SafetensorsSource::open(dir)?;
    let (varmap, model) = build_from_source(&config, &mut source, exec)?;
    let tokenizer = AhaTokenizer::from_dir(dir)?;
    Ok(LoadedModel { config, varmap, model, tokenizer, source: dir.to_path_buf() })
}

/// The weight files of a directory: the shards named by the index, or `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(SAFETENSORS_INDEX);
    if index.is_file() {
        let map = read_index(&index)?;
        let mut files: Vec<PathBuf> = map.values().map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join(SAFETENSORS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::MissingFile {
        path: single,
        hint: format!("no weights: neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX} in the directory"),
    })
}

/// `weight_map` of a sharded checkpoint's index: tensor name → shard file name.
fn read_index(index: &Path) -> Result<HashMap<String, String>> {
    let text = read_text(index)?;
    let v: Json =
        serde_json::from_str(&text).map_err(|source| ModelError::Json { path: index.to_path_buf(), source })?;
    let map = v.get("weight_map").and_then(Json::as_object).ok_or_else(|| ModelError::Config {
        path: index.to_path_buf(),
        field: "weight_map".into(),
        reason: "missing or not an object".into(),
    })?;
    map.iter()
        .map(|(k, f)| {
            let f = f.as_str().ok_or_else(|| ModelError::Config {
                path: index.to_path_buf(),
                field: format!("weight_map.{k}"),
                reason: "not a file name".into(),
            })?;
            Ok((k.clone(), f.to_string()))
        })
        .collect()
}

/// Every tensor of a set of safetensors files, read and validated up front.
pub(crate) struct SafetensorsSource {
    dir: PathBuf,
    /// (path, bytes) per file.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    /// Reads and validates the weight files of `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let paths = weight_files(dir)?;
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            let bytes = std::fs::read(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
            let names = tensor_names(&path, &bytes)?;
            for n in names {
                index.insert(n, i);
            }
            files.push((path, bytes));
        }
        Ok(Self { dir: dir.to_path_buf(), files, index })
    }
}

/// The tensor names of one safetensors buffer, or a clear error if it is truncated or corrupt.
pub(crate) fn tensor_names(path: &Path, bytes: &[u8]) -> Result<Vec<String>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(path, bytes.len(), &e))?;
    Ok(st.names().into_iter().map(str::to_string).collect())
}

/// Explains a safetensors parse failure.
fn corrupt(path: &Path, len: usize, e: &safetensors::SafeTensorError) -> ModelError {
    ModelError::WeightsFile {
        path: path.to_path_buf(),
        reason: format!("not a valid safetensors file ({len} bytes; truncated or corrupt?): {e}"),
    }
}

impl SafetensorsSource {
    /// Whether any weight file holds a tensor named `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

impl WeightSource for SafetensorsSource {
    fn tensor(&mut self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let Some(&i) = self.index.get(name) else {
            return Err(ModelError::Tensor {
                path: self.file_of(name),
                tensor: name.to_string(),
                reason: format!("missing (config.json implies shape {expected:?})"),
            });
        };
        let (path, bytes) = &self.files[i];
        let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(path, bytes.len(), &e))?;
        let view = st.tensor(name).map_err(|e| corrupt(path, bytes.len(), &e))?;
        view.load(&super::host()).map_err(|e| ModelError::Tensor {
            path: path.clone(),
            tensor: name.to_string(),
            reason: format!("cannot be read: {e}"),
        })
    }

    fn file_of(&self, name: &str) -> PathBuf {
        match self.index.get(name) {
            Some(&i) => self.files[i].0.clone(),
            None if self.files.len() == 1 => self.files[0].0.clone(),
            None => self.dir.clone(),
        }
    }
}
