//! Answers in the service's shapes: JSON bodies, the documented error envelope, and the
//! deliberately broken variants fault injection needs (cut off, oversized, not JSON at all).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::ReaderStream;

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

/// Whitespace an oversized answer is padded with: beyond any limit a client should accept for
/// one page (scan-agent-sync's list limit is 16 MiB), yet quick to stream over loopback.
const OVERSIZED_PADDING: usize = 32 * 1024 * 1024;

/// What a proxy or captive portal answers in the service's place.
const HTML_PAGE: &str = "<!DOCTYPE html><html><head><title>Sign in to continue</title></head>\
    <body><p>Your network requires you to sign in before reaching this site.</p></body></html>";

impl Reply {
    /// The answer with [`OVERSIZED_PADDING`] bytes of whitespace after its opening brace: still
    /// well-formed JSON, but streamed in chunks without `Content-Length`, so a client must
    /// count while reading to stop it.
    pub fn into_oversized_response(self) -> Response {
        let text = self.body.to_string();
        let (open, rest) = text.split_at(1);
        let reader = PaddedJson {
            head: open.as_bytes().to_vec(),
            padding: OVERSIZED_PADDING,
            tail: rest.as_bytes().to_vec(),
        };
        let body = Body::from_stream(ReaderStream::with_capacity(reader, 64 * 1024));
        let mut response = (StatusCode::OK, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// A 200 HTML page labelled `text/html`.
    pub fn html_response() -> Response {
        let mut response = (StatusCode::OK, HTML_PAGE).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        response
    }
}

/// Reads `head`, then `padding` spaces, then `tail`, without ever holding the padding in memory.
struct PaddedJson {
    head: Vec<u8>,
    padding: usize,
    tail: Vec<u8>,
}

impl AsyncRead for PaddedJson {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let take = |part: &mut Vec<u8>, buf: &mut ReadBuf<'_>| {
            let n = part.len().min(buf.remaining());
            buf.put_slice(&part[..n]);
            part.drain(..n);
        };
        if !this.head.is_empty() {
            take(&mut this.head, buf);
        } else if this.padding > 0 {
            let n = this.padding.min(buf.remaining());
            buf.initialize_unfilled_to(n).fill(b' ');
            buf.advance(n);
            this.padding -= n;
        } else {
            take(&mut this.tail, buf);
        }
        Poll::Ready(Ok(()))
    }
}

/// A GUID-shaped correlation id, unrelated to the seed: real ones are unique per request.
pub(super) fn correlation_id() -> String {
    guid(&mut rand::rng()).to_lowercase()
}
