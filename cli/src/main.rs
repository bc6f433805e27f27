//! `nanovllm-cli`: generate text with Qwen3 models from the command line.

mod bench;
mod bench_serve;
mod engine_args;
mod eval;
mod generate;
mod prompts;
mod sampling_args;
mod serve;
mod serve_metrics;
mod workload;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// nanovllm: a small LLM inference engine for Qwen3 with an INT8 KV cache.
#[derive(Parser)]
#[command(name = "nanovllm-cli", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text for one prompt (streamed) or a file of prompts (batched).
    #[command(allow_negative_numbers = true)]
    Generate(generate::GenerateArgs),
    /// Measure throughput on nano-vllm's benchmark workload (or a JSONL workload).
    #[command(allow_negative_numbers = true)]
    Bench(bench::BenchArgs),
    /// Perplexity of a text, and the KL divergence of one KV cache dtype from another.
    #[command(allow_negative_numbers = true)]
    Eval(eval::EvalArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (`serve MODEL`, as `vllm serve`).
    Serve(serve::ServeArgs),
    /// Measure a server as `vllm bench serve` does: TTFT, TPOT, ITL, end-to-end latency, throughput.
    BenchServe(bench_serve::BenchServeArgs),
}

/// Set by Ctrl-C; generation loops check it between steps and stop cleanly.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the user pressed Ctrl-C.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

fn main() -> ExitCode {
    // Logs (model load, cache sizing, graph capture, preemptions) by RUST_LOG, warnings by
    // default; the lines a user reads are printed apart from them.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // A second Ctrl-C while stopping falls back to the default: the process ends at once.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
    });
    let cli = Cli::parse_from(serve::positional_model(std::env::args_os().collect()));
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Serve(args) => serve::run(args),
        Command::BenchServe(args) => bench_serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(_) if interrupted() => {
            eprintln!("interrupted");
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
