//! The router: OpenAI's endpoints under `/v1` (behind the API key, if one is set), and vLLM's
//! `/health`, `/version`, `/tokenize`, `/detokenize` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::chat::{chat_completions, render};
use crate::completions::completions;
use crate::engine_loop::Health;
use crate::error::ApiError;
use crate::protocol::{DetokenizeRequest, TokenizeRequest, parse};
use crate::state::AppState;

/// The server's routes over `state`, refusing bodies over `max_body_bytes` (413).
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(payload_too_large))
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

/// One `tracing` line per request (method, path, status, time to the response's head: a stream's
/// length is not in it), under the client's `x-request-id` or one of ours, which the response
/// carries back. No prompt or output text.
async fn access_log(request: Request, next: Next) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let id = match request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(given) => given.to_owned(),
        None => format!("{:016x}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
    };
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let started = Instant::now();
    let mut response = next.run(request).await;
    tracing::info!(
        request_id = %id,
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

const REQUEST_ID: &str = "x-request-id";

/// Without the right `Authorization: Bearer` key, 401 (compared in constant time).
async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = &state.api_key else { return next.run(request).await };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// axum's own 413 for an oversized body, in OpenAI's shape.
async fn payload_too_large(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            ..ApiError::invalid("request body too large", None)
        }
        .into_response();
    }
    response
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "not_found_error",
        ..ApiError::invalid("no such endpoint", None)
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let model = &state.model;
    let max_model_len = state.engine_info()?.max_model_len;
    Ok(axum::Json(json!({
        "object": "list",
        "data": [{
            "id": model.name, "object": "model", "created": state.created, "owned_by": "nanovllm",
            "root": model.name, "parent": null, "max_model_len": max_model_len,
        }],
    }))
    .into_response())
}

async fn health(State(state): State<Arc<AppState>>) -> StatusCode {
    match state.engine.health() {
        Health::Ready => StatusCode::OK,
        Health::Loading | Health::Draining | Health::Failed => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

async fn tokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: TokenizeRequest = parse(&body)?;
    let text = match (&request.prompt, &request.messages) {
        (Some(prompt), None) => prompt.clone(),
        (None, Some(messages)) => {
            render(&state, messages, request.tools.as_ref(), &request.chat_template_kwargs)?
        }
        _ => return Err(ApiError::invalid("give either prompt or messages", Some("prompt"))),
    };
    let tokens = state.model.tokenizer.encode(&text)?;
    Ok(axum::Json(json!({
        "count": tokens.len(), "max_model_len": state.engine_info()?.max_model_len, "tokens": tokens,
    }))
    .into_response())
}

async fn detokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: DetokenizeRequest = parse(&body)?;
    let vocab = state.model.tokenizer.vocab_size();
    if let Some(bad) = request.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            format!("token id {bad} is outside the vocabulary of {vocab}"),
            Some("tokens"),
        ));
    }
    let prompt = state.model.tokenizer.decode(&request.tokens)?;
    Ok(axum::Json(json!({ "prompt": prompt })).into_response())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
        .into_response()
}
