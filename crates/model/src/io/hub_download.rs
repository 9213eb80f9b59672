//! Downloading a model repo into the Hugging Face cache with `hf-hub`'s blocking API (feature
//! `hub-download`); [`super::hub`] calls it only after the cache came up short and when
//! `HF_HUB_OFFLINE` is not set.
//!
//! Fetched, each only when the cache's snapshot lacks it: `config.json`; the weights
//! (`model.safetensors`, else `model.safetensors.index.json` and every shard it names);
//! `tokenizer.json`; and, when the repo has them, `tokenizer_config.json`,
//! `generation_config.json`, `special_tokens_map.json` and `chat_template.jinja` (a 404 for
//! one of those is not an error). Files land in the standard layout (`blobs/`, `snapshots/`,
//! `refs/`), so `huggingface-cli` and `transformers` share them. Each file gets a progress line
//! on stderr. Failures name the repo, the file and the endpoint.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::api::Progress;
use hf_hub::{Cache, CacheRepo};

use super::hf::{weight_files, CONFIG_JSON, SAFETENSORS_FILE, SAFETENSORS_INDEX};
use super::hub::{cached_snapshot, hub_repo, snapshot_complete, HubOptions};
use crate::error::{ModelError, Result};
use crate::tokenizer::{CHAT_TEMPLATE_JINJA, GENERATION_CONFIG_JSON, TOKENIZER_CONFIG_JSON, TOKENIZER_JSON};

/// The `transformers` file of a tokenizer's special tokens (aha reads them from
/// `tokenizer_config.json`, but keeps the repo's copy with the rest).
const SPECIAL_TOKENS_MAP_JSON: &str = "special_tokens_map.json";

/// Files fetched when the repo has them.
const OPTIONAL_FILES: [&str; 4] =
    [TOKENIZER_CONFIG_JSON, GENERATION_CONFIG_JSON, SPECIAL_TOKENS_MAP_JSON, CHAT_TEMPLATE_JINJA];

/// Downloads what `repo_id` at `revision` needs into the cache and returns its snapshot dir.
pub(crate) fn download_snapshot(opts: &HubOptions, repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let fetcher = Fetcher::new(opts, repo_id, revision)?;
    // A branch that moves during the download leaves the files of one pass in two snapshots;
    // the second pass completes the newer one.
    for _ in 0..2 {
        fetcher.fetch_all()?;
        if let Some(dir) = cached_snapshot(&fetcher.cache, repo_id, revision)? {
            if snapshot_complete(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(ModelError::Resolve {
        spec: repo_id.to_string(),
        reason: format!("downloaded from {}, but the cached snapshot is still incomplete", opts.endpoint),
    })
}

/// One repo's files: from the cache when there, else from the hub.
struct Fetcher<'a> {
    opts: &'a HubOptions,
    repo_id: &'a str,
    revision: &'a str,
    cache: Cache,
    cached: CacheRepo,
    api: ApiRepo,
}

impl<'a> Fetcher<'a> {
    fn new(opts: &'a HubOptions, repo_id: &'a str, revision: Option<&'a str>) -> Result<Self> {
        let cache = Cache::new(opts.cache_dir.clone());
        let api = ApiBuilder::from_cache(cache.clone())
            .with_endpoint(opts.endpoint.clone())
            .with_token(opts.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| ModelError::Resolve {
                spec: repo_id.to_string(),
                reason: format!("cannot set up the Hugging Face Hub client: {e}"),
            })?;
        let repo = hub_repo(repo_id, revision);
        Ok(Self {
            opts,
            repo_id,
            revision: revision.unwrap_or("main"),
            cached: cache.repo(repo.clone()),
            api: api.repo(repo),
            cache,
        })
    }

    /// Fetches every file the model needs (see the module docs).
    fn fetch_all(&self) -> Result<()> {
        self.required(CONFIG_JSON)?;
        if self.optional(SAFETENSORS_FILE)?.is_none() {
            let index = self.required(SAFETENSORS_INDEX)?;
            for shard in shard_names(&index)? {
                self.required(&shard)?;
            }
        }
        self.required(TOKENIZER_JSON)?;
        for file in OPTIONAL_FILES {
            self.optional(file)?;
        }
        Ok(())
    }

    /// The cached path of `file`, downloaded first when absent.
    fn required(&self, file: &str) -> Result<PathBuf> {
        self.get(file).map_err(|e| self.failure(file, &e))
    }

    /// Like [`Self::required`], with `None` when the repo does not have `file`.
    fn optional(&self, file: &str) -> Result<Option<PathBuf>> {
        match self.get(file) {
            Ok(path) => Ok(Some(path)),
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.failure(file, &e)),
        }
    }

    fn get(&self, file: &str) -> std::result::Result<PathBuf, ApiError> {
        if let Some(path) = self.cached.get(file) {
            return Ok(path);
        }
        let progress = StderrProgress::new(self.opts.progress, format!("{}/{file}", self.repo_id));
        self.api.download_with_progress(file, progress)
    }

    /// The error for a failed download of `file`, saying what was tried and how to avoid it.
    fn failure(&self, file: &str, e: &ApiError) -> ModelError {
        let (repo, rev, endpoint) = (self.repo_id, self.revision, &self.opts.endpoint);
        let what = match http_status(e) {
            Some(404) if file == SAFETENSORS_INDEX => format!(
                "{repo} has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX} at revision {rev} on {endpoint} (HTTP 404)"
            ),
            Some(404) => format!("{repo} has no {file} at revision {rev} on {endpoint} (HTTP 404)"),
            Some(code @ (401 | 403)) => format!(
                "HTTP {code} for {file} of {repo} from {endpoint}: the repo does not exist at revision {rev}, \
                 or it is private or gated (set HF_TOKEN to a token with access)"
            ),
            _ => format!("could not download {file} of {repo} (revision {rev}) from {endpoint}: {e}"),
        };
        ModelError::Resolve {
            spec: repo.to_string(),
            reason: format!(
                "{what}. The Hugging Face cache at {} was checked first; to work without a network, fill it \
                 with `huggingface-cli download {repo}` and set HF_HUB_OFFLINE=1",
                self.cache.path().display()
            ),
        }
    }
}

/// The shard file names a cached index lists, relative to its snapshot directory.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let names = weight_files(dir)?
        .iter()
        .filter_map(|f| f.strip_prefix(dir).ok())
        .map(|f| f.to_string_lossy().replace('\\', "/"))
        .collect();
    Ok(names)
}

/// The HTTP status of a failed request, if the server answered.
fn http_status(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::RequestError(e) => match e.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            ureq::Error::Transport(_) => None,
        },
        ApiError::TooManyRetries(inner) => http_status(inner),
        _ => None,
    }
}

/// One line per downloaded file on stderr: its name and size, then its percentage (in place,
/// on a terminal) and `done`.
struct StderrProgress {
    enabled: bool,
    tty: bool,
    label: String,
    total: usize,
    done: usize,
    shown_tenths: usize,
    started: bool,
}

impl StderrProgress {
    fn new(enabled: bool, label: String) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self { enabled, tty, label, total: 0, done: 0, shown_tenths: 0, started: false }
    }

    fn head(&self) -> String {
        format!("aha: downloading {} ({})", self.label, human_bytes(self.total))
    }
}

impl Progress for StderrProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size;
        self.done = 0;
        if self.enabled && !self.started {
            self.started = true;
            if self.tty {
                eprint!("{}", self.head());
            } else {
                eprintln!("{}", self.head());
            }
        }
    }

    fn update(&mut self, size: usize) {
        self.done += size;
        let tenths = (self.done.saturating_mul(10)).checked_div(self.total).unwrap_or(10);
        if self.enabled && self.tty && tenths > self.shown_tenths {
            self.shown_tenths = tenths;
            eprint!("\r{} {:>3}%", self.head(), tenths * 10);
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&mut self) {
        if self.enabled && self.tty {
            eprintln!("\r{} done", self.head());
        }
    }
}

/// `n` bytes in B, KB, MB or GB (powers of 1000, one decimal).
fn human_bytes(n: usize) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
#[path = "hub_download_tests.rs"]
mod tests;
