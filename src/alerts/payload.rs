//! Webhook bodies, rendered from a batch of [`Notification`]s at send time.
//!
//! `alertmanager` is the body of Alertmanager's `POST /api/v2/alerts` (an array of alerts),
//! so the service can post straight to Alertmanager and let it de-duplicate, group and
//! route. `json` is one flat object per event for generic webhooks: the object itself when
//! `alerts.max_batch` is 1 (the body before batching existed), an array of them otherwise,
//! so a receiver always sees one shape.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use super::{AlertEvent, AlertStatus, FleetEvent, Notification};
use crate::config::AlertFormat;

/// The `alertname` label of stale-agent alerts.
pub const ALERT_NAME: &str = "ScanAgentStale";

/// The `alertname` of the alert that replaces a storm of stale-agent alerts when a tenant's
/// whole fleet vanishes from the API at once.
pub const FLEET_ALERT_NAME: &str = "ScanAgentFleetVanished";

/// How long Alertmanager keeps a firing alert active without hearing of it again when
/// `repeat_interval` is zero. Nothing refreshes such an alert, and Alertmanager's default
/// (`resolve_timeout`, 5 minutes) would resolve it long before the agent is back; a year
/// keeps it firing until our resolve arrives, while an alert orphaned by a decommissioned
/// service still expires eventually.
const ONE_SHOT_HORIZON: TimeDelta = TimeDelta::days(365);

/// With repeats, Alertmanager may end a firing alert that two repeats (and at least an
/// hour) passed without, which is how a dead service's alerts expire, as Prometheus's do.
const MIN_REPEAT_HORIZON: TimeDelta = TimeDelta::hours(1);

/// How a batch is rendered: the configuration in force when it is sent.
#[derive(Debug, Clone, Copy)]
pub struct Rendering {
    pub format: AlertFormat,
    pub repeat_interval: Duration,
    /// `alerts.max_batch`: 1 keeps the `json` body a single object.
    pub max_batch: u32,
    pub sent_at: DateTime<Utc>,
}

/// The body to POST for `events`, one alert each.
pub fn render(events: &[&Notification], how: &Rendering) -> Value {
    match (how.format, events) {
        (AlertFormat::Json, [event]) if how.max_batch == 1 => plain(event),
        (AlertFormat::Json, _) => events.iter().map(|event| plain(event)).collect(),
        (AlertFormat::Alertmanager, _) => events.iter().map(|event| alertmanager(event, how)).collect(),
    }
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// When Alertmanager should consider the alert over: the resolve time on a resolve,
/// otherwise a horizon the next repeat (or the resolve) arrives well before.
fn ends_at(
    status: AlertStatus,
    resolved_at: Option<DateTime<Utc>>,
    repeat_interval: Duration,
    sent_at: DateTime<Utc>,
) -> DateTime<Utc> {
    match (status, resolved_at) {
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

/// One alert of Alertmanager's array.
fn alertmanager(notification: &Notification, how: &Rendering) -> Value {
    match notification {
        Notification::Agent(event) => agent_alert(event, how),
        Notification::Fleet(event) => fleet_alert(event, how),
    }
}

/// Labels identify the alert (Alertmanager de-duplicates on them), so they hold only what
/// names the agent and its tenant; `computer_dns_name` is left out when unknown, as
/// Alertmanager treats an empty label as absent anyway.
fn agent_alert(event: &AlertEvent, how: &Rendering) -> Value {
    let mut labels = Map::new();
    labels.insert("alertname".into(), ALERT_NAME.into());
    labels.insert("tenant".into(), event.tenant.clone().into());
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
    json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": timestamp(event.fired_at),
        "endsAt": timestamp(ends_at(event.status, event.resolved_at, how.repeat_interval, how.sent_at)),
    })
}

/// Critical: every agent of the tenant is unobserved until someone acts. Fleet episodes
/// are never repeated, so the alert stays active until its resolve.
fn fleet_alert(event: &FleetEvent, how: &Rendering) -> Value {
    json!({
        "labels": {
            "alertname": FLEET_ALERT_NAME,
            "tenant": event.tenant,
            "severity": "critical",
        },
        "annotations": {
            "summary": event.summary(),
            "detail": event.detail,
            "vanishing": event.vanishing.to_string(),
            "known": event.known.to_string(),
        },
        "startsAt": timestamp(event.fired_at),
        "endsAt": timestamp(ends_at(event.status, event.resolved_at, Duration::ZERO, how.sent_at)),
    })
}

/// The event's facts as one flat object.
fn plain(notification: &Notification) -> Value {
    match notification {
        Notification::Agent(event) => json!({
            "status": event.status,
            "tenant": event.tenant,
            "agent_id": event.agent_id,
            "computer_dns_name": event.computer_dns_name,
            "last_seen": timestamp(event.last_seen),
            "missing_since": event.missing_since.map(timestamp),
            "stale_since": timestamp(event.stale_since),
            "fired_at": timestamp(event.fired_at),
            "resolved_at": event.resolved_at.map(timestamp),
            "repeat": event.repeat,
        }),
        Notification::Fleet(event) => json!({
            "alertname": FLEET_ALERT_NAME,
            "status": event.status,
            "tenant": event.tenant,
            "vanishing": event.vanishing,
            "known": event.known,
            "detail": event.detail,
            "summary": event.summary(),
            "fired_at": timestamp(event.fired_at),
            "resolved_at": event.resolved_at.map(timestamp),
        }),
    }
}
