//! Engine errors as Python exceptions, by variant: `ValueError` for bad input, `MemoryError` for
//! what the memory cannot hold (a KV cache too small for one sequence, a request longer than the
//! whole cache, a GPU out of memory), `KeyboardInterrupt` for an interruption, `RuntimeError`
//! otherwise.

use nanovllm::{EngineError, ScheduleError};
use pyo3::PyErr;
use pyo3::exceptions::{PyKeyboardInterrupt, PyMemoryError, PyRuntimeError, PyValueError};

use crate::engine_thread::EngineGone;

/// The exception for `error`, with the engine's message.
pub(crate) fn to_py(error: EngineError) -> PyErr {
    let message = error.to_string();
    match error {
        EngineError::ContextLength(ScheduleError::NeverFits { .. })
        | EngineError::OutOfMemory { .. }
        | EngineError::Config { field: "kv_cache_memory", .. } => PyMemoryError::new_err(message),
        EngineError::InvalidRequest(_)
        | EngineError::InvalidPrompt(_)
        | EngineError::Config { .. }
        | EngineError::NoTokenizer(_)
        | EngineError::ChatTemplate(_) => PyValueError::new_err(message),
        EngineError::ContextLength(_) => PyValueError::new_err(message),
        EngineError::Interrupted => PyKeyboardInterrupt::new_err(message),
        _ => PyRuntimeError::new_err(message),
    }
}

impl From<EngineGone> for PyErr {
    fn from(_: EngineGone) -> Self {
        PyRuntimeError::new_err("the engine thread has stopped (an earlier error ended it)")
    }
}
