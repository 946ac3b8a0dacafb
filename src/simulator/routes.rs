//! Request dispatch and the order in which an API request meets authentication, the rate
//! windows, injected faults and latency.
//!
//! Routing matches the raw, still percent-encoded path rather than axum's decoded one, so an
//! agent ID is exactly one segment: `%2F` inside it is part of the ID, and a client that forgets
//! to encode `/`, `?` or `#` reaches a different resource, as it would on the real service.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use percent_encoding::percent_decode_str;
use tokio::time::Instant;

use super::agents_api::{self, AGENTS_PATH};
use super::auth::{entra_error, unknown_tenant};
use super::connection::ConnectionKill;
use super::faults::{Fault, TokenFault};
use super::limiter::{Admission, timespan};
use super::recorder::{EndpointKind, LoggedRequest};
use super::reply::Reply;
use super::state::{Hosted, Shared, lock};

/// Token requests are a few hundred bytes; anything far larger is not one.
const TOKEN_BODY_LIMIT: usize = 64 * 1024;

/// Every request goes through [`serve`], which routes by hand.
pub(super) fn router(hosted: Arc<Hosted>) -> Router {
    Router::new().fallback(serve).with_state(hosted)
}

/// The endpoint a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Token { tenant: String },
    List,
    ById { id: String },
    Unknown,
}

impl Route {
    fn of(method: &Method, raw_path: &str) -> Self {
        let decode = |segment: &str| percent_decode_str(segment).decode_utf8_lossy().into_owned();
        if *method == Method::POST
            && let Some((tenant, "oauth2/v2.0/token")) = raw_path.trim_start_matches('/').split_once('/')
        {
            return Route::Token { tenant: decode(tenant) };
        }
        if *method != Method::GET {
            return Route::Unknown;
        }
        match raw_path.strip_prefix(AGENTS_PATH) {
            Some("") => Route::List,
            Some(rest) => match rest.strip_prefix('/') {
                Some(segment) if !segment.is_empty() && !segment.contains('/') => {
                    Route::ById { id: decode(segment) }
                }
                _ => Route::Unknown,
            },
            None => Route::Unknown,
        }
    }

    fn kind(&self) -> EndpointKind {
        match self {
            Route::Token { .. } => EndpointKind::Token,
            Route::List => EndpointKind::List,
            Route::ById { .. } => EndpointKind::ById,
            Route::Unknown => EndpointKind::Other,
        }
    }
}

/// How a request ends.
enum Outcome {
    Answer(Reply),
    /// The answer spoiled on its way: a 200 whose body is not what the service sent.
    Spoiled(Reply, Spoil),
    /// No answer at all: the connection is dropped.
    Dropped,
}

/// How a spoiled answer is spoiled.
#[derive(Debug, Clone, Copy)]
enum Spoil {
    /// Its JSON cut in half.
    Truncated,
    /// Padded far beyond any sane size, and streamed without a length.
    Oversized,
    /// Replaced by an HTML page.
    Html,
}

/// Routes, answers, logs and records one request.
///
/// A token request goes to the tenant in its path; an API request to the tenant whose token it
/// bears, so each tenant sees only its own fleet and spends only its own windows. A request
/// that reaches no tenant is answered (and recorded) by the first.
async fn serve(
    State(hosted): State<Arc<Hosted>>,
    ConnectInfo(connection): ConnectInfo<ConnectionKill>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let at = Utc::now();
    let (parts, body) = request.into_parts();
    let raw =
        parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let route = Route::of(&parts.method, parts.uri.path());
    let kind = route.kind();
    let sim = match &route {
        Route::Token { tenant } => hosted.by_tenant_id(tenant),
        Route::List | Route::ById { .. } => {
            let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            hosted.by_token(authorization, started)
        }
        Route::Unknown => None,
    };
    let known_tenant = sim.is_some();
    let sim = sim.unwrap_or_else(|| hosted.first()).clone();
    let outcome = match route {
        Route::Token { tenant } if !known_tenant => Outcome::Answer(unknown_tenant(&tenant)),
        Route::Token { tenant } => token(&sim, &tenant, body).await,
        Route::List | Route::ById { .. } => api(&sim, route, &parts).await,
        Route::Unknown => Outcome::Answer(Reply::api_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("No HTTP resource was found that matches the request URI '{raw}'."),
        )),
    };
    let (status, response) = match outcome {
        Outcome::Answer(reply) => (Some(reply.status.as_u16()), reply.into_response()),
        Outcome::Spoiled(reply, spoil) => {
            let response = match spoil {
                Spoil::Truncated => reply.into_truncated_response(),
                Spoil::Oversized => reply.into_oversized_response(),
                Spoil::Html => Reply::html_response(),
            };
            (Some(StatusCode::OK.as_u16()), response)
        }
        Outcome::Dropped => {
            connection.kill();
            (None, StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    };
    let shown_status = status.map_or_else(|| "dropped".to_owned(), |s| s.to_string());
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(method = %parts.method, path = %raw, status = %shown_status, ms, "simulator request");
    lock(&sim.recorder).record(LoggedRequest {
        at,
        method: parts.method.to_string(),
        path_and_query: raw,
        kind,
        status,
    });
    response
}

/// The token endpoint; it has no rate window or latency, like Entra ID from the API's view, but
/// it may be made to fail (unavailable, or refusing the secret).
async fn token(sim: &Shared, tenant: &str, body: Body) -> Outcome {
    let form = match to_bytes(body, TOKEN_BODY_LIMIT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            let description = format!("The request body could not be read: {e}");
            return Outcome::Answer(entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                description,
            ));
        }
    };
    let fault = lock(&sim.faults).draw_token();
    Outcome::Answer(match fault {
        TokenFault::None => lock(&sim.tokens).token_endpoint(tenant, &form, Instant::now()),
        TokenFault::Unavailable => entra_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Please try again.".into(),
        ),
        TokenFault::InvalidClient => entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000222,
            "The provided client secret keys are expired. Create new keys for your app, or consider using certificate credentials.".into(),
        ),
    })
}

/// An agent endpoint. Everything is decided at arrival, in the service's likely order: the
/// token first (the rate windows are per application, so an unauthenticated call cannot count),
/// then the windows (which count every admitted call, even one that then fails), then faults.
/// Latency is served last, so slow answers do not reorder the windows' arrivals.
async fn api(sim: &Shared, route: Route, parts: &Parts) -> Outcome {
    let arrived = Instant::now();
    let header_value = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let authorized = lock(&sim.tokens).authorizes(header_value(header::AUTHORIZATION), arrived);
    let verdict = if authorized { Some(lock(&sim.limiter).admit(arrived)) } else { None };
    let fault = match verdict {
        Some(Admission::Accepted) => lock(&sim.faults).draw(),
        _ => Fault::None,
    };
    let latency = *lock(&sim.latency);
    tokio::time::sleep(latency).await;

    let reply = match (verdict, fault) {
        (None, _) => Reply::api_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Authorization has been denied for this request.",
        ),
        (Some(Admission::Throttled { window, retry_after }), _) => {
            throttled(window.calls, window.per, retry_after)
        }
        (_, Fault::Reset) => return Outcome::Dropped,
        (_, Fault::ServerError(status)) => server_error(status),
        (_, Fault::Throttled) => throttle_storm(),
        (
            Some(Admission::Accepted),
            Fault::None | Fault::Malformed | Fault::Oversized | Fault::WrongContentType,
        ) => {
            let host = header_value(header::HOST).map_or_else(|| sim.bound.to_string(), str::to_owned);
            let query = parts.uri.query();
            let now = Instant::now();
            match route {
                Route::ById { id } => agents_api::by_id(sim, &id, query, &host, now),
                _ => agents_api::list(sim, query, &host, now),
            }
        }
    };
    match fault {
        Fault::Malformed => Outcome::Spoiled(reply, Spoil::Truncated),
        Fault::Oversized => Outcome::Spoiled(reply, Spoil::Oversized),
        Fault::WrongContentType => Outcome::Spoiled(reply, Spoil::Html),
        _ => Outcome::Answer(reply),
    }
}

/// The service's 429, with the message and code it was seen to send.
fn throttled(calls: u32, per: Duration, retry_after: Duration) -> Reply {
    let seconds = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
    let message = format!("API calls quota exceeded! maximum allowed {calls} per {}", timespan(per));
    Reply { retry_after: Some(seconds), ..Reply::api_error(StatusCode::TOO_MANY_REQUESTS, "429", message) }
}

/// An injected 429: the hourly quota the service reports, spent by another client of the same
/// app registration, with the shortest pause so tests of a storm stay quick.
fn throttle_storm() -> Reply {
    throttled(1500, Duration::from_secs(3600), Duration::from_secs(1))
}

/// An injected 500 or 503.
fn server_error(status: StatusCode) -> Reply {
    let (code, message) = if status == StatusCode::SERVICE_UNAVAILABLE {
        ("ServiceUnavailable", "The service is temporarily unavailable. Retry later.")
    } else {
        ("InternalServerError", "An error has occurred.")
    };
    Reply::api_error(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_raw_segment() {
        let by_id = |raw| Route::of(&Method::GET, raw);
        assert_eq!(by_id("/api/DeviceAuthenticatedScanAgents"), Route::List);
        assert_eq!(by_id("/api/DeviceAuthenticatedScanAgents/a%2Fb%20c"), Route::ById { id: "a/b c".into() });
        assert_eq!(by_id("/api/DeviceAuthenticatedScanAgents/a/b"), Route::Unknown);
        assert_eq!(by_id("/api/DeviceAuthenticatedScanAgents/"), Route::Unknown);
        assert_eq!(by_id("/api/DeviceAuthenticatedScanAgentsX"), Route::Unknown);
        assert_eq!(Route::of(&Method::POST, "/api/DeviceAuthenticatedScanAgents"), Route::Unknown);
        assert_eq!(
            Route::of(&Method::POST, "/t%20x/oauth2/v2.0/token"),
            Route::Token { tenant: "t x".into() }
        );
    }
}
