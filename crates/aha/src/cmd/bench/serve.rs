//! `aha bench serve`: a bounded load test of `aha serve`.
//!
//! The server runs as a child process of this same binary (`aha serve --port 0` on 127.0.0.1)
//! with a given model directory, or by default a tiny random model made here (config A's shape
//! with the byte-level tokenizer of `aha init`). Fixed-shape requests go to `/v1/completions`:
//! random token-id prompts of `--prompt-len` tokens, `max_tokens` = `--max-tokens` with
//! `ignore_eos`, temperature 1, request `i` seeded as prompt `i` of one rollout
//! (`seed`, `prompt_index_offset = i`).
//!
//! Three measurements of the same requests:
//! 1. concurrent: `--concurrency` client threads (blocking HTTP), so continuous batching keeps
//!    that many rows decoding; errors, completion tokens/s, requests/s, p50/p99 latency;
//! 2. sequential: one request at a time; continuous batching must be ≥ 3× faster;
//! 3. the in-process `aha_model::rollout` on the same prompts and lengths in batches of
//!    `--rollout-batch` rows (wanted: the server reaches ≥ 0.8× of it), which also checks that the
//!    server sampled exactly the rollout's tokens.
//!
//! The server's peak RSS is its `VmHWM`, read before it is stopped with SIGTERM (it must exit 0).
//! A table with the CPU line goes to stdout and the result as JSON to `--out`; `--check` makes a
//! missed target (errors, batching < 3×, server < 0.8× rollout, exit ≠ 0) a failing exit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use aha_model::rollout::{rollout, RolloutConfig};
use aha_model::{init_tiny, load_model, Arch, ExecRequest, ModelSpec, SamplingParams, TinySpec};
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::cpu::CpuInfo;

/// Options of `aha bench serve`.
#[derive(clap::Args, Debug)]
pub struct ServeOpts {
    /// Model directory to serve (Hugging Face layout); default: a tiny random model (config A's
    /// shape, byte-level tokenizer) made in a temporary directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Requests per measurement.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Client threads of the concurrent measurement.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Completion tokens of every request (`ignore_eos`, so every completion has this length).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Prompt length in tokens (random ids).
    #[arg(long, default_value_t = 16)]
    prompt_len: usize,
    /// Rows per call of the in-process rollout.
    #[arg(long, default_value_t = 32)]
    rollout_batch: usize,
    /// Seed of the prompts and of the samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the result as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit non-zero when a target is missed (any error, batching < 3×, server < 0.8× rollout,
    /// server exit ≠ 0 on SIGTERM).
    #[arg(long)]
    check: bool,
}

/// Continuous batching over one-at-a-time, tokens/s: the requirement.
const BATCHING_TARGET: f64 = 3.0;
/// Server (concurrent) over the in-process rollout, tokens/s: the goal.
const ROLLOUT_TARGET: f64 = 0.8;
/// The line `aha serve` prints to stderr once it accepts connections.
const READY: &str = "aha serve: listening on http://127.0.0.1:";
/// The name the benchmark serves the model under.
const SERVED_NAME: &str = "bench";

/// Runs `aha bench serve`.
pub fn run(o: ServeOpts) -> Result<()> {
    if o.requests == 0 || o.concurrency == 0 || o.max_tokens == 0 || o.prompt_len == 0 || o.rollout_batch == 0 {
        bail!("--requests, --concurrency, --max-tokens, --prompt-len and --rollout-batch must be ≥ 1");
    }
    let cpu = CpuInfo::detect();
    println!("{}", cpu.header());
    println!(
        "threads: {} ({}) | allocator: {}",
        candle_core::utils::get_num_threads(),
        crate::threads::describe(),
        crate::alloc::describe()
    );
    if cfg!(debug_assertions) {
        println!("note: a debug build; measure with `cargo run --release -- bench serve`");
    }
    let tmp = tempfile::Builder::new().prefix("aha-bench-serve-").tempdir().context("making a temporary directory")?;
    let dir = match &o.model {
        Some(d) => d.clone(),
        None => {
            let d = tmp.path().join("model");
            init_tiny(&d, &default_spec(), o.seed).context("making the tiny model")?;
            d
        }
    };
    let lm = load_model(&ModelSpec::HfDir(dir.clone()), &ExecRequest::default())
        .with_context(|| format!("loading {}", dir.display()))?;
    let params: usize = lm.model.named_parameters().iter().map(|(_, t)| t.elem_count()).sum();
    if o.prompt_len + o.max_tokens > lm.config.max_position_embeddings {
        bail!(
            "--prompt-len {} + --max-tokens {} exceed the model's context ({})",
            o.prompt_len,
            o.max_tokens,
            lm.config.max_position_embeddings
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let vocab = lm.config.vocab_size as u32;
    let prompts: Vec<Vec<u32>> =
        (0..o.requests).map(|_| (0..o.prompt_len).map(|_| rng.random_range(0..vocab)).collect()).collect();
    println!(
        "model: {} ({:?}, {params} parameters, vocab {vocab}) | {} requests × ({} prompt + {} completion tokens), ignore_eos, temperature 1",
        dir.display(),
        lm.config.arch,
        o.requests,
        o.prompt_len,
        o.max_tokens
    );

    // Server: concurrent, then sequential, then its peak RSS and a clean SIGTERM exit.
    let mut server = Server::start(&dir, o.concurrency, o.requests)?;
    let client = Client::new(server.port, o.max_tokens, o.seed);
    for (i, prompt) in prompts.iter().enumerate().take(2) {
        client.complete(prompt, i).with_context(|| format!("warm-up request; server stderr:\n{}", server.log()))?;
    }
    let concurrent = run_concurrent(&client, &prompts, o.concurrency);
    let sequential = run_concurrent(&client, &prompts, 1);
    let rss_mib = server.peak_rss_mib();
    let exit_code = server.terminate()?;

    // The in-process rollout on the same prompts, same lengths, same sample streams.
    let cfg = RolloutConfig {
        group_size: 1,
        max_new_tokens: o.max_tokens,
        sampling: SamplingParams::default(),
        eos_ids: Vec::new(),
        seed: o.seed,
        ..Default::default()
    };
    rollout(
        &lm.model,
        &prompts[..o.rollout_batch.min(prompts.len())],
        &RolloutConfig { max_new_tokens: 2, ..cfg.clone() },
        None,
    )?;
    let start = Instant::now();
    let mut rollout_ids = Vec::with_capacity(prompts.len());
    for (k, batch) in prompts.chunks(o.rollout_batch).enumerate() {
        let cfg = RolloutConfig { prompt_index_offset: (k * o.rollout_batch) as u64, ..cfg.clone() };
        for group in rollout(&lm.model, batch, &cfg, None)? {
            rollout_ids.push(group.into_iter().next().map(|s| s.completion_ids).unwrap_or_default());
        }
    }
    let rollout_s = start.elapsed().as_secs_f64();
    let rollout_tokens: usize = rollout_ids.iter().map(Vec::len).sum();
    let identical = concurrent
        .outcomes
        .iter()
        .zip(&rollout_ids)
        .filter(|(r, ids)| r.as_ref().is_ok_and(|r| &r.ids == *ids))
        .count();

    let (c, s) = (concurrent.summary(), sequential.summary());
    let rollout_tok_s = rollout_tokens as f64 / rollout_s;
    let batching = c.tok_s / s.tok_s;
    let vs_rollout = c.tok_s / rollout_tok_s;
    println!();
    println!(
        "{:<34} {:>8} {:>6} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8}",
        "phase", "requests", "errors", "tokens", "wall s", "tok/s", "req/s", "p50 ms", "p99 ms"
    );
    c.print_row(&format!("aha serve, {} concurrent", o.concurrency));
    s.print_row("aha serve, sequential");
    println!(
        "{:<34} {:>8} {:>6} {:>8} {:>8.2} {:>9.0} {:>7.1} {:>8} {:>8}",
        format!("rollout in-process, batch {}", o.rollout_batch),
        rollout_ids.len(),
        "-",
        rollout_tokens,
        rollout_s,
        rollout_tok_s,
        rollout_ids.len() as f64 / rollout_s,
        "-",
        "-"
    );
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!();
    println!(
        "continuous batching: {batching:.2}× one-at-a-time (target ≥ {BATCHING_TARGET}×: {})",
        verdict(batching >= BATCHING_TARGET)
    );
    println!(
        "server vs in-process rollout: {vs_rollout:.2}× (target ≥ {ROLLOUT_TARGET}×: {})",
        verdict(vs_rollout >= ROLLOUT_TARGET)
    );
    println!("server peak RSS (VmHWM): {rss_mib:.0} MiB | exit after SIGTERM: {exit_code:?}");
    println!("completions identical to the rollout's (same seed and stream): {identical}/{}", prompts.len());
    if let Some(e) = concurrent.first_error().or(sequential.first_error()) {
        println!("first error: {e}");
    }

    let errors = c.errors + s.errors;
    let result = json!({
        "benchmark": "serve",
        "cpu": cpu.model, "cpu_isa": cpu.isa, "cpu_peak": cpu.peak_description(), "decode_kernel": aha_model::cpu::simd().name(),
        "threads": candle_core::utils::get_num_threads(), "debug_build": cfg!(debug_assertions),
        "model": dir.display().to_string(), "default_model": o.model.is_none(), "arch": format!("{:?}", lm.config.arch),
        "parameters": params, "vocab": vocab,
        "requests": o.requests, "concurrency": o.concurrency, "prompt_len": o.prompt_len,
        "max_tokens": o.max_tokens, "rollout_batch": o.rollout_batch, "seed": o.seed,
        "concurrent": c.json(), "sequential": s.json(),
        "rollout": {"requests": rollout_ids.len(), "completion_tokens": rollout_tokens, "seconds": rollout_s,
                    "tokens_per_s": rollout_tok_s, "requests_per_s": rollout_ids.len() as f64 / rollout_s},
        "batching_speedup": batching, "batching_target": BATCHING_TARGET,
        "server_vs_rollout": vs_rollout, "server_vs_rollout_target": ROLLOUT_TARGET,
        "server_peak_rss_mib": rss_mib, "server_exit_code": exit_code,
        "identical_to_rollout": identical, "errors": errors,
        "first_error": concurrent.first_error().or(sequential.first_error()),
    });
    if let Some(path) = &o.out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if o.check {
        let mut missed = Vec::new();
        if errors > 0 {
            missed.push(format!("{errors} failed requests"));
        }
        if batching < BATCHING_TARGET {
            missed.push(format!("continuous batching {batching:.2}× < {BATCHING_TARGET}×"));
        }
        if vs_rollout < ROLLOUT_TARGET {
            missed.push(format!("server {vs_rollout:.2}× of the rollout < {ROLLOUT_TARGET}×"));
        }
        if exit_code != Some(0) {
            missed.push(format!("server exit {exit_code:?} after SIGTERM"));
        }
        if !missed.is_empty() {
            bail!("targets missed: {}", missed.join("; "));
        }
    }
    Ok(())
}

/// Config A's shape (`aha bench rollout`) on the byte-level tokenizer of `aha init`.
fn default_spec() -> TinySpec {
    TinySpec {
        arch: Arch::Qwen2,
        hidden_size: 256,
        intermediate_size: 768,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 1024,
        rope_theta: 10_000.0,
        tie_word_embeddings: true,
    }
}

/// `aha serve` as a child process; killed if still running when dropped.
struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `aha serve` on a free port and waits for its ready line.
    fn start(model: &Path, concurrency: usize, requests: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the aha binary")?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", "0", "--served-model-name", SERVED_NAME])
            .args(["--max-batch-rows", &concurrency.max(64).to_string()])
            .args(["--max-queued", &requests.max(256).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting aha serve")?;
        let stderr = child.stderr.take().context("aha serve's stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        // Reads stderr to the end (the server must never block on a full pipe), keeping the
        // last lines for error messages.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if let Some(port) = line.strip_prefix(READY).and_then(|p| p.trim_end_matches('/').parse::<u16>().ok()) {
                    let _ = tx.send(port);
                }
                if let Ok(mut log) = sink.lock() {
                    if log.len() >= 200 {
                        log.remove(0);
                    }
                    log.push(line);
                }
            }
        });
        let mut server = Self { child, port: 0, log };
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(port) => server.port = port,
            Err(_) => bail!("aha serve did not print `{READY}PORT` within 300 s; stderr:\n{}", server.log()),
        }
        Ok(server)
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Peak resident set size (`VmHWM`) of the server process, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        super::vm_hwm_mib(&self.child.id().to_string())
    }

    /// Sends SIGTERM and waits (up to 60 s) for the exit code.
    fn terminate(&mut self) -> Result<Option<i32>> {
        let pid = libc::pid_t::try_from(self.child.id()).context("server pid")?;
        // SAFETY: kill has no memory preconditions; `pid` is our own live child.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!("SIGTERM to aha serve: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("aha serve still running 60 s after SIGTERM; stderr:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// Blocking HTTP to the server's `/v1/completions`.
struct Client {
    agent: ureq::Agent,
    url: String,
    max_tokens: usize,
    seed: u64,
}

/// One answered request.
struct Answer {
    ids: Vec<u32>,
    latency: Duration,
}

impl Client {
    fn new(port: u16, max_tokens: usize, seed: u64) -> Self {
        let agent =
            ureq::AgentBuilder::new().timeout(Duration::from_secs(600)).max_idle_connections_per_host(256).build();
        Self { agent, url: format!("http://127.0.0.1:{port}/v1/completions"), max_tokens, seed }
    }

    /// Sends request `index` (prompt `prompt`, sample stream `index` of the seed).
    fn complete(&self, prompt: &[u32], index: usize) -> Result<Answer> {
        let body = json!({
            "model": SERVED_NAME, "prompt": prompt, "max_tokens": self.max_tokens, "temperature": 1.0,
            "seed": self.seed, "prompt_index_offset": index, "ignore_eos": true,
        })
        .to_string();
        let start = Instant::now();
        let text = match self.agent.post(&self.url).set("Content-Type", "application/json").send_string(&body) {
            Ok(resp) => resp.into_string()?,
            Err(ureq::Error::Status(code, resp)) => {
                bail!("HTTP {code}: {}", resp.into_string().unwrap_or_default())
            }
            Err(e) => bail!("{e}"),
        };
        let latency = start.elapsed();
        let v: Value = serde_json::from_str(&text).with_context(|| format!("response is not JSON: {text:.200}"))?;
        let choice = &v["choices"][0];
        let ids: Vec<u32> = serde_json::from_value(choice["token_ids"].clone())
            .with_context(|| format!("no choices[0].token_ids in {text:.300}"))?;
        let usage = v["usage"]["completion_tokens"].as_u64();
        if ids.len() != self.max_tokens || usage != Some(ids.len() as u64) {
            bail!(
                "completion of {} tokens (usage {usage:?}), wanted {} (finish_reason {})",
                ids.len(),
                self.max_tokens,
                choice["finish_reason"]
            );
        }
        Ok(Answer { ids, latency })
    }
}

/// The requests of one measurement, in prompt order, and its wall time.
struct Run {
    outcomes: Vec<Result<Answer, String>>,
    seconds: f64,
}

/// Sends every prompt from `threads` client threads; each takes the next unsent prompt.
fn run_concurrent(client: &Client, prompts: &[Vec<u32>], threads: usize) -> Run {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Result<Answer, String>>>> = Mutex::new((0..prompts.len()).map(|_| None).collect());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.min(prompts.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(prompt) = prompts.get(i) else { break };
                let outcome = client.complete(prompt, i).map_err(|e| format!("request {i}: {e:#}"));
                if let Ok(mut slots) = slots.lock() {
                    slots[i] = Some(outcome);
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    let outcomes = slots
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("not sent".into())))
        .collect();
    Run { outcomes, seconds }
}

/// What one measurement amounts to.
struct Summary {
    requests: usize,
    errors: usize,
    tokens: usize,
    seconds: f64,
    tok_s: f64,
    req_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Run {
    fn summary(&self) -> Summary {
        let ok: Vec<&Answer> = self.outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        let tokens: usize = ok.iter().map(|a| a.ids.len()).sum();
        let mut lat: Vec<f64> = ok.iter().map(|a| a.latency.as_secs_f64() * 1e3).collect();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if lat.is_empty() {
                f64::NAN
            } else {
                lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1]
            }
        };
        Summary {
            requests: self.outcomes.len(),
            errors: self.outcomes.len() - ok.len(),
            tokens,
            seconds: self.seconds,
            tok_s: tokens as f64 / self.seconds,
            req_s: ok.len() as f64 / self.seconds,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        }
    }

    fn first_error(&self) -> Option<String> {
        self.outcomes.iter().find_map(|o| o.as_ref().err().cloned())
    }
}

impl Summary {
    fn print_row(&self, name: &str) {
        println!(
            "{name:<34} {:>8} {:>6} {:>8} {:>8.2} {:>9.0} {:>7.1} {:>8.1} {:>8.1}",
            self.requests, self.errors, self.tokens, self.seconds, self.tok_s, self.req_s, self.p50_ms, self.p99_ms
        );
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.requests, "errors": self.errors, "completion_tokens": self.tokens,
            "seconds": self.seconds, "tokens_per_s": self.tok_s, "requests_per_s": self.req_s,
            "latency_p50_ms": self.p50_ms, "latency_p99_ms": self.p99_ms,
        })
    }
}
