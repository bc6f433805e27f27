//! Engine settings, and the cache and scheduler they give a model: known from the model's config
//! alone, before any weights load, when the KV budget is given in bytes.

use nanovllm_kv_quant::{CacheDtype, kv_bytes_per_token};
use nanovllm_qwen3::Qwen3Config;
use nanovllm_scheduler::{SchedulerConfig, StepPolicy};

use crate::EngineError;

/// A KV cache dtype by any name it goes by: the engine's, its aliases, and vLLM's `auto` (the
/// dtype the engine computes in, bf16).
pub fn parse_kv_cache_dtype(name: &str) -> Result<CacheDtype, nanovllm_kv_quant::UnknownCacheDtype> {
    if name == "auto" { Ok(CacheDtype::Bf16) } else { name.parse() }
}
use crate::backend::Device;

/// Engine settings, with nano-vllm's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Storage dtype of the KV cache.
    pub kv_cache_dtype: CacheDtype,
    /// Where the model runs.
    pub device: Device,
    /// Bytes for the KV cache (all layers, K and V, scales included), per GPU under tensor
    /// parallelism. `None`: 256 MiB on the CPU; on a GPU, what `gpu_memory_utilization` leaves
    /// after the weights and the activations.
    pub kv_cache_memory_bytes: Option<usize>,
    /// This engine's share of each GPU's memory, weights, activations and cache together (0.9 as
    /// in nano-vllm; per instance, as vLLM's: two replicas can share a GPU at 0.45 each).
    pub gpu_memory_utilization: f64,
    /// Token slots per cache block.
    pub block_size: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens computed per step.
    pub max_num_batched_tokens: usize,
    /// How prefill and decode share steps: nano-vllm's prefill first (the most tokens per
    /// second for a batch), or mixed (the least time between a stream's tokens while prompts
    /// arrive).
    pub step_policy: StepPolicy,
    /// Longest sequence. `None`: the model's context (`max_position_embeddings`, or under YaRN the
    /// original context times its factor), lowered to what the KV cache holds when it cannot
    /// hold one such sequence (vLLM's `--max-model-len auto`); a value given must fit.
    pub max_model_len: Option<usize>,
    /// Seed of the dummy weights and of requests that bring no seed of their own.
    pub seed: u64,
    /// Show a progress bar in `generate`.
    pub progress: bool,
    /// Launch every kernel of every GPU step instead of replaying decode steps from CUDA graphs
    /// (vLLM's and nano-vllm's `enforce_eager`): for debugging, and for measuring what graphs save.
    pub enforce_eager: bool,
    /// GPUs the model is split across (Megatron-style, as nano-vllm; NCCL between them): GPU only,
    /// `nanovllm_qwen3::cuda::GpuGroup`. Each GPU holds its share of the kv heads of every block.
    pub tensor_parallel_size: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kv_cache_dtype: CacheDtype::Bf16,
            device: Device::Cpu,
            kv_cache_memory_bytes: None,
            gpu_memory_utilization: 0.9,
            block_size: 256,
            max_num_seqs: 512,
            max_num_batched_tokens: 16384,
            step_policy: StepPolicy::PrefillFirst,
            max_model_len: None,
            seed: 0,
            progress: false,
            enforce_eager: false,
            tensor_parallel_size: 1,
        }
    }
}

impl EngineConfig {
    /// The longest sequence for `model` before the cache is sized: `max_model_len`, or the model's
    /// context ([`EngineConfig::fit_cache`] may lower the latter).
    pub fn max_model_len_for(&self, model: &Qwen3Config) -> Result<usize, EngineError> {
        let max_model_len = self.max_model_len.unwrap_or(model.context_length());
        if max_model_len > model.context_length() {
            return Err(EngineError::Config {
                field: "max_model_len",
                value: max_model_len.to_string(),
                problem: format!(
                    "exceeds the model's context ({}: max_position_embeddings, or YaRN's factor times the original context)",
                    model.context_length()
                ),
            });
        }
        Ok(max_model_len)
    }

    /// KV cache bytes per token on each GPU: every layer, K and V, this GPU's share of the kv heads
    /// under tensor parallelism (all of them otherwise).
    pub fn kv_bytes_per_token(&self, model: &Qwen3Config) -> usize {
        let kv_heads = model.num_key_value_heads / self.tensor_parallel_size.max(1);
        kv_bytes_per_token(
            self.kv_cache_dtype.row_layout(),
            model.num_hidden_layers,
            kv_heads,
            model.head_dim,
        )
    }

    /// What a KV budget of `budget` bytes (per GPU) holds: its blocks, and the longest sequence.
    /// A `max_model_len` given must fit whole; the model's context, when it was left to the
    /// model, is lowered to what the cache holds.
    pub fn fit_cache(
        &self,
        model: &Qwen3Config,
        budget: usize,
        max_model_len: usize,
    ) -> Result<CacheFit, EngineError> {
        let num_blocks = budget / (self.kv_bytes_per_token(model) * self.block_size);
        let tokens = num_blocks * self.block_size;
        if self.max_model_len.is_none() && tokens > 0 && tokens < max_model_len {
            return Ok(CacheFit { num_blocks, max_model_len: tokens, lowered_from: Some(max_model_len) });
        }
        if tokens < max_model_len {
            return Err(EngineError::Config {
                field: "kv_cache_memory",
                value: format!("{:.3} GiB", gib(budget)),
                problem: format!(
                    "holds {} tokens of {} KV cache, less than one sequence of max_model_len {max_model_len}; raise the KV budget or lower max_model_len",
                    num_blocks * self.block_size,
                    self.kv_cache_dtype
                ),
            });
        }
        Ok(CacheFit { num_blocks, max_model_len, lowered_from: None })
    }

    /// The scheduler an engine builds for `model` with a KV cache of `budget` bytes (per GPU), its
    /// EOS tokens aside: enough to replay a benchmark's schedule without the model
    /// ([`nanovllm_scheduler::replay`]).
    pub fn scheduler_config(
        &self,
        model: &Qwen3Config,
        budget: usize,
    ) -> Result<SchedulerConfig, EngineError> {
        let fit = self.fit_cache(model, budget, self.max_model_len_for(model)?)?;
        Ok(self.scheduler_limits(fit.max_model_len, fit.num_blocks))
    }

    /// This configuration's limits for a cache of `num_blocks`, with no EOS tokens.
    pub(crate) fn scheduler_limits(&self, max_model_len: usize, num_blocks: usize) -> SchedulerConfig {
        SchedulerConfig {
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len,
            num_blocks,
            block_size: self.block_size,
            eos_token_ids: Vec::new(),
            step_policy: self.step_policy,
        }
    }
}

/// A KV cache sized: its blocks and the longest sequence it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheFit {
    /// Blocks of the cache.
    pub num_blocks: usize,
    /// The longest sequence, prompt and output.
    pub max_model_len: usize,
    /// The model's context, when the cache could not hold one such sequence and `max_model_len`
    /// was lowered to what it holds.
    pub lowered_from: Option<usize>,
}

pub(crate) fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
