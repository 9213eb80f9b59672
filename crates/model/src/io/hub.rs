//! Repo ids (`org/name`) resolved from the local Hugging Face cache, downloaded with `hf-hub`
//! when they are missing and a network may be used.
//!
//! The cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) is always
//! consulted first: a snapshot with `config.json`, its weights and `tokenizer.json` is used as
//! is, without touching the network. Otherwise, in a build with the `hub-download` feature of
//! aha-model (on by default in the `aha` binary), the files a model needs are fetched into the
//! standard cache layout (see [`super::hub_download`]): from `$HF_ENDPOINT` (default
//! `https://huggingface.co`) with `$HF_TOKEN` (else the token file `huggingface-cli login`
//! wrote) for private or gated repos. `HF_HUB_OFFLINE=1` (or `true`/`yes`/`on`) never touches
//! the network: a repo missing from the cache is then an error. Without the feature only the
//! cache is consulted; fill it beforehand with `huggingface-cli download ORG/NAME`.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use super::hf::{weight_files, CONFIG_JSON};
use crate::error::{ModelError, Result};
use crate::tokenizer::TOKENIZER_JSON;

/// The Hugging Face Hub, used when `$HF_ENDPOINT` is not set.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";

/// Where repo ids are looked up and, when allowed, downloaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache directory (`.../huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// The hub's base URL, without a trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// A bearer token for private or gated repos (`HF_TOKEN`).
    pub token: Option<String>,
    /// Print a progress line per downloaded file on stderr.
    pub progress: bool,
}

impl HubOptions {
    /// The options the environment describes: `HF_HUB_CACHE`/`HF_HOME`, `HF_HUB_OFFLINE`,
    /// `HF_ENDPOINT` and `HF_TOKEN` (else the token file of the cache's parent directory).
    pub fn from_env() -> Self {
        let cache = match std::env::var_os("HF_HUB_CACHE") {
            Some(p) => Cache::new(PathBuf::from(p)),
            None => Cache::from_env(),
        };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_HF_ENDPOINT.to_string());
        Self {
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| is_truthy(&v)),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: var("HF_TOKEN").or_else(|| cache.token()),
            cache_dir: cache.path().clone(),
            progress: true,
        }
    }
}

/// Whether an environment flag's value means "on" (`1`, `true`, `yes`, `on`; any case).
pub(crate) fn is_truthy(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// The snapshot directory of `repo_id` at `revision` (default `main`): from the local cache,
/// else downloaded when the build and the environment allow it (see the module docs).
pub fn resolve_hub_repo(repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    resolve_hub_repo_with(&HubOptions::from_env(), repo_id, revision)
}

/// Like [`resolve_hub_repo`] in an explicit cache directory (`.../huggingface/hub`), from the
/// cache only.
pub fn resolve_hub_repo_in(cache_dir: &Path, repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let cache = Cache::new(cache_dir.to_path_buf());
    cached_snapshot(&cache, repo_id, revision)?.ok_or_else(|| not_cached(&cache, repo_id, NotCached::CacheOnly))
}

/// Like [`resolve_hub_repo`] with explicit options instead of the environment's.
pub fn resolve_hub_repo_with(opts: &HubOptions, repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let cache = Cache::new(opts.cache_dir.clone());
    let cached = cached_snapshot(&cache, repo_id, revision)?;
    if let Some(dir) = &cached {
        if opts.offline || !cfg!(feature = "hub-download") || snapshot_complete(dir) {
            return Ok(dir.clone());
        }
    }
    if opts.offline {
        return Err(not_cached(&cache, repo_id, NotCached::Offline));
    }
    download(opts, repo_id, revision, &cache)
}

#[cfg(feature = "hub-download")]
fn download(opts: &HubOptions, repo_id: &str, revision: Option<&str>, _cache: &Cache) -> Result<PathBuf> {
    super::hub_download::download_snapshot(opts, repo_id, revision)
}

#[cfg(not(feature = "hub-download"))]
fn download(_opts: &HubOptions, repo_id: &str, _revision: Option<&str>, cache: &Cache) -> Result<PathBuf> {
    Err(not_cached(cache, repo_id, NotCached::NoDownloadFeature))
}

/// The cache's view of a repo at a revision (`main` by default).
pub(crate) fn hub_repo(repo_id: &str, revision: Option<&str>) -> Repo {
    Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.unwrap_or("main").to_string())
}

/// The cached snapshot directory holding `config.json`, if any.
pub(crate) fn cached_snapshot(cache: &Cache, repo_id: &str, revision: Option<&str>) -> Result<Option<PathBuf>> {
    let Some(config) = cache.repo(hub_repo(repo_id, revision)).get(CONFIG_JSON) else {
        return Ok(None);
    };
    config.parent().map(|p| Some(p.to_path_buf())).ok_or_else(|| ModelError::Resolve {
        spec: repo_id.to_string(),
        reason: format!("cached {} has no parent directory", config.display()),
    })
}

/// Whether a snapshot holds everything loading needs: `config.json`, `tokenizer.json` and the
/// weights (`model.safetensors`, or every shard its index names).
pub(crate) fn snapshot_complete(dir: &Path) -> bool {
    let weights_present = weight_files(dir).is_ok_and(|files| files.iter().all(|f| f.is_file()));
    weights_present && dir.join(CONFIG_JSON).is_file() && dir.join(TOKENIZER_JSON).is_file()
}

/// Why a repo could not come from the cache.
enum NotCached {
    /// An explicit cache directory was asked for.
    CacheOnly,
    /// `HF_HUB_OFFLINE` is set.
    Offline,
    /// aha was built without the `hub-download` feature.
    #[cfg(not(feature = "hub-download"))]
    NoDownloadFeature,
}

fn not_cached(cache: &Cache, repo_id: &str, why: NotCached) -> ModelError {
    let because = match why {
        NotCached::CacheOnly => "",
        NotCached::Offline => " and HF_HUB_OFFLINE is set, so aha does not download",
        #[cfg(not(feature = "hub-download"))]
        NotCached::NoDownloadFeature => " and this build cannot download (aha-model built without `hub-download`)",
    };
    ModelError::Resolve {
        spec: repo_id.to_string(),
        reason: format!(
            "not a local path, and not in the Hugging Face cache at {}{because}; run `huggingface-cli download {repo_id}` first",
            cache.path().display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_snapshot(cache_dir: &Path, files: &[&str]) -> PathBuf {
        let repo = cache_dir.join("models--org--tiny");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
        for f in files {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        snap
    }

    fn opts(cache_dir: &Path, offline: bool) -> HubOptions {
        HubOptions {
            cache_dir: cache_dir.to_path_buf(),
            offline,
            // Nothing listens on port 9 of the loopback: a request would fail, not hang.
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            progress: false,
        }
    }

    #[test]
    fn resolves_a_snapshot_from_the_cache_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = fake_snapshot(tmp.path(), &["config.json"]);
        assert_eq!(resolve_hub_repo_in(tmp.path(), "org/tiny", None).unwrap(), snap);
        let e = resolve_hub_repo_in(tmp.path(), "org/other", None).unwrap_err().to_string();
        assert!(e.contains("org/other") && e.contains("huggingface-cli download"), "{e}");
    }

    #[test]
    fn a_complete_snapshot_is_used_without_the_network() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = fake_snapshot(tmp.path(), &["config.json", "tokenizer.json", "model.safetensors"]);
        assert!(snapshot_complete(&snap));
        assert_eq!(resolve_hub_repo_with(&opts(tmp.path(), false), "org/tiny", None).unwrap(), snap);
    }

    #[test]
    fn offline_uses_an_incomplete_snapshot_and_refuses_a_missing_repo() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = fake_snapshot(tmp.path(), &["config.json"]);
        assert!(!snapshot_complete(&snap));
        assert_eq!(resolve_hub_repo_with(&opts(tmp.path(), true), "org/tiny", None).unwrap(), snap);
        let e = resolve_hub_repo_with(&opts(tmp.path(), true), "org/other", None).unwrap_err().to_string();
        assert!(e.contains("org/other") && e.contains("HF_HUB_OFFLINE") && e.contains("huggingface-cli"), "{e}");
    }

    #[test]
    fn a_sharded_snapshot_is_complete_only_with_every_shard() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = fake_snapshot(tmp.path(), &["config.json", "tokenizer.json"]);
        let index =
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        std::fs::write(snap.join("model.safetensors.index.json"), index).unwrap();
        std::fs::write(snap.join("model-00001-of-00002.safetensors"), "x").unwrap();
        assert!(!snapshot_complete(&snap));
        std::fs::write(snap.join("model-00002-of-00002.safetensors"), "x").unwrap();
        assert!(snapshot_complete(&snap));
    }

    #[test]
    fn offline_flags() {
        for v in ["1", "true", "TRUE", "yes", " on "] {
            assert!(is_truthy(v), "{v}");
        }
        for v in ["0", "false", "no", "", "off", "2"] {
            assert!(!is_truthy(v), "{v}");
        }
    }

    #[cfg(not(feature = "hub-download"))]
    #[test]
    fn without_the_feature_a_missing_repo_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let e = resolve_hub_repo_with(&opts(tmp.path(), false), "org/other", None).unwrap_err().to_string();
        assert!(e.contains("org/other") && e.contains("hub-download"), "{e}");
    }
}
