use std::path::PathBuf;

use nanovllm_scheduler::ScheduleError;
use thiserror::Error;

/// Everything the engine can refuse, each with the input it names, in the engine's own terms
/// (settings by their [`EngineConfig`](crate::EngineConfig) names; front ends map them to their
/// flags or HTTP statuses by variant, never by text).
#[derive(Debug, Error)]
pub enum EngineError {
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] nanovllm_qwen3::ModelError),
    /// A request with an invalid sampling parameter or an empty prompt (refused alone; the
    /// others go on). A client's mistake: vLLM answers 400.
    #[error(transparent)]
    InvalidRequest(ScheduleError),
    /// A prompt the model cannot take: token ids outside its vocabulary, text without a
    /// tokenizer. A client's mistake.
    #[error("invalid prompt: {0}")]
    InvalidPrompt(String),
    /// A request longer than the context allows: prompt + max_tokens over `max_model_len`, or more
    /// than the whole KV cache holds (refused alone). vLLM answers 400 `context_length_exceeded`.
    #[error(transparent)]
    ContextLength(ScheduleError),
    /// The scheduler's own settings or bookkeeping.
    #[error(transparent)]
    Scheduler(ScheduleError),
    /// The KV cache could not be built.
    #[error(transparent)]
    Cache(#[from] nanovllm_kv_cache::CacheError),
    /// A tokenizer file that is missing or broken, or text it cannot encode.
    #[error("{path}: {problem}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A chat template that does not compile or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// Text given where the engine has no tokenizer.
    #[error("text prompts need a tokenizer: {0} has no tokenizer.json (give token ids instead)")]
    NoTokenizer(PathBuf),
    /// A model id that could not be fetched from the Hugging Face hub.
    #[error("model {id}: {problem}")]
    Hub {
        /// The model id.
        id: String,
        /// What went wrong.
        problem: String,
    },
    /// A call that needs an idle engine while requests run.
    #[error("the engine is busy: finish or abort the running requests first")]
    Busy,
    /// Generation was interrupted (Ctrl-C); the requests were dropped.
    #[error("interrupted")]
    Interrupted,
    /// The requested device cannot be used: no GPU, no driver, or a build without CUDA.
    #[error("the requested device cannot be used: {0}")]
    DeviceUnavailable(String),
    /// The GPU ran out of memory: the weights, the activations of the largest step or the KV cache
    /// did not fit. A smaller `gpu_memory_utilization`, `max_num_batched_tokens` or KV budget may.
    #[error(
        "the GPU ran out of memory allocating {what}; lower gpu_memory_utilization, max_num_batched_tokens or the KV cache budget"
    )]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// The allocation that failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The GPU failed.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(#[from] nanovllm_cuda::GpuError),
    /// An engine setting out of range, by its [`EngineConfig`](crate::EngineConfig) name.
    #[error("invalid engine setting {field} = {value}: {problem}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        problem: String,
    },
}

impl From<ScheduleError> for EngineError {
    /// Sorts the scheduler's refusals by whose mistake they are: a request's parameters, its
    /// length, or the engine's own settings.
    fn from(error: ScheduleError) -> Self {
        match error {
            ScheduleError::InvalidSampling { .. }
            | ScheduleError::EmptyPrompt
            | ScheduleError::TooManySamples { .. } => EngineError::InvalidRequest(error),
            ScheduleError::TooLong { .. } | ScheduleError::NeverFits { .. } => {
                EngineError::ContextLength(error)
            }
            _ => EngineError::Scheduler(error),
        }
    }
}
