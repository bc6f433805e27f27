//! Developer tasks for the nanovllm workspace, run as `cargo xtask <task>`.

use clap::Parser;

/// Developer tasks (bench-memory comes with the measurement issue).
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Xtask {}

fn main() {
    Xtask::parse();
}
