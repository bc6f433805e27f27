//! `nanovllm-cli serve MODEL`: the OpenAI-compatible server (`nanovllm-server`), as `vllm serve`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nanovllm::{ChatTemplate, EngineConfig, GenerationConfig, LLM, Qwen3Config, Tokenizer};
use nanovllm_server::{
    Admission, AppState, EngineHandle, Metrics, MockEngine, MockEngineConfig, ServedModel, ServerError,
};

use crate::engine_args::EngineArgs;

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on (loopback by default: pass 0.0.0.0 to serve other hosts).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The model name clients give (default: the model argument).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* (also NANOVLLM_API_KEY or VLLM_API_KEY).
    #[arg(long, env = "NANOVLLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests handed to the engine at once (default: --max-num-seqs).
    #[arg(long)]
    max_concurrent_requests: Option<usize>,
    /// Requests waiting for one of those places; beyond, 503 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    max_queued_requests: usize,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Split a chat answer's <think> section into `reasoning_content` (vLLM's flag; qwen3 is
    /// the parser there is).
    #[arg(long, value_parser = ["qwen3"])]
    reasoning_parser: Option<String>,
    /// Seconds that requests in flight may take to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    /// Serve without a model, to measure the server alone: every step takes --mock-step-ms and
    /// gives each running stream one token (its prompt's tokens, in order, over and over). Only
    /// the model directory's tokenizer and configs are read.
    #[arg(long)]
    mock_engine: bool,
    /// Milliseconds a step of --mock-engine takes.
    #[arg(long, default_value_t = 5.0, requires = "mock_engine")]
    mock_step_ms: f64,
    /// What --mock-engine answers every request, then stopping as at an EOS (instead of the
    /// prompt's tokens): a client can be tested on a fixed model answer.
    #[arg(long, requires = "mock_engine")]
    mock_reply: Option<String>,
}

/// `serve MODEL` as vLLM takes it: a leading positional model becomes `--model MODEL`.
pub(crate) fn positional_model(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let is_serve = args.get(1).is_some_and(|a| a == "serve");
    if is_serve && args.get(2).is_some_and(|a| !a.to_string_lossy().starts_with('-')) {
        args.insert(2, "--model".into());
    }
    args
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (dir, config) = if args.mock_engine {
        (args.engine.model_dir()?, args.engine.config()?)
    } else {
        args.engine.prepare(false)?
    };
    let name = args.served_model_name.clone().unwrap_or_else(|| args.engine.model.clone());
    let model = ServedModel {
        name: name.clone(),
        tokenizer: Tokenizer::from_file(&dir.join("tokenizer.json"))?,
        chat_template: ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?,
        reasoning_parser: args.reasoning_parser.is_some(),
    };
    let metrics = Arc::new(Metrics::new(&name));
    let limits = Admission {
        concurrent: args.max_concurrent_requests.unwrap_or(config.max_num_seqs),
        queued: args.max_queued_requests,
    };
    // On the CPU the model's rayon threads take every core: two workers are plenty for HTTP.
    // The mock engine computes nothing: the server has every core.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.device == nanovllm::Device::Cpu && !args.mock_engine {
        runtime.worker_threads(2);
    }
    let runtime = runtime.enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind((args.host.as_str(), args.port)))?;
    // The socket answers while the model loads: /health and every request get 503 until then.
    eprintln!("serving {name} on http://{}/v1", listener.local_addr()?);
    let engine = if args.mock_engine {
        let reply = args.mock_reply.as_deref().map(|text| model.tokenizer.encode(text)).transpose()?;
        let mock = mock_config(&dir, &config, model.tokenizer.vocab_size(), args.mock_step_ms)?;
        let mock = MockEngineConfig { reply, ..mock };
        EngineHandle::spawn(move || Ok(MockEngine::new(mock)), metrics.clone())?
    } else {
        let format = args.engine.load_format();
        EngineHandle::spawn(move || LLM::load(&dir, config, format), metrics.clone())?
    };
    let api_key = args.api_key.clone().or_else(|| std::env::var("VLLM_API_KEY").ok());
    let state = Arc::new(AppState::new(engine, model, metrics, limits, api_key));
    let (signalled, drained) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        termination().await;
        eprintln!("draining: requests in flight finish, new ones get 503");
        let _ = signalled.send(());
    };
    let server =
        runtime.spawn(nanovllm_server::serve(listener, state.clone(), args.max_body_bytes, shutdown));
    match state.engine().wait_until_built() {
        Ok(info) => eprintln!("{}", info.cache),
        Err(ServerError::Engine(e)) => return Err(args.engine.flag_error(e)),
        Err(e) => return Err(e.into()),
    }
    drop(state);
    runtime.block_on(async {
        let deadline = async {
            if drained.await.is_ok() {
                tokio::time::sleep(Duration::from_secs(args.shutdown_timeout)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = server => served??,
            () = deadline => eprintln!("shutdown timeout: aborting the requests still in flight"),
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // Dropping the runtime drops the connections left, which aborts their requests.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}

/// The mock engine for the model in `dir`: its context and EOS tokens, the engine flags' limits.
fn mock_config(
    dir: &std::path::Path,
    config: &EngineConfig,
    vocab_size: usize,
    step_ms: f64,
) -> anyhow::Result<MockEngineConfig> {
    if !(step_ms.is_finite() && step_ms >= 0.0) {
        anyhow::bail!("--mock-step-ms {step_ms}: must be a number >= 0");
    }
    let model = Qwen3Config::from_file(&dir.join("config.json"))?;
    let generation = GenerationConfig::from_file(&dir.join("generation_config.json"))?;
    Ok(MockEngineConfig {
        step_time: Duration::from_secs_f64(step_ms / 1000.0),
        max_num_seqs: config.max_num_seqs,
        max_model_len: config.max_model_len_for(&model)?,
        vocab_size,
        eos_token_ids: generation.eos_token_ids,
        reply: None,
        fail_at_step: None,
    })
}

/// SIGTERM or Ctrl-C.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
