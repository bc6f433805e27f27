//! The server over the mock engine: a fixed answer makes the handlers' own work visible (stop
//! strings found off the engine, tool calls parsed from a streamed answer), and an engine that
//! fails mid-stream ends the stream with an error event and `[DONE]`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{MODEL, chunks, client, events, model_dir, post, served_model};
use nanovllm::Tokenizer;
use nanovllm_server::{Admission, AppState, EngineHandle, Metrics, MockEngine, MockEngineConfig};
use serde_json::{Value, json};

/// A server over a mock engine answering `reply` (the prompt when `None`), failing from step
/// `fail_at_step` on if given.
async fn start(
    reply: Option<&str>,
    fail_at_step: Option<u64>,
    reasoning_parser: bool,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let tokenizer = Tokenizer::from_file(&model_dir().join("tokenizer.json")).unwrap();
    let config = MockEngineConfig {
        step_time: Duration::from_millis(1),
        max_num_seqs: 8,
        max_model_len: 1024,
        vocab_size: tokenizer.vocab_size(),
        eos_token_ids: vec![151645],
        reply: reply.map(|text| tokenizer.encode(text).unwrap()),
        fail_at_step,
    };
    let metrics = Arc::new(Metrics::new(MODEL));
    let engine = EngineHandle::start(move || Ok(MockEngine::new(config)), metrics.clone()).unwrap();
    let limits = Admission { concurrent: 16, queued: 16 };
    let state = AppState::new(engine, served_model(reasoning_parser), metrics, limits, None);
    common::serve(Arc::new(state)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_engine_echoes_the_prompt_one_token_a_step() {
    let (addr, _stop) = start(None, None, false).await;
    let request = json!({"model": MODEL, "prompt": "Hello world, again", "max_tokens": 8, "stream": true});
    let chunks = chunks(&events(addr, "/v1/completions", &request).await);
    let texts: Vec<&str> = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(texts.concat(), "Hello world, againHello world, again", "its four tokens, twice");
    assert!(texts.len() >= 8, "one event per token: {texts:?}");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_ends_the_sample_for_the_client_and_in_the_engine() {
    let (addr, _stop) = start(Some("Hello world, again and again"), None, false).await;
    let request = |stream: bool| {
        json!({"model": MODEL, "prompt": "x", "max_tokens": 20, "stop": ["lo wor", "again"], "n": 2,
               "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }})
    };
    let (status, whole) = post(addr, "/v1/completions", &request(false)).await;
    assert_eq!(status, 200, "{whole}");
    for choice in whole["choices"].as_array().unwrap() {
        assert_eq!((&choice["text"], &choice["stop_reason"]), (&json!("Hel"), &json!("lo wor")));
        assert_eq!(choice["finish_reason"], "stop");
    }
    // "Hello" and " world" complete the match: two tokens each, whatever the engine drew after.
    assert_eq!(whole["usage"]["completion_tokens"], 4);
    let chunks = chunks(&events(addr, "/v1/completions", &request(true)).await);
    let choices: Vec<&Value> = chunks.iter().flat_map(|c| c["choices"].as_array().unwrap()).collect();
    let text: String =
        choices.iter().filter(|c| c["index"] == 0).filter_map(|c| c["text"].as_str()).collect();
    assert_eq!(text, "Hel");
    assert_eq!(choices.iter().filter(|c| c["finish_reason"] == "stop").count(), 2);
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_and_reasoning_are_parsed_from_a_streamed_answer() {
    let answer = "<think>\nThe user wants the weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let (addr, _stop) = start(Some(answer), None, true).await;
    let tools =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let request = |stream: bool| {
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": tools,
               "max_tokens": 100, "stream": stream})
    };
    let (status, whole) = post(addr, "/v1/chat/completions", &request(false)).await;
    assert_eq!(status, 200, "{whole}");
    let message = &whole["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "\nThe user wants the weather.\n");
    assert_eq!(message["content"], "Let me check.");
    assert_eq!(
        message["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    let chunks = chunks(&events(addr, "/v1/chat/completions", &request(true)).await);
    let part = |key: &str| -> String {
        chunks.iter().filter_map(|c| c["choices"][0]["delta"][key].as_str()).collect()
    };
    assert_eq!(part("reasoning_content"), message["reasoning_content"].as_str().unwrap());
    assert_eq!(part("content"), message["content"].as_str().unwrap());
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"][0]["delta"]["tool_calls"][0]["function"],
        message["tool_calls"][0]["function"]
    );
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_fails_mid_stream_sends_an_error_event_then_done_and_health_turns_503() {
    let (addr, _stop) = start(None, Some(4), false).await;
    let request = json!({"model": MODEL, "prompt": "Hello world, again", "max_tokens": 50, "stream": true});
    let events = events(addr, "/v1/completions", &request).await;
    let chunks = chunks(&events);
    assert!(chunks.iter().any(|c| c["choices"][0]["text"].is_string()), "tokens came before the failure");
    let error = &chunks.last().unwrap()["error"];
    assert!(error["message"].as_str().unwrap().contains("the engine failed"), "{error}");
    let health = client().get(format!("http://{addr}/health")).send().await.unwrap().status();
    assert_eq!(health, 503);
    let (status, body) = post(addr, "/v1/completions", &json!({"model": MODEL, "prompt": "x"})).await;
    assert_eq!(status, 503, "{body}");
}
