use std::path::PathBuf;

use thiserror::Error;

/// Everything the engine can refuse, each with the input it names.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] nanovllm_qwen3::ModelError),
    /// A request was refused (alone; the others go on).
    #[error(transparent)]
    Request(#[from] nanovllm_scheduler::ScheduleError),
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
    /// A prompt the model cannot take.
    #[error("invalid prompt: {0}")]
    Prompt(String),
    /// A call that needs an idle engine while requests run.
    #[error("the engine is busy: finish or abort the running requests first")]
    Busy,
    /// Generation was interrupted (Ctrl-C); the requests were dropped.
    #[error("interrupted")]
    Interrupted,
    /// The requested device cannot be used.
    #[error("--device: {0}")]
    Device(String),
    /// The GPU failed.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(#[from] nanovllm_cuda::GpuError),
    /// An engine setting out of range.
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
