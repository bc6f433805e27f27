//! What the server tests share: the committed tiny model, a server on a loopback port, and a
//! client's helpers.
// Each test binary uses a part of these.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanovllm::{ChatTemplate, Tokenizer};
use nanovllm_server::{AppState, ServedModel};
use serde_json::Value;

pub(crate) const MODEL: &str = "tiny";

pub(crate) fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-random-qwen3")
}

/// The tiny model as the handlers see it: its tokenizer and chat template.
pub(crate) fn served_model(reasoning_parser: bool) -> ServedModel {
    let dir = model_dir();
    ServedModel {
        name: MODEL.into(),
        tokenizer: Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap(),
        chat_template: ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json")).unwrap(),
        reasoning_parser,
    }
}

/// Serve `state` on a free loopback port until the returned sender drops.
pub(crate) async fn serve(state: Arc<AppState>) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(nanovllm_server::serve(listener, state, 1 << 16, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

pub(crate) async fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let response = client().post(format!("http://{addr}{path}")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The `data:` payloads of an SSE body, `[DONE]` last.
pub(crate) async fn events(addr: SocketAddr, path: &str, body: &Value) -> Vec<String> {
    let response = client().post(format!("http://{addr}{path}")).json(body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    text.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_owned).collect()
}

pub(crate) fn chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

/// A metric's value from `/metrics`.
pub(crate) async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = client().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Polls `/metrics` until `name` reads `value` (bounded); returns the last reading.
pub(crate) async fn wait_for(addr: SocketAddr, name: &str, value: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let read = metric(addr, name).await;
        if read == value || Instant::now() > deadline {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
