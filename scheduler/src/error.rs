use thiserror::Error;

/// A request or configuration the scheduler refuses. Each names the value and the limit.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ScheduleError {
    /// A request with no prompt tokens.
    #[error("empty prompt: a request needs at least one token")]
    EmptyPrompt,
    /// A request that would grow past the model's context length.
    #[error(
        "request too long: prompt of {prompt_len} tokens + max_tokens {max_tokens} = {total} > max_model_len {max_model_len}"
    )]
    TooLong {
        /// Prompt tokens.
        prompt_len: usize,
        /// Tokens it may generate.
        max_tokens: usize,
        /// Their sum.
        total: usize,
        /// The limit.
        max_model_len: usize,
    },
    /// A request that would not fit even with the whole cache to itself.
    #[error(
        "request can never fit in the KV cache: {tokens} tokens need {needed_blocks} blocks of {block_size}, the cache has {total_blocks}"
    )]
    NeverFits {
        /// Prompt plus max_tokens.
        tokens: usize,
        /// Blocks those tokens need.
        needed_blocks: usize,
        /// Slots per block.
        block_size: usize,
        /// Blocks in the whole cache.
        total_blocks: usize,
    },
    /// A sampling parameter out of range.
    #[error("invalid sampling parameter {field} = {value}: expected {expected}")]
    InvalidSampling {
        /// The parameter.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A request for more samples (`n`) than sequences may run at once.
    #[error("n = {n} samples of one prompt, more than max_num_seqs {max_num_seqs} sequences running at once")]
    TooManySamples {
        /// Samples asked for.
        n: usize,
        /// The limit.
        max_num_seqs: usize,
    },
    /// A scheduler setting out of range.
    #[error("invalid scheduler setting {field} = {value}: must be at least 1")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: usize,
    },
    /// The model's step output does not match the batch it was given.
    #[error("step output has {got} sampled tokens for a batch that samples {expected}")]
    StepOutput {
        /// Tokens the batch samples.
        expected: usize,
        /// Tokens given.
        got: usize,
    },
    /// The block manager refused its shape.
    #[error(transparent)]
    Cache(#[from] nanovllm_kv_cache::CacheError),
}
