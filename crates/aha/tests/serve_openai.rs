//! `aha serve` under the official `openai` Python client: a tiny model made with `aha init` is
//! served on a free port of 127.0.0.1, `scripts/openai_client_check.py` runs every check (models,
//! chat with and without streaming, completions with logprobs / n / token-id prompts, every error
//! case, weight reloads), then SIGTERM must drain the server and exit 0.
//!
//! Needs `fixtures-cache/py/bin/python` with `openai` (run `scripts/fetch-fixtures.sh`); skipped
//! with a note when it is missing, failing instead when `CI` is set.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{init_tiny, repo_root, serve};

const MAX_BODY_BYTES: &str = "65536";
const MAX_TOKENS_LIMIT: &str = "256";

/// The fixtures' Python with `openai` importable, if there is one.
fn openai_python() -> Result<PathBuf, String> {
    let base =
        std::env::var_os("AHA_FIXTURES").map(PathBuf::from).unwrap_or_else(|| repo_root().join("fixtures-cache"));
    let python = base.join("py/bin/python");
    if !python.is_file() {
        return Err(format!("{} missing", python.display()));
    }
    let probe = Command::new(&python).args(["-c", "import openai"]).output().map_err(|e| e.to_string())?;
    if !probe.status.success() {
        return Err(format!("{} cannot import openai: {}", python.display(), String::from_utf8_lossy(&probe.stderr)));
    }
    Ok(python)
}

fn init_model(dir: &Path) {
    init_tiny(dir, &["--heads", "2", "--kv-heads", "1", "--seed", "3"]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(config["chat_template"].is_string(), "aha init wrote no chat template");
}

#[test]
fn openai_python_client_against_aha_serve() {
    let python = match openai_python() {
        Ok(p) => p,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "the OpenAI Python client is missing ({why}): run scripts/fetch-fixtures.sh"
            );
            eprintln!("note: skipping the openai client test ({why}; run scripts/fetch-fixtures.sh)");
            return;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    init_model(&model);
    let limits = ["--host", "127.0.0.1", "--max-body-bytes", MAX_BODY_BYTES, "--max-tokens-limit", MAX_TOKENS_LIMIT];
    let mut server = serve(&model, &limits, Duration::from_secs(180));

    let script = repo_root().join("scripts/openai_client_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(server.url())
        .arg("tiny")
        .args(["--model-dir", model.to_str().unwrap(), "--max-body-bytes", MAX_BODY_BYTES])
        .args(["--max-tokens-limit", MAX_TOKENS_LIMIT])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai_client_check.py failed ({}):\n{stderr}\n{stdout}\n--- aha serve stderr ---\n{}",
        out.status,
        server.log()
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("the script prints one JSON summary");
    assert_eq!(summary["ok"], true, "{stdout}");
    assert_eq!(summary["failed"], 0, "{stdout}");

    // SIGTERM: the server drains and exits 0.
    server.sigterm();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "aha serve exit after SIGTERM: {status}; stderr:\n{}", server.log());
}
