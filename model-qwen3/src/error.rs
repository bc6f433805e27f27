use std::path::PathBuf;

use thiserror::Error;

/// Why a model could not be loaded or run. Each names the file or field and the problem.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A file that could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A model directory that is not one.
    #[error("{path}: {problem}")]
    ModelDir {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A JSON file that does not parse or has fields of the wrong type.
    #[error("{path}: {problem}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's message, which names the line and column.
        problem: String,
    },
    /// A config value this implementation does not accept.
    #[error("config.json: {field} = {value}: {problem}")]
    Config {
        /// The field (`rope_scaling.rope_type` for a nested one).
        field: String,
        /// Its value as written.
        value: String,
        /// Why it is refused.
        problem: String,
    },
    /// A checkpoint file or tensor that does not match the config.
    #[error("{path}: {problem}")]
    Checkpoint {
        /// The safetensors file or index.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A tensor-parallel size the model cannot be split into.
    #[error("tensor parallel size {size}: {problem}")]
    TensorParallel {
        /// The size asked for.
        size: usize,
        /// Why it is refused.
        problem: String,
    },
    /// A forward-pass input that does not fit the model or the cache.
    #[error("invalid model input: {0}")]
    Input(String),
    /// The GPU path failed.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(#[from] nanovllm_cuda::GpuError),
    /// The KV cache refused an access.
    #[error(transparent)]
    Cache(#[from] nanovllm_kv_cache::CacheError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        ModelError::Checkpoint { path: path.into(), problem: problem.into() }
    }
}
