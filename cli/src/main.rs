//! `nanovllm-cli`: generate and benchmark from the command line.

use clap::Parser;

/// nanovllm: a small LLM inference engine for Qwen3 with an INT8 KV cache.
///
/// Commands (generate, bench, eval) arrive with the engine; this build only reports its version.
#[derive(Parser)]
#[command(name = "nanovllm-cli", version)]
struct Cli {}

fn main() {
    Cli::parse();
}
