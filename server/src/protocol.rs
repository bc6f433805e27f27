//! OpenAI's request bodies as vLLM reads them, and their sampling fields mapped onto the engine's
//! `SamplingParams` over the model's defaults (its generation_config, as vLLM does).

use nanovllm::{EngineError, SamplingParams};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Parse a JSON body; a malformed body or a field of the wrong type is a 400 naming the field.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_value(&json(body)?)
}

/// A request body and its sampling fields, each read from the same JSON (apart, so that a
/// sampling field of the wrong type is named: serde cannot name fields through `flatten`).
pub(crate) fn parse_with_sampling<T: DeserializeOwned>(body: &[u8]) -> Result<(T, SamplingFields), ApiError> {
    let value = json(body)?;
    Ok((from_value(&value)?, from_value(&value)?))
}

fn json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON body: {e}"), None))
}

/// A field of the wrong type in parsed JSON: a 400 naming the field.
fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        let message = match &param {
            Some(field) => format!("{field}: {}", e.inner()),
            None => e.inner().to_string(),
        };
        ApiError::invalid(message, param.as_deref())
    })
}

/// One stop string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// The sampling fields both endpoints take (vLLM's names); absent ones keep the model's defaults.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SamplingFields {
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// -1 or 0: no top-k.
    top_k: Option<i64>,
    min_p: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    n: Option<usize>,
    stop: Option<Stop>,
    stop_token_ids: Option<Vec<u32>>,
    ignore_eos: Option<bool>,
    min_tokens: Option<usize>,
    include_stop_str_in_output: Option<bool>,
    max_tokens: Option<usize>,
}

impl SamplingFields {
    /// The fields over `defaults`, with `max_tokens` (when absent) and `logprobs` from the
    /// endpoint. Range checks are the engine's (`SamplingParams::validate`), except top_k's sign.
    pub(crate) fn over(
        &self,
        defaults: &SamplingParams,
        max_tokens: usize,
        logprobs: Option<usize>,
    ) -> Result<SamplingParams, ApiError> {
        let top_k = match self.top_k {
            None => defaults.top_k,
            Some(k) => SamplingParams::top_k_from_vllm(k).map_err(EngineError::from)?,
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(list)) => list.clone(),
        };
        Ok(SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k,
            min_p: self.min_p.unwrap_or(defaults.min_p),
            presence_penalty: self.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            seed: self.seed,
            n: self.n.unwrap_or(1),
            stop,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            min_tokens: self.min_tokens.unwrap_or(0),
            include_stop_str_in_output: self.include_stop_str_in_output.unwrap_or(false),
            max_tokens: self.max_tokens.unwrap_or(max_tokens),
            logprobs,
            detokenize: defaults.detokenize,
        })
    }

    /// `max_tokens` as given.
    pub(crate) fn max_tokens(&self) -> Option<usize> {
        self.max_tokens
    }
}

/// A prompt as `/v1/completions` takes it: text or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptField {
    Text(String),
    Tokens(Vec<u32>),
}

/// `POST /v1/completions` (its sampling fields are read apart: [`parse_with_sampling`]).
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) model: String,
    pub(crate) prompt: PromptField,
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    /// The sampled token's log-probability and this many of the most likely tokens'.
    pub(crate) logprobs: Option<usize>,
}

/// A chat message's content: text, or a list of parts of which the text ones count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

impl Content {
    /// The text (text parts joined; other parts refused).
    pub(crate) fn text(&self) -> Result<String, ApiError> {
        match self {
            Content::Text(text) => Ok(text.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|part| match part.kind.as_str() {
                    "text" => Ok(part.text.as_str()),
                    other => Err(ApiError::invalid(
                        format!("content parts of type {other:?} are not supported (text only)"),
                        Some("messages"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|texts| texts.join("\n")),
        }
    }
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    pub(crate) role: String,
    pub(crate) content: Option<Content>,
}

/// `POST /v1/chat/completions` (its sampling fields are read apart: [`parse_with_sampling`]).
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) model: String,
    pub(crate) messages: Vec<ChatMessage>,
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(crate) logprobs: bool,
    pub(crate) top_logprobs: Option<usize>,
    /// OpenAI's newer name for `max_tokens`.
    pub(crate) max_completion_tokens: Option<usize>,
    /// Template variables such as `enable_thinking`.
    #[serde(default)]
    pub(crate) chat_template_kwargs: serde_json::Map<String, serde_json::Value>,
    /// Functions the model may call (OpenAI's specs, rendered by the template).
    pub(crate) tools: Option<serde_json::Value>,
    /// `"auto"` (default with tools) or `"none"`.
    pub(crate) tool_choice: Option<serde_json::Value>,
}

/// `POST /tokenize`: a prompt, or messages through the chat template.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenizeRequest {
    pub(crate) prompt: Option<String>,
    pub(crate) messages: Option<Vec<ChatMessage>>,
    /// With messages: the tools the template lists.
    pub(crate) tools: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) chat_template_kwargs: serde_json::Map<String, serde_json::Value>,
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub(crate) struct DetokenizeRequest {
    pub(crate) tokens: Vec<u32>,
}
