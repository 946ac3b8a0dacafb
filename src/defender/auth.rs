//! Access tokens from Entra ID (OAuth 2.0 client credentials), cached and renewed shortly
//! before they expire, so the token endpoint sees one request per token lifetime rather than
//! one per API call.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::envelope::read_capped;
use super::error::{ApiError, TokenFailure, error_chain};
use super::retry::RetryPolicy;

/// A token response is a few kilobytes; anything much larger is not one.
const TOKEN_BODY_LIMIT: usize = 64 * 1024;

/// Renew this long before expiry at most: the docs' tokens live an hour, and five minutes
/// absorbs clock skew and a slow renewal.
const MAX_RENEWAL_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A token valid for `lifetime` is renewed when this much of it remains: 10% of the lifetime,
/// at most [`MAX_RENEWAL_MARGIN`]. Scaling matters for short lifetimes: a fixed five minutes
/// would make a two-second token look expired on arrival and be fetched for every call.
pub(super) fn renewal_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(MAX_RENEWAL_MARGIN)
}

/// Where and as whom tokens are requested.
#[derive(Debug)]
pub(super) struct TokenSource {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub scope: String,
}

/// The token cache. One lock around fetching: concurrent callers that find the token due
/// wait for the one renewal in progress instead of each starting their own.
#[derive(Debug)]
pub(super) struct TokenCache {
    source: TokenSource,
    state: Mutex<State>,
}

/// What the cache holds.
#[derive(Debug, Default)]
enum State {
    #[default]
    Empty,
    Valid {
        token: SecretString,
        renew_at: Instant,
    },
    /// A refusal that would only repeat (wrong secret, unknown tenant or client), remembered
    /// so a cycle of a thousand by-ID calls asks Entra ID once a minute, not a thousand times.
    Refused {
        error: RefusedToken,
        until: Instant,
    },
}

/// How long a refusal is answered from the cache. The credentials cannot change under a
/// running client, but an administrator may fix the app registration meanwhile.
const REFUSAL_HOLD: Duration = Duration::from_secs(60);

/// The parts of a permanent [`ApiError::Token`], kept to answer again.
#[derive(Debug, Clone)]
struct RefusedToken {
    kind: TokenFailure,
    url: String,
    detail: String,
}

impl From<RefusedToken> for ApiError {
    fn from(RefusedToken { kind, url, detail }: RefusedToken) -> Self {
        ApiError::Token { kind, url, detail }
    }
}

impl TokenCache {
    pub fn new(source: TokenSource) -> Self {
        Self { source, state: Mutex::new(State::Empty) }
    }

    /// A token that is not due for renewal, fetching one if needed.
    pub async fn token(&self, http: &reqwest::Client, retry: &RetryPolicy) -> Result<SecretString, ApiError> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        match &*state {
            State::Valid { token, renew_at } if now < *renew_at => return Ok(token.clone()),
            State::Refused { error, until } if now < *until => return Err(error.clone().into()),
            _ => {}
        }
        match self.fetch(http, retry).await {
            Ok((token, renew_at)) => {
                *state = State::Valid { token: token.clone(), renew_at };
                Ok(token)
            }
            Err(ApiError::Token { kind, url, detail }) if !kind.is_transient() => {
                let error = RefusedToken { kind, url, detail };
                *state = State::Refused { error: error.clone(), until: Instant::now() + REFUSAL_HOLD };
                Err(error.into())
            }
            Err(error) => {
                *state = State::Empty;
                Err(error)
            }
        }
    }

    /// Forgets `rejected` after the API refused it, unless another caller already replaced it
    /// (then the newer token stays, and no second renewal happens).
    pub async fn forget(&self, rejected: &SecretString) {
        let mut state = self.state.lock().await;
        if matches!(&*state, State::Valid { token, .. } if token.expose_secret() == rejected.expose_secret())
        {
            *state = State::Empty;
        }
    }

    /// Requests a token, retrying only while the endpoint is unavailable: a refusal (wrong
    /// secret, unknown tenant or client) would be refused again, so it fails at once.
    #[tracing::instrument(skip_all, fields(token_url = %self.source.token_url))]
    async fn fetch(
        &self,
        http: &reqwest::Client,
        retry: &RetryPolicy,
    ) -> Result<(SecretString, Instant), ApiError> {
        let mut delays = retry.delays();
        loop {
            let error = match self.request(http, retry.timeout).await {
                Ok(token) => return Ok(token),
                Err(error) => error,
            };
            match delays.next().filter(|_| error.is_transient()) {
                Some(delay) => {
                    tracing::warn!(error = %error, retry_in = ?delay, "token request failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    tracing::error!(error = %error, "no access token");
                    return Err(error);
                }
            }
        }
    }

    /// One token request: the token and when to renew it.
    async fn request(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<(SecretString, Instant), ApiError> {
        let source = &self.source;
        let failure = |kind, detail: String| ApiError::Token { kind, url: source.token_url.clone(), detail };
        let unavailable = |e: &reqwest::Error| {
            let detail = if e.is_timeout() {
                format!("no answer within {}", humantime::format_duration(timeout))
            } else {
                error_chain(e)
            };
            failure(TokenFailure::Unavailable, detail)
        };
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", source.client_id.as_str()),
            ("client_secret", source.client_secret.expose_secret()),
            ("scope", source.scope.as_str()),
        ];
        let sent_at = Instant::now();
        let mut response =
            http.post(&source.token_url).form(&form).send().await.map_err(|e| unavailable(&e))?;
        let status = response.status();
        let body =
            read_capped(&mut response, "Entra ID token endpoint", TOKEN_BODY_LIMIT, unavailable).await?;
        let json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let (kind, detail) = classify_refusal(status.as_u16(), &json);
            return Err(failure(kind, detail));
        }
        let token = json["access_token"].as_str().filter(|t| !t.is_empty());
        let lifetime = expires_in(&json["expires_in"]);
        match (token, lifetime) {
            // Timed from the send: the token's clock started no earlier than that.
            (Some(token), Some(lifetime)) => {
                Ok((SecretString::from(token), sent_at + lifetime - renewal_margin(lifetime)))
            }
            _ => Err(failure(
                TokenFailure::Malformed,
                format!("HTTP {status} without `access_token` and `expires_in`"),
            )),
        }
    }
}

/// `expires_in` in seconds; the v1 endpoint sent it as a string, so both are accepted.
fn expires_in(value: &Value) -> Option<Duration> {
    let seconds = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    Some(Duration::from_secs(seconds))
}

/// Names the setting behind an Entra ID refusal. The AADSTS code in `error_description` is
/// more specific than `error` (an unknown tenant comes as `invalid_request`), so it is looked
/// at first. Only the description's first line is kept: the rest is trace and correlation ids.
fn classify_refusal(status: u16, body: &Value) -> (TokenFailure, String) {
    let error = body["error"].as_str().unwrap_or_default();
    let description = body["error_description"].as_str().unwrap_or_default();
    let detail = match description.lines().next() {
        Some(line) if !line.is_empty() => format!("HTTP {status}, {error}: {line}"),
        _ if !error.is_empty() => format!("HTTP {status}, {error}"),
        _ => format!("HTTP {status}"),
    };
    let aadsts =
        description.strip_prefix("AADSTS").map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next());
    let kind = match (aadsts.flatten(), error) {
        (Some("90002"), _) => TokenFailure::UnknownTenant,
        (Some("700016"), _) | (_, "unauthorized_client") => TokenFailure::UnknownClient,
        (_, "invalid_client") => TokenFailure::BadSecret,
        (_, "invalid_scope") => TokenFailure::BadScope,
        _ if status == 429 || status >= 500 => TokenFailure::Unavailable,
        // Another OAuth error, or a 4xx from something else (a proxy, a wrong token_url).
        _ => TokenFailure::Refused,
    };
    (kind, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn margin_scales_with_short_lifetimes() {
        assert_eq!(renewal_margin(Duration::from_secs(3599)), MAX_RENEWAL_MARGIN);
        assert_eq!(renewal_margin(Duration::from_secs(2)), Duration::from_millis(200));
    }

    #[test]
    fn refusals_name_the_setting() {
        let body = |error: &str, description: &str| json!({"error": error, "error_description": description});
        let kind = |status, b| classify_refusal(status, &b).0;
        assert_eq!(
            kind(400, body("invalid_request", "AADSTS90002: Tenant 'x' not found.\r\nTrace ID: 1")),
            TokenFailure::UnknownTenant
        );
        assert_eq!(
            kind(401, body("invalid_client", "AADSTS7000215: Invalid client secret")),
            TokenFailure::BadSecret
        );
        assert_eq!(
            kind(400, body("unauthorized_client", "AADSTS700016: not found")),
            TokenFailure::UnknownClient
        );
        assert_eq!(kind(503, Value::Null), TokenFailure::Unavailable);
        assert_eq!(kind(429, Value::Null), TokenFailure::Unavailable);
        assert_eq!(kind(404, Value::Null), TokenFailure::Refused);
        let (_, detail) =
            classify_refusal(400, &body("invalid_request", "AADSTS90002: Tenant 'x'.\r\nTrace ID: 1"));
        assert_eq!(detail, "HTTP 400, invalid_request: AADSTS90002: Tenant 'x'.");
    }

    #[test]
    fn expires_in_as_number_or_string() {
        assert_eq!(expires_in(&json!(3599)), Some(Duration::from_secs(3599)));
        assert_eq!(expires_in(&json!("3599")), Some(Duration::from_secs(3599)));
        assert_eq!(expires_in(&json!(null)), None);
    }
}
