//! The `scan-agent-sync` binary: everything but argument parsing lives in the library, so
//! tests and other front ends reach the same code.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use scan_agent_sync::cli::{self, Cli};

/// A sync cycle builds and frees hundreds of thousands of small strings per batch (parsed
/// payloads, their serialized text, the column arrays of the diff engine); with glibc's
/// allocator freeing and reallocating them took a fifth of a 100k-agent apply (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a blocking-pool thread (payload hashing during a batch) waits for more work
/// before it exits. Batches of a cycle come well within it; between cycles the threads and
/// the memory their allocator heaps hold go within a second (tokio's default is 10 s).
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(cli::execute(Cli::parse())),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}
