//! `nanovllm-cli serve` as a user runs it, on a loopback port: it says where it listens, turns
//! ready once the model is loaded, answers, and on SIGTERM drains: `/health` and new requests get 503 while a request in flight finishes,
//! then it exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request on its own connection: the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn serve_answers_then_drains_on_sigterm_and_exits_0() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-random-qwen3");
    let mut server = Command::new(env!("CARGO_BIN_EXE_nanovllm-cli"))
        .args(["serve", &model.display().to_string(), "--load-format", "dummy", "--port", "0"])
        .args(["--kv-cache-memory-gib", "0.01", "--max-model-len", "512", "--block-size", "16"])
        .args(["--served-model-name", "tiny", "--shutdown-timeout", "60"])
        .env("HF_HUB_OFFLINE", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the server ended before listening");
        if let Some(rest) = line.strip_prefix("serving tiny on http://") {
            break rest.trim().trim_end_matches("/v1").to_owned();
        }
    };
    // It listens while the model loads (503), then is ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(&addr, "GET", "/health", "").0 != 200 {
        assert!(Instant::now() < deadline, "not ready within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A long request in flight when SIGTERM comes.
    let long =
        r#"{"model": "tiny", "prompt": "Once", "max_tokens": 120, "ignore_eos": true, "stream": true}"#;
    let in_flight = {
        let addr = addr.clone();
        std::thread::spawn(move || http(&addr, "POST", "/v1/completions", long))
    };
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(killed.success());
    // Draining: /health and new requests get 503 while the stream goes on.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut health = 200;
    while health == 200 && Instant::now() < deadline {
        health = http(&addr, "GET", "/health", "").0;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(health, 503);
    let (status, body) = http(&addr, "POST", "/v1/completions", r#"{"model": "tiny", "prompt": "x"}"#);
    assert_eq!(status, 503, "{body}");
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("data: [DONE]"), "the request in flight finished: {body}");
    assert!(body.contains("\"finish_reason\":\"length\""), "{body}");
    let exit = server.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}
