//! Delivers queued notifications: a log line for each, and a POST to `alerts.webhook_url`
//! when one is set, retried with jittered exponential backoff until the receiver accepts.
//!
//! Outcomes of a POST:
//! - 2xx: marked delivered in the same breath (see the module docs of [`super`] for the
//!   one-event window a crash leaves).
//! - 5xx, 408, 429, timeouts, connection errors: the receiver may recover; retried after
//!   5 s, 10 s, 20 s, ... up to 10 minutes, each delay jittered down by up to half so a
//!   fleet of events does not retry in lockstep. The pass stops at the first such failure:
//!   the rest would fail the same way, and the next poll probes again.
//! - other 4xx: the receiver understood and refused, which a retry alone does not fix:
//!   logged as a configuration problem (URL without credentials, status, body excerpt) and
//!   retried at the maximum backoff, so fixing the receiver's configuration is enough for
//!   the alert to arrive. Events are never dropped.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::payload::render;
use super::{AlertEvent, AlertStatus};
use crate::config::{AlertSettings, redact_url};
use crate::store::alerts::OutboxEvent;
use crate::store::{Store, StoreError};

/// Per-request limit; also bounds how long an outbox row stays locked.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay after the first failed attempt.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Longest delay between attempts, and the delay after a 4xx.
const MAX_RETRY: Duration = Duration::from_secs(600);
/// Enough of a refusal's body to diagnose it in a log line.
const BODY_EXCERPT_CHARS: usize = 200;

/// What one delivery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Accepted by the webhook, or logged when no webhook is configured.
    pub delivered: usize,
    /// Failed with a transient error; rescheduled with backoff.
    pub retrying: usize,
    /// Refused with a 4xx; rescheduled at the maximum backoff.
    pub rejected: usize,
}

/// The HTTP client for webhooks, with the per-request timeout the sender relies on.
pub fn webhook_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build()
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    Transient(String),
    Refused(String),
}

/// Delivers every notification due at `now`, one transaction per event, so each is marked
/// delivered right after its 2xx.
#[tracing::instrument(skip_all)]
pub async fn deliver_pending(
    store: &Store,
    client: &reqwest::Client,
    settings: &AlertSettings,
    now: DateTime<Utc>,
) -> Result<DeliveryReport, StoreError> {
    let mut report = DeliveryReport::default();
    while let Some(claim) = store.claim_alert(now).await? {
        let outbox = &claim.event;
        if outbox.attempts == 0 {
            log_event(&outbox.event);
        }
        let attempt = match &settings.webhook_url {
            None => Attempt::Delivered,
            Some(url) => post(client, url, settings, outbox, now).await,
        };
        match attempt {
            Attempt::Delivered => {
                claim.delivered(now).await?;
                report.delivered += 1;
            }
            Attempt::Refused(error) => {
                claim.retry_at(now + to_delta(MAX_RETRY), &error).await?;
                report.rejected += 1;
            }
            Attempt::Transient(error) => {
                let delay = retry_delay(outbox.attempts.saturating_add(1), rand::random_range(0.0..=1.0));
                tracing::warn!(
                    event_id = outbox.event_id,
                    attempts = outbox.attempts + 1,
                    retry_in = %humantime::format_duration(delay),
                    "alert webhook unavailable, will retry: {error}"
                );
                claim.retry_at(now + to_delta(delay), &error).await?;
                report.retrying += 1;
                break;
            }
        }
    }
    Ok(report)
}

/// Runs delivery passes every `poll` until `cancel` fires. A pass in progress finishes
/// first (each request is bounded by the client's timeout); database errors are logged and
/// retried at the next poll, since the events wait safely in the outbox.
pub async fn run_sender(
    store: Store,
    client: reqwest::Client,
    settings: AlertSettings,
    cancel: CancellationToken,
    poll: Duration,
) {
    loop {
        match deliver_pending(&store, &client, &settings, Utc::now()).await {
            Ok(report) if report != DeliveryReport::default() => {
                tracing::debug!(?report, "alert delivery pass")
            }
            Ok(_) => {}
            Err(error) => tracing::error!("alert delivery pass failed, retrying in {poll:?}: {error}"),
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// The log sink: always written, webhook or not, once per event (not per attempt).
fn log_event(event: &AlertEvent) {
    let summary = event.summary();
    let (agent_id, dns, last_seen) = (&event.agent_id, event.computer_dns_name.as_deref(), event.last_seen);
    match event.status {
        AlertStatus::Firing => tracing::warn!(
            alert = "firing", agent_id, computer_dns_name = dns, %last_seen,
            stale_since = %event.stale_since, repeat = event.repeat, "{summary}"
        ),
        AlertStatus::Resolved => tracing::info!(
            alert = "resolved", agent_id, computer_dns_name = dns, %last_seen,
            stale_since = %event.stale_since, "{summary}"
        ),
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    settings: &AlertSettings,
    outbox: &OutboxEvent,
    now: DateTime<Utc>,
) -> Attempt {
    let body = render(&outbox.event, settings.format, settings.repeat_interval, now);
    let response = match client.post(url).json(&body).send().await {
        Ok(response) => response,
        // without_url: the URL may carry credentials.
        Err(error) => return Attempt::Transient(error.without_url().to_string()),
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Delivered;
    }
    let excerpt: String =
        response.text().await.unwrap_or_default().chars().take(BODY_EXCERPT_CHARS).collect();
    let error = format!("HTTP {status}: {excerpt}");
    if !status.is_client_error()
        || matches!(status, StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS)
    {
        return Attempt::Transient(error);
    }
    tracing::error!(
        event_id = outbox.event_id,
        webhook_url = %redact_url(url),
        status = status.as_u16(),
        body = %excerpt,
        "alerts.webhook_url refused the alert (HTTP {status}): a configuration problem (wrong URL, \
         credentials or alerts.format?); retrying every {}",
        humantime::format_duration(MAX_RETRY)
    );
    Attempt::Refused(error)
}

/// The delay before attempt `attempts + 1`: doubling from [`FIRST_RETRY`], capped at
/// [`MAX_RETRY`], then scaled into its upper half by `jitter` (0 to 1). The backoff state is
/// the `attempts` column, not an in-memory iterator, so it survives restarts and is shared
/// by every sender.
fn retry_delay(attempts: i32, jitter: f64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(16);
    let full = FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

fn to_delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_jitters_into_the_upper_half() {
        assert_eq!(retry_delay(1, 1.0), FIRST_RETRY);
        assert_eq!(retry_delay(2, 1.0), FIRST_RETRY * 2);
        assert_eq!(retry_delay(3, 0.0), FIRST_RETRY * 2);
        assert_eq!(retry_delay(9, 1.0), MAX_RETRY);
        assert_eq!(retry_delay(i32::MAX, 1.0), MAX_RETRY);
        assert_eq!(retry_delay(0, 1.0), FIRST_RETRY);
    }
}
