//! The `LLM`: requests in, completions out, one scheduler step at a time.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use kv_cache::CacheDtype;
use model_qwen3::{GenerationConfig, Qwen3Model, SeqInput};
use rand::{Rng, SeedableRng, rngs::StdRng};
use scheduler::{FinishReason, Phase, SamplingParams, Scheduler, SchedulerConfig, SeqId, Sequence};

use crate::backend::{Backend, Device};
use crate::cache::AnyCache;
use crate::progress::Progress;
use crate::{ChatTemplate, EngineError, Message, Sampler, Tokenizer};

/// Where the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadFormat {
    /// The directory's safetensors checkpoint.
    #[default]
    Safetensors,
    /// Random weights from the config alone, seeded (vLLM's `--load-format dummy`).
    Dummy,
}

/// Engine settings, with nano-vllm's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Storage dtype of the KV cache.
    pub kv_cache_dtype: CacheDtype,
    /// Where the model runs.
    pub device: Device,
    /// Bytes for the KV cache (all layers, K and V, scales included). `None`: 256 MiB on the CPU;
    /// on a GPU, what `gpu_memory_utilization` leaves after the weights and the activations.
    pub kv_cache_memory_bytes: Option<usize>,
    /// Fraction of the GPU's memory the engine may take in all (nano-vllm: 0.9).
    pub gpu_memory_utilization: f64,
    /// Token slots per cache block.
    pub block_size: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens computed per step.
    pub max_num_batched_tokens: usize,
    /// Longest sequence; `None`: the model's context length, at most 4096 (as nano-vllm).
    pub max_model_len: Option<usize>,
    /// Seed of the dummy weights and of requests that bring no seed of their own.
    pub seed: u64,
    /// Show a progress bar in `generate`.
    pub progress: bool,
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
            max_model_len: None,
            seed: 0,
            progress: false,
        }
    }
}

/// A prompt: text (tokenized by the model's tokenizer) or token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Self {
        Prompt::Text(text.to_owned())
    }
}

impl From<String> for Prompt {
    fn from(text: String) -> Self {
        Prompt::Text(text)
    }
}

impl From<Vec<u32>> for Prompt {
    fn from(ids: Vec<u32>) -> Self {
        Prompt::Tokens(ids)
    }
}

/// A finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The request's id, as `add_request` returned it.
    pub id: SeqId,
    /// The prompt's tokens.
    pub prompt_token_ids: Vec<u32>,
    /// The generated tokens (a final EOS or stop token included).
    pub token_ids: Vec<u32>,
    /// The generated text, when the engine has a tokenizer.
    pub text: Option<String>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
}

/// What one step did.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// Prefill or decode (`None` when nothing ran).
    pub phase: Option<Phase>,
    /// Tokens the model computed.
    pub num_tokens: usize,
    /// The token each sampling sequence got, in batch order.
    pub tokens: Vec<(SeqId, u32)>,
    /// Requests that finished in this step.
    pub finished: Vec<Completion>,
}

/// The engine: a Qwen3 model, its tokenizer, a paged KV cache and a scheduler.
pub struct LLM {
    model: Qwen3Model,
    tokenizer: Option<Tokenizer>,
    chat_template: Option<ChatTemplate>,
    generation: GenerationConfig,
    scheduler: Scheduler,
    backend: Backend,
    samplers: HashMap<SeqId, Sampler>,
    seeds: StdRng,
    config: EngineConfig,
}

impl std::fmt::Debug for LLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LLM").field("config", &self.config).field("model", self.model.config()).finish()
    }
}

impl LLM {
    /// Load a model directory: `config.json`, the weights (or dummy ones), `generation_config.json`
    /// and, when present, `tokenizer.json` and the chat template of `tokenizer_config.json`.
    pub fn load(dir: &Path, config: EngineConfig, format: LoadFormat) -> Result<Self, EngineError> {
        let model = match format {
            LoadFormat::Safetensors => Qwen3Model::load(dir)?,
            LoadFormat::Dummy => {
                let model_config = model_qwen3::Qwen3Config::from_file(&dir.join("config.json"))?;
                Qwen3Model::random(model_config, config.seed, 0.02)
            }
        };
        let generation = GenerationConfig::from_file(&dir.join("generation_config.json"))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            if tokenizer_path.exists() { Some(Tokenizer::from_file(&tokenizer_path)?) } else { None };
        let chat_template = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
        let mut llm = Self::new(model, generation, config)?;
        llm.tokenizer = tokenizer;
        llm.chat_template = chat_template;
        Ok(llm)
    }

    /// An engine over a model already in memory, with no tokenizer (token-id prompts only).
    pub fn new(
        model: Qwen3Model,
        generation: GenerationConfig,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let c = model.config();
        let max_model_len = config.max_model_len.unwrap_or(c.max_position_embeddings.min(4096));
        if max_model_len > c.max_position_embeddings {
            return Err(EngineError::Config {
                field: "max_model_len",
                value: max_model_len.to_string(),
                problem: format!(
                    "exceeds the model's max_position_embeddings ({})",
                    c.max_position_embeddings
                ),
            });
        }
        let (backend, num_blocks) = build_backend(&model, &config, max_model_len)?;
        let scheduler = Scheduler::new(SchedulerConfig {
            max_num_seqs: config.max_num_seqs,
            max_num_batched_tokens: config.max_num_batched_tokens,
            max_model_len,
            num_blocks,
            block_size: config.block_size,
            eos_token_ids: generation.eos_token_ids.clone(),
        })?;
        Ok(LLM {
            backend,
            model,
            tokenizer: None,
            chat_template: None,
            generation,
            scheduler,
            samplers: HashMap::new(),
            seeds: StdRng::seed_from_u64(config.seed),
            config,
        })
    }

    /// The tokenizer, if the model directory had one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Sampling parameters with the checkpoint's suggested defaults (`generation_config.json`)
    /// where it gives them, and nano-vllm's otherwise.
    pub fn default_sampling(&self) -> SamplingParams {
        let defaults = SamplingParams::default();
        SamplingParams {
            temperature: self.generation.temperature.unwrap_or(defaults.temperature),
            top_k: self.generation.top_k.filter(|&k| k > 0).or(defaults.top_k),
            top_p: self.generation.top_p.unwrap_or(defaults.top_p),
            ..defaults
        }
    }

    /// The model.
    pub fn model(&self) -> &Qwen3Model {
        &self.model
    }

    /// The scheduler (its limits, its block manager's geometry, its statistics).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// One line on the KV cache: blocks, tokens that fit, dtype and bytes.
    pub fn describe_cache(&self) -> String {
        let blocks = self.scheduler.block_manager();
        let c = self.model.config();
        let tokens = blocks.num_blocks() * blocks.block_size();
        let bytes = tokens
            * c.num_hidden_layers
            * self.config.kv_cache_dtype.bytes_per_token_per_layer(c.num_key_value_heads, c.head_dim);
        format!(
            "KV cache: {} blocks of {} = {tokens} tokens, {}, {:.2} GiB",
            blocks.num_blocks(),
            blocks.block_size(),
            self.config.kv_cache_dtype,
            gib(bytes)
        )
    }

    /// A user message wrapped in the model's chat template, ready to generate an answer.
    pub fn chat_prompt(&self, user: &str, enable_thinking: bool) -> Result<String, EngineError> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            EngineError::ChatTemplate(
                "the model directory's tokenizer_config.json has no chat_template".into(),
            )
        })?;
        template.render(&[Message::user(user)], enable_thinking)
    }

    /// Queue a request; refused alone (with the reason) if it could never run.
    pub fn add_request(&mut self, prompt: Prompt, params: SamplingParams) -> Result<SeqId, EngineError> {
        let ids = match prompt {
            Prompt::Tokens(ids) => ids,
            Prompt::Text(text) => match &self.tokenizer {
                Some(tokenizer) => tokenizer.encode(&text)?,
                None => return Err(EngineError::NoTokenizer("the model directory".into())),
            },
        };
        let vocab = self.model.config().vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(EngineError::Config {
                field: "prompt token id",
                value: bad.to_string(),
                problem: format!("outside the vocabulary of {vocab}"),
            });
        }
        let fallback_seed = self.seeds.random();
        let sampler = Sampler::new(&params, fallback_seed);
        let id = self.scheduler.add(ids, params)?;
        self.samplers.insert(id, sampler);
        Ok(id)
    }

    /// Whether every accepted request has finished.
    pub fn is_finished(&self) -> bool {
        self.scheduler.is_finished()
    }

    /// Run one model step: schedule, compute, sample, and report what finished.
    pub fn step(&mut self) -> Result<StepOutput, EngineError> {
        let batch = self.scheduler.schedule();
        if batch.is_empty() {
            return Ok(StepOutput::default());
        }
        let inputs: Vec<SeqInput<'_>> = batch
            .seqs
            .iter()
            .map(|item| {
                let seq = self.scheduler.sequence(item.id).expect("scheduled sequences are live");
                SeqInput {
                    tokens: &seq.token_ids[item.start..item.start + item.num_tokens],
                    start: item.start,
                    block_table: &seq.block_table,
                    logits: item.samples,
                }
            })
            .collect();
        let logits = self.backend.forward(&self.model, &inputs)?;
        let mut tokens = Vec::with_capacity(logits.len());
        for (item, logits) in batch.seqs.iter().filter(|s| s.samples).zip(&logits) {
            let sampler = self.samplers.get_mut(&item.id).expect("every request has a sampler");
            tokens.push((item.id, sampler.sample(logits)));
        }
        let sampled: Vec<u32> = tokens.iter().map(|&(_, t)| t).collect();
        let finished = self.scheduler.postprocess(&batch, &sampled)?;
        let finished = finished.into_iter().map(|seq| self.complete(seq)).collect::<Result<_, _>>()?;
        Ok(StepOutput { phase: Some(batch.phase), num_tokens: batch.num_tokens(), tokens, finished })
    }

    /// Run `prompts` to completion and return, in input order, each completion or the reason its
    /// request was refused (the others still run).
    pub fn generate(
        &mut self,
        prompts: Vec<Prompt>,
        params: &SamplingParams,
    ) -> Result<Vec<Result<Completion, EngineError>>, EngineError> {
        let mut results: Vec<Option<Result<Completion, EngineError>>> = Vec::new();
        let mut index_of = HashMap::new();
        for (index, prompt) in prompts.into_iter().enumerate() {
            match self.add_request(prompt, params.clone()) {
                Ok(id) => {
                    index_of.insert(id, index);
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut progress = Progress::new(index_of.len(), self.config.progress);
        while !self.is_finished() {
            let started = Instant::now();
            let output = self.step()?;
            progress.step(output.phase, output.num_tokens, output.finished.len(), started.elapsed());
            for completion in output.finished {
                let index = index_of[&completion.id];
                results[index] = Some(Ok(completion));
            }
        }
        progress.finish();
        Ok(results.into_iter().map(|r| r.expect("every accepted request finishes")).collect())
    }

    fn complete(&mut self, seq: Sequence) -> Result<Completion, EngineError> {
        self.samplers.remove(&seq.id);
        let text = match &self.tokenizer {
            Some(tokenizer) => Some(tokenizer.decode(seq.completion())?),
            None => None,
        };
        Ok(Completion {
            id: seq.id,
            prompt_token_ids: seq.prompt().to_vec(),
            token_ids: seq.completion().to_vec(),
            text,
            finish_reason: seq.finish_reason.expect("finished sequences have a reason"),
        })
    }
}

/// The backend for `config.device` and the number of cache blocks it holds.
fn build_backend(
    model: &Qwen3Model,
    config: &EngineConfig,
    max_model_len: usize,
) -> Result<(Backend, usize), EngineError> {
    if config.block_size == 0 {
        return Err(EngineError::Config {
            field: "block_size",
            value: "0".into(),
            problem: "must be at least 1".into(),
        });
    }
    match config.device {
        Device::Cpu => {
            let budget = config.kv_cache_memory_bytes.unwrap_or(256 << 20);
            let num_blocks = num_blocks(model, config, budget, max_model_len)?;
            let cache =
                AnyCache::new(config.kv_cache_dtype, model.cache_layout(num_blocks, config.block_size))?;
            Ok((Backend::Cpu(cache), num_blocks))
        }
        Device::Cuda => cuda_backend(model, config, max_model_len),
    }
}

#[cfg(feature = "cuda")]
fn cuda_backend(
    model: &Qwen3Model,
    config: &EngineConfig,
    max_model_len: usize,
) -> Result<(Backend, usize), EngineError> {
    use model_qwen3::cuda::GpuQwen3;
    let gpu = kv_quant::cuda::Gpu::open()?;
    let budget = match config.kv_cache_memory_bytes {
        Some(bytes) => bytes,
        None => {
            let (free, total) = gpu.ctx.mem_get_info().map_err(kv_quant::cuda::GpuError::from)?;
            let c = model.config();
            let activations = GpuQwen3::activation_bytes(
                c,
                config.max_num_batched_tokens,
                max_model_len,
                config.max_num_seqs,
            );
            let allowed = (total as f64 * config.gpu_memory_utilization) as usize;
            let taken = (total - free) + GpuQwen3::weight_bytes(c) + activations;
            allowed.checked_sub(taken).ok_or_else(|| EngineError::Config {
                field: "gpu_memory_utilization",
                value: config.gpu_memory_utilization.to_string(),
                problem: format!(
                    "leaves no room for a KV cache: {:.1} GiB allowed, {:.1} GiB in use, weights and activations; raise it or set --kv-cache-memory-gib",
                    gib(allowed),
                    gib(taken)
                ),
            })?
        }
    };
    let num_blocks = num_blocks(model, config, budget, max_model_len)?;
    let gpu_model = GpuQwen3::new(&gpu, model, config.kv_cache_dtype, num_blocks, config.block_size)?;
    Ok((Backend::Cuda(Box::new(gpu_model)), num_blocks))
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend(_: &Qwen3Model, _: &EngineConfig, _: usize) -> Result<(Backend, usize), EngineError> {
    Err(EngineError::Device("this build has no CUDA support; rebuild with --features cuda".into()))
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Blocks that fit a KV budget of `budget` bytes; at least one sequence of `max_model_len` must fit.
fn num_blocks(
    model: &Qwen3Model,
    config: &EngineConfig,
    budget: usize,
    max_model_len: usize,
) -> Result<usize, EngineError> {
    let c = model.config();
    let per_token = c.num_hidden_layers
        * config.kv_cache_dtype.bytes_per_token_per_layer(c.num_key_value_heads, c.head_dim);
    let num_blocks = budget / (per_token * config.block_size);
    if num_blocks * config.block_size < max_model_len {
        return Err(EngineError::Config {
            field: "kv_cache_memory",
            value: format!("{:.3} GiB", gib(budget)),
            problem: format!(
                "holds {} tokens of {} KV cache, less than one sequence of max_model_len {max_model_len}; raise the KV budget or lower max_model_len",
                num_blocks * config.block_size,
                config.kv_cache_dtype
            ),
        });
    }
    Ok(num_blocks)
}
