//! `SamplingParams`: nano-vllm's fields (`temperature`, `max_tokens`, `ignore_eos`, in that order)
//! and, by keyword, every other field of the engine's sampler, with vLLM's names; checked when
//! made (and again when used, since fields can be set).

use pyo3::prelude::*;

use crate::errors::to_py;

/// `stop` as given: one string or a list of them.
#[derive(FromPyObject)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// How a request samples and when it stops.
#[pyclass(module = "nanovllm", get_all, set_all, from_py_object)]
#[derive(Debug, Clone)]
pub(crate) struct SamplingParams {
    temperature: f64,
    max_tokens: usize,
    ignore_eos: bool,
    n: usize,
    top_k: i64,
    top_p: f64,
    min_p: f64,
    presence_penalty: f64,
    frequency_penalty: f64,
    repetition_penalty: f64,
    min_tokens: usize,
    stop: Vec<String>,
    stop_token_ids: Vec<u32>,
    include_stop_str_in_output: bool,
    logprobs: Option<usize>,
    seed: Option<u64>,
}

#[pymethods]
impl SamplingParams {
    #[new]
    #[pyo3(signature = (
        temperature = 1.0, max_tokens = 64, ignore_eos = false, *, n = 1, top_k = -1, top_p = 1.0,
        min_p = 0.0, presence_penalty = 0.0, frequency_penalty = 0.0, repetition_penalty = 1.0,
        min_tokens = 0, stop = None, stop_token_ids = None, include_stop_str_in_output = false,
        logprobs = None, seed = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        temperature: f64,
        max_tokens: usize,
        ignore_eos: bool,
        n: usize,
        top_k: i64,
        top_p: f64,
        min_p: f64,
        presence_penalty: f64,
        frequency_penalty: f64,
        repetition_penalty: f64,
        min_tokens: usize,
        stop: Option<Stop>,
        stop_token_ids: Option<Vec<u32>>,
        include_stop_str_in_output: bool,
        logprobs: Option<usize>,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let stop = match stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(list)) => list,
        };
        let params = SamplingParams {
            temperature,
            max_tokens,
            ignore_eos,
            n,
            top_k,
            top_p,
            min_p,
            presence_penalty,
            frequency_penalty,
            repetition_penalty,
            min_tokens,
            stop,
            stop_token_ids: stop_token_ids.unwrap_or_default(),
            include_stop_str_in_output,
            logprobs,
            seed,
        };
        params.to_engine()?;
        Ok(params)
    }

    fn __repr__(&self) -> String {
        format!(
            "SamplingParams(temperature={}, max_tokens={}, ignore_eos={}, n={}, top_k={}, top_p={}, min_p={}, seed={:?})",
            self.temperature,
            self.max_tokens,
            self.ignore_eos,
            self.n,
            self.top_k,
            self.top_p,
            self.min_p,
            self.seed
        )
    }
}

impl SamplingParams {
    /// The engine's parameters, checked: a value out of range is a `ValueError` naming it.
    pub(crate) fn to_engine(&self) -> PyResult<nanovllm::SamplingParams> {
        let top_k = nanovllm::SamplingParams::top_k_from_vllm(self.top_k).map_err(|e| to_py(e.into()))?;
        let params = nanovllm::SamplingParams {
            n: self.n,
            temperature: self.temperature as f32,
            top_k,
            top_p: self.top_p as f32,
            min_p: self.min_p as f32,
            presence_penalty: self.presence_penalty as f32,
            frequency_penalty: self.frequency_penalty as f32,
            repetition_penalty: self.repetition_penalty as f32,
            max_tokens: self.max_tokens,
            min_tokens: self.min_tokens,
            ignore_eos: self.ignore_eos,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            include_stop_str_in_output: self.include_stop_str_in_output,
            logprobs: self.logprobs,
            seed: self.seed,
            detokenize: true,
        };
        params.validate().map_err(|e| to_py(e.into()))?;
        Ok(params)
    }
}
