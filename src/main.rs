//! The `scan-agent-sync` binary: everything but argument parsing lives in the library, so
//! tests and other front ends reach the same code.

use std::process::ExitCode;

use clap::Parser;
use scan_agent_sync::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    cli::execute(Cli::parse()).await
}
