//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the HTTP
//! status a careful server gives. Engine errors map by variant, never by their text.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nanovllm::{EngineError, ScheduleError};

/// A refusal or failure, as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `not_found_error`, ...
    pub kind: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`context_length_exceeded`, `model_not_found`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is wrong (`param` names the field, where one is at fault).
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
        }
    }

    /// 404: a model this server does not serve.
    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            message: format!("The model `{model}` does not exist."),
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 401: no key, or the wrong one.
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: "Incorrect API key provided.".into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 503: overloaded, draining or failed; the client may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "service_unavailable",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// 500: the server failed.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal_server_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// The body: `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.kind, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    /// The request's own faults are 400s (naming the field where the engine does); too long for
    /// the context or the cache is `context_length_exceeded`; the rest is the server's (500).
    fn from(error: EngineError) -> Self {
        let message = error.to_string();
        match &error {
            EngineError::InvalidRequest(ScheduleError::InvalidSampling { field, .. }) => {
                ApiError::invalid(message, Some(field))
            }
            EngineError::InvalidRequest(ScheduleError::TooManySamples { .. }) => {
                ApiError::invalid(message, Some("n"))
            }
            EngineError::InvalidRequest(_) | EngineError::InvalidPrompt(_) | EngineError::NoTokenizer(_) => {
                ApiError::invalid(message, None)
            }
            EngineError::ContextLength(_) => ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(message, Some("max_tokens"))
            },
            EngineError::ChatTemplate(_) => ApiError::invalid(message, Some("messages")),
            _ => ApiError::internal(message),
        }
    }
}
