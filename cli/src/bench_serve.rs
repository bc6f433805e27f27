//! `nanovllm-cli bench-serve`: a served model measured as `vllm bench serve` measures one, with its
//! flags, its metric definitions (`serve_metrics`), its table and its JSON field names. Requests
//! stream from `/v1/completions` (token-id prompts, `ignore_eos`, usage in the last chunk);
//! arrivals are all at once or a gamma process (`--request-rate`, `--burstiness`), optionally
//! capped by `--max-concurrency`. Failed requests are counted and shown, and make the exit status
//! non-zero (a load test in CI fails on them).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Gamma};
use serde_json::{Value, json};

use crate::serve_metrics::{RequestOutput, RunInfo, report};
use crate::workload::{Shape, Workload};

/// Where the requests come from.
#[derive(Clone, Copy, ValueEnum)]
enum Dataset {
    /// Random token ids, --random-input-len in and --random-output-len out (vLLM's `random`).
    Random,
    /// nano-vllm's bench.py workload, from the generator `bench` uses (--num-prompts requests;
    /// 256 is bench.py's).
    NanoVllm,
}

#[derive(Args)]
pub(crate) struct BenchServeArgs {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base_url: String,
    /// The completions endpoint.
    #[arg(long, default_value = "/v1/completions")]
    endpoint: String,
    /// The model name to request (default: the first the server lists at /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Tokenizer (a model directory or hub id) whose vocabulary random prompts draw from
    /// (default: --model).
    #[arg(long)]
    tokenizer: Option<String>,
    #[arg(long, value_enum, default_value = "random")]
    dataset_name: Dataset,
    /// Requests to send.
    #[arg(long, default_value_t = 1000)]
    num_prompts: usize,
    /// Prompt tokens of a random request.
    #[arg(long, default_value_t = 1024)]
    random_input_len: usize,
    /// Tokens a random request generates.
    #[arg(long, default_value_t = 128)]
    random_output_len: usize,
    /// Random lengths vary in [len * (1 - r), len * (1 + r)].
    #[arg(long, default_value_t = 0.0)]
    random_range_ratio: f64,
    /// Requests per second, arriving as a gamma process; inf sends them all at once.
    #[arg(long, default_value = "inf")]
    request_rate: f64,
    /// Shape of the gamma process: 1 is Poisson, lower is burstier, higher more regular.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// Requests in flight at most (the others wait in this client).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Requests sent first and not measured.
    #[arg(long, default_value_t = 1)]
    num_warmups: usize,
    /// Seed of the dataset and the arrivals.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling temperature (vLLM's bench sends 0, greedy, unless told).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Percentiles to report, comma-separated.
    #[arg(long, default_value = "50,90,99", value_delimiter = ',')]
    metric_percentiles: Vec<f64>,
    /// Seconds a request may take before it counts as failed.
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// `Authorization: Bearer` key (also OPENAI_API_KEY).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Write the result as JSON (vLLM's fields) to --result-dir/--result-filename.
    #[arg(long)]
    save_result: bool,
    #[arg(long, default_value = ".")]
    result_dir: PathBuf,
    /// Default: openai-{rate}qps-{model}-{date}.json, as vLLM names it.
    #[arg(long)]
    result_filename: Option<String>,
    /// No progress bar.
    #[arg(long)]
    disable_tqdm: bool,
}

/// One request to send.
struct Request {
    prompt: Vec<u32>,
    max_tokens: usize,
}

pub(crate) fn run(args: BenchServeArgs) -> anyhow::Result<ExitCode> {
    let positive = args.request_rate > 0.0 && args.burstiness > 0.0 && args.burstiness.is_finite();
    if !positive {
        bail!("--request-rate and --burstiness must be positive (--request-rate may be inf)");
    }
    if args.max_concurrency == Some(0) || args.num_prompts == 0 {
        bail!("--max-concurrency and --num-prompts must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: BenchServeArgs) -> anyhow::Result<ExitCode> {
    let base = args.base_url.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.request_timeout))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .build()?;
    let model = match &args.model {
        Some(model) => model.clone(),
        None => served_model(&client, &base, args.api_key.as_deref()).await?,
    };
    let tokenizer_id = args.tokenizer.clone().unwrap_or_else(|| model.clone());
    let requests = dataset(&args, &tokenizer_id)?;
    let url = format!("{base}{}", args.endpoint);
    let sender = Sender {
        client,
        url,
        model: model.clone(),
        api_key: args.api_key.clone(),
        temperature: args.temperature,
    };
    if let Some(first) = requests.first() {
        for _ in 0..args.num_warmups {
            let warm = sender.send(first).await;
            if !warm.success {
                bail!("the warm-up request failed: {}", warm.error);
            }
        }
    }
    eprintln!(
        "{} requests, request rate {}, burstiness {}, max concurrency {}",
        requests.len(),
        args.request_rate,
        args.burstiness,
        args.max_concurrency.map_or("none".into(), |n| n.to_string())
    );
    let progress = if args.disable_tqdm {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(requests.len() as u64)
    };
    let started = Instant::now();
    let outputs = send_all(Arc::new(sender), requests, &args, progress.clone()).await;
    let duration = started.elapsed();
    progress.finish_and_clear();
    let info = RunInfo {
        model_id: &model,
        tokenizer_id: &tokenizer_id,
        num_prompts: args.num_prompts,
        request_rate: args.request_rate,
        burstiness: args.burstiness,
        max_concurrency: args.max_concurrency,
    };
    let (result, table) = report(&outputs, duration, &info, &args.metric_percentiles);
    print!("{table}");
    for error in outputs.iter().filter(|o| !o.success).map(|o| &o.error).take(3) {
        eprintln!("failed: {error}");
    }
    if args.save_result {
        let name = args.result_filename.clone().unwrap_or_else(|| {
            let rate =
                if args.request_rate.is_finite() { args.request_rate.to_string() } else { "inf".into() };
            let model = model.rsplit('/').next().unwrap_or(&model);
            format!("openai-{rate}qps-{model}-{}.json", result["date"].as_str().unwrap_or_default())
        });
        std::fs::create_dir_all(&args.result_dir)?;
        let path = args.result_dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)
            .with_context(|| path.display().to_string())?;
        eprintln!("result: {}", path.display());
    }
    let failed = result["failed"].as_u64().unwrap_or(0);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The first model `/v1/models` lists.
async fn served_model(client: &reqwest::Client, base: &str, api_key: Option<&str>) -> anyhow::Result<String> {
    let mut request = client.get(format!("{base}/v1/models"));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let models: Value = request.send().await?.error_for_status()?.json().await?;
    models["data"][0]["id"].as_str().map(str::to_owned).context("/v1/models lists no model: pass --model")
}

/// The requests of `--dataset-name`.
fn dataset(args: &BenchServeArgs, tokenizer_id: &str) -> anyhow::Result<Vec<Request>> {
    match args.dataset_name {
        Dataset::Random => {
            let dir = nanovllm::Hub::from_env().resolve(tokenizer_id)?;
            let vocab = nanovllm::Tokenizer::from_file(&dir.join("tokenizer.json"))?.vocab_size() as u32;
            Ok(random(args, vocab))
        }
        Dataset::NanoVllm => {
            let workload = Workload::nano_vllm(&Shape::bench_py(args.num_prompts, args.seed));
            Ok(workload
                .prompts
                .into_iter()
                .zip(workload.max_tokens)
                .map(|(prompt, max_tokens)| Request { prompt, max_tokens })
                .collect())
        }
    }
}

/// vLLM's random dataset: lengths drawn around the asked ones, each prompt a run of consecutive
/// token ids from a random start.
fn random(args: &BenchServeArgs, vocab: u32) -> Vec<Request> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let range = |len: usize| {
        let low = ((len as f64 * (1.0 - args.random_range_ratio)) as usize).max(1);
        (low, ((len as f64 * (1.0 + args.random_range_ratio)) as usize).max(low))
    };
    let (input, output) = (range(args.random_input_len), range(args.random_output_len));
    (0..args.num_prompts)
        .map(|i| {
            let len = rng.random_range(input.0..=input.1);
            let start = rng.random_range(0..vocab);
            let prompt = (0..len as u32).map(|j| (start + i as u32 + j) % vocab).collect();
            Request { prompt, max_tokens: rng.random_range(output.0..=output.1) }
        })
        .collect()
}

/// Sends requests to the server and times their chunks.
struct Sender {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    temperature: f64,
}

impl Sender {
    async fn send(&self, request: &Request) -> RequestOutput {
        let body = json!({
            "model": self.model, "prompt": request.prompt, "max_tokens": request.max_tokens,
            "temperature": self.temperature, "ignore_eos": true, "stream": true,
            "stream_options": {"include_usage": true},
        });
        let mut output = RequestOutput { prompt_len: request.prompt.len(), ..RequestOutput::default() };
        let mut post = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            post = post.bearer_auth(key);
        }
        let started = Instant::now();
        let response = match post.send().await {
            Ok(response) => response,
            Err(e) => {
                output.error = e.to_string();
                return output;
            }
        };
        if !response.status().is_success() {
            let status = response.status();
            output.error = format!("HTTP {status}: {}", response.text().await.unwrap_or_default());
            return output;
        }
        let mut events = response.bytes_stream().eventsource();
        let mut last = started;
        while let Some(event) = events.next().await {
            let now = Instant::now();
            let data = match event {
                Ok(event) if event.data == "[DONE]" => break,
                Ok(event) => event.data,
                Err(e) => {
                    output.error = e.to_string();
                    break;
                }
            };
            let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
                output.error = format!("not JSON: {data}");
                break;
            };
            if let Some(error) = chunk.get("error") {
                output.error = error.to_string();
                break;
            }
            match chunk["choices"].as_array() {
                Some(choices) if !choices.is_empty() => {
                    if output.ttft == 0.0 {
                        output.ttft = (now - started).as_secs_f64();
                    } else {
                        output.itl.push((now - last).as_secs_f64());
                    }
                    last = now;
                    output.generated_text.push_str(choices[0]["text"].as_str().unwrap_or_default());
                }
                _ => {
                    if let Some(tokens) = chunk["usage"]["completion_tokens"].as_u64() {
                        output.output_tokens = tokens as usize;
                    }
                }
            }
        }
        output.latency = (last - started).as_secs_f64();
        output.success = output.error.is_empty() && output.ttft > 0.0;
        if output.success && output.output_tokens == 0 {
            output.success = false;
            output.error = "the stream ended without usage".into();
        }
        output
    }
}

/// Send every request at its arrival time (gamma intervals, or all at once), at most
/// `--max-concurrency` in flight; their outputs in request order.
async fn send_all(
    sender: Arc<Sender>,
    requests: Vec<Request>,
    args: &BenchServeArgs,
    progress: indicatif::ProgressBar,
) -> Vec<RequestOutput> {
    let limit = args.max_concurrency.map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    let gamma = args
        .request_rate
        .is_finite()
        .then(|| Gamma::new(args.burstiness, 1.0 / (args.request_rate * args.burstiness)).expect("positive"));
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
    let mut tasks = Vec::with_capacity(requests.len());
    for request in requests {
        let (sender, limit, progress) = (sender.clone(), limit.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = match &limit {
                Some(limit) => Some(limit.acquire().await.expect("never closed")),
                None => None,
            };
            let output = sender.send(&request).await;
            progress.inc(1);
            output
        }));
        if let Some(gamma) = &gamma {
            tokio::time::sleep(Duration::from_secs_f64(gamma.sample(&mut rng))).await;
        }
    }
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(
            task.await.unwrap_or_else(|e| RequestOutput { error: e.to_string(), ..RequestOutput::default() }),
        );
    }
    outputs
}
