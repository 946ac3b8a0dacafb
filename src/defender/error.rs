//! What can go wrong talking to Defender and Entra ID, in words an operator can act on.
//!
//! Messages never carry the client secret or an access token: the variants hold only status
//! codes, the service's own error text, URLs (which hold no secret here) and our diagnosis.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::agent::RecordError;
use crate::budget::BudgetError;

/// A failed Defender API call or token request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No budget slot before the deadline, or the ledger could not be read or written.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// 400: the request itself is wrong; sending it again cannot help.
    #[error(
        "the Defender API rejected the request as invalid (HTTP 400{detail}); \
         if the agent ID looks right, this is a bug in scan-agent-sync: please report it"
    )]
    BadRequest { detail: ErrorDetail },
    /// 403: the app registration may not read machines.
    #[error(
        "the Defender API refused access (HTTP 403{detail}): the app registration needs the \
         `Machine.Read.All` application permission on the WindowsDefenderATP API, with admin \
         consent granted (Entra ID > App registrations > API permissions)"
    )]
    Forbidden { detail: ErrorDetail },
    /// 401 even with a freshly issued token.
    #[error(
        "the Defender API refused a freshly issued access token (HTTP 401{detail}): check that \
         defender.cloud (or defender.scope) matches defender.api_base_url"
    )]
    Unauthorized { detail: ErrorDetail },
    /// 404 where the resource must exist: the list endpoint, or a wrong API host or path.
    #[error("the Defender API has no such resource (HTTP 404{detail}): check defender.api_base_url")]
    NotFound { detail: ErrorDetail },
    /// Any other status the client does not expect (5xx, 429 after the last retry, ...).
    #[error("the Defender API answered HTTP {status}{detail}{}", status_hint(*status))]
    Status { status: u16, detail: ErrorDetail },
    /// The token endpoint refused or could not be reached.
    #[error("getting an access token from {url} failed: {kind}{}", detail_suffix(detail))]
    Token { kind: TokenFailure, url: String, detail: String },
    /// No complete answer within `defender.request_timeout`.
    #[error(
        "the Defender API did not answer within defender.request_timeout ({}); raise it if the \
         service is slow, or check the network path",
        humantime::format_duration(*after)
    )]
    Timeout { after: Duration },
    /// The connection could not be made or broke before the answer was complete.
    #[error(
        "the connection to the Defender API failed: {detail}; if this persists, check \
         defender.api_base_url, DNS, proxies and firewalls"
    )]
    Connect { detail: String },
    /// The response body exceeded what a sane answer can be.
    #[error(
        "the {endpoint} sent a response body larger than {}; it was refused without reading the \
         rest. Something other than the service may be answering: check defender.api_base_url, \
         defender.token_url and proxies{}",
        size(*limit),
        if *endpoint == super::LIST_ENDPOINT {
            "; if the list really pages this large, set defender.fetch_mode = \"by-id\""
        } else {
            ""
        }
    )]
    BodyTooLarge { endpoint: &'static str, limit: usize },
    /// A 2xx body that is not JSON, under a label that says so: not the API answering.
    #[error(
        "the {endpoint} answered with `{content_type}` instead of JSON: something other than the \
         Defender API answered (a proxy, a captive portal or a wrong defender.api_base_url); \
         check defender.api_base_url and the proxy settings (HTTPS_PROXY, NO_PROXY)"
    )]
    NotJson { endpoint: &'static str, content_type: String },
    /// A body that is not the JSON or the envelope the API documents.
    #[error("the Defender API sent an unusable response: {what}")]
    Malformed {
        what: String,
        /// Whether another try may get a good body (a cut-off or garbled one), as opposed
        /// to a well-formed answer of the wrong shape, which would only repeat.
        transient: bool,
    },
    /// The one agent asked for came back, but its record is unusable.
    #[error("the Defender API sent an unusable agent record: {0}")]
    BadRecord(#[from] RecordError),
    /// An agent ID that no URL can carry: a path segment of only dots is removed by URL
    /// normalization (even percent-encoded), so the request would reach another resource.
    #[error(
        "agent ID {0:?} cannot be requested by ID: a URL path cannot carry it; remove it from agents.ids"
    )]
    UnrequestableId(String),
}

impl ApiError {
    /// True when the same request may succeed later (5xx, 429, timeouts, broken connections,
    /// cut-off bodies, an unreachable token endpoint, a database hiccup).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Budget(BudgetError::Store(e)) => e.is_transient(),
            ApiError::Budget(BudgetError::Exhausted) => false,
            ApiError::Status { status, .. } => *status == 429 || (500..600).contains(status),
            ApiError::Token { kind, .. } => kind.is_transient(),
            ApiError::Timeout { .. } | ApiError::Connect { .. } => true,
            ApiError::Malformed { transient, .. } => *transient,
            ApiError::BadRequest { .. }
            | ApiError::Forbidden { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::NotFound { .. }
            | ApiError::BodyTooLarge { .. }
            | ApiError::NotJson { .. }
            | ApiError::BadRecord(_)
            | ApiError::UnrequestableId(_) => false,
        }
    }

    /// True when every further request of the cycle would fail the same way (no permission,
    /// credentials refused, a wrong API host, the database gone), so the cycle stops early
    /// instead of spending the budget on certain failures.
    pub fn stops_cycle(&self) -> bool {
        match self {
            ApiError::Forbidden { .. }
            | ApiError::Unauthorized { .. }
            | ApiError::NotFound { .. }
            | ApiError::NotJson { .. } => true,
            ApiError::Token { kind, .. } => !kind.is_transient(),
            ApiError::Budget(BudgetError::Store(_)) => true,
            _ => false,
        }
    }

    /// True for a 429: the budget already enforces the pause, so no backoff is added.
    pub fn is_throttled(&self) -> bool {
        matches!(self, ApiError::Status { status: 429, .. })
    }

    /// The service's correlation id, when the answer carried one (worth quoting to Microsoft).
    pub fn target(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { detail }
            | ApiError::Forbidden { detail }
            | ApiError::Unauthorized { detail }
            | ApiError::NotFound { detail }
            | ApiError::Status { detail, .. } => detail.target.as_deref(),
            _ => None,
        }
    }

    /// The error for an API answer with a status other than 2xx.
    pub(super) fn from_status(status: u16, detail: ErrorDetail) -> ApiError {
        match status {
            400 => ApiError::BadRequest { detail },
            401 => ApiError::Unauthorized { detail },
            403 => ApiError::Forbidden { detail },
            404 => ApiError::NotFound { detail },
            _ => ApiError::Status { status, detail },
        }
    }

    /// Sorts a transport failure into a timeout or a connection failure. The error's text
    /// names the URL and the cause; reqwest never puts request headers in it.
    pub(super) fn from_transport(error: &reqwest::Error, timeout: Duration) -> ApiError {
        if error.is_timeout() {
            ApiError::Timeout { after: timeout }
        } else {
            ApiError::Connect { detail: error_chain(error) }
        }
    }
}

/// What an operator can do about a status the client has no special case for.
fn status_hint(status: u16) -> &'static str {
    match status {
        429 => "; the app registration is throttled: other clients may share its budget (rate_limit.windows)",
        500..=599 => "; the service failed: it was retried, and the next cycle tries again",
        _ => "",
    }
}

/// A byte limit in the largest binary unit that divides it, as the constants are written.
fn size(limit: usize) -> String {
    const KIB: usize = 1024;
    match limit {
        0 => "0 bytes".to_owned(),
        _ if limit.is_multiple_of(KIB * KIB) => format!("{} MiB", limit / (KIB * KIB)),
        _ if limit.is_multiple_of(KIB) => format!("{} KiB", limit / KIB),
        _ => format!("{limit} bytes"),
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() { String::new() } else { format!(" ({detail})") }
}

/// An error and its causes on one line, since reqwest's own message stops at "error sending request".
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The documented error body, `{"error":{"code","message","target"}}`; every part optional
/// because proxies and gateways answer with bodies of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    /// `TooManyRequests`, `InvalidInput`, ... (or a number such as `"429"`).
    pub code: Option<String>,
    /// Free text from the service.
    pub message: Option<String>,
    /// A correlation id: quote it when asking Microsoft about a failure.
    pub target: Option<String>,
}

/// Longest service message kept: a gateway's HTML error page is not a message.
const MAX_MESSAGE_CHARS: usize = 300;

impl ErrorDetail {
    /// Parses an error body; anything else gives an empty detail.
    pub(super) fn parse(body: &[u8]) -> ErrorDetail {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return ErrorDetail::default();
        };
        let error = &value["error"];
        // The service was seen sending `"code": "429"`; a number would be just as plausible.
        let text = |name: &str| match &error[name] {
            Value::String(s) => Some(s.chars().take(MAX_MESSAGE_CHARS).collect()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        ErrorDetail { code: text("code"), message: text("message"), target: text("target") }
    }
}

/// Renders as `: code: message, correlation id target`, or nothing when empty, so that it
/// reads after a status: "HTTP 403: Forbidden: ...".
impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in [&self.code, &self.message].into_iter().flatten() {
            write!(f, ": {part}")?;
        }
        if let Some(target) = &self.target {
            write!(f, ", correlation id {target}")?;
        }
        Ok(())
    }
}

/// Why no token could be had, in the terms of the setting to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    /// `invalid_client`: wrong or expired secret.
    BadSecret,
    /// AADSTS90002: the tenant is unknown (in this cloud).
    UnknownTenant,
    /// `unauthorized_client`: no such application in the tenant.
    UnknownClient,
    /// `invalid_scope`.
    BadScope,
    /// Any other OAuth error the endpoint named.
    Refused,
    /// Network failure, timeout, 5xx or 429: worth retrying.
    Unavailable,
    /// A 2xx without a usable token.
    Malformed,
}

impl TokenFailure {
    /// Only an endpoint that did not answer properly is retried; a refusal would only repeat.
    pub fn is_transient(self) -> bool {
        matches!(self, TokenFailure::Unavailable | TokenFailure::Malformed)
    }
}

impl fmt::Display for TokenFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenFailure::BadSecret => {
                "the client secret is wrong or expired: put the secret's Value (not its Secret ID) \
                 from the app registration's Certificates & secrets into defender.client_secret_file, \
                 and create a new secret if it expired"
            }
            TokenFailure::UnknownTenant => {
                "the tenant is unknown: check defender.tenant_id (the Directory (tenant) ID) and that \
                 defender.cloud is the cloud the tenant lives in"
            }
            TokenFailure::UnknownClient => {
                "the application is not known in this tenant: check defender.client_id (the \
                 Application (client) ID of the app registration) and defender.tenant_id"
            }
            TokenFailure::BadScope => "the scope was refused: check defender.scope, or remove it to use the cloud's default",
            TokenFailure::Refused => "the token endpoint refused the request: check defender.token_url, tenant_id, client_id and the secret",
            TokenFailure::Unavailable => {
                "the token endpoint did not answer properly: check defender.token_url, DNS, \
                 proxies and firewalls; retried, and the next cycle tries again"
            }
            TokenFailure::Malformed => "the token endpoint sent no usable access token: check defender.token_url",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_with_string_or_number_codes() {
        let body = br#"{"error":{"code":"429","message":"API calls quota exceeded!","target":"abc"}}"#;
        let detail = ErrorDetail::parse(body);
        assert_eq!(detail.code.as_deref(), Some("429"));
        assert_eq!(detail.to_string(), ": 429: API calls quota exceeded!, correlation id abc");
        assert_eq!(ErrorDetail::parse(br#"{"error":{"code":404}}"#).code.as_deref(), Some("404"));
        assert_eq!(ErrorDetail::parse(b"<html>bad gateway</html>"), ErrorDetail::default());
        assert_eq!(ErrorDetail::default().to_string(), "");
    }

    #[test]
    fn retry_classes() {
        let status = |status| ApiError::from_status(status, ErrorDetail::default());
        assert!(status(500).is_transient() && status(503).is_transient() && status(429).is_transient());
        assert!(status(429).is_throttled() && !status(500).is_throttled());
        for permanent in [400, 401, 403, 404, 409] {
            assert!(!status(permanent).is_transient(), "{permanent}");
        }
        assert!(status(403).to_string().contains("Machine.Read.All"));
    }

    #[test]
    fn limits_read_in_their_units() {
        assert_eq!(size(16 * 1024 * 1024), "16 MiB");
        assert_eq!(size(64 * 1024), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
        let error = ApiError::BodyTooLarge { endpoint: "Entra ID token endpoint", limit: 64 * 1024 };
        assert!(
            error
                .to_string()
                .starts_with("the Entra ID token endpoint sent a response body larger than 64 KiB")
        );
    }
}
