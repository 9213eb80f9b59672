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
    resolve_in(&cache, repo_id, revision)
}

/// Like [`resolve_hub_repo`] in an explicit cache directory (`.../huggingface/hub`).
pub fn resolve_hub_repo_in(cache_dir: &std::path::Path, repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    resolve_in(&Cache::new(cache_dir.to_path_buf()), repo_id, revision)
}

fn resolve_in(cache: &Cache, repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_a_snapshot_from_the_cache_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--tiny");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        assert_eq!(resolve_hub_repo_in(tmp.path(), "org/tiny", None).unwrap(), snap);
        let e = resolve_hub_repo_in(tmp.path(), "org/other", None).unwrap_err().to_string();
        assert!(e.contains("org/other") && e.contains("huggingface-cli download"), "{e}");
    }
}
