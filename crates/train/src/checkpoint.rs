//! Checkpoints: a Hugging Face model directory plus trainer state, written so that a crash at
//! any moment leaves the previous checkpoint whole and selected.
//!
//! Layout under `RUN_DIR/checkpoints/`: `step-000010/` holds `model.safetensors`, `config.json`,
//! tokenizer files (loadable by `transformers` as is) — for a LoRA run instead the PEFT adapter
//! (`adapter_config.json`, `adapter_model.safetensors`, loadable by `peft`) —, `optimizer.safetensors` (AdamW moments)
//! and `trainer_state.json` (step, data cursor, guard counters, the resolved config). It is
//! written as `.step-000010.partial`, every file fsynced, then renamed; the `latest` pointer
//! file is replaced (write, fsync, rename) only after that. Only the last K are kept.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use aha_model::{save_adapter, save_pretrained, AhaTokenizer, Transformer};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::CursorState;
use crate::error::{io_err, Result, TrainError};
use crate::optim::AdamW;

/// Name of the pointer file holding the latest complete checkpoint's directory name.
pub const LATEST: &str = "latest";
/// Trainer state file inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// The reference model's weights inside a checkpoint (present when β > 0).
pub const REFERENCE_FILE: &str = "reference.safetensors";
/// Optimiser moments inside a checkpoint.
pub const OPTIM_FILE: &str = "optimizer.safetensors";

/// Everything besides tensors needed to resume exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Trainer steps completed.
    pub step: usize,
    /// Optimiser steps completed (drives the LR schedule and bias correction).
    pub optimizer_steps: usize,
    /// Data cursor.
    pub cursor: CursorState,
    /// Consecutive skipped steps at save time.
    pub consecutive_skips: usize,
    /// Skipped steps so far.
    pub total_skips: usize,
    /// The run's base seed.
    pub seed: u64,
    /// The resolved configuration of the run, as JSON.
    pub config: serde_json::Value,
}

/// The checkpoint root of a run.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// Writes a checkpoint and moves the `latest` pointer to it; prunes to `keep_last` (0 keeps all).
pub fn save_checkpoint(
    run_dir: &Path,
    model: &Transformer,
    tokenizer: &AhaTokenizer,
    opt: &AdamW,
    state: &TrainerState,
    reference: Option<&Transformer>,
    keep_last: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&root).map_err(io_err(&root))?;
    let name = format!("step-{:06}", state.step);
    let partial = root.join(format!(".{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
    }
    save_model(&partial, model, tokenizer, state)?;
    write_state(&partial, opt, state)?;
    // A LoRA run's reference is its base with adapters off: nothing to save, resume rebuilds it.
    // A reference refreshed from an adapted policy is saved merged.
    if let Some(r) = reference.filter(|r| model.lora().is_none() || r.lora().is_some()) {
        let r = if r.lora().is_some() { r.merged()? } else { r.clone() };
        let tensors: HashMap<String, Tensor> = r.named_parameters().into_iter().collect();
        let path = partial.join(REFERENCE_FILE);
        candle_core::safetensors::save(&tensors, &path)?;
        fsync_file(&path)?;
    }
    test_pause_before_rename(&name);
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    std::fs::rename(&partial, &dir).map_err(io_err(&dir))?;
    fsync_dir(&root)?;
    write_atomic(&root.join(LATEST), name.as_bytes())?;
    prune(&root, keep_last)?;
    Ok(dir)
}

/// The model part of a checkpoint: a Hugging Face directory, or for a LoRA run the PEFT adapter
/// (`adapter_config.json` + `adapter_model.safetensors`, its base named as the run's base).
fn save_model(dir: &Path, model: &Transformer, tokenizer: &AhaTokenizer, state: &TrainerState) -> Result<()> {
    let from_config = state.config.get("model").and_then(serde_json::Value::as_str);
    save_weights(dir, model, tokenizer, from_config.unwrap_or_default())
}

/// A model's weights as aha loads them: a Hugging Face directory, or for a LoRA model its PEFT
/// adapter, whose base is the adapter's own base if it has one, else `base`. (Also what the
/// rollout servers reload, `remote/mod.rs`.)
pub(crate) fn save_weights(dir: &Path, model: &Transformer, tokenizer: &AhaTokenizer, base: &str) -> Result<()> {
    if model.lora().is_none() {
        return Ok(save_pretrained(dir, model.config(), model, tokenizer)?);
    }
    Ok(save_adapter(dir, model, tokenizer, model.adapter_base().unwrap_or(base))?)
}

/// Environment variable of the crash-test hook: a checkpoint name (e.g. `step-000002`).
pub const PAUSE_BEFORE_RENAME_ENV: &str = "AHA_TEST_PAUSE_BEFORE_RENAME";

/// Test hook: when [`PAUSE_BEFORE_RENAME_ENV`] names this checkpoint, sleep (60 s) after its
/// partial directory is fully written and before the rename, so a test can `kill -9` the
/// process mid-save (`tests/grpo_trainer.rs`). Unset, as in every real run, it does nothing.
fn test_pause_before_rename(name: &str) {
    if std::env::var(PAUSE_BEFORE_RENAME_ENV).is_ok_and(|v| v == name) {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

fn write_state(dir: &Path, opt: &AdamW, state: &TrainerState) -> Result<()> {
    let tensors: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    let optim = dir.join(OPTIM_FILE);
    candle_core::safetensors::save(&tensors, &optim)?;
    fsync_file(&optim)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Other(e.to_string()))?;
    let sp = dir.join(STATE_FILE);
    std::fs::write(&sp, json).map_err(io_err(&sp))?;
    fsync_file(&sp)?;
    fsync_dir(dir)
}

/// The latest complete checkpoint of a run, if any (partial directories are never returned).
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    let root = checkpoints_dir(run_dir);
    let ptr = root.join(LATEST);
    if !ptr.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&ptr).map_err(io_err(&ptr))?;
    let dir = root.join(name.trim());
    if !dir.join(STATE_FILE).exists() {
        return Err(TrainError::Checkpoint {
            path: dir,
            reason: format!("`{LATEST}` points to a directory without {STATE_FILE}"),
        });
    }
    Ok(Some(dir))
}

/// Reads a checkpoint's trainer state and optimiser moments.
pub fn load_state(dir: &Path, device: &Device) -> Result<(TrainerState, HashMap<String, Tensor>)> {
    let sp = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&sp).map_err(io_err(&sp))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint { path: sp.clone(), reason: format!("invalid state: {e}") })?;
    let optim = candle_core::safetensors::load(dir.join(OPTIM_FILE), device)?;
    Ok((state, optim))
}

/// Removes all but the `keep_last` newest `step-*` directories of `root` (0 keeps all).
pub(crate) fn prune(root: &Path, keep_last: usize) -> Result<()> {
    if keep_last == 0 {
        return Ok(());
    }
    let mut steps: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io_err(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-")))
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep_last);
    for old in &steps[..excess] {
        std::fs::remove_dir_all(old).map_err(io_err(old))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` via a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(parent) = path.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

fn fsync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}
