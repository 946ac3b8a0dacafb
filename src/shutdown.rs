//! The stop request: SIGINT (Ctrl-C in a terminal) or SIGTERM (`systemctl stop`).
//!
//! A future rather than a flag, so long-running commands take it as their `shutdown`
//! argument and tests pass their own.

use tokio::signal::unix::{SignalKind, signal};

/// Completes when the process receives SIGINT or SIGTERM, whichever comes first.
pub async fn shutdown_signal() {
    tokio::select! {
        () = receive(SignalKind::interrupt(), "SIGINT") => {}
        () = receive(SignalKind::terminate(), "SIGTERM") => {}
    }
}

/// Completes on the first `kind` signal. If the handler cannot be installed, it never
/// completes (after saying so), so the other signal still stops the process instead of a
/// failed installation stopping it at once.
async fn receive(kind: SignalKind, name: &str) {
    match signal(kind) {
        Ok(mut stream) => {
            stream.recv().await;
            tracing::info!("{name} received, shutting down");
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for {name}; stop the process with the other signal");
            std::future::pending::<()>().await;
        }
    }
}
