//! `POST /v1/chat/completions`: messages through the model's chat template, streaming (the role
//! first, then content deltas, one finish chunk per sample, the usage chunk if asked) or not.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use nanovllm::{Completion, Message, SamplingParams, Tokenizer};
use serde_json::{Value, json};

use crate::completions::{ResponseMeta, check_model, chunk_stream, sse, stop_reason, token_text, usage};
use crate::error::ApiError;
use crate::generation::{Delta, Generation};
use crate::protocol::{ChatMessage, ChatRequest, parse_with_sampling};
use crate::state::AppState;

pub(crate) async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    match start(state, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// The prompt `messages` render to, through the model's template with `kwargs`.
pub(crate) fn render(
    state: &AppState,
    messages: &[ChatMessage],
    tools: Option<&Value>,
    kwargs: &serde_json::Map<String, Value>,
) -> Result<String, ApiError> {
    let template = state.model.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid("this model has no chat template: use /v1/completions", Some("messages"))
    })?;
    let messages = messages
        .iter()
        .map(|m| {
            let content = m.content.as_ref().map(|c| c.text()).transpose()?.unwrap_or_default();
            Ok(Message { role: m.role.clone(), content })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(template.render_with(&messages, tools, kwargs)?)
}

async fn start(state: Arc<AppState>, body: &[u8]) -> Result<Response, ApiError> {
    let (request, sampling): (ChatRequest, _) = parse_with_sampling(body)?;
    check_model(&state, &request.model)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages: at least one message is needed", Some("messages")));
    }
    let text = render(&state, &request.messages, None, &request.chat_template_kwargs)?;
    let prompt = state.model.tokenizer.encode(&text)?;
    // Without max_tokens, up to the end of the context (vLLM's default for chat).
    let room = state.model.max_model_len.saturating_sub(prompt.len()).max(1);
    let logprobs = request.logprobs.then(|| request.top_logprobs.unwrap_or(0));
    let max_tokens = request.max_completion_tokens.or(sampling.max_tokens()).unwrap_or(room);
    let params =
        SamplingParams { max_tokens, ..sampling.over(&state.model.default_sampling, max_tokens, logprobs)? };
    let generation = Generation::start(state.clone(), prompt, params).await?;
    let meta = ResponseMeta::new("chatcmpl", &state.model.name);
    if request.stream {
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
        Ok(sse(stream_chunks(generation, meta, include_usage)).into_response())
    } else {
        let prompt_tokens = generation.prompt_tokens;
        let completions = generation.complete().await?;
        let tokenizer = &state.model.tokenizer;
        let choices: Vec<Value> = completions.iter().map(|c| choice(c, tokenizer)).collect();
        let usage = usage(prompt_tokens, &completions);
        Ok(axum::Json(meta.body("chat.completion", choices, Some(usage))).into_response())
    }
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`.
fn chat_logprobs(completion: &Completion, tokenizer: &Tokenizer) -> Value {
    let Some(logprobs) = &completion.logprobs else { return Value::Null };
    let entry = |token: u32, logprob: f32| {
        let text = token_text(tokenizer, token);
        json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    let content: Vec<Value> = logprobs
        .iter()
        .map(|l| {
            let mut item = entry(l.token, l.logprob);
            item["top_logprobs"] = l.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
            item
        })
        .collect();
    json!({ "content": content })
}

fn choice(completion: &Completion, tokenizer: &Tokenizer) -> Value {
    json!({
        "index": completion.index,
        "message": {"role": "assistant", "content": completion.text.clone().unwrap_or_default()},
        "logprobs": chat_logprobs(completion, tokenizer),
        "finish_reason": completion.finish_reason.name(),
        "stop_reason": stop_reason(completion),
    })
}

/// The chunks of a streamed chat completion: the role first, then content deltas and each
/// sample's finish chunk.
fn stream_chunks(
    generation: Generation,
    meta: ResponseMeta,
    include_usage: bool,
) -> impl Stream<Item = Value> {
    let role: Vec<Value> = (0..generation.num_samples())
        .map(|index| {
            json!({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})
        })
        .collect();
    let first = meta.body("chat.completion.chunk", role, None);
    let rest = chunk_stream(generation, meta, "chat.completion.chunk", include_usage, |delta| match delta {
        Delta::Text { index, text } => json!({
            "index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": null,
        }),
        Delta::Finished { index, completion } => json!({
            "index": index, "delta": {}, "logprobs": null,
            "finish_reason": completion.finish_reason.name(), "stop_reason": stop_reason(completion),
        }),
    });
    stream::once(async move { first }).chain(rest)
}
