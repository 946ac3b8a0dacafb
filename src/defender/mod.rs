//! The Defender API client: the by-ID and list endpoints of authenticated-scan agents, every
//! request paid for from the shared rate budget, with retries the budget can afford.
//!
//! Retry policy (PRODUCT.md, "Budget"):
//! - Every API request, first try or retry, takes its own budget slot before it is sent, and
//!   records its status afterwards; token requests do not count against the API's windows.
//! - 5xx, 429, timeouts, broken connections and cut-off or garbled bodies are retried, up to
//!   `defender.max_retries` retries per request. 429s count towards that limit too: a client
//!   that keeps getting 429s is competing for the app registration's budget and should give
//!   the rest of the cycle back rather than queue more calls.
//! - A 429 pauses every process for its `Retry-After` (recorded with the permit), so the retry
//!   adds no backoff of its own: the budget holds it back. Other failures back off with
//!   jittered exponential delays (200 ms doubling, at most 30 s, plus up to 100% jitter).
//! - A 401 drops the cached token, gets a new one and retries once, outside `max_retries`;
//!   a second 401 is [`ApiError::Unauthorized`]. 400, 403, 404 and oversized bodies are not
//!   retried.
//! - A backoff that would end after the caller's deadline is not slept: the request fails
//!   with its last error. A slot that would come after it fails with the budget's error.

mod auth;
mod envelope;
mod error;
mod listing;
mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use crate::agent::AgentRecord;
use crate::agent_id::AgentId;
use crate::budget::{Budget, BudgetError};
use crate::config::DefenderSettings;

pub use error::{ApiError, ErrorDetail, TokenFailure};
pub use listing::{ListPage, Listing};

use auth::{TokenCache, TokenSource};
use envelope::{parse_json, read_capped};
use retry::{RetryPolicy, retry_after};

/// The list endpoint's path under the API base URL; an agent's is this plus `/{id}`.
const AGENTS_PATH: &str = "/api/DeviceAuthenticatedScanAgents";

/// A by-ID answer is one agent of well under a kilobyte; a megabyte is far beyond any real one.
const BY_ID_BODY_LIMIT: usize = 1024 * 1024;

/// A list page holds as many agents as the service chooses (the docs give no page size; the
/// sibling machine APIs page at 10,000). An agent is about 500 bytes, so a 10,000-agent page is
/// about 5 MiB: 16 MiB leaves three times that, while a runaway body (read, then parsed into a
/// tree several times its size) stays far from exhausting the service's memory.
const LIST_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The list endpoint as errors name it; an oversized answer from it has a workaround of its own.
pub(crate) const LIST_ENDPOINT: &str =
    "Defender API's list endpoint (GET /api/DeviceAuthenticatedScanAgents)";

/// Error bodies only carry a code and a message; a larger one is a gateway page, not read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Characters left as they are in an agent ID's path segment: RFC 3986's unreserved ones.
/// Everything else, `/`, `?`, `#`, `%`, space and non-ASCII included, is percent-encoded.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The URL of one agent: its ID is always exactly one path segment, whatever it contains.
pub fn agent_url(api_base: &str, id: &AgentId) -> String {
    format!("{api_base}{AGENTS_PATH}/{}", utf8_percent_encode(id.as_str(), PATH_SEGMENT))
}

/// Which endpoint a request is for: its ledger name and its body limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    ById,
    List,
}

impl Endpoint {
    /// The name in the budget ledger (`api_calls.endpoint`) and in metrics.
    fn ledger_name(self) -> &'static str {
        match self {
            Endpoint::ById => "by-id",
            Endpoint::List => "list",
        }
    }

    /// The endpoint as errors name it.
    fn describe(self) -> &'static str {
        match self {
            Endpoint::ById => "Defender API's by-ID endpoint (GET /api/DeviceAuthenticatedScanAgents/{id})",
            Endpoint::List => LIST_ENDPOINT,
        }
    }

    fn body_limit(self) -> usize {
        match self {
            Endpoint::ById => BY_ID_BODY_LIMIT,
            Endpoint::List => LIST_BODY_LIMIT,
        }
    }
}

/// API requests sent and 429s received since the client was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallCounters {
    /// Requests sent to the agent endpoints, retries included (not token requests).
    pub requests: u64,
    /// Of those, answered 429.
    pub throttled: u64,
}

#[derive(Debug, Default)]
struct AtomicCounters {
    requests: AtomicU64,
    throttled: AtomicU64,
}

/// The client; clones share the HTTP connection pool, the token cache and the counters.
#[derive(Debug, Clone)]
pub struct DefenderClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    api_base_url: String,
    tokens: TokenCache,
    budget: Budget,
    retry: RetryPolicy,
    counters: AtomicCounters,
}

impl DefenderClient {
    /// A client for the configured API and app registration. Makes no request.
    pub fn new(
        settings: &DefenderSettings,
        client_secret: SecretString,
        budget: Budget,
    ) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .build()
            .map_err(|e| ApiError::Connect {
                detail: format!("cannot set up HTTP: {}", error::error_chain(&e)),
            })?;
        let tokens = TokenCache::new(TokenSource {
            token_url: settings.token_url.clone(),
            client_id: settings.client_id.clone(),
            client_secret,
            scope: settings.scope.clone(),
        });
        let inner = Inner {
            http,
            api_base_url: settings.api_base_url.trim_end_matches('/').to_owned(),
            tokens,
            budget,
            retry: RetryPolicy::new(settings.max_retries, settings.request_timeout),
            counters: AtomicCounters::default(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// One agent; `Ok(None)` when the API says it does not exist (404, or an empty `value`).
    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    pub async fn get_agent(
        &self,
        id: &AgentId,
        deadline: Option<Instant>,
    ) -> Result<Option<AgentRecord>, ApiError> {
        if matches!(id.as_str(), "." | "..") {
            return Err(ApiError::UnrequestableId(id.to_string()));
        }
        let url = agent_url(&self.inner.api_base_url, id);
        let body = match self.get_json(Endpoint::ById, &url, deadline).await {
            Ok(body) => body,
            Err(ApiError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let Some(raw) = envelope::single_agent(body)? else { return Ok(None) };
        let record = AgentRecord::from_json(raw)?;
        // Stored under the ID it carries, so another agent's record (a caching proxy, a
        // gateway bug) would silently overwrite that agent and never refresh this one.
        if record.id != *id {
            return Err(ApiError::Malformed {
                what: format!(
                    "asked for agent {id}, the by-ID endpoint answered with agent {}; nothing was stored for \
                     either (a caching proxy between this host and defender.api_base_url could do this)",
                    record.id
                ),
                transient: false,
            });
        }
        Ok(Some(record))
    }

    /// A `nextLink` carries our access token wherever it points, so it must stay on the
    /// configured API's origin or on a Microsoft API host over HTTPS.
    fn check_next_link(&self, link: &str) -> Result<(), ApiError> {
        let refuse = |why: &str| ApiError::Malformed {
            what: format!("`@odata.nextLink` {link:?} {why}"),
            transient: false,
        };
        let url = reqwest::Url::parse(link).map_err(|_| refuse("is not an absolute URL"))?;
        let base = reqwest::Url::parse(&self.inner.api_base_url).map_err(|_| refuse("cannot be checked"))?;
        let microsoft = url.scheme() == "https"
            && url
                .host_str()
                .is_some_and(|host| host.ends_with(".microsoft.com") || host.ends_with(".microsoft.us"));
        if url.origin() == base.origin() || microsoft {
            Ok(())
        } else {
            Err(refuse("leaves the Defender API; the access token is not sent there"))
        }
    }

    /// Gets a token without calling the API, to prove the credentials (`check-config --connect`).
    #[tracing::instrument(skip_all)]
    pub async fn check_token(&self) -> Result<(), ApiError> {
        self.inner.tokens.token(&self.inner.http, &self.inner.retry).await.map(drop)
    }

    /// API requests sent and 429s received since creation.
    pub fn counters(&self) -> CallCounters {
        let counters = &self.inner.counters;
        CallCounters {
            requests: counters.requests.load(Ordering::Relaxed),
            throttled: counters.throttled.load(Ordering::Relaxed),
        }
    }

    /// One GET with the whole retry policy (see the module docs), returning the parsed JSON
    /// of a 2xx answer.
    async fn get_json(
        &self,
        endpoint: Endpoint,
        url: &str,
        deadline: Option<Instant>,
    ) -> Result<Value, ApiError> {
        self.get_json_from(endpoint, url, deadline, None).await
    }

    /// [`DefenderClient::get_json`] whose first try, when given, was started already
    /// ([`DefenderClient::start`]); it counts as one of the tries.
    async fn get_json_from(
        &self,
        endpoint: Endpoint,
        url: &str,
        deadline: Option<Instant>,
        mut first: Option<Result<Sent, ApiError>>,
    ) -> Result<Value, ApiError> {
        let inner = &self.inner;
        let mut delays = inner.retry.delays();
        let mut retries_left = inner.retry.max_retries;
        let mut renewed = false;
        loop {
            let sent = match first.take() {
                Some(sent) => sent,
                None => self.start(endpoint, url, deadline).await,
            };
            let (error, token) = match sent {
                Ok(sent) => {
                    let token = sent.token.clone();
                    match self.receive(endpoint, sent).await {
                        Ok(body) => return Ok(body),
                        Err(error) => (error, Some(token)),
                    }
                }
                Err(error) => (error, None),
            };
            if let (ApiError::Unauthorized { .. }, Some(token), false) = (&error, &token, renewed) {
                tracing::info!("the API refused the access token; renewing it and retrying once");
                inner.tokens.forget(token).await;
                renewed = true;
                continue;
            }
            if !error.is_transient() || retries_left == 0 {
                return Err(error);
            }
            retries_left -= 1;
            if error.is_throttled() {
                tracing::warn!(error = %error, target = error.target(), "throttled; retrying after the pause");
                continue;
            }
            let delay = delays.next().unwrap_or_default();
            if deadline.is_some_and(|d| Instant::now() + delay > d) {
                return Err(error);
            }
            tracing::warn!(error = %error, target = error.target(), retry_in = ?delay, "request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The first half of one try: a budget slot, the request with a current token, and the
    /// head of its answer. The body is left in the connection until [`DefenderClient::receive`].
    #[tracing::instrument(skip_all, fields(endpoint = endpoint.ledger_name(), url = %url))]
    async fn start(
        &self,
        endpoint: Endpoint,
        url: &str,
        deadline: Option<Instant>,
    ) -> Result<Sent, ApiError> {
        let inner = &self.inner;
        // Taken before the slot too, so a refused secret spends no budget.
        inner.tokens.token(&inner.http, &inner.retry).await?;
        // The budget only checks the deadline when it has to wait; a try after it is pointless.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(BudgetError::Exhausted.into());
        }
        let mut permit = inner.budget.acquire(endpoint.ledger_name(), deadline).await?;
        // The wait for the slot can outlast the token (an hour's window waits up to 45
        // minutes): take it again, from the cache unless due for renewal, and count a
        // renewal's time as lag, since the request leaves that much later.
        let renewing = Instant::now();
        let token = match inner.tokens.token(&inner.http, &inner.retry).await {
            Ok(token) => token,
            Err(error) => {
                permit.finish(None, None).await?;
                return Err(error);
            }
        };
        permit.delay(renewing.elapsed());
        inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let sent = inner
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .send()
            .await;
        match sent {
            Ok(response) => Ok(Sent { permit, response, token }),
            Err(e) => {
                permit.finish(None, None).await?;
                Err(ApiError::from_transport(&e, inner.retry.timeout))
            }
        }
    }

    /// The second half of one try: the body, the status in the ledger, the parsed JSON.
    async fn receive(&self, endpoint: Endpoint, sent: Sent) -> Result<Value, ApiError> {
        let Sent { permit, mut response, .. } = sent;
        let timeout = self.inner.retry.timeout;
        let transport = |e: &reqwest::Error| ApiError::from_transport(e, timeout);
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let pause = (status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| retry_after(response.headers(), chrono::Utc::now()));
        if pause.is_some() {
            self.inner.counters.throttled.fetch_add(1, Ordering::Relaxed);
        }
        let limit = if status.is_success() { endpoint.body_limit() } else { ERROR_BODY_LIMIT };
        let body = read_capped(&mut response, endpoint.describe(), limit, transport).await;
        permit.finish(Some(status.as_u16()), pause).await?;
        if status.is_success() {
            return parse_json(endpoint.describe(), &body?, content_type.as_ref());
        }
        // An unreadable error body loses only the detail, not the status.
        let detail = body.map(|b| ErrorDetail::parse(&b)).unwrap_or_default();
        Err(ApiError::from_status(status.as_u16(), detail))
    }
}

/// A try sent, the head of its answer received, its body not read yet.
#[derive(Debug)]
struct Sent {
    permit: crate::budget::Permit,
    response: reqwest::Response,
    token: SecretString,
}
