//! The model and engine flags that every command shares, and the one place engine settings are
//! named by their flags.

use anyhow::bail;
use clap::Args;
use nanovllm::{CacheDtype, DeviceChoice, EngineConfig, EngineError, LLM, LoadFormat, StepPolicy};

#[derive(Args, Clone)]
pub(crate) struct EngineArgs {
    /// A model directory, or a Hugging Face model id (org/name) to fetch into the HF cache.
    #[arg(long)]
    pub(crate) model: String,
    /// Where the weights come from: safetensors (the directory's checkpoint) or dummy (random
    /// weights from config.json alone, seeded by --seed).
    #[arg(long, default_value_t = LoadFormat::Safetensors)]
    load_format: LoadFormat,
    /// KV cache dtype: bf16, int8 (1.97x the tokens), fp8_per_token_head (E4M3 codes with INT8's
    /// row scale), fp8 (vLLM's: E4M3 at a per-tensor scale of 1.0), int4 (3.56x the tokens), f16
    /// or f32 (exact reference; f16 and f32 on the CPU only). vLLM's spellings work too: auto
    /// (bf16, the dtype the engine computes in), bfloat16, float16, fp8_e4m3, and
    /// int8_per_token_head (this engine's INT8 rows, whose scales are bf16: not byte-compatible
    /// with vLLM's f32 scales).
    #[arg(long, default_value = "bf16", value_parser = parse_cache_dtype)]
    pub(crate) kv_cache_dtype: CacheDtype,
    /// Where to run: auto (the GPU when this build has CUDA support and one is present), cpu or cuda.
    #[arg(long, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Memory for the KV cache, in GiB (emulates a smaller GPU; per GPU with
    /// --tensor-parallel-size). Default: 0.25 on the CPU; on a GPU, what --gpu-memory-utilization
    /// leaves after the weights and activations.
    #[arg(long, conflicts_with = "kv_cache_memory_bytes")]
    pub(crate) kv_cache_memory_gib: Option<f64>,
    /// Memory for the KV cache in bytes, as vLLM takes it: 4G (GiB), 4g (10^9), 512M, 1.5g...
    /// (uppercase suffixes are binary, lowercase decimal).
    #[arg(long, value_parser = parse_bytes)]
    kv_cache_memory_bytes: Option<usize>,
    /// This process's share of the GPU's memory, weights and cache together (as vLLM's, per
    /// instance: two replicas on one GPU can take 0.45 each).
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// Token slots per KV cache block.
    #[arg(long, default_value_t = 256)]
    block_size: usize,
    /// Longest sequence (prompt + generated). Default: the model's context, lowered to what the KV
    /// cache holds when it cannot hold one such sequence (as vLLM's `auto`; said on stderr); a value
    /// given must fit.
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Sequences running at once.
    #[arg(long, default_value_t = 512)]
    max_num_seqs: usize,
    /// Tokens computed per step (longer prefills are chunked).
    #[arg(long, default_value_t = 16384)]
    max_num_batched_tokens: usize,
    /// Decode every running sequence in every step, and prefill at most this many prompt tokens
    /// beside them, plus 8 per running sequence (vLLM's chunked prefill): a stream's tokens are
    /// not held back by a whole prefill when prompts arrive. Default: a step prefills whenever a prompt waits (nano-vllm),
    /// the most tokens per second for a batch given at once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    mixed_prefill_tokens: Option<u64>,
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
    /// Hugging Face token for gated or private models.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    hf_token: Option<String>,
}

impl EngineArgs {
    /// Resolve the device and the model, and load the engine; says on stderr which device it
    /// picked and what the KV cache holds.
    pub(crate) fn load(&self, progress: bool) -> anyhow::Result<LLM> {
        let (dir, config) = self.prepare(progress)?;
        let llm = LLM::load(&dir, config, self.load_format).map_err(|e| self.flag_error(e))?;
        eprintln!("{}", llm.describe_cache());
        Ok(llm)
    }

    /// What loading needs, checked: the model's directory (fetched if an id) and the settings on
    /// the resolved device (said on stderr).
    pub(crate) fn prepare(&self, progress: bool) -> anyhow::Result<(std::path::PathBuf, EngineConfig)> {
        let config = self.config()?;
        let (device, line) = nanovllm::resolve_device(self.device).map_err(|e| self.flag_error(e))?;
        eprintln!("{line}");
        Ok((self.model_dir()?, EngineConfig { device, progress, ..config }))
    }

    /// How the weights are loaded.
    pub(crate) fn load_format(&self) -> LoadFormat {
        self.load_format
    }

    /// The local directory of `--model`, fetched from the hub if it is a model id.
    pub(crate) fn model_dir(&self) -> anyhow::Result<std::path::PathBuf> {
        let hub = nanovllm::Hub { token: self.hf_token.clone(), progress: true, ..nanovllm::Hub::from_env() };
        Ok(hub.resolve(&self.model)?)
    }

    /// The engine settings these flags give (on the CPU, without a progress bar).
    pub(crate) fn config(&self) -> anyhow::Result<EngineConfig> {
        if let Some(gib) = self.kv_cache_memory_gib.filter(|g| !(g.is_finite() && *g > 0.0)) {
            bail!("--kv-cache-memory-gib {gib}: must be a positive number");
        }
        if self.kv_cache_memory_bytes == Some(0) {
            bail!("--kv-cache-memory-bytes 0: must be at least 1");
        }
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            bail!("--gpu-memory-utilization {}: must be in (0, 1]", self.gpu_memory_utilization);
        }
        let gib_bytes = self.kv_cache_memory_gib.map(|gib| (gib * (1u64 << 30) as f64) as usize);
        Ok(EngineConfig {
            kv_cache_dtype: self.kv_cache_dtype,
            kv_cache_memory_bytes: self.kv_cache_memory_bytes.or(gib_bytes),
            gpu_memory_utilization: self.gpu_memory_utilization,
            block_size: self.block_size,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            step_policy: match self.mixed_prefill_tokens {
                Some(tokens) => StepPolicy::Mixed { max_prefill_tokens: tokens as usize },
                None => StepPolicy::PrefillFirst,
            },
            max_model_len: self.max_model_len,
            seed: self.seed,
            enforce_eager: self.enforce_eager,
            tensor_parallel_size: self.tensor_parallel_size,
            ..EngineConfig::default()
        })
    }

    /// An engine error with the flag that sets what it names: the engine speaks of its settings,
    /// the user typed flags.
    pub(crate) fn flag_error(&self, error: EngineError) -> anyhow::Error {
        match &error {
            EngineError::DeviceUnavailable(reason) => anyhow::anyhow!("--device: {reason}"),
            EngineError::Config { field, .. } => match flag_of(field) {
                Some(flag) => anyhow::anyhow!("{error} ({flag})"),
                None => error.into(),
            },
            EngineError::OutOfMemory { .. } => anyhow::anyhow!(
                "{error} (--gpu-memory-utilization, --max-num-batched-tokens, --kv-cache-memory-gib)"
            ),
            _ => error.into(),
        }
    }
}

/// The flag that sets an [`EngineConfig`] field, by the name engine errors give it.
fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "kv_cache_memory" | "kv_cache_memory_bytes" => "--kv-cache-memory-gib or --kv-cache-memory-bytes",
        "gpu_memory_utilization" => "--gpu-memory-utilization",
        "block_size" => "--block-size",
        "max_model_len" => "--max-model-len",
        "max_num_seqs" => "--max-num-seqs",
        "max_num_batched_tokens" => "--max-num-batched-tokens",
        "tensor_parallel_size" => "--tensor-parallel-size",
        _ => return None,
    })
}

/// `--kv-cache-dtype`: the engine's names and aliases, and vLLM's `auto`.
fn parse_cache_dtype(text: &str) -> Result<CacheDtype, String> {
    nanovllm::parse_kv_cache_dtype(text).map_err(|e| e.to_string())
}

/// A byte count as vLLM's `human_readable_int` reads it: a number with an optional suffix, k/m/g/t
/// for powers of 1000 and K/M/G/T for powers of 1024; a fraction only with a decimal suffix.
pub(crate) fn parse_bytes(text: &str) -> Result<usize, String> {
    let invalid = || format!("{text:?}: expected a byte count such as 4G (GiB), 4g (10^9) or 512M");
    let (number, suffix) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], Some(c)),
        _ => (text, None),
    };
    let multiplier: u64 = match suffix {
        None => 1,
        Some(c) => {
            let power = "kmgt".find(c.to_ascii_lowercase()).ok_or_else(invalid)? as u32 + 1;
            if c.is_ascii_uppercase() { 1024u64.pow(power) } else { 1000u64.pow(power) }
        }
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier).and_then(|b| usize::try_from(b).ok()).ok_or_else(invalid);
    }
    match (number.parse::<f64>(), suffix) {
        (Ok(x), Some(c)) if c.is_ascii_lowercase() && x.is_finite() && x >= 0.0 => {
            Ok((x * multiplier as f64).round() as usize)
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_vllm_reads_them() {
        assert_eq!(parse_bytes("4G"), Ok(4 << 30));
        assert_eq!(parse_bytes("4g"), Ok(4_000_000_000));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5g"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("1.5G").is_err(), "a fraction of a binary unit");
        assert!(parse_bytes("4x").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("-1").is_err());
    }

    #[test]
    fn vllm_cache_dtype_spellings() {
        for (text, dtype) in [
            ("auto", CacheDtype::Bf16),
            ("bfloat16", CacheDtype::Bf16),
            ("float16", CacheDtype::F16),
            ("int8_per_token_head", CacheDtype::Int8),
            ("int8", CacheDtype::Int8),
            ("fp8_per_token_head", CacheDtype::Fp8PerTokenHead),
        ] {
            assert_eq!(parse_cache_dtype(text), Ok(dtype), "{text}");
        }
        assert_eq!(parse_cache_dtype("fp8_e4m3"), Ok(CacheDtype::Fp8));
        let error = parse_cache_dtype("fp8_e5m2").unwrap_err();
        assert!(error.contains("expected bf16, f16, int8, fp8_per_token_head, fp8, int4 or f32"), "{error}");
    }
}
