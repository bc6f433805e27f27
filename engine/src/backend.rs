//! Where the forward pass runs: the CPU (with the cache dtype chosen at run time) or a GPU.

use model_qwen3::{ModelError, Qwen3Model, SeqInput};

use crate::EngineError;
use crate::cache::AnyCache;

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
    match kv_quant::cuda::Gpu::open() {
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
    Cuda(Box<model_qwen3::cuda::GpuQwen3>),
}

impl Backend {
    pub(crate) fn forward(
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
