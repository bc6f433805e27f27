//! Where the forward pass runs: the CPU (with the cache dtype chosen at run time) or a GPU.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use nanovllm_qwen3::{ModelError, Qwen3Config, Qwen3Model, SeqInput, WeightSource};
use rayon::prelude::*;

use crate::cache::AnyCache;
use crate::config::CacheFit;
use crate::{EngineConfig, EngineError, Sampler};
use nanovllm_kv_cache::BlockId;
use nanovllm_qwen3::Sampled;

/// Why a build without the `cuda` feature cannot use a GPU.
#[cfg(not(feature = "cuda"))]
const NO_CUDA: &str = "this build has no CUDA support; rebuild with the `cuda` feature";

/// Where the engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU: f32 arithmetic, any cache dtype.
    #[default]
    Cpu,
    /// The first NVIDIA GPU: bf16 weights, bf16 or INT8 cache.
    Cuda,
}

/// What the user asked for: a device, or the GPU when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The GPU when this build has CUDA support and a GPU is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The GPU, or an error.
    Cuda,
}

impl DeviceChoice {
    /// Every choice, by the names that parse.
    pub const ALL: [DeviceChoice; 3] = [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda];

    /// Its name: `auto`, `cpu` or `cuda`, as vLLM spells them.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceChoice::ALL
            .into_iter()
            .find(|choice| choice.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown device {s:?}: expected auto, cpu or cuda"))
    }
}

/// The device for `choice`, and a line saying which was picked and why.
pub fn resolve_device(choice: DeviceChoice) -> Result<(Device, String), EngineError> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, "device: cpu".into())),
        DeviceChoice::Auto | DeviceChoice::Cuda => gpu_or_reason(choice),
    }
}

#[cfg(feature = "cuda")]
fn gpu_or_reason(choice: DeviceChoice) -> Result<(Device, String), EngineError> {
    match nanovllm_cuda::Gpu::open() {
        Ok(gpu) => Ok((Device::Cuda, format!("device: cuda ({})", gpu.describe()))),
        Err(e) if choice == DeviceChoice::Auto => Ok((Device::Cpu, format!("device: cpu ({e})"))),
        Err(e) => Err(EngineError::DeviceUnavailable(e.to_string())),
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_or_reason(choice: DeviceChoice) -> Result<(Device, String), EngineError> {
    match choice {
        DeviceChoice::Auto => Ok((Device::Cpu, "device: cpu (this build has no CUDA support)".into())),
        _ => Err(EngineError::DeviceUnavailable(NO_CUDA.into())),
    }
}

/// A model's weights as the engine gets them: a model in host memory (which the CPU runs), or a
/// source the GPU uploads from in chunks, with no host copy of the model.
pub(crate) enum Weights {
    Host(Box<Qwen3Model>),
    Source(Arc<dyn WeightSource>),
}

impl Weights {
    pub(crate) fn config(&self) -> &Qwen3Config {
        match self {
            Weights::Host(model) => model.config(),
            Weights::Source(source) => source.config(),
        }
    }
}

/// The forward pass and the KV cache it writes, on one device.
#[derive(Debug)]
pub(crate) enum Backend {
    /// The model in f32 and its cache.
    Cpu(Box<Qwen3Model>, AnyCache),
    #[cfg(feature = "cuda")]
    /// The model on its GPUs, and the draws of a step, reused from step to step.
    Cuda(Box<nanovllm_qwen3::cuda::GpuGroup>, nanovllm_qwen3::cuda::SampleBatch),
}

impl Backend {
    /// Run the batch and sample one token for each input that asks for logits, with its sampler
    /// (`samplers` in the same order; `positions` are the positions of the tokens to sample).
    /// On one GPU every draw happens there (penalties, truncation, log-probabilities) and only
    /// token ids and the log-probabilities asked for come back; a tensor-parallel group draws
    /// plain temperature sampling itself and brings the logits to the host for anything more.
    pub(crate) fn forward_and_sample(
        &mut self,
        inputs: &[SeqInput<'_>],
        samplers: &mut [&mut Sampler],
        positions: &[usize],
    ) -> Result<Vec<Sampled>, ModelError> {
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(gpu, batch) = self
            && (gpu.world() == 1 || !samplers.iter().any(|s| s.needs_whole_rows() || s.truncates()))
        {
            batch.clear();
            for (sampler, &pos) in samplers.iter().zip(positions) {
                batch.push(sampler.gpu_sample(pos as u64), |out| sampler.adjustments(out));
            }
            let sampled = gpu.forward_sampled(inputs, batch)?;
            for (sampler, drawn) in samplers.iter_mut().zip(&sampled) {
                sampler.record(drawn.token);
            }
            return Ok(sampled);
        }
        let logits = self.logits(inputs)?;
        debug_assert_eq!(samplers.len(), positions.len());
        // Each request samples with its own generator, so the batch samples in parallel.
        Ok(samplers.par_iter_mut().zip(&logits).map(|(sampler, logits)| sampler.sample(logits)).collect())
    }

    /// Copy each (from, to) block of the KV cache: the partly filled blocks of forked sequences.
    pub(crate) fn copy_blocks(&mut self, copies: &[(BlockId, BlockId)]) -> Result<(), EngineError> {
        if copies.is_empty() {
            return Ok(());
        }
        match self {
            Backend::Cpu(_, cache) => {
                for &(from, to) in copies {
                    cache.copy_block(from as usize, to as usize)?;
                }
            }
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu, _) => gpu.copy_blocks(copies).map_err(ModelError::from)?,
        }
        Ok(())
    }

    /// Capture every CUDA graph of decode steps that no step has needed yet: how many that was
    /// (none on the CPU).
    pub(crate) fn capture_graphs(&mut self) -> Result<usize, EngineError> {
        match self {
            Backend::Cpu(..) => Ok(0),
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu, _) => Ok(gpu.capture_decode_graphs().map_err(ModelError::from)?),
        }
    }

    /// Host seconds the GPU model spent preparing sampled steps until their work was queued,
    /// summed (0 on the CPU, where the host does all the work anyway).
    pub(crate) fn prepare_seconds(&self) -> f64 {
        match self {
            Backend::Cpu(..) => 0.0,
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu, _) => gpu.prepare_seconds(),
        }
    }

    /// What the backend adds to the cache's log line: the decode graphs on a GPU.
    pub(crate) fn describe(&self) -> String {
        match self {
            Backend::Cpu(..) => String::new(),
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu, _) => {
                let graphs = match gpu.decode_graphs() {
                    0 => "; CUDA graphs off".to_owned(),
                    graphs => format!(
                        "; decode in CUDA graphs for {graphs} batch sizes, each captured on first use"
                    ),
                };
                match gpu.world() {
                    1 => graphs,
                    world => format!("{graphs}; split over {world} GPUs (tensor parallel)"),
                }
            }
        }
    }

    /// Run the batch and return the logits of each input that asks for them.
    pub(crate) fn logits(&mut self, inputs: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        match self {
            Backend::Cpu(model, cache) => cache.forward(model, inputs),
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu, _) => gpu.forward(inputs),
        }
    }
}

/// The backend for `config.device` and what its cache holds.
pub(crate) fn build_backend(
    weights: Weights,
    config: &EngineConfig,
    max_model_len: usize,
) -> Result<(Backend, CacheFit), EngineError> {
    if config.block_size == 0 {
        return Err(EngineError::Config {
            field: "block_size",
            value: "0".into(),
            problem: "must be at least 1".into(),
        });
    }
    check_tensor_parallel(weights.config(), config)?;
    match config.device {
        Device::Cpu => {
            let budget = config.kv_cache_memory_bytes.unwrap_or(256 << 20);
            let fit = config.fit_cache(weights.config(), budget, max_model_len)?;
            tracing::info!(budget_bytes = budget, fit.num_blocks, dtype = %config.kv_cache_dtype, "KV cache sized (CPU)");
            let cache = AnyCache::new(
                config.kv_cache_dtype,
                weights.config().cache_layout(fit.num_blocks, config.block_size),
            )?;
            let model = match weights {
                Weights::Host(model) => model,
                Weights::Source(source) => Box::new(Qwen3Model::from_source(&*source)),
            };
            Ok((Backend::Cpu(model, cache), fit))
        }
        Device::Cuda => cuda_backend(weights, config, max_model_len),
    }
}

#[cfg(feature = "cuda")]
fn cuda_backend(
    weights: Weights,
    config: &EngineConfig,
    max_model_len: usize,
) -> Result<(Backend, CacheFit), EngineError> {
    use crate::config::gib;
    use nanovllm_qwen3::cuda::{GpuGroup, GpuLimits};
    let limits = GpuLimits {
        max_tokens: config.max_num_batched_tokens,
        max_seqs: config.max_num_seqs,
        max_model_len,
        cuda_graphs: !config.enforce_eager,
    };
    let out_of_memory = |what: String| {
        move |e: nanovllm_cuda::GpuError| {
            if e.is_out_of_memory() {
                EngineError::OutOfMemory { what, source: Box::new(e) }
            } else {
                e.into()
            }
        }
    };
    // `gpu_memory_utilization` is this engine's share of the card, as vLLM's is per instance: the
    // cache gets the share less what the weights and the buffers of the largest step took (after
    // one such step), whatever other processes hold, so that replicas can share a GPU.
    let world = config.tensor_parallel_size;
    let free_at_start = least_free_memory(world)?;
    let model_config = weights.config().clone();
    let source: Arc<dyn WeightSource> = match weights {
        Weights::Host(model) => Arc::new(*model),
        Weights::Source(source) => source,
    };
    let mut gpu_model = GpuGroup::new(source, world, config.kv_cache_dtype, config.block_size, limits)
        .map_err(out_of_memory("the weights and activations".into()))?;
    let budget = match config.kv_cache_memory_bytes {
        Some(bytes) => bytes,
        None => {
            let (free, total) = gpu_model.free_memory()?;
            let allowed = (total as f64 * config.gpu_memory_utilization) as usize;
            let refuse = |problem: String| EngineError::Config {
                field: "gpu_memory_utilization",
                value: config.gpu_memory_utilization.to_string(),
                problem,
            };
            if allowed > free_at_start {
                return Err(refuse(format!(
                    "asks for {:.1} GiB of the GPU, but only {:.1} GiB were free at start (other processes hold the rest); lower it",
                    gib(allowed),
                    gib(free_at_start)
                )));
            }
            let taken = free_at_start.saturating_sub(free);
            allowed.checked_sub(taken).ok_or_else(|| {
                refuse(format!(
                    "leaves no room for a KV cache: {:.1} GiB allowed, {:.1} GiB taken by the weights and a warm-up step; raise it or give a KV cache budget (kv_cache_memory_bytes)",
                    gib(allowed),
                    gib(taken)
                ))
            })?
        }
    };
    let fit = config.fit_cache(&model_config, budget, max_model_len)?;
    tracing::info!(budget_bytes = budget, fit.num_blocks, dtype = %config.kv_cache_dtype, "KV cache sized (GPU)");
    gpu_model
        .allocate_cache(fit.num_blocks)
        .map_err(out_of_memory(format!("{:.1} GiB of KV cache", gib(budget))))?;
    Ok((Backend::Cuda(Box::new(gpu_model), Default::default()), fit))
}

/// Free bytes of the GPU, among the first `world`, with the least free memory, before this
/// engine has taken any.
#[cfg(feature = "cuda")]
fn least_free_memory(world: usize) -> Result<usize, EngineError> {
    let mut least = usize::MAX;
    for ordinal in 0..world {
        let gpu = nanovllm_cuda::Gpu::open_ordinal(ordinal)?;
        let (free, _) = gpu.ctx.mem_get_info().map_err(nanovllm_cuda::GpuError::from)?;
        least = least.min(free);
    }
    Ok(least)
}

/// Refuse a tensor-parallel size the model cannot be split into, or the machine cannot run.
fn check_tensor_parallel(model: &Qwen3Config, config: &EngineConfig) -> Result<(), EngineError> {
    let size = config.tensor_parallel_size;
    model.check_tensor_parallel(size)?;
    if size == 1 {
        return Ok(());
    }
    let problem = match config.device {
        Device::Cpu => "runs one rank per GPU; the CPU backend runs the whole model (use 1)".to_owned(),
        Device::Cuda => match gpu_count() {
            Ok(gpus) if gpus < size => format!("needs {size} GPUs; this machine has {gpus}"),
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        },
    };
    Err(EngineError::Config { field: "tensor_parallel_size", value: size.to_string(), problem })
}

#[cfg(feature = "cuda")]
fn gpu_count() -> Result<usize, EngineError> {
    Ok(nanovllm_cuda::Gpu::count()?)
}

#[cfg(not(feature = "cuda"))]
fn gpu_count() -> Result<usize, EngineError> {
    Err(EngineError::DeviceUnavailable(NO_CUDA.into()))
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend(_: Weights, _: &EngineConfig, _: usize) -> Result<(Backend, CacheFit), EngineError> {
    Err(EngineError::DeviceUnavailable(NO_CUDA.into()))
}
