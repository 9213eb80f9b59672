//! Tests of the hub download against a mock Hugging Face Hub on the loopback: a tiny HTTP/1.1
//! server that answers what `hf-hub`'s blocking API asks (`GET .../resolve/REV/FILE` with a
//! `Range` header; `etag`/`x-linked-etag`, `x-repo-commit` and `content-range` in the answer;
//! weights redirected to a "CDN" path as the real hub does), serving a random-init tiny model.
//! No test touches the real network.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

use super::*;
use crate::io::{load_hf_dir, resolve_hub_repo_with};
use crate::tiny::{init_tiny, TinySpec};

const REPO: &str = "org/tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request the mock saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

/// A mock hub serving `files` of [`REPO`] at `main` (commit [`COMMIT`]).
struct MockHub {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl MockHub {
    fn serve(files: BTreeMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let base = endpoint.clone();
        // The thread ends with the test process; each connection carries one request.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, &files, &base, &log);
            }
        });
        Self { endpoint, seen }
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn opts(&self, cache_dir: &Path, offline: bool) -> HubOptions {
        HubOptions {
            cache_dir: cache_dir.to_path_buf(),
            offline,
            endpoint: self.endpoint.clone(),
            token: Some("hf_secret".into()),
            progress: true,
        }
    }
}

fn answer(stream: TcpStream, files: &BTreeMap<String, Vec<u8>>, base: &str, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
        authorization: headers.get("authorization").cloned(),
    });
    let resolve = format!("/{REPO}/resolve/main/");
    let (file, via_cdn) = match (path.strip_prefix(&resolve), path.strip_prefix("/cdn/")) {
        (Some(f), _) => (f, false),
        (_, Some(f)) => (f, true),
        _ => ("", false),
    };
    let mut out = stream;
    let Some(bytes) = files.get(file) else {
        let body = "Entry not found";
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        out.write_all(head.as_bytes()).unwrap();
        out.write_all(body.as_bytes()).unwrap();
        return;
    };
    let etag = format!("{:016x}{:08x}", fnv1a(bytes), bytes.len());
    if file.ends_with(".safetensors") && !via_cdn {
        // Large (LFS) files: the hub names the blob and redirects to its CDN.
        let head = format!(
            "HTTP/1.1 302 Found\r\nLocation: {base}/cdn/{file}\r\nX-Linked-Etag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\n\
             ETag: \"pointer\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        out.write_all(head.as_bytes()).unwrap();
        return;
    }
    let (start, end) = byte_range(range.as_deref(), bytes.len());
    let body = &bytes[start..=end];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{}\r\nETag: \"{etag}\"\r\n\
         X-Repo-Commit: {COMMIT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len(),
        body.len()
    );
    out.write_all(head.as_bytes()).unwrap();
    out.write_all(body).unwrap();
}

/// `bytes=a-b` or `bytes=a-` (inclusive), clamped to the file; the whole file without one.
fn byte_range(range: Option<&str>, len: usize) -> (usize, usize) {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return (0, len - 1);
    };
    let (a, b) = spec.split_once('-').unwrap();
    let start: usize = a.parse().unwrap();
    let end = if b.is_empty() { len - 1 } else { b.parse::<usize>().unwrap().min(len - 1) };
    (start, end)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Requests through a proxy would not reach the loopback mock (ureq ignores `NO_PROXY`).
fn proxied() -> bool {
    let set = ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    if set {
        eprintln!("skipped: a proxy is set in the environment, so the loopback mock hub is unreachable");
    }
    set
}

/// The files of a fresh tiny model directory, by name.
fn tiny_repo_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let spec = TinySpec { hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, ..TinySpec::default() };
    init_tiny(dir, &spec, 7).unwrap();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
    assert!(files.contains_key("model.safetensors") && files.contains_key("config.json"), "{:?}", files.keys());
    files
}

#[test]
fn downloads_a_tiny_model_then_uses_the_cache_alone() {
    if proxied() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = tiny_repo_files(&tmp.path().join("src"));
    let hub = MockHub::serve(files.clone());
    let cache_dir = tmp.path().join("hub");
    let opts = hub.opts(&cache_dir, false);

    let snap = resolve_hub_repo_with(&opts, REPO, None).unwrap();
    assert_eq!(snap, cache_dir.join("models--org--tiny").join("snapshots").join(COMMIT));
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(snap.join(name)).unwrap(), bytes, "{name}");
    }
    assert_eq!(std::fs::read_to_string(cache_dir.join("models--org--tiny/refs/main")).unwrap(), COMMIT);
    let seen = hub.requests();
    // The repo has no special_tokens_map.json: asked for, answered 404, and not an error.
    assert!(!snap.join(SPECIAL_TOKENS_MAP_JSON).exists());
    assert!(seen.iter().any(|r| r.path.ends_with(SPECIAL_TOKENS_MAP_JSON)), "{seen:?}");
    assert!(seen.iter().any(|r| r.path.starts_with("/cdn/") && r.range.as_deref() == Some("bytes=0-")), "{seen:?}");
    assert!(seen.iter().all(|r| r.authorization.as_deref() == Some("Bearer hf_secret")), "{seen:?}");

    let loaded = load_hf_dir(&snap, &crate::exec::ExecRequest::default()).unwrap();
    let original = load_hf_dir(&tmp.path().join("src"), &crate::exec::ExecRequest::default()).unwrap();
    assert_eq!(loaded.config, original.config);

    let again = resolve_hub_repo_with(&opts, REPO, None).unwrap();
    assert_eq!(again, snap);
    assert_eq!(hub.requests().len(), seen.len(), "a complete cached snapshot must not touch the hub");
}

#[test]
fn downloads_every_shard_of_a_sharded_checkpoint() {
    if proxied() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut files = tiny_repo_files(&src);
    files.remove("model.safetensors");
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, half) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", i + 1);
        let part: HashMap<String, Tensor> = half.iter().map(|n| ((*n).clone(), tensors[*n].clone())).collect();
        let path = tmp.path().join(&shard);
        candle_core::safetensors::save(&part, &path).unwrap();
        files.insert(shard.clone(), std::fs::read(&path).unwrap());
        for n in half {
            weight_map.insert((*n).clone(), shard.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    files.insert(SAFETENSORS_INDEX.into(), index.to_string().into_bytes());
    let hub = MockHub::serve(files);

    let snap = resolve_hub_repo_with(&hub.opts(&tmp.path().join("hub"), false), REPO, None).unwrap();
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", SAFETENSORS_INDEX] {
        assert!(snap.join(shard).is_file(), "{shard}");
    }
    assert!(!snap.join(SAFETENSORS_FILE).exists());
    let loaded = load_hf_dir(&snap, &crate::exec::ExecRequest::default()).unwrap();
    let original = load_hf_dir(&src, &crate::exec::ExecRequest::default()).unwrap();
    let (a, b) = (loaded.varmap.data().lock().unwrap(), original.varmap.data().lock().unwrap());
    assert_eq!(a.len(), b.len());
    for (name, var) in a.iter() {
        let diff = (var.as_tensor() - b[name].as_tensor()).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
}

#[test]
fn offline_never_touches_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = MockHub::serve(BTreeMap::new());
    let e = resolve_hub_repo_with(&hub.opts(&tmp.path().join("hub"), true), REPO, None).unwrap_err().to_string();
    assert!(e.contains(REPO) && e.contains("HF_HUB_OFFLINE"), "{e}");
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

#[test]
fn a_missing_config_names_the_repo_the_file_and_the_endpoint() {
    if proxied() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut files = tiny_repo_files(&tmp.path().join("src"));
    files.remove(CONFIG_JSON);
    let hub = MockHub::serve(files);
    let e = resolve_hub_repo_with(&hub.opts(&tmp.path().join("hub"), false), REPO, None).unwrap_err().to_string();
    for part in [REPO, CONFIG_JSON, hub.endpoint.as_str(), "404", "checked first", "HF_HUB_OFFLINE"] {
        assert!(e.contains(part), "`{part}` missing from: {e}");
    }
}

#[test]
fn a_missing_tokenizer_is_an_error_but_missing_optional_files_are_not() {
    if proxied() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut files = tiny_repo_files(&tmp.path().join("src"));
    for optional in OPTIONAL_FILES {
        files.remove(optional);
    }
    let hub = MockHub::serve(files.clone());
    let snap = resolve_hub_repo_with(&hub.opts(&tmp.path().join("hub"), false), REPO, None).unwrap();
    assert!(OPTIONAL_FILES.iter().all(|f| !snap.join(f).exists()));

    files.remove(TOKENIZER_JSON);
    let hub = MockHub::serve(files);
    let e = resolve_hub_repo_with(&hub.opts(&tmp.path().join("hub2"), false), REPO, None).unwrap_err().to_string();
    assert!(e.contains(REPO) && e.contains(TOKENIZER_JSON) && e.contains("404"), "{e}");
}

#[test]
fn an_unreachable_endpoint_is_a_clear_error() {
    if proxied() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A port that was just free: nothing listens there any more.
    let endpoint = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let opts =
        HubOptions { cache_dir: tmp.path().to_path_buf(), offline: false, endpoint, token: None, progress: false };
    let e = resolve_hub_repo_with(&opts, REPO, None).unwrap_err().to_string();
    for part in [REPO, CONFIG_JSON, opts.endpoint.as_str(), "checked first", "HF_HUB_OFFLINE=1"] {
        assert!(e.contains(part), "`{part}` missing from: {e}");
    }
}

#[test]
fn sizes_read_well() {
    assert_eq!(human_bytes(12), "12 B");
    assert_eq!(human_bytes(1_500), "1.5 KB");
    assert_eq!(human_bytes(2_340_000_000), "2.3 GB");
}
