//! `aha serve`: an OpenAI-compatible HTTP server (`/v1/completions`, `/v1/chat/completions`,
//! `/v1/models`, `/health`, `/update_weights_from_disk`) over a continuously batched decode loop.
//! Builds the tokio runtime, loads the model, and serves until Ctrl-C or SIGTERM, after which
//! the requests in flight finish and the command exits 0.

use aha_serve::engine::EngineOptions;
use aha_serve::load::ModelSource;
use aha_serve::{ServeConfig, ShutdownSignals};
use anyhow::{bail, Context};

use crate::exec_args::ExecArgs;
use crate::model_args::ModelArgs;

/// Serve a model over an OpenAI-compatible HTTP API.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model, its adapter and tokenizer.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (printed on stderr).
    #[arg(long)]
    pub port: u16,
    /// The model name requests must use (default: the `--model` string).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Most rows (prompts × n) decoded together.
    #[arg(long, default_value_t = 64)]
    pub max_batch_rows: usize,
    /// Most requests waiting for admission; more are refused with 429.
    #[arg(long, default_value_t = 256)]
    pub max_queued: usize,
    /// Most `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens_limit: usize,
    /// Most rows (prompts × `n`) in one request; larger requests get 400. A request larger than
    /// `--max-batch-rows` (and within this) decodes alone.
    #[arg(long, default_value_t = 1024)]
    pub max_request_rows: usize,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = 1_048_576)]
    pub max_body_bytes: usize,
    /// Device, dtype and backend.
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Runs `aha serve`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    let started = aha_serve::start(&cfg).with_context(|| format!("loading {}", args.model.model))?;
    eprintln!("{}", started.plan);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("aha-serve-http")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let addr = if args.host.contains(':') {
        format!("[{}]:{}", args.host.trim_matches(['[', ']']), args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    runtime.block_on(async {
        // Before the ready line: a signal right after it must drain, not kill.
        let signals = ShutdownSignals::new().context("installing the SIGINT/SIGTERM handlers")?;
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr().context("reading the bound address")?;
        eprintln!("aha serve: listening on http://{local}");
        aha_serve::serve(listener, started.engine.clone(), started.shape, &cfg, drain_on_signal(signals))
            .await
            .context("serving HTTP")
    })?;
    // Dropping the runtime ends lingering tasks (streams of clients that went away).
    drop(runtime);
    started.engine.shutdown();
    if started.thread.join().is_err() {
        bail!("the engine thread panicked");
    }
    eprintln!("aha serve: stopped");
    Ok(())
}

/// Resolves on the first Ctrl-C or SIGTERM (the server then drains); a second one exits at once.
fn drain_on_signal(mut signals: ShutdownSignals) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let first = signals.recv().await;
        eprintln!("aha serve: {first}: draining: finishing the requests in flight (signal again to exit now)");
        let _ = first_tx.send(());
        let second = signals.recv().await;
        eprintln!("aha serve: {second} again: exiting now");
        std::process::exit(130);
    });
    async move {
        // An error means the watcher is gone: then nothing will stop the server but a kill.
        if first_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The server's configuration from the flags.
fn config(args: &Args) -> anyhow::Result<ServeConfig> {
    let limits =
        [args.max_batch_rows, args.max_queued, args.max_tokens_limit, args.max_request_rows, args.max_body_bytes];
    if limits.contains(&0) {
        bail!(
            "--max-batch-rows, --max-queued, --max-tokens-limit, --max-request-rows and --max-body-bytes must be >= 1"
        );
    }
    Ok(ServeConfig {
        source: ModelSource { spec: args.model.spec(), adapter: args.model.adapter.clone(), exec: args.exec.request() },
        served_model_name: args.served_model_name.clone().unwrap_or_else(|| args.model.model.clone()),
        engine: EngineOptions { max_batch_rows: args.max_batch_rows, max_queued: args.max_queued },
        max_tokens_limit: args.max_tokens_limit,
        max_request_rows: args.max_request_rows,
        max_body_bytes: args.max_body_bytes,
    })
}
