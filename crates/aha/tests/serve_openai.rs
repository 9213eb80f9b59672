//! `aha serve` under the official `openai` Python client: a tiny model made with `aha init` is
//! served on a free port of 127.0.0.1, `scripts/openai_client_check.py` runs every check (models,
//! chat with and without streaming, completions with logprobs / n / token-id prompts, every error
//! case, weight reloads), then SIGTERM must drain the server and exit 0.
//!
//! Needs `fixtures-cache/py/bin/python` with `openai` (run `scripts/fetch-fixtures.sh`); skipped
//! with a note when it is missing, failing instead when `CI` is set.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{init_tiny, AHA};

/// The line `aha serve` prints to stderr once it accepts connections.
const READY: &str = "aha serve: listening on http://127.0.0.1:";
const MAX_BODY_BYTES: &str = "65536";
const MAX_TOKENS_LIMIT: &str = "256";

fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

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

/// Kills the server if the test ends before it has exited.
struct Server {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn init_model(dir: &Path) {
    init_tiny(dir, &["--heads", "2", "--kv-heads", "1", "--seed", "3"]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(config["chat_template"].is_string(), "aha init wrote no chat template");
}

/// Starts `aha serve` on port 0 and returns it with the port it printed.
fn start_server(model: &Path) -> (Server, u16) {
    let mut child = Command::new(AHA)
        .args(["serve", "--model", model.to_str().unwrap(), "--host", "127.0.0.1", "--port", "0"])
        .args([
            "--served-model-name",
            "tiny",
            "--max-body-bytes",
            MAX_BODY_BYTES,
            "--max-tokens-limit",
            MAX_TOKENS_LIMIT,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning aha serve");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(port) = line.strip_prefix(READY).and_then(|p| p.trim_end_matches('/').parse::<u16>().ok()) {
                let _ = tx.send(port);
            }
            sink.lock().unwrap().push(line);
        }
    });
    let server = Server { child, log };
    match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(port) => (server, port),
        Err(_) => panic!("aha serve printed no `{READY}PORT` line within 180 s; its stderr:\n{}", server.log()),
    }
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
    let (mut server, port) = start_server(&model);

    let script = repo_root().join("scripts/openai_client_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}"))
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
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: kill has no memory preconditions; `pid` is our live child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "sending SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "aha serve still running 60 s after SIGTERM:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "aha serve exit after SIGTERM: {status}; stderr:\n{}", server.log());
}
