//! Developer tasks for the nanovllm workspace, run as `cargo xtask <task>`.

mod bench_memory;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// KV cache memory per dtype: bytes, savings, tokens and concurrent sequences that fit.
    BenchMemory(bench_memory::Args),
}

fn main() -> ExitCode {
    let result = match Xtask::parse().task {
        Task::BenchMemory(args) => bench_memory::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
