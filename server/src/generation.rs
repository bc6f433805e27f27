//! One request through the engine, as the handlers see it: admitted (or refused at once with
//! 503), submitted to the engine thread, then its events turned into text deltas per sample. The
//! text is decoded here, off the engine thread; while a stop string may still be forming, its
//! possible start is held back, so streamed text ends where the engine cut it.

use std::sync::Arc;
use std::time::Instant;

use nanovllm::{Completion, SamplingParams, StepToken, StreamDecoder, TokenLogprobs};
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
    Finished { index: usize, completion: Box<Completion> },
}

/// A sample's text so far.
#[derive(Debug, Default)]
struct SampleText {
    decoder: StreamDecoder,
    text: String,
    sent: usize,
}

/// A running request.
pub(crate) struct Generation {
    state: Arc<AppState>,
    events: mpsc::UnboundedReceiver<Event>,
    samples: Vec<SampleText>,
    /// Bytes of text that may begin a stop string: not sent until the sample finishes.
    hold_back: usize,
    pub(crate) prompt_tokens: usize,
    started: Instant,
    last_token: Option<Instant>,
    finished: usize,
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
        let hold_back =
            params.stop.iter().map(String::len).max().map_or(0, |longest| longest.saturating_sub(1));
        let n = params.n;
        let prompt_tokens = prompt.len();
        if !state.engine.submit(Submission { prompt, params, events, accepted }) {
            return Err(ApiError::unavailable("the engine has stopped"));
        }
        match verdict.await {
            Ok(Ok(())) => Ok(Generation {
                state,
                events: receiver,
                samples: (0..n).map(|_| SampleText::default()).collect(),
                hold_back,
                prompt_tokens,
                started: Instant::now(),
                last_token: None,
                finished: 0,
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

    /// The next deltas (one engine step's worth), or `None` once every sample has finished.
    pub(crate) async fn next(&mut self) -> Option<Result<Vec<Delta>, ApiError>> {
        if self.finished == self.samples.len() {
            return None;
        }
        let event = match self.events.recv().await {
            Some(event) => event,
            None => return Some(Err(ApiError::internal("the engine dropped the request"))),
        };
        Some(match event {
            Event::Tokens(tokens) => self.tokens(tokens),
            Event::Finished(completion) => Ok(self.finish(completion)),
            Event::Failed(message) => Err(ApiError::internal(format!("the engine failed: {message}"))),
        })
    }

    /// Every sample's completion, in index order (a non-streaming request).
    pub(crate) async fn complete(mut self) -> Result<Vec<Completion>, ApiError> {
        let mut completions: Vec<Option<Completion>> = (0..self.samples.len()).map(|_| None).collect();
        while let Some(deltas) = self.next().await {
            for delta in deltas? {
                if let Delta::Finished { index, completion } = delta {
                    completions[index] = Some(*completion);
                }
            }
        }
        Ok(completions.into_iter().map(|c| c.expect("every sample finishes")).collect())
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
            sample.text.push_str(&sample.decoder.push(tokenizer, token)?);
            let mut end = sample.text.len().saturating_sub(self.hold_back);
            while !sample.text.is_char_boundary(end) {
                end -= 1;
            }
            let text = sample.text.get(sample.sent..end).unwrap_or_default().to_owned();
            sample.sent = sample.sent.max(end);
            if !text.is_empty() || logprobs.is_some() {
                deltas.push(Delta::Text { index, text, logprobs: logprobs.into_iter().collect() });
            }
        }
        Ok(deltas)
    }

    fn finish(&mut self, completion: Box<Completion>) -> Vec<Delta> {
        self.finished += 1;
        if self.finished == self.samples.len() {
            self.state.metrics.e2e_request_latency.observe(self.started.elapsed().as_secs_f64());
        }
        let index = completion.index;
        let sample = &mut self.samples[index];
        let mut deltas = Vec::new();
        // The engine's text is final (cut at a stop string); what was sent is a prefix of it.
        if let Some(text) = completion.text.as_deref()
            && text.len() > sample.sent
            && text.is_char_boundary(sample.sent)
        {
            deltas.push(Delta::Text { index, text: text[sample.sent..].to_owned(), logprobs: Vec::new() });
            sample.sent = text.len();
        }
        deltas.push(Delta::Finished { index, completion });
        deltas
    }
}
