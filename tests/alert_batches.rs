//! Batched delivery of big outboxes (issue 12, "alert storms"): against real PostgreSQL,
//! with wiremock as the receiver. Every accepted alert is counted: each event arrives
//! exactly once through refusals, and a stop leaves the rest for the next sender.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::alerts::{DeliveryReport, deliver_pending, evaluate, run_sender, webhook_client};
use scan_agent_sync::config::{AlertFormat, AlertSettings, StaleSettings};
use scan_agent_sync::store::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const STALE: StaleSettings = StaleSettings { after: Duration::from_secs(60), mass_missing_guard: 0.5 };

fn at(seconds: i64) -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::seconds(seconds)
}

fn batched(server: &MockServer, format: AlertFormat, max_batch: u32) -> AlertSettings {
    AlertSettings {
        webhook_url: Some(format!("{}/hook", server.uri())),
        format,
        repeat_interval: Duration::ZERO,
        max_batch,
    }
}

/// `n` agents last seen at 0 s (or at `last_seen_secs`), stored in one batch.
async fn agents(store: &Store, n: usize, last_seen_secs: i64) {
    let records = (0..n)
        .map(|i| {
            AgentRecord::from_json(
                json!({"id": format!("agent-{i:05}"), "lastSeen": at(last_seen_secs).to_rfc3339()}),
            )
            .unwrap()
        })
        .collect();
    store.apply(records, &[]).await.unwrap();
}

/// A store whose outbox holds one firing event for each of `n` agents.
async fn storm(n: usize) -> Store {
    let store = support::fresh_store().await;
    agents(&store, n, 0).await;
    let fired = evaluate(&store, None, &STALE, &AlertSettings::default(), at(61)).await.unwrap().fired;
    assert_eq!(fired, n as u64);
    store
}

async fn deliver(store: &Store, alerts: &AlertSettings, now_secs: i64) -> DeliveryReport {
    deliver_pending(store, &webhook_client().unwrap(), alerts, at(now_secs), &CancellationToken::new())
        .await
        .unwrap()
}

async fn undelivered(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// The bodies `server` received, in order.
async fn bodies(server: &MockServer) -> Vec<Value> {
    server.received_requests().await.unwrap().iter().map(|r| r.body_json().unwrap()).collect()
}

/// The agent of every alert in Alertmanager bodies.
fn agents_in<'a>(bodies: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    bodies
        .into_iter()
        .flat_map(|body| body.as_array().expect("an array of alerts").iter())
        .map(|alert| alert["labels"]["agent_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts that `received` holds each of the `n` agents exactly once.
#[track_caller]
fn exactly_once(received: &[String], n: usize) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for agent in received {
        *counts.entry(agent).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(repeated.is_empty(), "delivered more than once: {repeated:?}");
    assert_eq!(counts.len(), n, "distinct agents delivered");
}

#[tokio::test]
async fn ten_thousand_events_go_out_in_batches_exactly_once_through_refusals() {
    const EVENTS: usize = 10_000;
    let store = storm(EVENTS).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let alerts = batched(&server, AlertFormat::Alertmanager, 100);

    let mut now = 61;
    let mut reports = Vec::new();
    while undelivered(&store).await > 0 {
        assert!(reports.len() < 10, "not drained after {} passes: {reports:?}", reports.len());
        reports.push(deliver(&store, &alerts, now).await);
        now += 11 * 60; // past any backoff
    }
    // Each refusal ends its pass; the fourth pass drains everything.
    let refused = DeliveryReport { delivered: 0, retrying: 100, rejected: 0 };
    assert_eq!(reports[..3], [refused; 3]);
    assert_eq!(reports[3], DeliveryReport { delivered: EVENTS, retrying: 0, rejected: 0 });

    let sent = bodies(&server).await;
    assert_eq!(sent.len(), 3 + EVENTS / 100, "one POST per batch of 100");
    assert!(sent.iter().all(|b| b.as_array().unwrap().len() == 100), "every batch is full");
    let accepted = agents_in(&sent[3..]);
    exactly_once(&accepted, EVENTS);
    // The refused events were among those delivered later.
    let refused_agents = agents_in(&sent[..3]);
    assert!(refused_agents.iter().all(|a| accepted.contains(a)));
}

#[tokio::test]
async fn a_stop_during_a_drain_returns_at_once_and_the_next_sender_delivers_the_rest() {
    const EVENTS: usize = 10_000;
    let store = storm(EVENTS).await;
    // The first receiver takes five batches, then hangs on the sixth.
    let first = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).up_to_n_times(5).mount(&first).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(120)))
        .mount(&first)
        .await;
    let cancel = CancellationToken::new();
    let sender = tokio::spawn(run_sender(
        store.clone(),
        webhook_client().unwrap(),
        batched(&first, AlertFormat::Alertmanager, 100),
        cancel.clone(),
        Duration::from_millis(50),
    ));
    let waited = std::time::Instant::now();
    while first.received_requests().await.unwrap().len() < 6 {
        assert!(waited.elapsed() < Duration::from_secs(60), "the sender never reached the sixth POST");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The POST in flight is abandoned: run_sender does not wait for the receiver (which
    // would take 120 s, or the client's 10 s timeout).
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), sender)
        .await
        .expect("run_sender returns within seconds of cancellation")
        .unwrap();
    assert_eq!(undelivered(&store).await, (EVENTS - 500) as i64, "the abandoned batch stays queued");

    let second = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&second).await;
    let report = deliver(&store, &batched(&second, AlertFormat::Alertmanager, 100), 61).await;
    assert_eq!(report.delivered, EVENTS - 500);
    let mut accepted = agents_in(&bodies(&first).await[..5]);
    accepted.extend(agents_in(&bodies(&second).await));
    exactly_once(&accepted, EVENTS);
}

#[tokio::test]
async fn json_bodies_are_single_objects_with_max_batch_1_and_arrays_above() {
    let expected = |i: usize| {
        json!({
            "status": "firing",
            "tenant": "default",
            "agent_id": format!("agent-{i:05}"),
            "computer_dns_name": null,
            "last_seen": "2026-01-01T00:00:00Z",
            "missing_since": null,
            "stale_since": "2026-01-01T00:01:00Z",
            "fired_at": "2026-01-01T00:01:01Z",
            "resolved_at": null,
            "repeat": false,
        })
    };
    for (max_batch, shapes) in
        [(1, vec![None, None, None]), (2, vec![Some(2), Some(1)]), (100, vec![Some(3)])]
    {
        let store = storm(3).await;
        let server = MockServer::start().await;
        Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
        deliver(&store, &batched(&server, AlertFormat::Json, max_batch), 61).await;
        let sent = bodies(&server).await;
        let got: Vec<Option<usize>> = sent.iter().map(|b| b.as_array().map(Vec::len)).collect();
        assert_eq!(got, shapes, "max_batch = {max_batch}");
        let objects: Vec<&Value> =
            sent.iter().flat_map(|b| b.as_array().map_or_else(|| vec![b], |a| a.iter().collect())).collect();
        assert_eq!(objects, [&expected(0), &expected(1), &expected(2)], "max_batch = {max_batch}");
    }
}

#[tokio::test]
async fn a_resolve_waits_for_its_firing_even_when_both_are_due_in_one_pass() {
    let store = storm(3).await;
    agents(&store, 3, 100).await;
    assert_eq!(evaluate(&store, None, &STALE, &AlertSettings::default(), at(110)).await.unwrap().resolved, 3);
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;

    assert_eq!(deliver(&store, &batched(&server, AlertFormat::Alertmanager, 100), 110).await.delivered, 6);
    let ends: Vec<Vec<Value>> = bodies(&server)
        .await
        .iter()
        .map(|b| b.as_array().unwrap().iter().map(|a| a["endsAt"].clone()).collect())
        .collect();
    let firing = json!("2027-01-01T00:01:50Z"); // sent at 110 s, a year of horizon
    let resolved = json!("2026-01-01T00:01:50Z");
    assert_eq!(ends, [vec![firing; 3], vec![resolved; 3]], "firings in the first POST, resolves after");
}

#[tokio::test]
async fn a_big_batch_is_logged_as_one_summary_line() {
    let logs = support::Captured::default();
    let _guard = logs.install(tracing::Level::INFO);
    let store = storm(40).await;
    let alerts = AlertSettings { max_batch: 100, ..AlertSettings::default() };
    assert_eq!(deliver(&store, &alerts, 61).await.delivered, 40);
    let text = logs.text();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("stale-agent alerts")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("40 stale-agent alerts: 40 firing, 0 resolved"), "{}", lines[0]);
    assert!(lines[0].contains("agent-00000, agent-00001"), "{}", lines[0]);
    assert!(!text.contains("has not been seen"), "no line per event: {text}");
}

/// A storm bigger than one evaluation statement's chunk (10,000 episodes) opens and then
/// resolves every episode once.
#[tokio::test]
async fn a_storm_of_more_agents_than_a_chunk_fires_and_resolves_each_once() {
    const AGENTS: usize = 25_000;
    let store = storm(AGENTS).await;
    let again = evaluate(&store, None, &STALE, &AlertSettings::default(), at(62)).await.unwrap();
    assert_eq!((again.fired, again.stale_now, again.tracked), (0, AGENTS as u64, AGENTS as u64));
    agents(&store, AGENTS, 100).await;
    let back = evaluate(&store, None, &STALE, &AlertSettings::default(), at(110)).await.unwrap();
    assert_eq!((back.resolved, back.fired, back.stale_now), (AGENTS as u64, 0, 0));
    let (episodes, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(DISTINCT agent_id) FROM stale_episodes WHERE resolved_at IS NOT NULL),
                (SELECT count(*) FROM alert_outbox)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((episodes, events), (AGENTS as i64, 2 * AGENTS as i64));
}
