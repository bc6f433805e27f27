//! The `LLM`: requests in, completions out, one scheduler step at a time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use nanovllm_kv_cache::BlockManager;
use nanovllm_qwen3::{
    Checkpoint, DummyWeights, GenerationConfig, Qwen3Config, Qwen3Model, SeqInput, WeightSource,
};
use nanovllm_scheduler::{
    FinishReason, Phase, SamplingParams, ScheduleStats, ScheduledSeq, Scheduler, SchedulerConfig, SeqId,
    Sequence, StopReason,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::backend::{Backend, Weights, build_backend};
use crate::config::gib;
use crate::progress::Progress;
use crate::sample_text::SampleText;
use crate::{ChatTemplate, EngineConfig, EngineError, Message, Sampler, Tokenizer};
use nanovllm_qwen3::{Sampled, TokenLogprobs};

/// Where the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadFormat {
    /// The directory's safetensors checkpoint.
    #[default]
    Safetensors,
    /// Random weights from the config alone, seeded (vLLM's `--load-format dummy`).
    Dummy,
}

impl LoadFormat {
    /// Its name, as vLLM's `--load-format` spells it: `safetensors` or `dummy`.
    pub const fn name(self) -> &'static str {
        match self {
            LoadFormat::Safetensors => "safetensors",
            LoadFormat::Dummy => "dummy",
        }
    }
}

impl std::fmt::Display for LoadFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LoadFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [LoadFormat::Safetensors, LoadFormat::Dummy]
            .into_iter()
            .find(|format| format.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown load format {s:?}: expected safetensors or dummy"))
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

/// A finished request, or one of its `n` samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The request's id, as `add_request` returned it (the same for all its samples).
    pub id: SeqId,
    /// Which of the request's `n` samples this is (0 to n - 1; vLLM's `index`).
    pub index: usize,
    /// The prompt's tokens.
    pub prompt_token_ids: Vec<u32>,
    /// How many of them came from the prefix cache (vLLM's `cached_tokens`).
    pub cached_prompt_tokens: usize,
    /// The generated tokens (a final EOS or stop token included).
    pub token_ids: Vec<u32>,
    /// The generated text, when the engine has a tokenizer and the request asked for it
    /// (`detokenize`; cut at a stop string).
    pub text: Option<String>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// The stop token or string that ended it (`None` for EOS, length or abort).
    pub stop_reason: Option<StopReason>,
    /// Each generated token's log-probabilities, when the request asked for them.
    pub logprobs: Option<Vec<TokenLogprobs>>,
}

/// What the engine keeps for a sequence while it runs (a request, or one of its samples).
#[derive(Debug, Clone)]
struct RequestState {
    /// The request it belongs to, and which of its samples it is.
    request: SeqId,
    index: usize,
    /// The samples still to be forked from it at the end of its prefill (indices 1 to n - 1).
    siblings: Vec<RequestState>,
    sampler: Sampler,
    /// Its text as it is decoded, if it has stop strings (which are found in it).
    stop: Option<SampleText>,
    /// Whether its completion carries its text.
    detokenize: bool,
    /// The log-probabilities of its tokens so far, if it asked for them.
    logprobs: Option<Vec<TokenLogprobs>>,
}

/// A token one of a request's samples got in a step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepToken {
    /// The request.
    pub id: SeqId,
    /// Which of its samples.
    pub index: usize,
    /// The token.
    pub token: u32,
    /// Its log-probabilities, when the request asked for them.
    pub logprobs: Option<TokenLogprobs>,
}

/// What one step did.
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// Prefill or decode (`None` when nothing ran).
    pub phase: Option<Phase>,
    /// Tokens the model computed.
    pub num_tokens: usize,
    /// Of those, tokens of prompts (or of preempted sequences recomputed): all but the decodes.
    pub num_prefill_tokens: usize,
    /// The tokens drawn, in batch order.
    pub tokens: Vec<StepToken>,
    /// Requests that finished in this step.
    pub finished: Vec<Completion>,
}

/// Counters of the work done since the engine started (or `reset_stats`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Steps, tokens, peak running sequences and preemptions, counted as `nanovllm_scheduler::replay`
    /// counts them, so that a run and its replay compare field by field.
    pub schedule: ScheduleStats,
    /// Seconds spent in prefill steps.
    pub prefill_seconds: f64,
    /// Seconds spent in decode steps.
    pub decode_seconds: f64,
    /// Of the steps' seconds, those in the model's forward pass and draw; the rest is the engine's
    /// own host work (scheduling, outputs, stop strings), during which the GPU waits.
    pub forward_seconds: f64,
    /// Of `forward_seconds`, the GPU model's host work before a step's kernels are queued (laying
    /// out and uploading its inputs), during which the GPU waits too; 0 on the CPU.
    pub prepare_seconds: f64,
}

/// The engine: a Qwen3 model, its tokenizer, a paged KV cache and a scheduler.
pub struct LLM {
    /// The model's architecture (its weights are in the backend).
    model_config: Qwen3Config,
    tokenizer: Option<Tokenizer>,
    chat_template: Option<ChatTemplate>,
    generation: GenerationConfig,
    scheduler: Scheduler,
    backend: Backend,
    requests: HashMap<SeqId, RequestState>,
    seeds: StdRng,
    config: EngineConfig,
    /// The model's context, when the cache could not hold it and `max_model_len` was lowered.
    context_lowered_from: Option<usize>,
    stats: EngineStats,
}

impl std::fmt::Debug for LLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LLM").field("config", &self.config).field("model", &self.model_config).finish()
    }
}

impl LLM {
    /// Load a model directory: `config.json`, the weights (or dummy ones), `generation_config.json`
    /// and, when present, `tokenizer.json` and the chat template of `tokenizer_config.json`.
    pub fn load(dir: &Path, config: EngineConfig, format: LoadFormat) -> Result<Self, EngineError> {
        let started = Instant::now();
        let source: Arc<dyn WeightSource> = match format {
            LoadFormat::Safetensors => Arc::new(Checkpoint::open(dir)?),
            LoadFormat::Dummy => {
                let model_config = Qwen3Config::from_file(&dir.join("config.json"))?;
                Arc::new(DummyWeights::new(model_config, config.seed, 0.02))
            }
        };
        tracing::info!(
            model = %dir.display(),
            %format,
            parameters = source.config().num_parameters(),
            seconds = started.elapsed().as_secs_f64(),
            "checkpoint opened"
        );
        let generation = GenerationConfig::from_file(&dir.join("generation_config.json"))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            if tokenizer_path.exists() { Some(Tokenizer::from_file(&tokenizer_path)?) } else { None };
        let chat_template = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
        let mut llm = Self::build(Weights::Source(source), generation, config)?;
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
        Self::build(Weights::Host(Box::new(model)), generation, config)
    }

    fn build(
        weights: Weights,
        generation: GenerationConfig,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let started = Instant::now();
        let model_config = weights.config().clone();
        let max_model_len = config.max_model_len_for(&model_config)?;
        let (backend, fit) = build_backend(weights, &config, max_model_len)?;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "model loaded and KV cache allocated");
        let scheduler = Scheduler::new(SchedulerConfig {
            eos_token_ids: generation.eos_token_ids.clone(),
            ..config.scheduler_limits(fit.max_model_len, fit.num_blocks)
        })?;
        Ok(LLM {
            backend,
            model_config,
            tokenizer: None,
            chat_template: None,
            generation,
            scheduler,
            requests: HashMap::new(),
            seeds: StdRng::seed_from_u64(config.seed),
            config,
            context_lowered_from: fit.lowered_from,
            stats: EngineStats::default(),
        })
    }

    /// The tokenizer, if the model directory had one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Sampling parameters with the checkpoint's suggested defaults (`generation_config.json`:
    /// temperature, top-k, top-p, min-p and repetition penalty, as vLLM takes them) where it gives
    /// them, and nano-vllm's otherwise.
    pub fn default_sampling(&self) -> SamplingParams {
        let defaults = SamplingParams::default();
        let g = &self.generation;
        SamplingParams {
            temperature: g.temperature.unwrap_or(defaults.temperature),
            top_k: g.top_k.filter(|&k| k > 0).or(defaults.top_k),
            top_p: g.top_p.unwrap_or(defaults.top_p),
            min_p: g.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: g.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            ..defaults
        }
    }

    /// The model's architecture.
    pub fn model_config(&self) -> &Qwen3Config {
        &self.model_config
    }

    /// The scheduler (its limits, its block manager's geometry, its statistics).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Work done since the start or the last `reset_stats`.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Zero the counters (after a warm-up).
    pub fn reset_stats(&mut self) {
        self.stats = EngineStats::default();
    }

    /// Capture now every CUDA graph of decode steps that no step has needed yet (the GPU captures
    /// each on first use otherwise; the CPU has none): how many that was. Before timing steady
    /// steps, and before serving, as vLLM captures its graphs.
    pub fn capture_cuda_graphs(&mut self) -> Result<usize, EngineError> {
        self.backend.capture_graphs()
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// One line on the KV cache: blocks, tokens that fit, dtype and bytes (per GPU under tensor
    /// parallelism).
    pub fn describe_cache(&self) -> String {
        let blocks = self.scheduler.block_manager();
        let tokens = blocks.num_blocks() * blocks.block_size();
        let bytes = tokens * self.config.kv_bytes_per_token(&self.model_config);
        let per_gpu = if self.config.tensor_parallel_size > 1 { " per GPU" } else { "" };
        let max_model_len = self.scheduler.config().max_model_len;
        let lowered = match self.context_lowered_from {
            Some(context) => format!(
                " (lowered from the model's {context}: the cache holds no longer sequence; a larger KV budget raises it)"
            ),
            None => String::new(),
        };
        format!(
            "KV cache: {} blocks of {} = {tokens} tokens, {}, {:.2} GiB{per_gpu}{}; max_model_len {max_model_len}{lowered}",
            blocks.num_blocks(),
            blocks.block_size(),
            self.config.kv_cache_dtype,
            gib(bytes),
            self.backend.describe()
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
        self.check_token_ids(&ids)?;
        if !params.stop.is_empty() && self.tokenizer.is_none() {
            return Err(EngineError::NoTokenizer("the model directory (stop strings need one)".into()));
        }
        let fallback_seed = self.seeds.random();
        let stop_tokens = params.stop_tokens(&self.generation.eos_token_ids);
        let sampler = Sampler::new(&params, &ids, stop_tokens, fallback_seed);
        let stop = (!params.stop.is_empty()).then(|| SampleText::new(&params));
        let logprobs = params.logprobs.map(|_| Vec::new());
        let (n, detokenize) = (params.n, params.detokenize);
        let id = self.scheduler.add(ids, params)?;
        let state =
            RequestState { request: id, index: 0, siblings: Vec::new(), sampler, stop, detokenize, logprobs };
        // Sample i draws from seed + i (vLLM's rule for a request's samples).
        let siblings = (1..n)
            .map(|index| RequestState { index, sampler: state.sampler.sibling(index), ..state.clone() })
            .collect();
        self.requests.insert(id, RequestState { siblings, ..state });
        Ok(id)
    }

    /// The logits at every position of `tokens` (row `i` predicts token `i + 1`), for scoring text
    /// (perplexity, KL between caches). It runs outside the scheduler, so the engine must be idle;
    /// each position is a one-token query over the cache, `SCORE_CHUNK` positions per forward pass.
    pub fn score(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        const SCORE_CHUNK: usize = 256;
        if !self.scheduler.is_finished() {
            return Err(EngineError::Busy);
        }
        self.check_token_ids(tokens)?;
        let blocks = self.scheduler.block_manager();
        let (num_blocks, block_size) = (blocks.num_blocks(), blocks.block_size());
        let mut manager = BlockManager::new(num_blocks, block_size)?;
        let (table, _) = manager.allocate(tokens).map_err(|_| {
            EngineError::InvalidPrompt(format!(
                "{} tokens to score, more than the KV cache holds ({} tokens)",
                tokens.len(),
                num_blocks * block_size
            ))
        })?;
        let mut logits = Vec::with_capacity(tokens.len());
        for start in (0..tokens.len()).step_by(SCORE_CHUNK) {
            let end = (start + SCORE_CHUNK).min(tokens.len());
            let inputs: Vec<SeqInput<'_>> = (start..end)
                .map(|pos| SeqInput {
                    tokens: &tokens[pos..pos + 1],
                    start: pos,
                    block_table: &table,
                    logits: 1,
                })
                .collect();
            logits.extend(self.backend.logits(&inputs)?);
        }
        // The blocks written here may hold prefixes the scheduler still remembers.
        self.scheduler.reset_prefix_cache();
        Ok(logits)
    }

    fn check_token_ids(&self, ids: &[u32]) -> Result<(), EngineError> {
        let vocab = self.model_config.vocab_size;
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(bad) => Err(EngineError::InvalidPrompt(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            ))),
            None => Ok(()),
        }
    }

    /// End request `id` now, running or still queued, every sample of it, and free their cache
    /// blocks at once: the completions of the samples not finished yet, with `finish_reason`
    /// abort (none if all had finished: a front end's cancel, or a client that went away).
    pub fn abort(&mut self, id: SeqId) -> Result<Vec<Completion>, EngineError> {
        let live: Vec<SeqId> =
            self.requests.iter().filter(|(_, state)| state.request == id).map(|(&seq, _)| seq).collect();
        let mut aborted = Vec::new();
        for seq_id in live {
            if let Some(seq) = self.scheduler.finish(seq_id, FinishReason::Abort, None) {
                let siblings = self.requests.get_mut(&seq_id).map(|s| std::mem::take(&mut s.siblings));
                for sibling in siblings.unwrap_or_default() {
                    // Never forked: an empty sample of the same prompt.
                    let mut unforked = seq.clone();
                    unforked.token_ids.truncate(seq.prompt_len);
                    aborted.push(self.completion(unforked, sibling)?);
                }
                aborted.push(self.complete(seq)?);
            }
        }
        aborted.sort_by_key(|c| c.index);
        Ok(aborted)
    }

    /// End sample `index` of request `id` as stopped by `reason` (a front end that detokenizes
    /// on its own found a stop string) and free its blocks at once: its completion, or `None` if
    /// it had already finished.
    pub fn finish(
        &mut self,
        id: SeqId,
        index: usize,
        reason: StopReason,
    ) -> Result<Option<Completion>, EngineError> {
        let sample =
            self.requests.iter().find(|(_, s)| s.request == id && s.index == index).map(|(&seq, _)| seq);
        let Some(seq) = sample.and_then(|seq| self.scheduler.finish(seq, FinishReason::Stop, Some(reason)))
        else {
            return Ok(None);
        };
        self.complete(seq).map(Some)
    }

    /// Drop every request, running or waiting (for Ctrl-C), releasing their cache blocks.
    pub fn abort_all(&mut self) {
        for id in self.scheduler.abort_all() {
            self.requests.remove(&id);
        }
    }

    /// Whether every accepted request has finished.
    pub fn is_finished(&self) -> bool {
        self.scheduler.is_finished()
    }

    /// Run one model step: schedule, compute, sample, and report what finished.
    pub fn step(&mut self) -> Result<StepOutput, EngineError> {
        let started = Instant::now();
        let preemptions_before = self.scheduler.num_preemptions();
        let batch = self.scheduler.schedule();
        if batch.is_empty() {
            return Ok(StepOutput::default());
        }
        let running = self.scheduler.num_running();
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
        let sampling: Vec<&ScheduledSeq> = batch.seqs.iter().filter(|s| s.samples > 0).collect();
        // The sampling sequences' states leave the map while the backend holds their samplers; a
        // sequence that forks draws for its siblings too, from the same logits.
        let mut states: Vec<RequestState> = Vec::with_capacity(batch.num_samples());
        let mut positions = Vec::with_capacity(batch.num_samples());
        for item in &sampling {
            let mut state = self.requests.remove(&item.id).expect("every live request has its state");
            let siblings = std::mem::take(&mut state.siblings);
            debug_assert_eq!(siblings.len() + 1, item.samples);
            states.push(state);
            states.extend(siblings);
            positions.extend(std::iter::repeat_n(item.start + item.num_tokens, item.samples));
        }
        let mut samplers: Vec<&mut Sampler> = states.iter_mut().map(|state| &mut state.sampler).collect();
        let (forward_started, prepared_before) = (Instant::now(), self.backend.prepare_seconds());
        let sampled = self.backend.forward_and_sample(&inputs, &mut samplers, &positions);
        self.stats.forward_seconds += forward_started.elapsed().as_secs_f64();
        self.stats.prepare_seconds += self.backend.prepare_seconds() - prepared_before;
        let sampled = match sampled {
            Ok(sampled) => sampled,
            Err(e) => {
                self.restore(&sampling, states);
                return Err(e.into());
            }
        };
        let ids: Vec<u32> = sampled.iter().map(|s| s.token).collect();
        let mut finished = self.scheduler.postprocess(&batch, &ids)?;
        // Each draw's sequence: the scheduled one, then its forks in order.
        let mut forks = self.scheduler.forks().iter();
        let mut seq_ids: Vec<SeqId> = Vec::with_capacity(ids.len());
        for item in &sampling {
            seq_ids.push(item.id);
            seq_ids.extend(forks.by_ref().take(item.samples - 1).map(|f| f.child));
        }
        let copies: Vec<_> = self.scheduler.forks().iter().filter_map(|f| f.copy).collect();
        self.backend.copy_blocks(&copies)?;
        self.requests.extend(seq_ids.iter().copied().zip(states));
        let tokens = seq_ids
            .iter()
            .zip(&sampled)
            .map(|(seq, drawn)| {
                let state = &self.requests[seq];
                let (token, logprobs) = (drawn.token, drawn.logprobs.clone());
                StepToken { id: state.request, index: state.index, token, logprobs }
            })
            .collect();
        for (&seq_id, drawn) in seq_ids.iter().zip(sampled) {
            let finished_seq = finished.iter_mut().find(|seq| seq.id == seq_id);
            if let Some(stopped) = self.observe(seq_id, drawn, finished_seq)? {
                finished.push(stopped);
            }
        }
        let finished = finished.into_iter().map(|seq| self.complete(seq)).collect::<Result<_, _>>()?;
        let seconds = started.elapsed().as_secs_f64();
        self.stats.schedule.record(&batch, running);
        self.stats.schedule.preemptions += self.scheduler.num_preemptions() - preemptions_before;
        match batch.phase {
            Phase::Prefill => self.stats.prefill_seconds += seconds,
            Phase::Decode => self.stats.decode_seconds += seconds,
        }
        Ok(StepOutput {
            phase: Some(batch.phase),
            num_tokens: batch.num_tokens(),
            num_prefill_tokens: batch.num_prefill_tokens(),
            tokens,
            finished,
        })
    }

    /// Run `prompts` to completion and return, in input order, each prompt's completions (`n` of
    /// them, in sample order; one when `n` is 1) or the reason its request was refused (one entry;
    /// the others still run).
    pub fn generate(
        &mut self,
        prompts: Vec<Prompt>,
        params: &SamplingParams,
    ) -> Result<Vec<Result<Completion, EngineError>>, EngineError> {
        self.generate_until(prompts, params, &|| false)
    }

    /// [`generate`](Self::generate), checking `interrupted` before every step: when it turns true,
    /// every request is dropped and the call returns [`EngineError::Interrupted`].
    pub fn generate_until(
        &mut self,
        prompts: Vec<Prompt>,
        params: &SamplingParams,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Vec<Result<Completion, EngineError>>, EngineError> {
        let mut results: Vec<Option<Result<Completion, EngineError>>> = Vec::new();
        let mut slot_of = HashMap::new();
        for prompt in prompts {
            match self.add_request(prompt, params.clone()) {
                Ok(id) => {
                    for index in 0..params.n {
                        slot_of.insert((id, index), results.len());
                        results.push(None);
                    }
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut progress = Progress::new(slot_of.len(), self.config.progress);
        while !self.is_finished() {
            if interrupted() {
                self.abort_all();
                progress.finish();
                return Err(EngineError::Interrupted);
            }
            let started = Instant::now();
            let output = self.step()?;
            progress.step(output.phase, output.num_tokens, output.finished.len(), started.elapsed());
            for completion in output.finished {
                let slot = slot_of[&(completion.id, completion.index)];
                results[slot] = Some(Ok(completion));
            }
        }
        progress.finish();
        Ok(results.into_iter().map(|r| r.expect("every accepted request finishes")).collect())
    }

    /// Keep a sampled token's log-probabilities, and look for the request's stop strings in its
    /// text. A match ends the request: if `postprocess` already finished it (`finished`, its
    /// length reached in the same token), the stop string becomes its reason, as in vLLM;
    /// otherwise it is taken out of the scheduler and returned.
    fn observe(
        &mut self,
        id: SeqId,
        drawn: Sampled,
        finished: Option<&mut Sequence>,
    ) -> Result<Option<Sequence>, EngineError> {
        let token = drawn.token;
        let tokenizer = self.tokenizer.as_ref();
        let state = self.requests.get_mut(&id).expect("every live request has its state");
        if let (Some(all), Some(logprobs)) = (&mut state.logprobs, drawn.logprobs) {
            all.push(logprobs);
        }
        let (Some(stop), Some(tokenizer)) = (&mut state.stop, tokenizer) else { return Ok(None) };
        let Some(matched) = stop.push(tokenizer, token)? else { return Ok(None) };
        let reason = Some(StopReason::Text(matched));
        match finished {
            Some(seq) => {
                seq.finish_reason = Some(FinishReason::Stop);
                seq.stop_reason = reason;
                Ok(None)
            }
            None => Ok(self.scheduler.finish(id, FinishReason::Stop, reason)),
        }
    }

    fn complete(&mut self, seq: Sequence) -> Result<Completion, EngineError> {
        let state = self.requests.remove(&seq.id).expect("every live request has its state");
        self.completion(seq, state)
    }

    fn completion(&self, seq: Sequence, state: RequestState) -> Result<Completion, EngineError> {
        let text = match (&self.tokenizer, state.stop) {
            (Some(tokenizer), Some(mut stop)) if state.detokenize => {
                stop.finish(tokenizer)?;
                Some(stop.text().to_owned())
            }
            (Some(tokenizer), None) if state.detokenize => Some(tokenizer.decode(seq.completion())?),
            _ => None,
        };
        Ok(Completion {
            id: state.request,
            index: state.index,
            prompt_token_ids: seq.prompt().to_vec(),
            cached_prompt_tokens: seq.cached_prompt_tokens.unwrap_or(0),
            token_ids: seq.completion().to_vec(),
            text,
            finish_reason: seq.finish_reason.expect("finished sequences have a reason"),
            stop_reason: seq.stop_reason,
            logprobs: state.logprobs,
        })
    }

    /// Put back the states taken out for a step that failed: each sequence's own, its unforked
    /// siblings' with it.
    fn restore(&mut self, sampling: &[&ScheduledSeq], states: Vec<RequestState>) {
        let mut states = states.into_iter();
        for item in sampling {
            let mut state = states.next().expect("one state per sampling sequence and sibling");
            state.siblings = states.by_ref().take(item.samples - 1).collect();
            self.requests.insert(item.id, state);
        }
    }
}
