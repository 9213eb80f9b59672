//! The `[rollout]` table: where GRPO's completions come from (in process, or OpenAI-compatible
//! inference servers), how weights reach those servers, and how far their weights may lag.
//!
//! Every field documents its default; [`RolloutSettings::validate`] checks them once, before
//! any work, with messages that name the field (`rollout.<field>`).

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Which engine samples the completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// The trainer's own model, in process (default).
    #[default]
    Local,
    /// OpenAI-compatible servers (`aha serve`, vLLM, SGLang) at `rollout.urls`.
    Openai,
}

/// Which server dialect: decides the weight-reload endpoint and the request extensions sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `aha serve` (default): `POST /update_weights_from_disk` with a full model or a PEFT
    /// adapter directory; requests carry `seed` and `prompt_index_offset`, so with the same
    /// weights the server draws the in-process rollout's tokens.
    #[default]
    Aha,
    /// SGLang: `POST /update_weights_from_disk` with a full model directory (a LoRA policy is
    /// saved merged). No seed is sent (SGLang would give every sample of a request one stream).
    Sglang,
    /// vLLM: LoRA only, `POST /v1/load_lora_adapter` with `load_inplace` (the server needs
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1` and `--enable-lora`); requests name the adapter.
    /// vLLM has no stable HTTP endpoint to reload full weights, so full fine-tuning is refused.
    Vllm,
}

/// The `[rollout]` table of `aha grpo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSettings {
    /// `"local"` or `"openai"`. Default local.
    pub engine: Engine,
    /// Base URLs of the servers (`http://host:port`, no path). A round's prompts are split into
    /// contiguous chunks, one request per server. Required for `openai`. Default none.
    pub urls: Vec<String>,
    /// `"aha"`, `"sglang"` or `"vllm"`. Default aha.
    pub api: Api,
    /// The model name sent in requests. Default: the first id `GET /v1/models` lists, else
    /// `"default"`. Ignored with vLLM, whose requests name the adapter (`lora_name`).
    pub model: Option<String>,
    /// The adapter name registered with vLLM (`api = "vllm"` only). Default `"aha-policy"`.
    pub lora_name: String,
    /// Push the policy's weights to the servers every K trainer steps (always once before the
    /// first rollout, so servers serve the trainer's weights after a start or a resume).
    /// Default 1.
    pub sync_every: usize,
    /// Most prompts in one request: a server's chunk is sent as several concurrent requests
    /// when larger (`aha serve` refuses a request of more than `--max-batch-rows` prompts × n
    /// rows). 0: one request per server. Default 0.
    pub max_prompts_per_request: usize,
    /// Seconds one HTTP request may take (connect, send, answer). Default 120.
    pub timeout_s: f64,
    /// Retries of a request that could not connect or got a 5xx answer (with backoff 0.5 s,
    /// 1 s, 2 s, ...; other failures are not retried). Default 2.
    pub retries: usize,
    /// Cap C of the truncated importance weight min(π_trainer / π_engine, C) applied per token
    /// to the loss (TRL's `vllm_importance_sampling_correction`); 0 disables the correction
    /// (the statistics are still logged). Default 3.0.
    pub is_cap: f64,
    /// Steps the rollout weights may lag the policy. 0: strictly on-policy, rollouts requested
    /// when the step begins. S > 0: the next step's rollouts are requested in the background
    /// while this step trains (one step stale, more with `sync_every` > 1); must be at least
    /// `sync_every`. Default 0.
    pub max_staleness: usize,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        Self {
            engine: Engine::Local,
            urls: Vec::new(),
            api: Api::Aha,
            model: None,
            lora_name: "aha-policy".into(),
            sync_every: 1,
            max_prompts_per_request: 0,
            timeout_s: 120.0,
            retries: 2,
            is_cap: 3.0,
            max_staleness: 0,
        }
    }
}

fn bad<T>(msg: String) -> Result<T> {
    Err(TrainError::Config(msg))
}

impl RolloutSettings {
    /// Whether completions come from servers.
    pub fn is_remote(&self) -> bool {
        self.engine == Engine::Openai
    }

    /// Checks every field; `lora` says whether the trained policy is a LoRA adapter.
    pub fn validate(&self, lora: bool) -> Result<()> {
        if !self.is_remote() {
            return Ok(());
        }
        self.validate_urls()?;
        if self.sync_every == 0 {
            return bad("rollout.sync_every must be >= 1".into());
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return bad(format!("rollout.timeout_s must be a finite number of seconds > 0, got {}", self.timeout_s));
        }
        if !(self.is_cap == 0.0 || (self.is_cap.is_finite() && self.is_cap >= 1.0)) {
            return bad(format!("rollout.is_cap must be 0 (no correction) or a finite cap >= 1, got {}", self.is_cap));
        }
        if self.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return bad("rollout.model must not be empty (leave it out to ask the server)".into());
        }
        self.validate_staleness()?;
        self.validate_api(lora)
    }

    fn validate_urls(&self) -> Result<()> {
        if self.urls.is_empty() {
            return bad("rollout.urls must list at least one server when rollout.engine = \"openai\"".into());
        }
        for (i, url) in self.urls.iter().enumerate() {
            let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.trim_end_matches('/').is_empty() || r.contains(char::is_whitespace)) {
                return bad(format!("rollout.urls[{i}] `{url}` is not an http:// or https:// base URL"));
            }
            if self.urls[..i].iter().any(|u| u.trim_end_matches('/') == url.trim_end_matches('/')) {
                return bad(format!("rollout.urls[{i}] `{url}` is listed twice"));
            }
        }
        Ok(())
    }

    fn validate_staleness(&self) -> Result<()> {
        let (k, s) = (self.sync_every, self.max_staleness);
        if s == 0 && k > 1 {
            return bad(format!(
                "rollout.sync_every = {k} lets rollouts lag the policy by up to {} step(s), which \
                 rollout.max_staleness = 0 forbids: set sync_every = 1, or max_staleness >= {k} \
                 (rollouts are then also requested one step ahead)",
                k - 1
            ));
        }
        if s > 0 && s < k {
            return bad(format!(
                "rollout.max_staleness = {s} is below rollout.sync_every = {k}: rollouts requested one step \
                 ahead with weights pushed every {k} steps can be {k} steps old"
            ));
        }
        Ok(())
    }

    fn validate_api(&self, lora: bool) -> Result<()> {
        if self.api == Api::Vllm && !lora {
            return bad("rollout.api = \"vllm\" can only reload LoRA adapters (/v1/load_lora_adapter): vLLM has no \
                 stable HTTP endpoint to reload full weights. Train with [lora], or use api = \"sglang\" or \"aha\""
                .into());
        }
        if self.api == Api::Vllm && self.lora_name.trim().is_empty() {
            return bad("rollout.lora_name must not be empty with api = \"vllm\"".into());
        }
        Ok(())
    }

    /// The request timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> RolloutSettings {
        RolloutSettings { engine: Engine::Openai, urls: vec!["http://127.0.0.1:8000".into()], ..Default::default() }
    }

    fn err(s: &RolloutSettings, lora: bool) -> String {
        s.validate(lora).unwrap_err().to_string()
    }

    #[test]
    fn local_is_the_default_and_always_valid() {
        let s = RolloutSettings::default();
        assert!(!s.is_remote());
        assert_eq!((s.sync_every, s.retries, s.is_cap, s.max_staleness, s.timeout_s), (1, 2, 3.0, 0, 120.0));
        s.validate(false).unwrap();
        remote().validate(false).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(RolloutSettings, &str)> = vec![
            (RolloutSettings { urls: vec![], ..remote() }, "rollout.urls"),
            (RolloutSettings { urls: vec!["127.0.0.1:8000".into()], ..remote() }, "rollout.urls[0]"),
            (RolloutSettings { urls: vec!["http://a:1".into(), "http://a:1/".into()], ..remote() }, "twice"),
            (RolloutSettings { sync_every: 0, ..remote() }, "rollout.sync_every"),
            (RolloutSettings { timeout_s: 0.0, ..remote() }, "rollout.timeout_s"),
            (RolloutSettings { timeout_s: f64::NAN, ..remote() }, "rollout.timeout_s"),
            (RolloutSettings { is_cap: 0.5, ..remote() }, "rollout.is_cap"),
            (RolloutSettings { is_cap: -1.0, ..remote() }, "rollout.is_cap"),
            (RolloutSettings { model: Some(" ".into()), ..remote() }, "rollout.model"),
            (RolloutSettings { sync_every: 2, ..remote() }, "rollout.max_staleness = 0"),
            (RolloutSettings { sync_every: 3, max_staleness: 2, ..remote() }, "rollout.max_staleness = 2"),
        ];
        for (s, needle) in cases {
            let e = err(&s, false);
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn vllm_needs_lora() {
        let s = RolloutSettings { api: Api::Vllm, ..remote() };
        assert!(err(&s, false).contains("rollout.api = \"vllm\""));
        s.validate(true).unwrap();
    }

    #[test]
    fn staleness_at_least_sync_every_is_accepted() {
        RolloutSettings { sync_every: 2, max_staleness: 2, ..remote() }.validate(false).unwrap();
        RolloutSettings { max_staleness: 1, is_cap: 0.0, ..remote() }.validate(false).unwrap();
    }
}
