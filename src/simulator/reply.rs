//! Answers in the service's shapes: JSON bodies, the documented error envelope, and the
//! deliberately broken variants fault injection needs.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::fleet::guid;

/// An answer not yet written, so fault injection can still spoil it.
#[derive(Debug, Clone)]
pub(super) struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// Seconds for the `Retry-After` header of a 429.
    pub retry_after: Option<u64>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self { status: StatusCode::OK, body, retry_after: None }
    }

    /// The Defender API error body, `{"error":{"code","message","target"}}`, with a fresh
    /// correlation id as `target`, as the real service does.
    pub fn api_error(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        let body = json!({"error": {"code": code, "message": message.into(), "target": correlation_id()}});
        Self { status, body, retry_after: None }
    }

    /// The whole response, as the service would send it.
    pub fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// The response with its JSON cut off halfway but still labelled JSON and 200, the way a
    /// proxy that lost the upstream mid-body answers.
    pub fn into_truncated_response(self) -> Response {
        let mut bytes = self.body.to_string().into_bytes();
        bytes.truncate(bytes.len() / 2);
        let mut response = (StatusCode::OK, bytes).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// A GUID-shaped correlation id, unrelated to the seed: real ones are unique per request.
pub(super) fn correlation_id() -> String {
    guid(&mut rand::rng()).to_lowercase()
}
