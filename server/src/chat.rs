//! `POST /v1/chat/completions`: messages through the model's chat template, streaming (the role
//! first, then content deltas, one finish chunk per sample, the usage chunk if asked) or not.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use nanovllm::{Completion, FinishReason, Message, SamplingParams, TokenLogprobs, Tokenizer};
use serde_json::{Value, json};

use crate::completions::{ResponseMeta, check_model, chunk_stream, sse, stop_reason, token_text, usage};
use crate::error::ApiError;
use crate::generation::{Delta, Generation};
use crate::parsers::{AnswerParser, Parsing, PartsDelta, ToolCall};
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
    let tools = match (&request.tools, &request.tool_choice) {
        (None, _) => None,
        (Some(tools), None) => Some(tools),
        (Some(tools), Some(Value::String(choice))) if choice == "auto" => Some(tools),
        (Some(_), Some(Value::String(choice))) if choice == "none" => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "tool_choice: \"auto\" and \"none\" are supported (forcing a call needs guided decoding)",
                Some("tool_choice"),
            ));
        }
    };
    let parsing = Parsing { reasoning: state.model.reasoning_parser, tools: tools.is_some() };
    let text = render(&state, &request.messages, tools, &request.chat_template_kwargs)?;
    let prompt = state.model.tokenizer.encode(&text)?;
    // Without max_tokens, up to the end of the context (vLLM's default for chat).
    let info = state.engine_info()?;
    let room = info.max_model_len.saturating_sub(prompt.len()).max(1);
    let logprobs = request.logprobs.then(|| request.top_logprobs.unwrap_or(0));
    let max_tokens = request.max_completion_tokens.or(sampling.max_tokens()).unwrap_or(room);
    let params =
        SamplingParams { max_tokens, ..sampling.over(&info.default_sampling, max_tokens, logprobs)? };
    let generation = Generation::start(state.clone(), prompt, params).await?;
    let meta = ResponseMeta::new("chatcmpl", &state.model.name);
    if request.stream {
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
        Ok(sse(stream_chunks(generation, meta, include_usage, parsing, state.clone())).into_response())
    } else {
        let prompt_tokens = generation.prompt_tokens;
        let completions = generation.complete().await?;
        let tokenizer = &state.model.tokenizer;
        let choices: Vec<Value> = completions.iter().map(|c| choice(c, tokenizer, parsing, &meta)).collect();
        let usage = usage(prompt_tokens, completions.iter());
        Ok(axum::Json(meta.body("chat.completion", choices, Some(usage))).into_response())
    }
}

/// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`.
fn chat_logprobs(logprobs: &[TokenLogprobs], tokenizer: &Tokenizer) -> Value {
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

/// OpenAI's `tool_calls`, each with an id unique to the response.
fn tool_calls(calls: &[ToolCall], meta: &ResponseMeta, index: usize) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, call)| {
            json!({
                "index": i, "id": format!("call-{}-{index}-{i}", meta.id()), "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            })
        })
        .collect()
}

/// `finish_reason`: `tool_calls` when the answer called a tool, else the engine's.
fn finish_reason(reason: FinishReason, calls: &[ToolCall]) -> &'static str {
    if calls.is_empty() { reason.name() } else { "tool_calls" }
}

fn choice(completion: &Completion, tokenizer: &Tokenizer, parsing: Parsing, meta: &ResponseMeta) -> Value {
    let parts = parsing.parts(completion.text.as_deref().unwrap_or_default());
    let mut message = json!({"role": "assistant", "content": parts.content});
    if parsing.reasoning {
        message["reasoning_content"] = json!(parts.reasoning);
    }
    if !parts.tool_calls.is_empty() {
        message["tool_calls"] = tool_calls(&parts.tool_calls, meta, completion.index);
        if parts.content.is_empty() {
            message["content"] = Value::Null;
        }
    }
    json!({
        "index": completion.index,
        "message": message,
        "logprobs": completion.logprobs.as_ref().map(|l| chat_logprobs(l, tokenizer)),
        "finish_reason": finish_reason(completion.finish_reason, &parts.tool_calls),
        "stop_reason": stop_reason(completion.stop_reason.as_ref()),
    })
}

/// A chat delta of what a piece of the answer shows, or `None` if it shows nothing.
fn chat_delta(parts: PartsDelta) -> Option<Value> {
    let mut delta = serde_json::Map::new();
    if !parts.reasoning.is_empty() {
        delta.insert("reasoning_content".into(), json!(parts.reasoning));
    }
    if !parts.content.is_empty() {
        delta.insert("content".into(), json!(parts.content));
    }
    (!delta.is_empty()).then_some(Value::Object(delta))
}

/// The chunks of a streamed chat completion: the role first, then reasoning and content deltas
/// (a tool call comes whole with its sample's finish chunk), and each sample's finish chunk.
fn stream_chunks(
    generation: Generation,
    meta: ResponseMeta,
    include_usage: bool,
    parsing: Parsing,
    state: Arc<AppState>,
) -> impl Stream<Item = Value> {
    let n = generation.num_samples();
    let role: Vec<Value> = (0..n)
        .map(|index| {
            json!({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})
        })
        .collect();
    let first = meta.body("chat.completion.chunk", role, None);
    let mut parsers: Vec<AnswerParser> = (0..n).map(|_| AnswerParser::new(parsing)).collect();
    let chunk_meta = meta.clone();
    let rest = chunk_stream(
        generation,
        meta,
        "chat.completion.chunk",
        include_usage,
        move |delta| match delta {
            Delta::Text { index, text, logprobs } => {
                let delta = if parsing.is_active() {
                    chat_delta(parsers[*index].push(text))
                } else {
                    // Nothing to split: the text passes through as it comes.
                    (!text.is_empty()).then(|| json!({"content": text}))
                };
                let logprobs =
                    (!logprobs.is_empty()).then(|| chat_logprobs(logprobs, &state.model.tokenizer));
                if delta.is_none() && logprobs.is_none() {
                    return None;
                }
                let delta = delta.unwrap_or_else(|| json!({}));
                Some(json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": null}))
            }
            Delta::Finished { index, reason, stop_reason: stop } => {
                let (rest, calls) = parsers[*index].finish();
                let mut delta = chat_delta(rest).unwrap_or_else(|| json!({}));
                if !calls.is_empty() {
                    delta["tool_calls"] = tool_calls(&calls, &chunk_meta, *index);
                }
                Some(json!({
                    "index": index, "delta": delta, "logprobs": null,
                    "finish_reason": finish_reason(*reason, &calls), "stop_reason": stop_reason(stop.as_ref()),
                }))
            }
        },
    );
    stream::once(async move { first }).chain(rest)
}
