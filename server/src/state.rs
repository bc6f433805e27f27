//! What every handler shares: the engine handle, the model's tokenizer and template, the limits,
//! the metrics.

use std::sync::Arc;

use nanovllm::{ChatTemplate, Tokenizer};
use tokio::sync::Semaphore;

use crate::engine::EngineInfo;
use crate::engine_loop::EngineHandle;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The model as the handlers need it: tokenized and rendered here, off the engine thread.
#[derive(Debug)]
pub struct ServedModel {
    /// The name clients give as `model` (`--served-model-name`, else the model argument).
    pub name: String,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, if it has one.
    pub chat_template: Option<ChatTemplate>,
    /// Split a chat answer's `<think>` section into `reasoning_content` (vLLM's
    /// `--reasoning-parser qwen3`).
    pub reasoning_parser: bool,
}

/// The server's shared state.
#[derive(Debug)]
pub struct AppState {
    pub(crate) engine: EngineHandle,
    pub(crate) model: ServedModel,
    pub(crate) metrics: Arc<Metrics>,
    /// One permit per request admitted, running or queued: none left, 503.
    pub(crate) admission: Arc<Semaphore>,
    /// One permit per request handed to the engine: the others queue here, in arrival order.
    pub(crate) engine_slots: Arc<Semaphore>,
    /// `Authorization: Bearer` key for `/v1/*`, if set.
    pub(crate) api_key: Option<String>,
    /// When the server started (the `created` of `/v1/models`).
    pub(crate) created: u64,
    /// Permits of `admission` in all.
    admitted_at_most: usize,
}

impl AppState {
    /// The state of a server of `model` on `engine`, which runs at most `limits.concurrent`
    /// requests at once with `limits.queued` more waiting their turn.
    pub fn new(
        engine: EngineHandle,
        model: ServedModel,
        metrics: Arc<Metrics>,
        limits: Admission,
        api_key: Option<String>,
    ) -> Self {
        AppState {
            engine,
            model,
            metrics,
            admission: Arc::new(Semaphore::new(limits.concurrent + limits.queued)),
            engine_slots: Arc::new(Semaphore::new(limits.concurrent)),
            api_key,
            created: unix_time(),
            admitted_at_most: limits.concurrent + limits.queued,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// What the engine told once built, or 503 while it loads.
    pub(crate) fn engine_info(&self) -> Result<&EngineInfo, ApiError> {
        self.engine.info().ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    /// Requests admitted and not finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.admitted_at_most - self.admission.available_permits()
    }
}

/// How many requests the server takes: beyond both bounds, 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Requests handed to the engine at once (vLLM's `--max-num-seqs` is a good value: more
    /// only wait inside the engine instead of here).
    pub concurrent: usize,
    /// Requests waiting for one of those places.
    pub queued: usize,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
