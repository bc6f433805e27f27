//! The server as a client sees it, in process on a loopback port: the committed tiny model (the
//! real Qwen3 tokenizer and chat template, random weights) on the CPU. Streamed text equals the
//! whole text; a seed gives `LLM::generate`'s tokens, alone or among concurrent requests; usage is
//! what the engine counted; every error comes in OpenAI's shape with its status, and the server
//! serves on after each; a client that goes away frees its blocks; overload gives 503s.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{MODEL, chunks, client, events, metric, model_dir, post, served_model, wait_for};
use futures_util::StreamExt;
use nanovllm::{CacheDtype, EngineConfig, LLM, LoadFormat, Prompt, SamplingParams, Tokenizer};
use nanovllm_server::{Admission, AppState, EngineHandle, Metrics, ServedModel};
use serde_json::{Value, json};

fn engine_config() -> EngineConfig {
    EngineConfig {
        kv_cache_dtype: CacheDtype::Int8,
        kv_cache_memory_bytes: Some(4 << 20),
        block_size: 16,
        max_model_len: Some(256),
        max_num_seqs: 8,
        progress: false,
        ..EngineConfig::default()
    }
}

fn load() -> Result<LLM, nanovllm::EngineError> {
    LLM::load(&model_dir(), engine_config(), LoadFormat::Dummy)
}

/// A server of the tiny model on a free loopback port, admitting `max_in_flight` requests; it
/// stops when the returned sender drops.
async fn start(
    max_in_flight: usize,
    api_key: Option<&str>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let metrics = Arc::new(Metrics::new(MODEL));
    let engine = EngineHandle::start(load, metrics.clone()).unwrap();
    let limits = Admission { concurrent: max_in_flight, queued: 0 };
    let state = AppState::new(engine, served_model(false), metrics, limits, api_key.map(str::to_owned));
    common::serve(Arc::new(state)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_text_is_the_whole_text_and_usage_is_the_engines() {
    let (addr, _stop) = start(64, None).await;
    let request = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 24, "temperature": 0,
                         "ignore_eos": true});
    let (status, whole) = post(addr, "/v1/completions", &request).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    let text = whole["choices"][0]["text"].as_str().unwrap();
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    let prompt_tokens = Tokenizer::from_file(&model_dir().join("tokenizer.json"))
        .unwrap()
        .encode("The capital of France is")
        .unwrap()
        .len();
    assert_eq!(
        whole["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 24, "total_tokens": prompt_tokens + 24,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = chunks(&events(addr, "/v1/completions", &streamed).await);
    let joined: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(joined, text);
    let finish: Vec<&Value> = chunks.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).collect();
    assert_eq!(finish.len(), 1);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], whole["usage"]);
    // Log-probabilities, streamed token by token, are the whole response's.
    let with_logprobs = |stream: bool| {
        json!({"model": MODEL, "prompt": "Hello", "max_tokens": 6, "temperature": 0, "ignore_eos": true,
               "logprobs": 2, "stream": stream})
    };
    let (_, whole) = post(addr, "/v1/completions", &with_logprobs(false)).await;
    let logprobs = &whole["choices"][0]["logprobs"];
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), 6);
    assert_eq!(logprobs["top_logprobs"][0].as_object().unwrap().len(), 2);
    let logprob_chunks = self::chunks(&events(addr, "/v1/completions", &with_logprobs(true)).await);
    let streamed: Vec<Value> = logprob_chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["token_logprobs"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(&Value::Array(streamed), &logprobs["token_logprobs"]);
    // Token ids in, and n samples out with their own indices.
    let ids = json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 5, "n": 3, "temperature": 1.0, "seed": 3,
                     "ignore_eos": true});
    let (status, body) = post(addr, "/v1/completions", &ids).await;
    assert_eq!(status, 200, "{body}");
    let indices: Vec<u64> =
        body["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1, 2]);
    assert_eq!(body["usage"]["completion_tokens"], 15);
    // A prompt of 40 tokens seen before: its two full blocks of 16 come from the prefix cache.
    let long = json!({"model": MODEL, "prompt": (100..140).collect::<Vec<u32>>(), "max_tokens": 2});
    let (_, first) = post(addr, "/v1/completions", &long).await;
    let (_, again) = post(addr, "/v1/completions", &long).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], 32);
    assert!(metric(addr, "vllm:prefix_cache_hits_total").await >= 32.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_gives_the_engines_tokens_alone_and_among_concurrent_requests() {
    let params = SamplingParams {
        temperature: 0.8,
        seed: Some(11),
        max_tokens: 12,
        ignore_eos: true,
        ..Default::default()
    };
    let expected = {
        let mut llm = load().unwrap();
        let out = llm.generate(vec![Prompt::Tokens(vec![5, 6, 7, 8])], &params).unwrap();
        llm.tokenizer().unwrap().decode(&out[0].as_ref().unwrap().token_ids).unwrap()
    };
    let (addr, _stop) = start(64, None).await;
    let request = |seed: u64| {
        json!({"model": MODEL, "prompt": [5, 6, 7, 8], "max_tokens": 12, "temperature": 0.8, "seed": seed,
               "ignore_eos": true, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0})
    };
    let (_, alone) = post(addr, "/v1/completions", &request(11)).await;
    assert_eq!(alone["choices"][0]["text"], expected);
    let requests: Vec<Value> = (0..8).map(|i| request(11 + i)).collect();
    let together =
        futures_util::future::join_all(requests.iter().map(|r| post(addr, "/v1/completions", r))).await;
    assert_eq!(together[0].1["choices"][0]["text"], expected, "the same seed among 8 concurrent requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_found_off_the_engine_end_requests_as_the_engine_does() {
    let (addr, _stop) = start(64, None).await;
    let request = |stop: Option<&str>, n: usize, stream: bool| {
        json!({"model": MODEL, "prompt": [5, 6, 7, 8], "max_tokens": 40, "temperature": 0, "ignore_eos": true,
               "n": n, "stop": stop, "stream": stream, "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null }})
    };
    let (_, free) = post(addr, "/v1/completions", &request(None, 1, false)).await;
    let text = free["choices"][0]["text"].as_str().unwrap().to_owned();
    // A stop string from the middle of the greedy text, which may straddle tokens.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let params = SamplingParams { stop: vec![stop.clone()], ignore_eos: true, ..SamplingParams::greedy(40) };
    let expected = {
        let mut llm = load().unwrap();
        llm.generate(vec![Prompt::Tokens(vec![5, 6, 7, 8])], &params).unwrap().remove(0).unwrap()
    };
    assert_eq!(expected.finish_reason, nanovllm::FinishReason::Stop, "{text:?} holds {stop:?}");
    let (status, whole) = post(addr, "/v1/completions", &request(Some(&stop), 2, false)).await;
    assert_eq!(status, 200, "{whole}");
    for choice in whole["choices"].as_array().unwrap() {
        assert_eq!(choice["text"], expected.text.clone().unwrap());
        assert_eq!((&choice["finish_reason"], &choice["stop_reason"]), (&json!("stop"), &json!(stop)));
    }
    assert_eq!(
        whole["usage"]["completion_tokens"],
        2 * expected.token_ids.len(),
        "the tokens up to the match"
    );
    let chunks = chunks(&events(addr, "/v1/completions", &request(Some(&stop), 2, true)).await);
    for index in 0..2 {
        let mine: Vec<&Value> = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|c| c["index"] == index)
            .collect();
        let joined: String = mine.iter().filter_map(|c| c["text"].as_str()).collect();
        assert_eq!(joined, expected.text.clone().unwrap());
        let finish: Vec<&&Value> = mine.iter().filter(|c| !c["finish_reason"].is_null()).collect();
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["stop_reason"], json!(stop));
    }
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
    assert_eq!(
        wait_for(addr, "vllm:kv_cache_usage_perc", 0.0).await,
        0.0,
        "stopped samples free their blocks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_the_role_then_deltas_then_one_finish_and_usage() {
    let (addr, _stop) = start(64, None).await;
    let request = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
                         "temperature": 0, "ignore_eos": true, "chat_template_kwargs": {"enable_thinking": false}});
    let (status, whole) = post(addr, "/v1/chat/completions", &request).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    let (_, tokenized) = post(
        addr,
        "/tokenize",
        &json!({"messages": request["messages"],
                                                         "chat_template_kwargs": {"enable_thinking": false}}),
    )
    .await;
    assert_eq!(whole["usage"]["prompt_tokens"], tokenized["count"], "the prompt is the rendered template");
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = chunks(&events(addr, "/v1/chat/completions", &streamed).await);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, whole["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(chunks.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).count(), 1);
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_openais_shape_and_the_server_serves_on() {
    let (addr, _stop) = start(64, None).await;
    let ok = json!({"model": MODEL, "prompt": "x", "max_tokens": 2});
    let raw = |body: &'static str| async move {
        let response = client()
            .post(format!("http://{addr}/v1/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    let cases: Vec<(u16, Value, Option<&str>, Option<&str>)> = vec![
        {
            let (s, b) = raw("{not json").await;
            (s, b, None, None)
        },
        {
            let (s, b) =
                post(addr, "/v1/completions", &json!({"model": MODEL, "prompt": "x", "max_tokens": "many"}))
                    .await;
            (s, b, Some("max_tokens"), None)
        },
        {
            let (s, b) =
                post(addr, "/v1/completions", &json!({"model": MODEL, "prompt": "x", "temperature": -1}))
                    .await;
            (s, b, Some("temperature"), None)
        },
        {
            let (s, b) =
                post(addr, "/v1/completions", &json!({"model": MODEL, "prompt": "x", "top_k": -5})).await;
            (s, b, Some("top_k"), None)
        },
        {
            let (s, b) =
                post(addr, "/v1/completions", &json!({"model": MODEL, "prompt": "x", "max_tokens": 1000}))
                    .await;
            (s, b, Some("max_tokens"), Some("context_length_exceeded"))
        },
        {
            let body = json!({"model": MODEL, "prompt": "x", "stop": ""});
            let (s, b) = post(addr, "/v1/completions", &body).await;
            (s, b, Some("stop"), None)
        },
        {
            let (s, b) = post(addr, "/v1/completions", &json!({"model": MODEL, "prompt": [999999]})).await;
            (s, b, None, None)
        },
    ];
    for (status, body, param, code) in cases {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        if let Some(param) = param {
            assert_eq!(body["error"]["param"], param, "{body}");
        }
        if let Some(code) = code {
            assert_eq!(body["error"]["code"], code, "{body}");
        }
        assert_eq!(post(addr, "/v1/completions", &ok).await.0, 200, "serves on");
    }
    let (status, body) = post(addr, "/v1/completions", &json!({"model": "other", "prompt": "x"})).await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("model_not_found")));
    let big = json!({"model": MODEL, "prompt": "x".repeat(1 << 17)});
    let (status, body) = post(addr, "/v1/completions", &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"]["message"].is_string());
    assert_eq!(post(addr, "/v1/completions", &ok).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_v1_and_the_rest_stays_open() {
    let (addr, _stop) = start(64, Some("secret")).await;
    let url = format!("http://{addr}/v1/models");
    let without = client().get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let body: Value = without.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(client().get(&url).bearer_auth("wrong").send().await.unwrap().status(), 401);
    let with = client().get(&url).bearer_auth("secret").header("x-request-id", "abc").send().await.unwrap();
    assert_eq!(with.status(), 200);
    assert_eq!(with.headers()["x-request-id"], "abc", "the access log's id comes back");
    let models: Value = with.json().await.unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(client().get(format!("http://{addr}/health")).send().await.unwrap().status(), 200);
    let version: Value =
        client().get(format!("http://{addr}/version")).send().await.unwrap().json().await.unwrap();
    assert!(version["version"].is_string());
    let (_, tokens) = post(addr, "/tokenize", &json!({"prompt": "Hello world"})).await;
    let (_, text) = post(addr, "/detokenize", &json!({"tokens": tokens["tokens"]})).await;
    assert_eq!(text["prompt"], "Hello world");
}

/// Polls `/metrics` until the KV cache is empty (bounded).
async fn wait_for_empty_cache(addr: SocketAddr) -> f64 {
    wait_for(addr, "vllm:kv_cache_usage_perc", 0.0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_frees_its_blocks_and_overload_is_503() {
    let (addr, _stop) = start(2, None).await;
    let long = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true,
                      "stream": true});
    // Two streams hold the two places; a third request gets 503 with Retry-After.
    let first = client().post(format!("http://{addr}/v1/completions")).json(&long).send().await.unwrap();
    let second = client().post(format!("http://{addr}/v1/completions")).json(&long).send().await.unwrap();
    let mut first_body = first.bytes_stream();
    assert!(first_body.next().await.is_some(), "the stream has begun");
    assert!(metric(addr, "vllm:kv_cache_usage_perc").await > 0.0);
    let third = client().post(format!("http://{addr}/v1/completions")).json(&long).send().await.unwrap();
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
    // Both clients leave mid-stream: their requests are aborted, their blocks freed.
    drop(first_body);
    drop(second);
    assert_eq!(wait_for_empty_cache(addr).await, 0.0);
    assert!(metric(addr, "vllm:request_success_total{finished_reason=\"abort\"").await >= 2.0);
    // A non-streaming client that leaves is aborted too.
    let request =
        json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true});
    let pending = tokio::spawn(async move {
        client().post(format!("http://{addr}/v1/completions")).json(&request).send().await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pending.abort();
    assert_eq!(wait_for_empty_cache(addr).await, 0.0);
    assert_eq!(
        post(addr, "/v1/completions", &json!({"model": MODEL, "prompt": "x", "max_tokens": 2})).await.0,
        200
    );
    // vLLM's metric names.
    let text = client().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:cache_config_info",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_preemptions_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(text.contains("cache_dtype=\"int8\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_reach_the_qwen3_template_and_unsupported_tool_choices_are_refused() {
    let (addr, _stop) = start(64, None).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let messages = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let (_, tokenized) = post(addr, "/tokenize", &json!({"messages": messages, "tools": tools})).await;
    let (_, rendered) = post(addr, "/detokenize", &json!({"tokens": tokenized["tokens"]})).await;
    let rendered = rendered["prompt"].as_str().unwrap();
    assert!(rendered.contains("<tools>") && rendered.contains("\"name\": \"get_weather\""), "{rendered}");
    let request = json!({"model": MODEL, "messages": messages, "tools": tools, "max_tokens": 4});
    let (status, body) = post(addr, "/v1/chat/completions", &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], tokenized["count"], "the tools are in the prompt");
    assert!(
        body["choices"][0]["message"].get("reasoning_content").is_none(),
        "no reasoning parser asked for"
    );
    let mut forced = request.clone();
    forced["tool_choice"] = json!("required");
    let (status, body) = post(addr, "/v1/chat/completions", &forced).await;
    assert_eq!((status, &body["error"]["param"]), (400, &json!("tool_choice")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_in_the_engine_is_aborted_when_its_client_leaves() {
    let (addr, _stop) = start(64, None).await;
    let long = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true,
                      "stream": true});
    let send = || client().post(format!("http://{addr}/v1/completions")).json(&long).send();
    // The engine runs 8 sequences at once: the ninth waits in its queue.
    let mut running = Vec::new();
    for _ in 0..8 {
        running.push(send().await.unwrap());
    }
    let queued = send().await.unwrap();
    assert_eq!(wait_for(addr, "vllm:num_requests_waiting", 1.0).await, 1.0);
    drop(queued);
    assert_eq!(wait_for(addr, "vllm:num_requests_waiting", 0.0).await, 0.0, "aborted while queued");
    assert_eq!(metric(addr, "vllm:num_requests_running").await, 8.0, "the others run on");
    drop(running);
    assert_eq!(wait_for_empty_cache(addr).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_model_loads_health_and_requests_get_503() {
    let (release, loading) = std::sync::mpsc::channel::<()>();
    let metrics = Arc::new(Metrics::new(MODEL));
    let engine = EngineHandle::spawn(
        move || {
            let _ = loading.recv();
            load()
        },
        metrics.clone(),
    )
    .unwrap();
    let model = ServedModel { chat_template: None, ..served_model(false) };
    let limits = Admission { concurrent: 4, queued: 0 };
    let state = Arc::new(AppState::new(engine, model, metrics, limits, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(nanovllm_server::serve(listener, state.clone(), 1 << 16, std::future::pending()));
    let health = || async { client().get(format!("http://{addr}/health")).send().await.unwrap().status() };
    assert_eq!(health().await, 503);
    let request = json!({"model": MODEL, "prompt": "x", "max_tokens": 2});
    let (status, body) = post(addr, "/v1/completions", &request).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("loading"));
    release.send(()).unwrap();
    let ready =
        tokio::task::spawn_blocking(move || state.engine().wait_until_built().map(|i| i.max_model_len));
    assert_eq!(ready.await.unwrap().unwrap(), 256);
    assert_eq!(health().await, 200);
    assert_eq!(post(addr, "/v1/completions", &request).await.0, 200);
}
