//! The `scan-agent-sync` binary: everything but argument parsing lives in the library, so
//! tests and other front ends reach the same code.

use std::process::ExitCode;

use clap::Parser;
use scan_agent_sync::cli::{self, Cli};

/// A sync cycle builds and frees hundreds of thousands of small strings per batch (parsed
/// payloads, their serialized text, the column arrays of the diff engine); with glibc's
/// allocator freeing and reallocating them took a fifth of a 100k-agent apply (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    cli::execute(Cli::parse()).await
}
