//! nano-vllm's Python API over the nanovllm engine, so that a script written for nano-vllm runs
//! unchanged: `from nanovllm import LLM, SamplingParams`. The module is built by maturin
//! (`pip install ./python`) under the name `nanovllm`.
//!
//! `LLM` owns an engine thread (with CUDA graphs the engine is not `Send`) and sends it work over
//! a channel, as the server does; Python waits with the GIL released, and checks for Ctrl-C
//! between steps.

mod engine_thread;
mod errors;
mod llm;
mod sampling_params;
mod tokenizer;

use pyo3::prelude::*;

/// The `nanovllm` module.
#[pymodule(name = "nanovllm")]
fn nanovllm_module(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<llm::Llm>()?;
    module.add_class::<sampling_params::SamplingParams>()?;
    module.add_class::<tokenizer::Tokenizer>()?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
