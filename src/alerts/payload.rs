//! Webhook bodies, rendered from an [`AlertEvent`] at send time.
//!
//! `alertmanager` is the body of Alertmanager's `POST /api/v2/alerts`, so the service can
//! post straight to Alertmanager and let it de-duplicate, group and route. `json` is one
//! flat object per event for generic webhooks.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use super::{AlertEvent, AlertStatus};
use crate::config::AlertFormat;

/// The `alertname` label of every alert this service sends.
pub const ALERT_NAME: &str = "ScanAgentStale";

/// How long Alertmanager keeps a firing alert active without hearing of it again when
/// `repeat_interval` is zero. Nothing refreshes such an alert, and Alertmanager's default
/// (`resolve_timeout`, 5 minutes) would resolve it long before the agent is back; a year
/// keeps it firing until our resolve arrives, while an alert orphaned by a decommissioned
/// service still expires eventually.
const ONE_SHOT_HORIZON: TimeDelta = TimeDelta::days(365);

/// With repeats, Alertmanager may end a firing alert that two repeats (and at least an
/// hour) passed without, which is how a dead service's alerts expire, as Prometheus's do.
const MIN_REPEAT_HORIZON: TimeDelta = TimeDelta::hours(1);

/// The body to POST for `event` in `format`, as sent at `sent_at`.
pub fn render(
    event: &AlertEvent,
    format: AlertFormat,
    repeat_interval: Duration,
    sent_at: DateTime<Utc>,
) -> Value {
    match format {
        AlertFormat::Alertmanager => alertmanager(event, repeat_interval, sent_at),
        AlertFormat::Json => plain(event),
    }
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// When Alertmanager should consider the alert over: the resolve time on a resolve,
/// otherwise a horizon the next repeat (or the resolve) arrives well before.
fn ends_at(event: &AlertEvent, repeat_interval: Duration, sent_at: DateTime<Utc>) -> DateTime<Utc> {
    match (event.status, event.resolved_at) {
        (AlertStatus::Resolved, Some(resolved_at)) => resolved_at,
        (AlertStatus::Resolved, None) => sent_at,
        (AlertStatus::Firing, _) if repeat_interval.is_zero() => sent_at + ONE_SHOT_HORIZON,
        (AlertStatus::Firing, _) => {
            let twice = repeat_interval
                .checked_mul(2)
                .and_then(|d| TimeDelta::from_std(d).ok())
                .unwrap_or(ONE_SHOT_HORIZON);
            sent_at + twice.clamp(MIN_REPEAT_HORIZON, ONE_SHOT_HORIZON)
        }
    }
}

/// A one-alert array. Labels identify the alert (Alertmanager de-duplicates on them), so
/// they hold only what names the agent; `computer_dns_name` is left out when unknown, as
/// Alertmanager treats an empty label as absent anyway.
fn alertmanager(event: &AlertEvent, repeat_interval: Duration, sent_at: DateTime<Utc>) -> Value {
    let mut labels = Map::new();
    labels.insert("alertname".into(), ALERT_NAME.into());
    labels.insert("agent_id".into(), event.agent_id.clone().into());
    if let Some(dns) = &event.computer_dns_name {
        labels.insert("computer_dns_name".into(), dns.clone().into());
    }
    labels.insert("severity".into(), "warning".into());
    let mut annotations = Map::new();
    annotations.insert("summary".into(), event.summary().into());
    annotations.insert("last_seen".into(), timestamp(event.last_seen).into());
    annotations.insert("stale_since".into(), timestamp(event.stale_since).into());
    if let Some(missing) = event.missing_since {
        annotations.insert("missing_since".into(), timestamp(missing).into());
    }
    json!([{
        "labels": labels,
        "annotations": annotations,
        "startsAt": timestamp(event.fired_at),
        "endsAt": timestamp(ends_at(event, repeat_interval, sent_at)),
    }])
}

/// The event's facts as one flat object.
fn plain(event: &AlertEvent) -> Value {
    json!({
        "status": event.status,
        "agent_id": event.agent_id,
        "computer_dns_name": event.computer_dns_name,
        "last_seen": timestamp(event.last_seen),
        "missing_since": event.missing_since.map(timestamp),
        "stale_since": timestamp(event.stale_since),
        "fired_at": timestamp(event.fired_at),
        "resolved_at": event.resolved_at.map(timestamp),
        "repeat": event.repeat,
    })
}
