//! Repo ids (`org/name`) resolved from the local Hugging Face cache with `hf-hub`.
//!
//! Only the cache is consulted (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`): aha never downloads at load time, so it works the same with or
//! without a network. Fill the cache beforehand with `huggingface-cli download ORG/NAME`.

use std::path::PathBuf;

use hf_hub::{Cache, Repo, RepoType};

use super::hf::CONFIG_JSON;
use crate::error::{ModelError, Result};

/// The snapshot directory of `repo_id` at `revision` (default `main`) in the local cache.
pub fn resolve_hub_repo(repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let cache = match std::env::var_os("HF_HUB_CACHE") {
        Some(p) => Cache::new(PathBuf::from(p)),
        None => Cache::from_env(),
    };
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.unwrap_or("main").to_string());
    let cached = cache.repo(repo).get(CONFIG_JSON);
    let Some(config) = cached else {
        return Err(ModelError::Resolve {
            spec: repo_id.to_string(),
            reason: format!(
                "not a local path, and not in the Hugging Face cache at {} (aha does not download; run `huggingface-cli download {repo_id}` first)",
                cache.path().display()
            ),
        });
    };
    config.parent().map(PathBuf::from).ok_or_else(|| ModelError::Resolve {
        spec: repo_id.to_string(),
        reason: format!("cached {} has no parent directory", config.display()),
    })
}
