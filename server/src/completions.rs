//! `POST /v1/completions`, streaming (SSE) or not, in OpenAI's and vLLM's shape.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use nanovllm::{Completion, StopReason, TokenLogprobs, Tokenizer};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::generation::{Delta, Generation};
use crate::protocol::{CompletionRequest, PromptField, parse_with_sampling};
use crate::state::{AppState, unix_time};

/// vLLM's default `max_tokens` for `/v1/completions` (OpenAI's legacy default).
const DEFAULT_MAX_TOKENS: usize = 16;

pub(crate) async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    match start(state, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn start(state: Arc<AppState>, body: &[u8]) -> Result<Response, ApiError> {
    let (request, sampling): (CompletionRequest, _) = parse_with_sampling(body)?;
    check_model(&state, &request.model)?;
    let prompt = match &request.prompt {
        PromptField::Text(text) => state.model.tokenizer.encode(text)?,
        PromptField::Tokens(ids) => ids.clone(),
    };
    let params =
        sampling.over(&state.engine_info()?.default_sampling, DEFAULT_MAX_TOKENS, request.logprobs)?;
    let generation = Generation::start(state.clone(), prompt, params).await?;
    let meta = ResponseMeta::new("cmpl", &state.model.name);
    if request.stream {
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
        Ok(sse(stream_chunks(generation, meta, include_usage, state.clone())).into_response())
    } else {
        let prompt_tokens = generation.prompt_tokens;
        let completions = generation.complete().await?;
        let tokenizer = &state.model.tokenizer;
        let choices: Vec<Value> = completions.iter().map(|c| choice(c, tokenizer)).collect();
        let usage = usage(prompt_tokens, completions.iter());
        Ok(axum::Json(meta.body("text_completion", choices, Some(usage))).into_response())
    }
}

/// A request for a model this server does not serve is a 404.
pub(crate) fn check_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if model == state.model.name { Ok(()) } else { Err(ApiError::model_not_found(model)) }
}

/// The fields every response and chunk of one request repeats.
#[derive(Debug, Clone)]
pub(crate) struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
}

impl ResponseMeta {
    /// A fresh random id (as vLLM's): unique across the replicas behind a router too.
    pub(crate) fn new(prefix: &str, model: &str) -> Self {
        let id = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
        ResponseMeta { id, created: unix_time(), model: model.to_owned() }
    }

    /// The response's id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn body(&self, object: &str, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut body = json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        body
    }
}

/// `usage`: the prompt once, every sample's tokens, and the prompt tokens the prefix cache gave.
pub(crate) fn usage<'a>(prompt_tokens: usize, completions: impl Iterator<Item = &'a Completion>) -> Value {
    let (mut completion_tokens, mut cached) = (0, 0);
    for completion in completions {
        completion_tokens += completion.token_ids.len();
        cached = cached.max(completion.cached_prompt_tokens);
    }
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// vLLM's `stop_reason`: the stop token id or string, null for EOS or length.
pub(crate) fn stop_reason(reason: Option<&StopReason>) -> Value {
    match reason {
        Some(StopReason::Token(id)) => json!(id),
        Some(StopReason::Text(text)) => json!(text),
        None => Value::Null,
    }
}

/// A token's text as logprobs show it.
pub(crate) fn token_text(tokenizer: &Tokenizer, token: u32) -> String {
    tokenizer.decode(&[token]).unwrap_or_default()
}

/// Legacy completions logprobs of `logprobs`, whose text starts at byte `offset` of the
/// completion: `tokens`, `token_logprobs`, `top_logprobs` (a map per token), `text_offset`.
/// Returns them and the offset past them.
fn legacy_logprobs(logprobs: &[TokenLogprobs], tokenizer: &Tokenizer, offset: usize) -> (Value, usize) {
    let tokens: Vec<String> = logprobs.iter().map(|l| token_text(tokenizer, l.token)).collect();
    let mut end = offset;
    let text_offset: Vec<usize> = tokens
        .iter()
        .map(|t| {
            let at = end;
            end += t.len();
            at
        })
        .collect();
    let top: Vec<Value> = logprobs
        .iter()
        .map(|l| {
            Value::Object(l.top.iter().map(|&(id, lp)| (token_text(tokenizer, id), json!(lp))).collect())
        })
        .collect();
    let value = json!({
        "tokens": tokens,
        "token_logprobs": logprobs.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    });
    (value, end)
}

fn choice(completion: &Completion, tokenizer: &Tokenizer) -> Value {
    json!({
        "index": completion.index,
        "text": completion.text.clone().unwrap_or_default(),
        "logprobs": completion.logprobs.as_ref().map(|l| legacy_logprobs(l, tokenizer, 0).0),
        "finish_reason": completion.finish_reason.name(),
        "stop_reason": stop_reason(completion.stop_reason.as_ref()),
    })
}

/// An SSE response: `data: {json}` events, then `data: [DONE]`.
pub(crate) fn sse(chunks: impl Stream<Item = Value> + Send + 'static) -> impl IntoResponse {
    let events = chunks
        .map(|chunk| Ok::<_, Infallible>(SseEvent::default().data(chunk.to_string())))
        .chain(stream::once(async { Ok(SseEvent::default().data("[DONE]")) }));
    Sse::new(events)
}

/// The chunks of a streamed completion: one per engine step with new text (each sample that got
/// some), one per sample that finishes, the usage chunk if asked, and an error chunk if the
/// engine fails mid-stream.
fn stream_chunks(
    generation: Generation,
    meta: ResponseMeta,
    include_usage: bool,
    state: Arc<AppState>,
) -> impl Stream<Item = Value> {
    // Where each sample's next token's text starts (logprobs' text_offset).
    let mut offsets = vec![0; generation.num_samples()];
    chunk_stream(generation, meta, "text_completion", include_usage, move |delta| {
        Some(match delta {
            Delta::Text { index, text, logprobs } => {
                let logprobs = (!logprobs.is_empty()).then(|| {
                    let (value, end) = legacy_logprobs(logprobs, &state.model.tokenizer, offsets[*index]);
                    offsets[*index] = end;
                    value
                });
                json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": null, "stop_reason": null})
            }
            Delta::Finished { index, reason, stop_reason: stop } => json!({
                "index": index, "text": "", "logprobs": null,
                "finish_reason": reason.name(), "stop_reason": stop_reason(stop.as_ref()),
            }),
        })
    })
}

/// A request's chunks of type `object`: each step's deltas as choices (`choice` makes one, or
/// none for a delta that shows nothing yet), then the usage chunk (`choices: []`) if asked; an
/// engine failure ends the stream with an error chunk.
pub(crate) fn chunk_stream(
    generation: Generation,
    meta: ResponseMeta,
    object: &'static str,
    include_usage: bool,
    choice: impl FnMut(&Delta) -> Option<Value> + Send + 'static,
) -> impl Stream<Item = Value> {
    struct Streaming<F> {
        generation: Generation,
        meta: ResponseMeta,
        choice: F,
        include_usage: bool,
        done: bool,
    }
    let streaming = Streaming { generation, meta, choice, include_usage, done: false };
    stream::unfold(streaming, move |mut s| async move {
        if s.done {
            return None;
        }
        let chunks = match s.generation.next().await {
            Some(Ok(deltas)) => {
                let choices: Vec<Value> = deltas.iter().filter_map(&mut s.choice).collect();
                if choices.is_empty() { Vec::new() } else { vec![s.meta.body(object, choices, None)] }
            }
            Some(Err(e)) => {
                s.done = true;
                vec![e.body()]
            }
            None => {
                s.done = true;
                let usage = s.generation.usage();
                if s.include_usage { vec![s.meta.body(object, Vec::new(), Some(usage))] } else { Vec::new() }
            }
        };
        Some((chunks, s))
    })
    .flat_map(stream::iter)
}
