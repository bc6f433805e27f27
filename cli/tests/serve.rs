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

fn model_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-random-qwen3")
}

/// `serve` of the tiny model (dummy weights) on a free loopback port with `flags`, once ready: the
/// process and its address.
fn serve(flags: &[&str]) -> (std::process::Child, String) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_nanovllm-cli"))
        .args(["serve", &model_dir().display().to_string(), "--load-format", "dummy", "--port", "0"])
        .args(["--kv-cache-memory-gib", "0.01", "--max-model-len", "512", "--block-size", "16"])
        .args(["--served-model-name", "tiny"])
        .args(flags)
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
    // The rest of its log goes on being read, so that it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    // It listens while the model loads (503), then is ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(&addr, "GET", "/health", "").0 != 200 {
        assert!(Instant::now() < deadline, "not ready within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, addr)
}

#[test]
fn bench_serve_measures_the_server_with_no_failures() {
    let (mut server, addr) = serve(&[]);
    let results = tempfile::tempdir().unwrap();
    let bench = Command::new(env!("CARGO_BIN_EXE_nanovllm-cli"))
        .args(["bench-serve", "--base-url", &format!("http://{addr}"), "--tokenizer"])
        .arg(model_dir())
        .args(["--num-prompts", "64", "--max-concurrency", "16", "--random-input-len", "48"])
        .args(["--random-output-len", "8", "--request-timeout", "120", "--disable-tqdm", "--save-result"])
        .args(["--result-filename", "result.json", "--result-dir"])
        .arg(results.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    server.kill().unwrap();
    let table = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "{table}\n{}", String::from_utf8_lossy(&bench.stderr));
    assert!(table.contains("Successful requests:                     64"), "{table}");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.path().join("result.json")).unwrap()).unwrap();
    assert_eq!((result["completed"].as_u64(), result["failed"].as_u64()), (Some(64), Some(0)));
    assert_eq!(result["total_input_tokens"], 64 * 48);
    assert_eq!(result["total_output_tokens"], 64 * 8, "usage counts every token asked for");
    assert_eq!(result["max_concurrency"], 16);
    for key in
        ["mean_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p90_itl_ms", "mean_e2el_ms", "output_throughput"]
    {
        assert!(result[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {}", result[key]);
    }
}

#[test]
fn serve_answers_then_drains_on_sigterm_and_exits_0() {
    let (mut server, addr) = serve(&["--shutdown-timeout", "60"]);
    // A long request in flight when SIGTERM comes (as long as the model allows: the signal
    // follows it by 300 ms, which a fast machine would otherwise outrun).
    let long =
        r#"{"model": "tiny", "prompt": "Once", "max_tokens": 480, "ignore_eos": true, "stream": true}"#;
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
