//! Where the forward pass runs: the CPU (with the cache dtype chosen at run time) or a GPU.

use nanovllm_qwen3::{ModelError, Qwen3Model, SeqInput};

use rayon::prelude::*;

use crate::cache::AnyCache;
use crate::{EngineError, Sampler};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The GPU when this build has CUDA support and a GPU is present, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The GPU, or an error.
    Cuda,
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
        Err(e) => Err(EngineError::Device(e.to_string())),
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu_or_reason(choice: DeviceChoice) -> Result<(Device, String), EngineError> {
    match choice {
        DeviceChoice::Auto => Ok((Device::Cpu, "device: cpu (this build has no CUDA support)".into())),
        _ => Err(EngineError::Device("this build has no CUDA support; rebuild with --features cuda".into())),
    }
}

/// The forward pass and the KV cache it writes, on one device.
#[derive(Debug)]
pub(crate) enum Backend {
    Cpu(AnyCache),
    #[cfg(feature = "cuda")]
    Cuda(Box<nanovllm_qwen3::cuda::GpuGroup>),
}

impl Backend {
    /// Run the batch and sample one token for each input that asks for logits, with its sampler
    /// (`samplers` in the same order; `positions` are the positions of the tokens to sample).
    /// On a GPU, samplers that need no top-k/top-p draw there and only token ids come back.
    pub(crate) fn forward_and_sample(
        &mut self,
        model: &Qwen3Model,
        inputs: &[SeqInput<'_>],
        samplers: &mut [Sampler],
        positions: &[usize],
    ) -> Result<Vec<u32>, ModelError> {
        #[cfg(feature = "cuda")]
        if let Backend::Cuda(gpu) = self
            && !samplers.iter().any(Sampler::truncates)
        {
            let specs: Vec<_> = samplers
                .iter()
                .zip(positions)
                .map(|(s, &pos)| nanovllm_qwen3::cuda::GpuSample {
                    temperature: s.temperature(),
                    seed: s.seed(),
                    step: pos as u64,
                })
                .collect();
            return gpu.forward_sampled(inputs, &specs);
        }
        let logits = self.logits(model, inputs)?;
        debug_assert_eq!(samplers.len(), positions.len());
        // Each request samples with its own generator, so the batch samples in parallel.
        Ok(samplers.par_iter_mut().zip(&logits).map(|(sampler, logits)| sampler.sample(logits)).collect())
    }

    /// What the backend adds to the cache's log line: the decode graphs on a GPU.
    pub(crate) fn describe(&self) -> String {
        match self {
            Backend::Cpu(_) => String::new(),
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu) => {
                let graphs = match gpu.decode_graphs() {
                    0 => "; CUDA graphs off".to_owned(),
                    graphs => format!("; decode in CUDA graphs for {graphs} batch sizes"),
                };
                match gpu.world() {
                    1 => graphs,
                    world => format!("{graphs}; split over {world} GPUs (tensor parallel)"),
                }
            }
        }
    }

    /// Run the batch and return the logits of each input that asks for them.
    pub(crate) fn logits(
        &mut self,
        model: &Qwen3Model,
        inputs: &[SeqInput<'_>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        match self {
            Backend::Cpu(cache) => cache.forward(model, inputs),
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu) => gpu.forward(inputs),
        }
    }
}
