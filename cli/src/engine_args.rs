//! The model and engine flags that every command shares.

use anyhow::bail;
use clap::{Args, ValueEnum};
use nanovllm::{CacheDtype, DeviceChoice, EngineConfig, LLM, LoadFormat};

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Device {
    /// The GPU when this build has CUDA support and one is present, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU.
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// The directory's safetensors checkpoint.
    Safetensors,
    /// Random weights from config.json alone (seeded by --seed).
    Dummy,
}

#[derive(Args, Clone)]
pub(crate) struct EngineArgs {
    /// A model directory, or a Hugging Face model id (org/name) to fetch into the HF cache.
    #[arg(long)]
    pub(crate) model: String,
    /// Where the weights come from.
    #[arg(long, value_enum, default_value = "safetensors")]
    load_format: Format,
    /// KV cache dtype: bf16, int8 (1.97x the tokens), f16 or f32 (exact reference; f16 and f32 on
    /// the CPU only).
    #[arg(long, default_value = "bf16")]
    pub(crate) kv_cache_dtype: CacheDtype,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Memory for the KV cache, in GiB (emulates a smaller GPU; per GPU with
    /// --tensor-parallel-size). Default: 0.25 on the CPU; on a GPU, what --gpu-memory-utilization
    /// leaves after the weights and activations.
    #[arg(long)]
    pub(crate) kv_cache_memory_gib: Option<f64>,
    /// Fraction of the GPU's memory the engine may use in all.
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// Token slots per KV cache block.
    #[arg(long, default_value_t = 256)]
    block_size: usize,
    /// Longest sequence (prompt + generated). Default: the model's context, at most 4096.
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Sequences running at once.
    #[arg(long, default_value_t = 512)]
    max_num_seqs: usize,
    /// Tokens computed per step (longer prefills are chunked).
    #[arg(long, default_value_t = 16384)]
    max_num_batched_tokens: usize,
    /// Seed of the sampler (and of dummy weights): the same seed gives the same output.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Launch every kernel of every step instead of replaying decode steps from CUDA graphs.
    #[arg(long)]
    enforce_eager: bool,
    /// GPUs to split the model across, over NCCL (must divide the heads, kv heads, intermediate
    /// size and vocabulary; needs libnccl).
    #[arg(long, default_value_t = 1)]
    tensor_parallel_size: usize,
}

impl EngineArgs {
    /// Resolve the device and the model, and load the engine; says on stderr which device it
    /// picked and what the KV cache holds.
    pub(crate) fn load(&self, progress: bool) -> anyhow::Result<LLM> {
        let choice = match self.device {
            Device::Auto => DeviceChoice::Auto,
            Device::Cpu => DeviceChoice::Cpu,
            Device::Cuda => DeviceChoice::Cuda,
        };
        let (device, line) = nanovllm::resolve_device(choice)?;
        eprintln!("{line}");
        let config = EngineConfig { device, progress, ..self.config()? };
        let format = match self.load_format {
            Format::Safetensors => LoadFormat::Safetensors,
            Format::Dummy => LoadFormat::Dummy,
        };
        let llm = LLM::load(&nanovllm::resolve_model(&self.model)?, config, format)?;
        eprintln!("{}", llm.describe_cache());
        Ok(llm)
    }

    /// The engine settings these flags give (on the CPU, without a progress bar).
    pub(crate) fn config(&self) -> anyhow::Result<EngineConfig> {
        if let Some(gib) = self.kv_cache_memory_gib.filter(|g| !(g.is_finite() && *g > 0.0)) {
            bail!("--kv-cache-memory-gib {gib}: must be a positive number");
        }
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            bail!("--gpu-memory-utilization {}: must be in (0, 1]", self.gpu_memory_utilization);
        }
        Ok(EngineConfig {
            kv_cache_dtype: self.kv_cache_dtype,
            kv_cache_memory_bytes: self.kv_cache_memory_gib.map(|gib| (gib * (1u64 << 30) as f64) as usize),
            gpu_memory_utilization: self.gpu_memory_utilization,
            block_size: self.block_size,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len: self.max_model_len,
            seed: self.seed,
            enforce_eager: self.enforce_eager,
            tensor_parallel_size: self.tensor_parallel_size,
            ..EngineConfig::default()
        })
    }
}
