//! A stand-in for the Defender authenticated-scan agent API and its Entra ID token endpoint.
//!
//! It reproduces what `shared/defender-api.md` says the real service does, including the
//! awkward parts a client must cope with: both by-ID envelopes, both field spellings, 0 to 7
//! fractional digits, paging by absolute `nextLink`, opaque IDs that need encoding, sliding rate
//! windows answered with 429 and `Retry-After`, 5xx, truncated JSON, dropped connections, and a
//! fleet whose agents report in, upgrade, go silent and disappear. Tests, the `demo` command and
//! budget benchmarks run against it in-process; operators run it with `scan-agent-sync simulate`
//! to try a configuration without a tenant.

mod agents_api;
mod auth;
mod connection;
mod faults;
mod fleet;
mod handle;
mod limiter;
mod options;
mod recorder;
mod render;
mod reply;
mod routes;
mod state;
mod urlencoded;

use std::future::{Future, IntoFuture};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use faults::Faults;
pub use handle::SimulatorHandle;
pub use limiter::WindowPeak;
pub use options::{Envelope, FieldCase, SimulatorOptions};
pub use recorder::{EndpointKind, LoggedRequest, ServedAgent, SimStats};

use connection::{ConnectionKill, KillableListener};
use state::Hosted;

/// Binds `options.listen` (port 0 picks a free port) and serves in the background until the
/// handle's [`SimulatorHandle::shutdown`].
pub async fn start(options: SimulatorOptions) -> anyhow::Result<SimulatorHandle> {
    let listener = TcpListener::bind(options.listen).await.with_context(|| {
        format!("cannot listen on {} for the simulator; pick another --listen", options.listen)
    })?;
    let bound = listener.local_addr().context("reading the simulator's bound address")?;
    let hosted = Arc::new(Hosted::new(&options, bound));
    let sim = hosted.first().clone();
    let stop = CancellationToken::new();
    let app = routes::router(hosted.clone()).into_make_service_with_connect_info::<ConnectionKill>();
    let server =
        axum::serve(KillableListener(listener), app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let server = tokio::spawn(server.into_future());
    Ok(SimulatorHandle { sim, hosted, stop, server: Arc::new(Mutex::new(Some(server))) })
}

/// Serves until `shutdown` completes, for `scan-agent-sync simulate`; every request is logged
/// at info level with its method, raw path, status and duration.
pub async fn run(options: SimulatorOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let handle = start(options).await?;
    for tenant in handle.tenants() {
        let agents = tenant.agent_ids();
        tracing::info!(
            api_base_url = %tenant.base_url(),
            token_url = %tenant.token_url(),
            agents = agents.len(),
            first_agent = agents.first().map_or("", String::as_str),
            "Defender API simulator listening",
        );
    }
    shutdown.await;
    tracing::info!("Defender API simulator stopping");
    handle.shutdown().await
}
