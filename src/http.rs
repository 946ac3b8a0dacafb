//! The operator's HTTP endpoints on `http.listen`: `/metrics` for Prometheus, `/healthz`
//! for "is the process alive", `/readyz` for "can this instance do its job now".
//!
//! Liveness deliberately ignores the database: a restart does not bring PostgreSQL back,
//! and the daemon recovers by itself when it returns. Readiness is where outages show.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::leader::LeaderState;
use crate::metrics::{self, Metrics};
use crate::store::Store;

/// How long `/readyz` waits for `SELECT 1`: well under a typical probe timeout, so a hung
/// database reads as "not ready" rather than as a probe that timed out.
const DATABASE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Rendered on `/metrics`.
    pub metrics: Metrics,
    /// Probed by `/readyz`.
    pub store: Store,
    /// Published by [`crate::leader::Leadership`]; `/readyz` needs it known.
    pub leadership: watch::Receiver<LeaderState>,
}

/// The routes, for [`serve`] and for tests that drive the router directly.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves the endpoints on `listener` until `shutdown` completes, then finishes in-flight
/// requests and returns. Takes a bound listener so tests can bind port 0.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], state.metrics.encode())
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 with the role when the database answers and leadership is known; 503 with the
/// reason otherwise. Error texts come from [`crate::store::StoreError`], which never
/// carries the database password.
async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    match tokio::time::timeout(DATABASE_PROBE_TIMEOUT, state.store.ping()).await {
        Err(_) => {
            return not_ready(format!("the database did not answer within {DATABASE_PROBE_TIMEOUT:?}"));
        }
        Ok(Err(e)) => return not_ready(e.to_string()),
        Ok(Ok(())) => {}
    }
    let role = *state.leadership.borrow();
    match role {
        LeaderState::Unknown => not_ready("leadership unknown: no working leadership connection".into()),
        LeaderState::Leader => (StatusCode::OK, "ok: leader\n".into()),
        LeaderState::Standby => (StatusCode::OK, "ok: standby\n".into()),
    }
}

fn not_ready(reason: String) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n"))
}
