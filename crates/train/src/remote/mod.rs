//! GRPO rollouts on external OpenAI-compatible inference servers (`aha serve`, vLLM, SGLang):
//! token-id prompts out, completion ids with per-token log-probs and a weight version back,
//! the policy's weights pushed to the servers through a directory on disk.
//!
//! **Prompts over servers.** A round's prompts are split into contiguous, balanced chunks, one
//! `/v1/completions` request per server (several when `rollout.max_prompts_per_request` caps
//! it), all sent at once (a thread per request). The chunk
//! starting at prompt k carries `prompt_index_offset = k` and the round's rollout seed, so
//! `aha serve` draws sample s of prompt p from the in-process stream `(seed, p, s)`: with the
//! same weights the union of the answers is the in-process rollout.
//!
//! **Weight sync.** The policy (its PEFT adapter for a LoRA run; merged full weights for SGLang)
//! is saved to `RUN_DIR/weights-sync/step-NNNNNN/` (each file written atomically), and once the
//! whole directory is written every server is told to reload it (`/update_weights_from_disk`,
//! or vLLM's `/v1/load_lora_adapter`). The first step a process runs always syncs, so after a
//! start or a resume the servers serve the trainer's weights; later steps sync when
//! `rollout.sync_every` steps have passed. The two newest sync directories are kept.
//!
//! **Versions.** A sync records, per server, the trainer step whose weights it holds and the
//! `weight_version` the server reported. A rollout's policy version is the step synced when its
//! request was sent; a server answering with another `weight_version` than the one it reported
//! at the sync (someone else reloaded or restarted it) is an error, and so is a version older
//! than `rollout.max_staleness` steps.
//!
//! **Timeline** (P_t: the policy after t steps; step t+1 trains P_t into P_{t+1}):
//!
//! ```text
//! max_staleness = 0            step t+1:  sync P_t → request rollouts (P_t) → train → P_{t+1}
//! max_staleness = S > 0        step t+1:  join the request sent during step t (made by P_{t-1})
//!                                          → sync P_t → refill rounds, if any, from P_t
//!                                          → send step t+2's request (P_t) in the background
//!                                          → train → P_{t+1}
//! ```
//!
//! A reload therefore never overlaps a request: the background request is joined before the
//! next sync, and sent only after it. Its prompts are peeked from a copy of the data cursor, so
//! a checkpoint written while it is in flight does not skip them on resume (the resumed run
//! requests them again, synchronously, from the checkpoint's weights). Background rollouts are
//! one step stale (up to `sync_every` steps); the first step of a process has none in hand and
//! requests synchronously. Resume is exact with `max_staleness = 0` and an engine that is
//! deterministic given the seed (`aha serve`); with S > 0 the resumed run's first step is
//! fresher than the uninterrupted run's would have been.

pub mod client;
pub mod settings;
pub mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use aha_model::rollout::{RolloutConfig, Sample};
use aha_model::{save_pretrained, AhaTokenizer, Transformer};
use serde_json::{json, Value};

use client::Server;
pub use settings::{Api, Engine, RolloutSettings};
use wire::{completion_body, parse_completions, plan_requests, Completions, RequestSpec};

use crate::checkpoint::prune;
use crate::error::{io_err, Result, TrainError};

/// The directory under the run directory that sync weights are written to.
const SYNC_DIR: &str = "weights-sync";

/// What the servers hold after a sync.
#[derive(Debug, Clone, PartialEq)]
struct Synced {
    /// The trainer step whose weights were pushed.
    step: usize,
    /// Each server's reported `weight_version` after the reload (none when it reports none).
    versions: Vec<Option<u64>>,
}

/// A request sent in the background for the next step.
struct Prefetch {
    key: RoundKey,
    synced: Synced,
    handle: JoinHandle<Result<Vec<(usize, Completions)>>>,
}

/// Answers in hand for a round, with what identifies that round.
struct Ready {
    key: RoundKey,
    synced: Synced,
    replies: Vec<(usize, Completions)>,
}

/// The rows and seed of a round: a prefetched answer is used only for exactly this round.
#[derive(Debug, Clone, PartialEq)]
struct RoundKey {
    rows: Vec<usize>,
    seed: u64,
    max_new_tokens: usize,
}

/// The remote rollout engine of one trainer.
pub struct RemoteRollout<'a> {
    settings: RolloutSettings,
    servers: Vec<Server>,
    tokenizer: &'a AhaTokenizer,
    adapter_base: String,
    sync_root: PathBuf,
    vocab_size: usize,
    model: Option<String>,
    synced: Option<Synced>,
    prefetch: Option<Prefetch>,
    ready: Option<Ready>,
    step: usize,
    versions: Vec<usize>,
    sync_s: f64,
}

impl<'a> RemoteRollout<'a> {
    /// An engine over `settings.urls` (validated); weights are saved under `run_dir` with
    /// `tokenizer`, a LoRA adapter naming `adapter_base` as its base; completions with ids at or
    /// above `vocab_size` are refused.
    pub fn new(
        settings: RolloutSettings,
        tokenizer: &'a AhaTokenizer,
        adapter_base: &str,
        run_dir: &Path,
        vocab_size: usize,
    ) -> Self {
        let servers = settings.urls.iter().map(|u| Server::new(u, &settings)).collect();
        Self {
            servers,
            tokenizer,
            adapter_base: adapter_base.to_string(),
            sync_root: run_dir.join(SYNC_DIR),
            vocab_size,
            model: match settings.api {
                Api::Vllm => Some(settings.lora_name.clone()),
                _ => settings.model.clone(),
            },
            settings,
            synced: None,
            prefetch: None,
            ready: None,
            step: 0,
            versions: Vec::new(),
            sync_s: 0.0,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &RolloutSettings {
        &self.settings
    }

    /// Starts trainer step `step + 1` (`step` steps done, `policy` = P_step): joins the
    /// background request, then pushes the weights when a sync is due.
    pub fn begin_step(&mut self, policy: &Transformer, step: usize) -> Result<()> {
        self.step = step;
        self.versions.clear();
        self.sync_s = 0.0;
        if let Some(p) = self.prefetch.take() {
            let replies =
                p.handle.join().map_err(|_| TrainError::Other("the background rollout request panicked".into()))??;
            self.ready = Some(Ready { key: p.key, synced: p.synced, replies });
        }
        let due = self.synced.as_ref().is_none_or(|s| step >= s.step + self.settings.sync_every);
        if due {
            let t0 = Instant::now();
            self.sync(policy, step)?;
            self.sync_s = t0.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// The completions of one round (`rows`' `prompts` under `cfg`): the background answer when
    /// it was made for exactly this round, else a request now.
    pub fn complete(&mut self, rows: &[usize], prompts: &[Vec<u32>], cfg: &RolloutConfig) -> Result<Vec<Vec<Sample>>> {
        let key = RoundKey { rows: rows.to_vec(), seed: cfg.seed, max_new_tokens: cfg.max_new_tokens };
        let (synced, replies) = match self.ready.take() {
            Some(r) if r.key == key => (r.synced, r.replies),
            _ => {
                let synced =
                    self.synced.clone().ok_or_else(|| TrainError::Other("rollout before any weight sync".into()))?;
                (synced, request_all(&self.servers, &self.spec(cfg)?, prompts)?)
            }
        };
        self.accept(replies, &synced)
    }

    /// Sends the next step's round (`rows`, `prompts`, `cfg`) in the background
    /// (`max_staleness` > 0 only; see the module docs' timeline).
    pub fn launch(&mut self, rows: Vec<usize>, prompts: Vec<Vec<u32>>, cfg: &RolloutConfig) -> Result<()> {
        let synced = self.synced.clone().ok_or_else(|| TrainError::Other("rollout before any weight sync".into()))?;
        let key = RoundKey { rows, seed: cfg.seed, max_new_tokens: cfg.max_new_tokens };
        let (servers, spec) = (self.servers.clone(), self.spec(cfg)?);
        let handle = std::thread::Builder::new()
            .name("aha-rollout-prefetch".into())
            .spawn(move || request_all(&servers, &spec, &prompts))
            .map_err(|e| TrainError::Other(format!("starting the background rollout thread: {e}")))?;
        self.prefetch = Some(Prefetch { key, synced, handle });
        Ok(())
    }

    /// `rollout/weight_version` (the oldest policy version behind this step's rollouts),
    /// `rollout/staleness` (steps between it and the trained policy) and `rollout/sync_s`.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::from([("rollout/sync_s".to_string(), self.sync_s)]);
        if let Some(&v) = self.versions.iter().min() {
            m.insert("rollout/weight_version".into(), v as f64);
            m.insert("rollout/staleness".into(), self.step.saturating_sub(v) as f64);
        }
        m
    }

    fn spec(&self, cfg: &RolloutConfig) -> Result<RequestSpec> {
        let model = self.model.clone().ok_or_else(|| TrainError::Other("rollout model name not resolved".into()))?;
        Ok(RequestSpec {
            model,
            api: self.settings.api,
            cfg: cfg.clone(),
            max_prompts: self.settings.max_prompts_per_request,
        })
    }

    /// Checks versions, staleness and ids; flattens the answers into per-prompt groups.
    fn accept(&mut self, replies: Vec<(usize, Completions)>, synced: &Synced) -> Result<Vec<Vec<Sample>>> {
        for (i, c) in &replies {
            let url = &self.servers[*i].url;
            check_version(url, c.weight_version, synced.versions[*i], synced.step)?;
            check_ids(url, c, self.vocab_size)?;
        }
        let stale = self.step.saturating_sub(synced.step);
        if stale > self.settings.max_staleness {
            return Err(TrainError::Other(format!(
                "rollouts made by the weights of step {} are {stale} step(s) old at step {}, more than \
                 rollout.max_staleness = {}",
                synced.step,
                self.step + 1,
                self.settings.max_staleness
            )));
        }
        self.versions.push(synced.step);
        Ok(replies.into_iter().flat_map(|(_, c)| c.groups).collect())
    }

    /// Saves P_step and makes every server reload it.
    fn sync(&mut self, policy: &Transformer, step: usize) -> Result<()> {
        if self.model.is_none() {
            self.model = Some(self.resolve_model());
        }
        let dir = self.sync_root.join(format!("step-{step:06}"));
        save_weights(&dir, policy, self.tokenizer, &self.adapter_base, self.settings.api)?;
        let dir = dir.canonicalize().map_err(io_err(&dir))?;
        let versions = reload_all(&self.servers, &self.settings, &dir)?;
        self.synced = Some(Synced { step, versions });
        prune(&self.sync_root, 2)
    }

    /// The first id of `GET /v1/models`, else `"default"` (when `rollout.model` is not given).
    fn resolve_model(&self) -> String {
        let listed = self.servers.first().and_then(|s| s.get("/v1/models").ok());
        let first = listed.as_ref().and_then(|v| v.pointer("/data/0/id")).and_then(Value::as_str);
        first.unwrap_or("default").to_string()
    }
}

/// Each server's chunk of `prompts` (in requests of at most `rollout.max_prompts_per_request`
/// prompts), all sent together, a thread each; answers in prompt order with their server.
fn request_all(servers: &[Server], spec: &RequestSpec, prompts: &[Vec<u32>]) -> Result<Vec<(usize, Completions)>> {
    let requests = plan_requests(prompts.len(), servers.len(), spec.max_prompts);
    std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .into_iter()
            .map(|(i, start, len)| {
                let (server, part) = (&servers[i], &prompts[start..start + len]);
                scope.spawn(move || request_one(server, spec, part, start).map(|c| (i, c)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| TrainError::Other("a rollout request thread panicked".into()))?)
            .collect()
    })
}

fn request_one(server: &Server, spec: &RequestSpec, prompts: &[Vec<u32>], offset: usize) -> Result<Completions> {
    // The streams continue the caller's numbering (`prompt_index_offset`), as in process.
    let body = completion_body(spec, prompts, spec.cfg.prompt_index_offset + offset as u64);
    let answer = server.post("/v1/completions", &body)?;
    parse_completions(&answer, prompts.len(), spec.cfg.group_size, offset, &spec.cfg.eos_ids)
        .map_err(|e| TrainError::Other(format!("rollout server {}: /v1/completions: {e}", server.url)))
}

/// Every server reloads `dir`, in parallel; their reported weight versions in server order.
fn reload_all(servers: &[Server], settings: &RolloutSettings, dir: &Path) -> Result<Vec<Option<u64>>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = servers.iter().map(|s| scope.spawn(move || reload(s, settings, dir))).collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| TrainError::Other("a weight-sync thread panicked".into()))?)
            .collect()
    })
}

/// One server reloads `dir`: its reported `weight_version`, if any.
fn reload(server: &Server, settings: &RolloutSettings, dir: &Path) -> Result<Option<u64>> {
    let path = dir.to_string_lossy();
    let (endpoint, body) = match settings.api {
        Api::Vllm => {
            ("/v1/load_lora_adapter", json!({"lora_name": settings.lora_name, "lora_path": path, "load_inplace": true}))
        }
        Api::Aha | Api::Sglang => ("/update_weights_from_disk", json!({"model_path": path})),
    };
    let answer = server.post(endpoint, &body)?;
    if settings.api == Api::Vllm {
        return Ok(None);
    }
    if answer.get("success").and_then(Value::as_bool) != Some(true) {
        let msg = answer.get("message").and_then(Value::as_str).unwrap_or("no `success: true` in the answer");
        return Err(TrainError::Other(format!("rollout server {}: {endpoint} refused {path}: {msg}", server.url)));
    }
    Ok(answer.get("weight_version").and_then(Value::as_u64))
}

/// The policy as the servers load it: a PEFT adapter (aha, vLLM), merged full weights for a
/// LoRA policy on SGLang, else the full model.
fn save_weights(dir: &Path, policy: &Transformer, tok: &AhaTokenizer, base: &str, api: Api) -> Result<()> {
    if policy.lora().is_some() && api == Api::Sglang {
        let merged = policy.merged()?;
        return Ok(save_pretrained(dir, merged.config(), &merged, tok)?);
    }
    crate::checkpoint::save_weights(dir, policy, tok, base)
}

/// A server must answer with the version it reported when it loaded the synced weights.
fn check_version(url: &str, answered: Option<u64>, synced: Option<u64>, step: usize) -> Result<()> {
    match (answered, synced) {
        (Some(a), Some(s)) if a != s => Err(TrainError::Other(format!(
            "rollout server {url} answered with weight version {a}, but reported version {s} when it loaded \
             the weights of step {step}: was it reloaded or restarted by someone else?"
        ))),
        _ => Ok(()),
    }
}

fn check_ids(url: &str, c: &Completions, vocab: usize) -> Result<()> {
    let bad = c.groups.iter().flatten().flat_map(|s| &s.completion_ids).find(|&&t| t as usize >= vocab);
    match bad {
        Some(t) => Err(TrainError::Other(format!(
            "rollout server {url} returned token id {t}, outside the model's vocabulary of {vocab}: \
             does it serve the same model?"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_weight_version_is_an_error_naming_the_server() {
        check_version("http://a", Some(3), Some(3), 5).unwrap();
        check_version("http://a", None, Some(3), 5).unwrap();
        check_version("http://a", Some(9), None, 5).unwrap();
        let e = check_version("http://a", Some(4), Some(3), 5).unwrap_err().to_string();
        assert!(e.contains("http://a") && e.contains("version 4") && e.contains("step 5"), "{e}");
    }

    #[test]
    fn out_of_vocabulary_ids_are_refused() {
        let s = Sample {
            prompt_index: 0,
            sample_index: 0,
            completion_ids: vec![1, 50],
            logprobs: vec![0.0, 0.0],
            finish_reason: aha_model::rollout::FinishReason::Length,
            timing: Default::default(),
        };
        let c = Completions { groups: vec![vec![s]], weight_version: None };
        check_ids("http://a", &c, 51).unwrap();
        assert!(check_ids("http://a", &c, 50).unwrap_err().to_string().contains("token id 50"));
    }

    #[test]
    fn prune_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        for s in [1, 2, 3] {
            std::fs::create_dir_all(d.path().join(format!("step-{s:06}"))).unwrap();
        }
        prune(d.path(), 2).unwrap();
        assert!(!d.path().join("step-000001").exists() && d.path().join("step-000003").exists());
    }
}
