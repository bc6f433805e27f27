//! What the engine thread drives: the [`LLM`], or a [`MockEngine`](crate::MockEngine) that
//! measures the server alone. The handlers never see which.

use nanovllm::{Completion, EngineError, LLM, Prompt, SamplingParams, SeqId, StepOutput, StopReason};

/// An engine the server can run: requests in, steps, tokens and completions out.
pub trait Engine {
    /// What the handlers need to know of it.
    fn info(&self) -> EngineInfo;
    /// Queue a request of `prompt` token ids; refused alone (with the reason) if it could never
    /// run.
    fn add_request(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<SeqId, EngineError>;
    /// Run one step.
    fn step(&mut self) -> Result<StepOutput, EngineError>;
    /// End every sample of request `id` now, freeing what it holds: the samples' completions.
    fn abort(&mut self, id: SeqId) -> Result<Vec<Completion>, EngineError>;
    /// End sample `index` of request `id` as stopped by `reason` (a stop string the handler
    /// found): its completion, or `None` if it had already finished.
    fn finish(
        &mut self,
        id: SeqId,
        index: usize,
        reason: StopReason,
    ) -> Result<Option<Completion>, EngineError>;
    /// Drop every request (after a failed step).
    fn abort_all(&mut self);
    /// Whether every request has finished.
    fn is_finished(&self) -> bool;
    /// How loaded it is now, for `/metrics`.
    fn load(&self) -> EngineLoad;
    /// Prepare, before serving, what a step would otherwise prepare when it first needs it (the
    /// GPU's decode graphs).
    fn prepare(&mut self) -> Result<(), EngineError>;
}

/// What the engine tells the server once it is built.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// Sampling values a request does not give (the model's generation_config).
    pub default_sampling: SamplingParams,
    /// The longest sequence, prompt and output.
    pub max_model_len: usize,
    /// The KV cache's dtype and block size (`vllm:cache_config_info`).
    pub cache_dtype: String,
    /// Token slots per block.
    pub block_size: usize,
    /// The KV cache, in one line (blocks, tokens, dtype, bytes, graphs).
    pub cache: String,
}

/// The engine's load at one moment, as vLLM's gauges show it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineLoad {
    /// Sequences in the running batch.
    pub running: usize,
    /// Sequences waiting to be scheduled.
    pub waiting: usize,
    /// Share of the KV cache's blocks in use, 0 to 1.
    pub kv_cache_usage: f64,
    /// Preemptions since the start.
    pub preemptions: usize,
}

impl Engine for LLM {
    fn info(&self) -> EngineInfo {
        let config = self.config();
        EngineInfo {
            default_sampling: self.default_sampling(),
            max_model_len: self.scheduler().config().max_model_len,
            cache_dtype: config.kv_cache_dtype.name().to_owned(),
            block_size: config.block_size,
            cache: self.describe_cache(),
        }
    }

    fn add_request(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<SeqId, EngineError> {
        LLM::add_request(self, Prompt::Tokens(prompt), params)
    }

    fn step(&mut self) -> Result<StepOutput, EngineError> {
        LLM::step(self)
    }

    fn abort(&mut self, id: SeqId) -> Result<Vec<Completion>, EngineError> {
        LLM::abort(self, id)
    }

    fn finish(
        &mut self,
        id: SeqId,
        index: usize,
        reason: StopReason,
    ) -> Result<Option<Completion>, EngineError> {
        LLM::finish(self, id, index, reason)
    }

    fn abort_all(&mut self) {
        LLM::abort_all(self);
    }

    fn is_finished(&self) -> bool {
        LLM::is_finished(self)
    }

    fn prepare(&mut self) -> Result<(), EngineError> {
        self.capture_cuda_graphs().map(drop)
    }

    fn load(&self) -> EngineLoad {
        let scheduler = self.scheduler();
        let blocks = scheduler.block_manager();
        let used = blocks.num_blocks() - blocks.num_free_blocks();
        EngineLoad {
            running: scheduler.num_running(),
            waiting: scheduler.num_waiting(),
            kv_cache_usage: used as f64 / blocks.num_blocks() as f64,
            preemptions: scheduler.num_preemptions(),
        }
    }
}
