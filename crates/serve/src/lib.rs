//! aha serve: an OpenAI-compatible HTTP server over a continuously batched decode loop.
//!
//! [`start`] loads the model and starts the engine thread; [`serve`] answers HTTP on a bound
//! listener until a shutdown future resolves (e.g. on [`ShutdownSignals`]), then stops admitting
//! requests, lets the ones in flight finish and returns.

pub mod api;
pub mod engine;
pub mod error;
pub mod http;
pub mod load;
mod shard;

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::TcpListener;

use crate::api::Limits;
use crate::engine::{EngineHandle, EngineOptions};
use crate::http::AppState;
use crate::load::{ModelSource, Shape};

/// Everything `aha serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model (and start adapter), device and dtype.
    pub source: ModelSource,
    /// The name requests must use.
    pub served_model_name: String,
    /// Batch and queue limits.
    pub engine: EngineOptions,
    /// Most `max_tokens` a request may ask for.
    pub max_tokens_limit: usize,
    /// Most rows (prompts × `n`) in one request (a larger one would be prefilled as one batch).
    pub max_request_rows: usize,
    /// Largest request body, in bytes (413 past it).
    pub max_body_bytes: usize,
}

/// A started engine.
pub struct Started {
    /// The handle the HTTP layer uses.
    pub engine: EngineHandle,
    /// The engine thread (joined after shutdown).
    pub thread: JoinHandle<()>,
    /// The serving model's shape (reloads must match it).
    pub shape: Shape,
    /// The model's execution plan, in words.
    pub plan: String,
}

/// Loads the model of `cfg` and starts the engine thread on it (blocking: call before, or
/// outside, the async runtime).
pub fn start(cfg: &ServeConfig) -> aha_model::Result<Started> {
    let lm = load::load_initial(&cfg.source)?;
    let shape = Shape::of(&lm.config);
    let plan = lm.model.plan().describe();
    let (engine, thread) = EngineHandle::start(lm.model, Arc::new(lm.tokenizer), cfg.engine)?;
    Ok(Started { engine, thread, shape, plan })
}

/// Serves HTTP on `listener` until `shutdown` resolves; then stops accepting connections,
/// shuts the engine down (queued and running requests still finish) and returns once every
/// open connection has been answered.
pub async fn serve<F>(
    listener: TcpListener,
    engine: EngineHandle,
    shape: Shape,
    cfg: &ServeConfig,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let state = Arc::new(AppState {
        limits: Limits {
            vocab_size: shape.vocab_size,
            context_len: engine.context_len(),
            max_tokens_limit: cfg.max_tokens_limit,
            max_request_rows: cfg.max_request_rows,
        },
        engine: engine.clone(),
        served_model_name: cfg.served_model_name.clone(),
        max_body_bytes: cfg.max_body_bytes,
        created: http::unix_now(),
        source: cfg.source.clone(),
        shape,
        reload: tokio::sync::Mutex::new(()),
    });
    let stop = async move {
        shutdown.await;
        engine.shutdown();
    };
    axum::serve(listener, http::router(state)).with_graceful_shutdown(stop).await
}

/// Ctrl-C (SIGINT) and SIGTERM as one sequence of notifications. Each [`ShutdownSignals::recv`]
/// waits for a delivery after the previous one (listeners made anew could see an old one).
pub struct ShutdownSignals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Installs the handlers (inside a tokio runtime).
    #[cfg(unix)]
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    /// Installs the handlers (inside a tokio runtime).
    #[cfg(not(unix))]
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    /// Waits for the next Ctrl-C or SIGTERM; returns its name.
    #[cfg(unix)]
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }

    /// Waits for the next Ctrl-C; returns its name.
    #[cfg(not(unix))]
    pub async fn recv(&mut self) -> &'static str {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        "Ctrl-C"
    }
}
