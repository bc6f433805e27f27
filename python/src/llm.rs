//! `LLM`: nano-vllm's engine class. `LLM(model, **kwargs)` takes nano-vllm's `Config` fields and
//! vLLM's names for the same settings; `generate` returns nano-vllm's `[{"text", "token_ids"}]`;
//! `add_request` / `step` / `is_finished` stream as nano-vllm's `LLMEngine` does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use nanovllm::{
    CacheDtype, Completion, DeviceChoice, EngineConfig, Hub, LoadFormat, Phase, Progress, Prompt, SeqId,
    StepOutput,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::engine_thread::EngineThread;
use crate::errors::to_py;
use crate::sampling_params::SamplingParams;
use crate::tokenizer::Tokenizer;

/// A prompt as Python gives it: text, or token ids.
#[derive(FromPyObject)]
enum PyPrompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl From<PyPrompt> for Prompt {
    fn from(prompt: PyPrompt) -> Self {
        match prompt {
            PyPrompt::Text(text) => Prompt::Text(text),
            PyPrompt::Tokens(ids) => Prompt::Tokens(ids),
        }
    }
}

/// What `step` returns: the finished samples' request ids and token ids, and the tokens computed.
type StepResult = (Vec<(SeqId, Vec<u32>)>, i64);

/// One `SamplingParams` for every prompt, or one per prompt.
#[derive(FromPyObject)]
enum PySampling {
    One(SamplingParams),
    PerPrompt(Vec<SamplingParams>),
}

/// The engine (`LLM` in Python).
#[pyclass(module = "nanovllm", name = "LLM")]
pub(crate) struct Llm {
    engine: EngineThread,
    tokenizer: Option<Py<Tokenizer>>,
}

/// The engine settings `LLM(...)`'s keywords give, and how the weights load.
fn settings(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<(EngineConfig, LoadFormat, DeviceChoice)> {
    let mut config = EngineConfig { progress: false, ..EngineConfig::default() };
    let (mut format, mut device) = (LoadFormat::Safetensors, DeviceChoice::Auto);
    let (mut kv_quant, mut dtype) = (None, None);
    let Some(kwargs) = kwargs else { return Ok((config, format, device)) };
    for (key, value) in kwargs.iter() {
        let key: String = key.extract()?;
        match key.as_str() {
            "max_num_batched_tokens" => config.max_num_batched_tokens = value.extract()?,
            "max_num_seqs" => config.max_num_seqs = value.extract()?,
            "max_model_len" => config.max_model_len = Some(value.extract()?),
            "gpu_memory_utilization" => config.gpu_memory_utilization = value.extract()?,
            "tensor_parallel_size" => config.tensor_parallel_size = value.extract()?,
            "enforce_eager" => config.enforce_eager = value.extract()?,
            "kvcache_block_size" | "block_size" => config.block_size = value.extract()?,
            "kv_cache_memory_bytes" => config.kv_cache_memory_bytes = Some(value.extract()?),
            "seed" => config.seed = value.extract()?,
            "kv_quant" => kv_quant = Some(value.extract::<bool>()?),
            "kv_cache_dtype" => {
                let name: String = value.extract()?;
                let parsed = nanovllm::parse_kv_cache_dtype(&name);
                dtype = Some(parsed.map_err(|e| PyValueError::new_err(format!("kv_cache_dtype: {e}")))?);
            }
            "load_format" => {
                let name: String = value.extract()?;
                format = if name == "auto" {
                    LoadFormat::Safetensors
                } else {
                    name.parse().map_err(PyValueError::new_err)?
                };
            }
            "device" => {
                device = value
                    .extract::<String>()?
                    .parse()
                    .map_err(|e| PyValueError::new_err(format!("device: {e}")))?
            }
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "LLM() got an unexpected keyword argument '{key}'"
                )));
            }
        }
    }
    config.kv_cache_dtype = match (kv_quant, dtype) {
        (Some(true), Some(d)) if d != CacheDtype::Int8 => {
            return Err(PyValueError::new_err(format!(
                "kv_quant=True asks for int8, but kv_cache_dtype is {d}"
            )));
        }
        (Some(true), _) => CacheDtype::Int8,
        (_, Some(d)) => d,
        _ => config.kv_cache_dtype,
    };
    Ok((config, format, device))
}

/// nano-vllm's `max_model_len`: 4096 unless given, clamped to the model's context (with a note
/// when the value was given).
fn clamp_max_model_len(dir: &std::path::Path, config: &mut EngineConfig) -> PyResult<()> {
    let model = nanovllm::Qwen3Config::from_file(&dir.join("config.json")).map_err(|e| to_py(e.into()))?;
    let context = model.context_length();
    if let Some(asked) = config.max_model_len.filter(|&len| len > context) {
        eprintln!("max_model_len {asked} is longer than the model's context: using {context}");
    }
    config.max_model_len = Some(config.max_model_len.unwrap_or(4096).min(context));
    Ok(())
}

#[pymethods]
impl Llm {
    /// Load `model` (a directory, or a Hugging Face model id fetched as the CLI does).
    #[new]
    #[pyo3(signature = (model, **kwargs))]
    fn new(py: Python<'_>, model: &str, kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let (mut config, format, device) = settings(kwargs)?;
        let model = model.to_owned();
        let dir: PathBuf = py.detach(|| Hub::from_env().resolve(&model)).map_err(to_py)?;
        clamp_max_model_len(&dir, &mut config)?;
        config.device = nanovllm::resolve_device(device).map_err(to_py)?.0;
        let tokenizer = Tokenizer::load(&dir)?.map(|t| Py::new(py, t)).transpose()?;
        let engine = py.detach(|| EngineThread::spawn(move || nanovllm::LLM::load(&dir, config, format)))?;
        Ok(Llm { engine, tokenizer })
    }

    /// The model's tokenizer (`encode`, `decode`, `apply_chat_template`), or `None` if it has
    /// none.
    #[getter]
    fn tokenizer(&self, py: Python<'_>) -> Option<Py<Tokenizer>> {
        self.tokenizer.as_ref().map(|t| t.clone_ref(py))
    }

    /// Queue `prompt` (text or token ids); its request id.
    #[pyo3(signature = (prompt, sampling_params = None))]
    fn add_request(
        &self,
        py: Python<'_>,
        prompt: PyPrompt,
        sampling_params: Option<SamplingParams>,
    ) -> PyResult<SeqId> {
        let params = sampling_params.map(|p| p.to_engine()).transpose()?.unwrap_or_default();
        let prompt = Prompt::from(prompt);
        py.detach(|| self.engine.call(move |llm| llm.add_request(prompt, params)))?.map_err(to_py)
    }

    /// One step, as nano-vllm's: the samples that finished, as `(request id, token ids)`, and the
    /// tokens computed (positive for a prefill step, negative for a decode step).
    fn step(&self, py: Python<'_>) -> PyResult<StepResult> {
        let output = self.run_step(py)?;
        let finished = output.finished.into_iter().map(|c| (c.id, c.token_ids)).collect();
        let tokens = output.num_tokens as i64;
        Ok((finished, if output.phase == Some(Phase::Decode) { -tokens } else { tokens }))
    }

    /// Whether every request has finished.
    fn is_finished(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(py.detach(|| self.engine.call(|llm| llm.is_finished()))?)
    }

    /// Generate for every prompt, as nano-vllm's `generate`: a list of `{"text", "token_ids"}`,
    /// one per prompt, in order (the first sample when `n` > 1). Ctrl-C stops it within a step
    /// (`KeyboardInterrupt`), dropping its requests; the engine stays usable.
    #[pyo3(signature = (prompts, sampling_params = None, use_tqdm = true))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompts: Bound<'py, PyAny>,
        sampling_params: Option<PySampling>,
        use_tqdm: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let outputs = self.run(py, prompts, sampling_params, use_tqdm)?;
        let list = PyList::empty(py);
        for samples in outputs {
            let first = &samples[0];
            let item = PyDict::new(py);
            item.set_item("text", first.text.clone().unwrap_or_default())?;
            item.set_item("token_ids", first.token_ids.clone())?;
            list.append(item)?;
        }
        Ok(list)
    }

    /// `generate`, with everything each request produced, as vLLM's `RequestOutput` holds it: per
    /// prompt a dict of `prompt_token_ids`, `num_cached_tokens` and `outputs`, one dict per sample
    /// (`index`, `text`, `token_ids`, `finish_reason`, `stop_reason`, and `logprobs`: per token
    /// `{"token", "logprob", "top": [(token, logprob), ...]}`, or `None` when not asked for).
    #[pyo3(signature = (prompts, sampling_params = None, use_tqdm = true))]
    fn generate_outputs<'py>(
        &self,
        py: Python<'py>,
        prompts: Bound<'py, PyAny>,
        sampling_params: Option<PySampling>,
        use_tqdm: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let outputs = self.run(py, prompts, sampling_params, use_tqdm)?;
        let list = PyList::empty(py);
        for samples in outputs {
            let request = PyDict::new(py);
            request.set_item("prompt_token_ids", samples[0].prompt_token_ids.clone())?;
            request.set_item("num_cached_tokens", samples[0].cached_prompt_tokens)?;
            let outputs = PyList::empty(py);
            for sample in &samples {
                outputs.append(sample_dict(py, sample)?)?;
            }
            request.set_item("outputs", outputs)?;
            list.append(request)?;
        }
        Ok(list)
    }
}

/// One sample of `generate_outputs`.
fn sample_dict<'py>(py: Python<'py>, sample: &Completion) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("index", sample.index)?;
    dict.set_item("text", sample.text.clone().unwrap_or_default())?;
    dict.set_item("token_ids", sample.token_ids.clone())?;
    dict.set_item("finish_reason", sample.finish_reason.name())?;
    let stop_reason = match &sample.stop_reason {
        Some(nanovllm::StopReason::Token(id)) => id.into_pyobject(py)?.into_any(),
        Some(nanovllm::StopReason::Text(text)) => text.into_pyobject(py)?.into_any(),
        None => py.None().into_bound(py),
    };
    dict.set_item("stop_reason", stop_reason)?;
    let logprobs = match &sample.logprobs {
        Some(tokens) => {
            let list = PyList::empty(py);
            for token in tokens {
                let entry = PyDict::new(py);
                entry.set_item("token", token.token)?;
                entry.set_item("logprob", token.logprob)?;
                entry.set_item("top", token.top.clone())?;
                list.append(entry)?;
            }
            list.into_any()
        }
        None => py.None().into_bound(py),
    };
    dict.set_item("logprobs", logprobs)?;
    Ok(dict)
}

/// The progress bar of a `generate`: tqdm's, as nano-vllm shows it, when tqdm is installed, else
/// the engine's own.
enum Bar<'py> {
    Tqdm { bar: Bound<'py, PyAny>, prefill: f64, decode: f64 },
    Engine(Progress),
}

impl<'py> Bar<'py> {
    fn new(py: Python<'py>, total: usize, enabled: bool) -> PyResult<Self> {
        if enabled && let Ok(tqdm) = py.import("tqdm.auto") {
            let kwargs = PyDict::new(py);
            kwargs.set_item("total", total)?;
            kwargs.set_item("desc", "Generating")?;
            kwargs.set_item("dynamic_ncols", true)?;
            let bar = tqdm.getattr("tqdm")?.call((), Some(&kwargs))?;
            return Ok(Bar::Tqdm { bar, prefill: 0.0, decode: 0.0 });
        }
        Ok(Bar::Engine(Progress::new(total, enabled)))
    }

    fn step(&mut self, py: Python<'py>, output: &StepOutput, took: std::time::Duration) -> PyResult<()> {
        match self {
            Bar::Tqdm { bar, prefill, decode } => {
                let rate = output.num_tokens as f64 / took.as_secs_f64().max(1e-9);
                match output.phase {
                    Some(Phase::Prefill) => *prefill = rate,
                    Some(Phase::Decode) => *decode = rate,
                    None => {}
                }
                let postfix = PyDict::new(py);
                postfix.set_item("Prefill", format!("{}tok/s", *prefill as u64))?;
                postfix.set_item("Decode", format!("{}tok/s", *decode as u64))?;
                bar.call_method1("set_postfix", (postfix,))?;
                bar.call_method1("update", (output.finished.len(),))?;
            }
            Bar::Engine(progress) => {
                progress.step(output.phase, output.num_tokens, output.finished.len(), took)
            }
        }
        Ok(())
    }

    fn close(&self) -> PyResult<()> {
        match self {
            Bar::Tqdm { bar, .. } => bar.call_method0("close").map(drop),
            Bar::Engine(progress) => {
                progress.finish();
                Ok(())
            }
        }
    }
}

impl Llm {
    fn run_step(&self, py: Python<'_>) -> PyResult<StepOutput> {
        py.detach(|| self.engine.call(|llm| llm.step()))?.map_err(to_py)
    }

    /// Drop every request (after an interruption or an error mid-generate).
    fn abort_all(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.engine.call(|llm| llm.abort_all()))?)
    }

    /// Run `prompts` to the end: each prompt's samples, in order.
    fn run(
        &self,
        py: Python<'_>,
        prompts: Bound<'_, PyAny>,
        sampling_params: Option<PySampling>,
        use_tqdm: bool,
    ) -> PyResult<Vec<Vec<Completion>>> {
        let prompts: Vec<PyPrompt> = match prompts.extract::<PyPrompt>() {
            Ok(PyPrompt::Text(text)) => vec![PyPrompt::Text(text)],
            _ => prompts.extract()?,
        };
        let params: Vec<nanovllm::SamplingParams> = match sampling_params {
            None => vec![nanovllm::SamplingParams::default(); prompts.len()],
            Some(PySampling::One(p)) => vec![p.to_engine()?; prompts.len()],
            Some(PySampling::PerPrompt(list)) if list.len() == prompts.len() => {
                list.iter().map(SamplingParams::to_engine).collect::<PyResult<_>>()?
            }
            Some(PySampling::PerPrompt(list)) => {
                return Err(PyValueError::new_err(format!(
                    "{} sampling params for {} prompts: give one, or one per prompt",
                    list.len(),
                    prompts.len()
                )));
            }
        };
        let samples: Vec<usize> = params.iter().map(|p| p.n).collect();
        let requests: Vec<(Prompt, nanovllm::SamplingParams)> =
            prompts.into_iter().map(Prompt::from).zip(params).collect();
        let added = py.detach(|| {
            self.engine.call(move |llm| {
                let mut ids = Vec::with_capacity(requests.len());
                for (prompt, params) in requests {
                    match llm.add_request(prompt, params) {
                        Ok(id) => ids.push(id),
                        Err(e) => {
                            // One refused: none of the call's requests run.
                            for id in ids {
                                let _ = llm.abort(id);
                            }
                            return Err(e);
                        }
                    }
                }
                Ok(ids)
            })
        })?;
        let ids = added.map_err(to_py)?;
        let slot: HashMap<SeqId, usize> = ids.iter().enumerate().map(|(slot, &id)| (id, slot)).collect();
        let mut results: Vec<Vec<Option<Completion>>> = samples.iter().map(|&n| vec![None; n]).collect();
        let mut left: usize = samples.iter().sum();
        let mut bar = Bar::new(py, left, use_tqdm)?;
        while left > 0 {
            if let Err(interrupted) = py.check_signals() {
                self.abort_all(py)?;
                bar.close()?;
                return Err(interrupted);
            }
            let started = Instant::now();
            let output = match self.run_step(py) {
                Ok(output) => output,
                Err(e) => {
                    let _ = self.abort_all(py);
                    bar.close()?;
                    return Err(e);
                }
            };
            bar.step(py, &output, started.elapsed())?;
            for completion in output.finished {
                if let Some(&at) = slot.get(&completion.id) {
                    let index = completion.index;
                    results[at][index] = Some(completion);
                    left -= 1;
                }
            }
        }
        bar.close()?;
        Ok(results
            .into_iter()
            .map(|r| r.into_iter().map(|c| c.expect("every sample finished")).collect())
            .collect())
    }
}
