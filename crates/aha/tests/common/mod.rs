//! Helpers shared by the `aha` CLI tests: running the built binary, making a tiny random model
//! with `aha init`, and serving one with `aha serve`. Each test file includes this with
//! `mod common;` and uses what it needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The built `aha` binary.
pub const AHA: &str = env!("CARGO_BIN_EXE_aha");

/// `aha ARGS`, whatever its exit status.
pub fn aha(args: &[&str]) -> Output {
    Command::new(AHA).args(args).output().unwrap()
}

/// `aha ARGS`, which must succeed.
pub fn ok(args: &[&str]) -> Output {
    let out = aha(args);
    assert!(out.status.success(), "aha {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `aha ARGS`, which must fail; its stderr.
pub fn err(args: &[&str]) -> String {
    let out = aha(args);
    assert!(!out.status.success(), "aha {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `aha init --out OUT --layers 1 --hidden-size 32 EXTRA…`: a tiny random model, which must be
/// made.
pub fn init_tiny(out: &Path, extra: &[&str]) {
    let mut args = vec!["init", "--out", out.to_str().unwrap(), "--layers", "1", "--hidden-size", "32"];
    args.extend_from_slice(extra);
    ok(&args);
}

/// `init_tiny` with a 64-wide MLP at `DIR/model`; that path.
pub fn init_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    init_tiny(&model, &["--intermediate-size", "64"]);
    model
}

/// The small arithmetic task of the pipeline tests.
pub const TASK: &str = "{ name = \"arithmetic\", min_operands = 2, max_operands = 3, max_value = 3 }";

/// A recipe's head: its output directory, a tiny `[init]` model and an `[eval]` of `limit`
/// questions of [`TASK`] (`extra`: more `[eval]` lines, each ending in a newline).
pub fn recipe_head(out: &Path, limit: usize, extra: &str) -> String {
    format!(
        "\noutput_dir = {out:?}\n[init]\nhidden_size = 32\nintermediate_size = 64\nmax_position_embeddings = 96\n\
         [eval]\n{extra}data = {{ task = {TASK}, limit = {limit}, template = \"raw\" }}\n\
         sampling = {{ k = 2, max_new_tokens = 8 }}\n"
    )
}

/// The pipeline tests' GRPO stage `rl` on 20 problems of [`TASK`], rewarded for accuracy and for
/// language consistency (which varies between a tiny model's samples, so the policy moves);
/// `grpo` and `run` are the fields of those tables.
pub fn rl_stage(grpo: &str, learning_rate: f64, run: &str) -> String {
    format!(
        "\n[[stages]]\nname = \"rl\"\nkind = \"grpo\"\ndata = {{ task = {TASK}, task_size = 20, template = \"raw\" }}\n\
         grpo = {{ {grpo} }}\noptim = {{ learning_rate = {learning_rate} }}\nrun = {{ {run} }}\n\
         [[stages.rewards]]\nname = \"accuracy\"\nkind = \"numeric\"\n\
         [[stages.rewards]]\nname = \"language\"\nkind = \"language\"\n"
    )
}

/// The pipeline tests' cold-start stage `cold`: SFT on 40 teacher traces of [`TASK`] with half
/// the steps slipped (`teacher_extra`: more teacher fields, each starting with ", "; `sft`: the
/// `[sft]` table's fields).
pub fn cold_stage(teacher_extra: &str, sft: &str) -> String {
    format!(
        "\n[[stages]]\nname = \"cold\"\nkind = \"sft\"\n\
         teacher = {{ task = {TASK}, size = 40, slip_rate = 0.5{teacher_extra} }}\n\
         data = {{ template = \"raw\" }}\nsft = {{ {sft} }}\noptim = {{ learning_rate = 1e-3 }}\n\
         run = {{ progress = false }}\n"
    )
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The metrics lines of a run directory that carry a `step` (the run header has none).
pub fn step_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("step").is_some())
        .collect()
}

/// The line `aha serve` prints to stderr once it accepts connections (then the port).
const SERVE_READY: &str = "aha serve: listening on http://127.0.0.1:";

/// An `aha serve` child started by [`serve`]; killed when dropped while still running.
pub struct Served {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM (the server drains and exits).
    pub fn sigterm(&self) {
        // SAFETY: kill has no memory preconditions; the pid is our live child.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) }, 0, "sending SIGTERM");
    }

    /// Waits up to 60 s for the server to exit; its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "aha serve still running 60 s after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `aha serve --model MODEL --port 0 --served-model-name tiny EXTRA…` on 127.0.0.1, once it has
/// printed its ready line (within `wait`); its stderr is echoed with a `[serve]` prefix.
pub fn serve(model: &Path, extra: &[&str], wait: Duration) -> Served {
    let mut child = Command::new(AHA)
        .args(["serve", "--model", model.to_str().unwrap(), "--port", "0", "--served-model-name", "tiny"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning aha serve");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[serve] {line}");
            if let Some(port) = line.strip_prefix(SERVE_READY).and_then(|p| p.trim().trim_end_matches('/').parse().ok())
            {
                let _ = tx.send(port);
            }
            sink.lock().unwrap().push(line);
        }
    });
    // Owned by `Served` at once, so a failure below still kills it.
    let mut server = Served { child, port: 0, log };
    match rx.recv_timeout(wait) {
        Ok(port) => server.port = port,
        Err(_) => {
            panic!("aha serve printed no `{SERVE_READY}PORT` line within {wait:?}; its stderr:\n{}", server.log())
        }
    }
    server
}
