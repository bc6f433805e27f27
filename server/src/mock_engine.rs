//! A stand-in engine that computes nothing: each step takes a fixed time and gives every running
//! stream one token, so that the server's own cost (channels, detokenizing, JSON, SSE) can be
//! measured alone (`serve --mock-engine`), and clients can be tested on a fixed answer or a
//! failing engine.

use std::collections::VecDeque;
use std::time::Duration;

use nanovllm::{
    Completion, EngineError, FinishReason, Phase, SamplingParams, ScheduleError, SeqId, StepOutput,
    StepToken, StopReason, TokenLogprobs,
};

use crate::engine::{Engine, EngineInfo, EngineLoad};

/// How the mock engine behaves.
#[derive(Debug, Clone)]
pub struct MockEngineConfig {
    /// What each step takes (slept on the engine thread).
    pub step_time: Duration,
    /// Streams (samples) running at once; the others wait, as in the real scheduler.
    pub max_num_seqs: usize,
    /// Longest prompt + output.
    pub max_model_len: usize,
    /// Token ids a prompt may hold (the tokenizer's vocabulary).
    pub vocab_size: usize,
    /// Tokens that end a stream that does not ignore EOS.
    pub eos_token_ids: Vec<u32>,
    /// Every stream's answer: these tokens, then the stream stops as at an EOS (unless it
    /// ignores EOS: then they repeat). `None`: the stream's prompt tokens, over and over.
    pub reply: Option<Vec<u32>>,
    /// Fail this step (counted from 0) and every later one: a client's view of an engine that
    /// breaks mid-request, for tests.
    pub fail_at_step: Option<u64>,
}

/// One stream: a sample of a request.
#[derive(Debug)]
struct Stream {
    id: SeqId,
    index: usize,
    prompt: std::sync::Arc<[u32]>,
    /// What it answers: the fixed reply, or its prompt.
    answer: std::sync::Arc<[u32]>,
    params: std::sync::Arc<SamplingParams>,
    /// The tokens that end it (EOS unless ignored, and its stop tokens).
    stop_tokens: std::sync::Arc<[u32]>,
    generated: Vec<u32>,
    logprobs: Option<Vec<TokenLogprobs>>,
}

impl Stream {
    /// The next token: the answer's, in order, over and over.
    fn next_token(&self) -> u32 {
        self.answer[self.generated.len() % self.answer.len()]
    }

    fn completion(self, finish_reason: FinishReason, stop_reason: Option<StopReason>) -> Completion {
        Completion {
            id: self.id,
            index: self.index,
            prompt_token_ids: self.prompt.to_vec(),
            cached_prompt_tokens: 0,
            token_ids: self.generated,
            text: None,
            finish_reason,
            stop_reason,
            logprobs: self.logprobs,
        }
    }
}

/// The mock engine. A step either starts waiting streams (each gets its first token, as a
/// prefill step does) or, when none can start, gives every running stream its next token.
#[derive(Debug)]
pub struct MockEngine {
    config: MockEngineConfig,
    next_id: SeqId,
    steps: u64,
    waiting: VecDeque<Stream>,
    running: Vec<Stream>,
}

impl MockEngine {
    /// A mock engine that behaves as `config` says.
    pub fn new(config: MockEngineConfig) -> Self {
        MockEngine { config, next_id: 0, steps: 0, waiting: VecDeque::new(), running: Vec::new() }
    }

    /// Give `stream` its next token; its completion if that ended it.
    fn advance(
        &self,
        stream: &mut Stream,
        tokens: &mut Vec<StepToken>,
    ) -> Option<(FinishReason, Option<StopReason>)> {
        let token = stream.next_token();
        stream.generated.push(token);
        let logprobs = stream.params.logprobs.map(|top| TokenLogprobs {
            token,
            logprob: 0.0,
            top: std::iter::once((token, 0.0)).take(top).collect(),
        });
        if let (Some(all), Some(these)) = (&mut stream.logprobs, &logprobs) {
            all.push(these.clone());
        }
        tokens.push(StepToken { id: stream.id, index: stream.index, token, logprobs });
        let params = &stream.params;
        if stream.generated.len() > params.min_tokens && stream.stop_tokens.contains(&token) {
            let reason = params.stop_token_ids.contains(&token).then_some(StopReason::Token(token));
            return Some((FinishReason::Stop, reason));
        }
        if stream.generated.len() >= params.max_tokens {
            return Some((FinishReason::Length, None));
        }
        let replied = self.config.reply.as_ref().is_some_and(|reply| stream.generated.len() == reply.len());
        (replied && !params.ignore_eos).then_some((FinishReason::Stop, None))
    }
}

impl Engine for MockEngine {
    fn info(&self) -> EngineInfo {
        EngineInfo {
            default_sampling: SamplingParams::default(),
            max_model_len: self.config.max_model_len,
            cache_dtype: "none".into(),
            block_size: 1,
            cache: format!(
                "mock engine: no model, {} streams at once, one token each per {:?} step",
                self.config.max_num_seqs, self.config.step_time
            ),
        }
    }

    fn add_request(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<SeqId, EngineError> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(ScheduleError::EmptyPrompt.into());
        }
        if let Some(bad) = prompt.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(EngineError::InvalidPrompt(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let total = prompt.len() + params.max_tokens;
        if total > self.config.max_model_len {
            let (prompt_len, max_tokens, max_model_len) =
                (prompt.len(), params.max_tokens, self.config.max_model_len);
            return Err(ScheduleError::TooLong { prompt_len, max_tokens, total, max_model_len }.into());
        }
        if params.n > self.config.max_num_seqs {
            return Err(ScheduleError::TooManySamples {
                n: params.n,
                max_num_seqs: self.config.max_num_seqs,
            }
            .into());
        }
        let id = self.next_id;
        self.next_id += 1;
        let (prompt, params): (std::sync::Arc<[u32]>, _) = (prompt.into(), std::sync::Arc::new(params));
        let answer = match &self.config.reply {
            Some(reply) if !reply.is_empty() => reply.as_slice().into(),
            _ => prompt.clone(),
        };
        let stop_tokens: std::sync::Arc<[u32]> = params.stop_tokens(&self.config.eos_token_ids).into();
        for index in 0..params.n {
            let logprobs = params.logprobs.map(|_| Vec::new());
            let (prompt, answer, params) = (prompt.clone(), answer.clone(), params.clone());
            self.waiting.push_back(Stream {
                id,
                index,
                prompt,
                answer,
                params,
                stop_tokens: stop_tokens.clone(),
                generated: Vec::new(),
                logprobs,
            });
        }
        Ok(id)
    }

    fn step(&mut self) -> Result<StepOutput, EngineError> {
        if self.config.fail_at_step.is_some_and(|at| self.steps >= at) {
            return Err(EngineError::DeviceUnavailable(format!(
                "the mock engine fails from step {} on, as configured",
                self.steps
            )));
        }
        self.steps += 1;
        std::thread::sleep(self.config.step_time);
        let mut tokens = Vec::new();
        let mut finished = Vec::new();
        let room = self.config.max_num_seqs - self.running.len();
        let (phase, num_tokens, mut streams) = if room > 0 && !self.waiting.is_empty() {
            let starting: Vec<Stream> = self.waiting.drain(..room.min(self.waiting.len())).collect();
            let prompt_tokens = starting.iter().map(|s| s.prompt.len()).sum();
            (Phase::Prefill, prompt_tokens, starting)
        } else {
            let running = std::mem::take(&mut self.running);
            (Phase::Decode, running.len(), running)
        };
        for mut stream in streams.drain(..) {
            match self.advance(&mut stream, &mut tokens) {
                Some((reason, stop)) => finished.push(stream.completion(reason, stop)),
                None => self.running.push(stream),
            }
        }
        let num_prefill_tokens = if phase == Phase::Prefill { num_tokens } else { 0 };
        Ok(StepOutput { phase: Some(phase), num_tokens, num_prefill_tokens, tokens, finished })
    }

    fn abort(&mut self, id: SeqId) -> Result<Vec<Completion>, EngineError> {
        let mut streams: Vec<Stream> = self.running.extract_if(.., |s| s.id == id).collect();
        for stream in std::mem::take(&mut self.waiting) {
            if stream.id == id { streams.push(stream) } else { self.waiting.push_back(stream) }
        }
        let mut aborted: Vec<Completion> =
            streams.into_iter().map(|s| s.completion(FinishReason::Abort, None)).collect();
        aborted.sort_by_key(|c| c.index);
        Ok(aborted)
    }

    fn finish(
        &mut self,
        id: SeqId,
        index: usize,
        reason: StopReason,
    ) -> Result<Option<Completion>, EngineError> {
        let at = self.running.iter().position(|s| s.id == id && s.index == index);
        Ok(at.map(|at| self.running.remove(at).completion(FinishReason::Stop, Some(reason))))
    }

    fn abort_all(&mut self) {
        self.running.clear();
        self.waiting.clear();
    }

    fn is_finished(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Nothing to prepare: no model.
    fn prepare(&mut self) -> Result<(), EngineError> {
        Ok(())
    }

    fn load(&self) -> EngineLoad {
        EngineLoad {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_cache_usage: self.running.len() as f64 / self.config.max_num_seqs as f64,
            preemptions: 0,
        }
    }
}
