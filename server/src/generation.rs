//! One request through the engine, as the handlers see it: admitted (or refused at once with
//! 503), submitted to the engine thread, then its events turned into text deltas per sample. The
//! text is decoded here, off the engine thread, and searched here for the request's stop strings:
//! while one may still be forming, its possible start is held back; once one matches, the sample
//! ends at once for the client and the engine is told to stop it.

use std::sync::Arc;
use std::time::Instant;

use nanovllm::{
    Completion, FinishReason, SampleText, SamplingParams, SeqId, StepToken, StopReason, TokenLogprobs,
};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::engine_loop::{Event, Health, Submission};
use crate::error::ApiError;
use crate::state::AppState;

/// What a request's stream gives next.
#[derive(Debug)]
pub(crate) enum Delta {
    /// New text of sample `index` (possibly empty: a token whose text is not complete yet), and
    /// the log-probabilities of the tokens that brought it, when asked for.
    Text { index: usize, text: String, logprobs: Vec<TokenLogprobs> },
    /// Sample `index` finished (its final text already sent as `Text`).
    Finished { index: usize, reason: FinishReason, stop_reason: Option<StopReason> },
}

/// One sample as the handler follows it.
#[derive(Debug)]
struct Sample {
    text: SampleText,
    /// Bytes of the text sent.
    sent: usize,
    /// Tokens taken (those after a matched stop string are not).
    tokens: usize,
    /// The stop string its text reached: the sample has ended for the client, and the engine's
    /// completion, when it comes, is cut back to it.
    stopped: Option<String>,
    /// The engine's completion, with the text and the cut made here.
    completion: Option<Completion>,
}

/// A running request.
pub(crate) struct Generation {
    state: Arc<AppState>,
    id: SeqId,
    events: mpsc::UnboundedReceiver<Event>,
    samples: Vec<Sample>,
    pub(crate) prompt_tokens: usize,
    started: Instant,
    last_token: Option<Instant>,
    /// Samples whose completions came.
    completed: usize,
    /// Held while the request is in flight: its place in the queue and in the engine.
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Generation {
    /// Admit and submit a request of `prompt` tokens.
    pub(crate) async fn start(
        state: Arc<AppState>,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<Self, ApiError> {
        if state.engine.health() != Health::Ready {
            return Err(ApiError::unavailable("the server is not accepting requests (draining or failed)"));
        }
        params.validate().map_err(nanovllm::EngineError::from)?;
        let admitted = state.admission.clone().try_acquire_owned().map_err(|_| {
            ApiError::unavailable("too many requests in flight: the queue is full, retry later")
        })?;
        let queued = Instant::now();
        let permit = state
            .engine_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        state.metrics.queue_time.observe(queued.elapsed().as_secs_f64());
        let (events, receiver) = mpsc::unbounded_channel();
        let (accepted, verdict) = oneshot::channel();
        let samples = (0..params.n)
            .map(|_| Sample {
                text: SampleText::new(&params),
                sent: 0,
                tokens: 0,
                stopped: None,
                completion: None,
            })
            .collect();
        let prompt_tokens = prompt.len();
        // The engine neither decodes nor looks for stop strings: that is done here.
        let params = SamplingParams { detokenize: false, stop: Vec::new(), ..params };
        if !state.engine.submit(Submission { prompt, params, events, accepted }) {
            return Err(ApiError::unavailable("the engine has stopped"));
        }
        match verdict.await {
            Ok(Ok(id)) => Ok(Generation {
                state,
                id,
                events: receiver,
                samples,
                prompt_tokens,
                started: Instant::now(),
                last_token: None,
                completed: 0,
                _permits: (admitted, permit),
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ApiError::unavailable("the engine has stopped")),
        }
    }

    /// How many samples the request draws (`n`).
    pub(crate) fn num_samples(&self) -> usize {
        self.samples.len()
    }

    /// The next deltas (one engine step's worth, possibly none), or `None` once every sample's
    /// completion has come.
    pub(crate) async fn next(&mut self) -> Option<Result<Vec<Delta>, ApiError>> {
        if self.completed == self.samples.len() {
            return None;
        }
        let event = match self.events.recv().await {
            Some(event) => event,
            None => return Some(Err(ApiError::internal("the engine dropped the request"))),
        };
        Some(match event {
            Event::Tokens(tokens) => self.tokens(tokens),
            Event::Finished(completion) => self.finish(*completion),
            Event::Failed(message) => Err(ApiError::internal(format!("the engine failed: {message}"))),
        })
    }

    /// Every sample's completion, in index order (a non-streaming request).
    pub(crate) async fn complete(mut self) -> Result<Vec<Completion>, ApiError> {
        while let Some(deltas) = self.next().await {
            deltas?;
        }
        Ok(self.samples.into_iter().map(|s| s.completion.expect("every sample completed")).collect())
    }

    /// `usage` of the samples completed: the prompt once, every sample's tokens, and the prompt
    /// tokens the prefix cache gave.
    pub(crate) fn usage(&self) -> Value {
        let completions = self.samples.iter().filter_map(|s| s.completion.as_ref());
        crate::completions::usage(self.prompt_tokens, completions)
    }

    fn tokens(&mut self, tokens: Vec<StepToken>) -> Result<Vec<Delta>, ApiError> {
        let now = Instant::now();
        let metrics = &self.state.metrics;
        match self.last_token {
            None => metrics.time_to_first_token.observe((now - self.started).as_secs_f64()),
            Some(last) => metrics.inter_token_latency.observe((now - last).as_secs_f64()),
        }
        self.last_token = Some(now);
        let tokenizer = &self.state.model.tokenizer;
        let mut deltas = Vec::new();
        for StepToken { index, token, logprobs, .. } in tokens {
            let sample = &mut self.samples[index];
            if sample.stopped.is_some() {
                continue;
            }
            sample.tokens += 1;
            let matched = sample.text.push(tokenizer, token)?;
            let end = sample.text.settled_len();
            let text = sample.text.text().get(sample.sent..end).unwrap_or_default().to_owned();
            sample.sent = sample.sent.max(end);
            if !text.is_empty() || logprobs.is_some() {
                deltas.push(Delta::Text { index, text, logprobs: logprobs.into_iter().collect() });
            }
            if let Some(stop) = matched {
                self.state.engine.stop(self.id, index, stop.clone());
                let stop_reason = Some(StopReason::Text(stop.clone()));
                deltas.push(Delta::Finished { index, reason: FinishReason::Stop, stop_reason });
                sample.stopped = Some(stop);
            }
        }
        Ok(deltas)
    }

    fn finish(&mut self, mut completion: Completion) -> Result<Vec<Delta>, ApiError> {
        self.completed += 1;
        if self.completed == self.samples.len() {
            self.state.metrics.e2e_request_latency.observe(self.started.elapsed().as_secs_f64());
        }
        let index = completion.index;
        let sample = &mut self.samples[index];
        let mut deltas = Vec::new();
        match &sample.stopped {
            Some(stop) => {
                // Already ended for the client: the engine may have drawn past the match.
                completion.token_ids.truncate(sample.tokens);
                if let Some(logprobs) = &mut completion.logprobs {
                    logprobs.truncate(sample.tokens);
                }
                completion.finish_reason = FinishReason::Stop;
                completion.stop_reason = Some(StopReason::Text(stop.clone()));
            }
            None => {
                sample.text.finish(&self.state.model.tokenizer)?;
                let text = sample.text.text();
                if text.len() > sample.sent {
                    deltas.push(Delta::Text {
                        index,
                        text: text[sample.sent..].to_owned(),
                        logprobs: Vec::new(),
                    });
                    sample.sent = text.len();
                }
                let (reason, stop_reason) = (completion.finish_reason, completion.stop_reason.clone());
                deltas.push(Delta::Finished { index, reason, stop_reason });
            }
        }
        completion.text = Some(sample.text.text().to_owned());
        sample.completion = Some(completion);
        Ok(deltas)
    }
}
