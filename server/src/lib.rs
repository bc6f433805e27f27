//! An OpenAI-compatible HTTP server for the nanovllm engine, shaped as vLLM's: `/v1/completions`,
//! `/v1/chat/completions` (streaming over SSE or not), `/v1/models`, `/health`, `/version`,
//! `/tokenize`, `/detokenize`, and `/metrics` under vLLM's metric names.
//!
//! One engine thread builds and owns the engine (a [`nanovllm::LLM`], or a [`MockEngine`] that
//! computes nothing, to measure the server alone) and steps it; handlers (axum on tokio) tokenize,
//! detokenize, find stop strings and speak HTTP, and talk to it over channels: a request's channel
//! closing (its client gone) aborts it within a step. Admission is bounded: past the bound, 503 with
//! `Retry-After`. Errors come in OpenAI's shape with the status vLLM gives.

mod chat;
mod completions;
mod engine;
mod engine_loop;
mod error;
mod generation;
mod metrics;
mod mock_engine;
mod parsers;
mod protocol;
mod routes;
mod state;

use std::future::Future;

use axum::serve::ListenerExt;
use std::sync::Arc;

pub use engine::{Engine, EngineInfo, EngineLoad};
pub use engine_loop::EngineHandle;
pub use error::ApiError;
pub use metrics::Metrics;
pub use mock_engine::{MockEngine, MockEngineConfig};
pub use routes::router;
pub use state::{Admission, AppState, ServedModel};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] nanovllm::EngineError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The engine thread could not start or ended while loading.
    #[error("engine thread: {0}")]
    EngineThread(String),
}

/// Serve `state` on `listener` until `shutdown` completes; then drain: `/health` turns 503, new
/// requests get 503, and once those in flight have finished the server stops (the caller bounds
/// how long it waits).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = router(state.clone(), max_body_bytes);
    let draining = async move {
        shutdown.await;
        state.engine.drain();
        while state.in_flight() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    // One SSE event per request per engine step: sent at once, not held back by Nagle.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "TCP_NODELAY");
        }
    });
    axum::serve(listener, app).with_graceful_shutdown(draining).await?;
    Ok(())
}
