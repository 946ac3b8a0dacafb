//! Delivers queued notifications in batches of up to `alerts.max_batch`: a log line (one
//! summary line for a big batch), and one POST per batch to `alerts.webhook_url` when one
//! is set, retried with jittered exponential backoff until the receiver accepts.
//!
//! Outcomes of a POST, for the whole batch:
//! - 2xx: marked delivered in one statement right after (see the module docs of [`super`]
//!   for the window a crash leaves).
//! - 5xx, 408, 429, timeouts, connection errors: the receiver may recover; retried after
//!   5 s, 10 s, 20 s, ... up to 10 minutes, each delay jittered down by up to half so
//!   senders do not retry in lockstep. The pass stops at the first such failure: the rest
//!   would fail the same way, and the next poll probes again.
//! - other 4xx: the receiver understood and refused, which a retry alone does not fix:
//!   logged as a configuration problem (URL without credentials, status, body excerpt) and
//!   retried at the maximum backoff, so fixing the receiver's configuration is enough for
//!   the alerts to arrive. Events are never dropped.
//!
//! Cancellation is noticed between batches and while a claim or a POST is in flight: the
//! unfinished batch's transaction rolls back, so its events stay in the outbox for the next
//! start, and a stop never waits for a backlog.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::payload::{Rendering, render};
use super::{AlertEvent, AlertStatus, FleetEvent, Notification};
use crate::config::{AlertSettings, redact_url};
use crate::store::alerts::{ClaimedBatch, OutboxEvent};
use crate::store::{Store, StoreError};

/// Per-request limit; also bounds how long an outbox row stays locked.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay after the first failed attempt.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Longest delay between attempts, and the delay after a 4xx.
const MAX_RETRY: Duration = Duration::from_secs(600);
/// Enough of a refusal's body to diagnose it in a log line.
const BODY_EXCERPT_CHARS: usize = 200;
/// A batch of more stale-agent events than this is logged as one summary line: a storm of
/// 100,000 events is then a thousand lines, not 100,000.
const SUMMARY_ABOVE: usize = 5;
/// Agents a summary line names.
const SUMMARY_NAMES: usize = 5;

/// What one delivery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Events accepted by the webhook, or logged when no webhook is configured.
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

/// Delivers every notification due at `now`, one transaction per batch, so each batch is
/// marked delivered right after its 2xx; returns early, with the unfinished batch left in
/// the outbox, when `cancel` fires.
#[tracing::instrument(skip_all)]
pub async fn deliver_pending(
    store: &Store,
    client: &reqwest::Client,
    settings: &AlertSettings,
    now: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<DeliveryReport, StoreError> {
    let mut report = DeliveryReport::default();
    loop {
        let claimed = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            claimed = store.claim_alerts(now, settings.max_batch) => claimed?,
        };
        let Some(batch) = claimed else { break };
        log_batch(&batch.events);
        let attempt = match &settings.webhook_url {
            None => Attempt::Delivered,
            Some(url) => tokio::select! {
                biased;
                // Dropping the batch rolls its transaction back: nothing is marked.
                () = cancel.cancelled() => break,
                attempt = post(client, url, settings, &batch, now) => attempt,
            },
        };
        let count = batch.events.len();
        match attempt {
            Attempt::Delivered => {
                batch.delivered(now).await?;
                report.delivered += count;
            }
            Attempt::Refused(error) => {
                batch.retry_at(now + to_delta(MAX_RETRY), &error).await?;
                report.rejected += count;
            }
            Attempt::Transient(error) => {
                let attempts = batch.events.iter().map(|e| e.attempts).max().unwrap_or(0).saturating_add(1);
                let delay = retry_delay(attempts, rand::random_range(0.0..=1.0));
                tracing::warn!(
                    events = count,
                    first_event_id = batch.events[0].event_id,
                    attempts,
                    retry_in = %humantime::format_duration(delay),
                    "alert webhook unavailable, will retry: {error}"
                );
                batch.retry_at(now + to_delta(delay), &error).await?;
                report.retrying += count;
                break;
            }
        }
    }
    Ok(report)
}

/// Runs delivery passes every `poll` until `cancel` fires, which ends a pass in progress at
/// once (see the module docs). Database errors are logged and retried at the next poll,
/// since the events wait safely in the outbox.
pub async fn run_sender(
    store: Store,
    client: reqwest::Client,
    settings: AlertSettings,
    cancel: CancellationToken,
    poll: Duration,
) {
    while !cancel.is_cancelled() {
        match deliver_pending(&store, &client, &settings, Utc::now(), &cancel).await {
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

/// The log sink: always written, webhook or not, once per event (not per attempt). A fleet
/// event always has its own line; stale-agent events beyond [`SUMMARY_ABOVE`] share one.
fn log_batch(events: &[OutboxEvent]) {
    let mut agents = Vec::new();
    for event in events.iter().filter(|e| e.attempts == 0) {
        match &event.event {
            Notification::Agent(agent) => agents.push(agent),
            Notification::Fleet(fleet) => log_fleet_event(fleet),
        }
    }
    if agents.len() <= SUMMARY_ABOVE {
        agents.into_iter().for_each(log_event);
        return;
    }
    let firing = agents.iter().filter(|e| e.status == AlertStatus::Firing).count();
    let resolved = agents.len() - firing;
    let mut names: Vec<&str> = agents.iter().take(SUMMARY_NAMES).map(|e| e.display_name()).collect();
    names.push("...");
    let first = names.join(", ");
    let count = agents.len();
    let message = format!("{count} stale-agent alerts: {firing} firing, {resolved} resolved ({first})");
    if firing > 0 {
        tracing::warn!(alerts = count, firing, resolved, first = %first, "{message}");
    } else {
        tracing::info!(alerts = count, firing, resolved, first = %first, "{message}");
    }
}

/// One stale-agent event's line.
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

/// A vanished fleet is every agent of a tenant unobserved: an error until it is back.
fn log_fleet_event(event: &FleetEvent) {
    let (summary, tenant) = (event.summary(), &event.tenant);
    match event.status {
        AlertStatus::Firing => tracing::error!(
            alert = "firing", tenant, vanishing = event.vanishing, known = event.known,
            detail = %event.detail, "{summary}"
        ),
        AlertStatus::Resolved => tracing::info!(alert = "resolved", tenant, "{summary}"),
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    settings: &AlertSettings,
    batch: &ClaimedBatch,
    now: DateTime<Utc>,
) -> Attempt {
    let events: Vec<&Notification> = batch.events.iter().map(|e| &e.event).collect();
    let how = Rendering {
        format: settings.format,
        repeat_interval: settings.repeat_interval,
        max_batch: settings.max_batch,
        sent_at: now,
    };
    let body = render(&events, &how);
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
        events = batch.events.len(),
        first_event_id = batch.events[0].event_id,
        webhook_url = %redact_url(url),
        status = status.as_u16(),
        body = %excerpt,
        "alerts.webhook_url refused the alerts (HTTP {status}): a configuration problem (wrong URL, \
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
