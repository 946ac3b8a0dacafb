//! Stale-agent alerting against real PostgreSQL, with wiremock as the webhook. Time is the
//! `now` passed to `evaluate` and `deliver_pending`, so thresholds are seconds and tests
//! never sleep.

mod support;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::agent_id::AgentId;
use scan_agent_sync::alerts::{DeliveryReport, deliver_pending, evaluate, webhook_client};
use scan_agent_sync::config::{AlertFormat, AlertSettings, StaleSettings};
use scan_agent_sync::store::Store;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const STALE_AFTER: Duration = Duration::from_secs(60);

fn t0() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn at(seconds: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(seconds)
}

fn stale() -> StaleSettings {
    StaleSettings { after: STALE_AFTER, ..StaleSettings::default() }
}

/// One event per POST: the bodies these tests inspect are single events, as before batching.
fn settings(webhook: Option<String>, format: AlertFormat, repeat_secs: u64) -> AlertSettings {
    AlertSettings {
        webhook_url: webhook,
        format,
        repeat_interval: Duration::from_secs(repeat_secs),
        max_batch: 1,
    }
}

/// Stores agent `id` as last seen at `at(last_seen_secs)`.
async fn seen(store: &Store, id: &str, last_seen_secs: i64) {
    let record = AgentRecord::from_json(json!({
        "id": id,
        "computerDnsName": format!("{id}.example.org"),
        "lastSeen": at(last_seen_secs).to_rfc3339(),
        "scannerSoftwareVersion": "7.1.1",
    }))
    .unwrap();
    store.apply(vec![record], &[]).await.unwrap();
}

async fn webhook() -> (MockServer, String) {
    let server = MockServer::start().await;
    let url = format!("{}/hook", server.uri());
    (server, url)
}

async fn accept_all(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(server)
        .await;
}

/// Bodies received so far, in order.
async fn bodies(server: &MockServer) -> Vec<Value> {
    server.received_requests().await.unwrap().iter().map(|r| r.body_json().unwrap()).collect()
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

#[tokio::test]
async fn an_episode_fires_once_and_resolves_once() {
    let store = support::fresh_store().await;
    let (server, url) = webhook().await;
    accept_all(&server).await;
    let alerts = settings(Some(url), AlertFormat::Json, 0);
    seen(&store, "a1", 0).await;

    let fresh = evaluate(&store, None, &stale(), &alerts, at(30)).await.unwrap();
    assert_eq!((fresh.fired, fresh.stale_now, fresh.tracked), (0, 0, 1));
    assert_eq!(deliver(&store, &alerts, 30).await.delivered, 0);

    let went_stale = evaluate(&store, None, &stale(), &alerts, at(61)).await.unwrap();
    assert_eq!((went_stale.fired, went_stale.stale_now), (1, 1));
    assert_eq!(deliver(&store, &alerts, 61).await.delivered, 1);

    for later in [90, 600, 3600] {
        let still = evaluate(&store, None, &stale(), &alerts, at(later)).await.unwrap();
        assert_eq!(
            (still.fired, still.repeated, still.resolved, still.stale_now),
            (0, 0, 0, 1),
            "at +{later}s"
        );
        assert_eq!(deliver(&store, &alerts, later).await.delivered, 0);
    }

    seen(&store, "a1", 3650).await;
    let back = evaluate(&store, None, &stale(), &alerts, at(3660)).await.unwrap();
    assert_eq!((back.resolved, back.stale_now), (1, 0));
    assert_eq!(deliver(&store, &alerts, 3660).await.delivered, 1);
    let again = evaluate(&store, None, &stale(), &alerts, at(3670)).await.unwrap();
    assert_eq!((again.fired, again.resolved), (0, 0));

    let statuses: Vec<Value> = bodies(&server).await.iter().map(|b| b["status"].clone()).collect();
    assert_eq!(statuses, [json!("firing"), json!("resolved")]);
}

#[tokio::test]
async fn repeats_follow_the_repeat_interval_until_resolved() {
    let store = support::fresh_store().await;
    let (server, url) = webhook().await;
    accept_all(&server).await;
    let alerts = settings(Some(url), AlertFormat::Json, 100);
    seen(&store, "a1", 0).await;

    // (evaluation time, fired, repeated, resolved)
    let mut fresh_again = false;
    for (now, fired, repeated, resolved) in [
        (61, 1, 0, 0),
        (120, 0, 0, 0),
        (160, 0, 0, 0),
        (161, 0, 1, 0),
        (200, 0, 0, 0),
        (262, 0, 1, 0),
        (400, 0, 0, 1),
    ] {
        if now == 400 {
            seen(&store, "a1", 390).await;
            fresh_again = true;
        }
        let e = evaluate(&store, None, &stale(), &alerts, at(now)).await.unwrap();
        assert_eq!((e.fired, e.repeated, e.resolved), (fired, repeated, resolved), "at +{now}s");
        deliver(&store, &alerts, now).await;
    }
    assert!(fresh_again);
    let sent: Vec<(Value, Value)> =
        bodies(&server).await.iter().map(|b| (b["status"].clone(), b["repeat"].clone())).collect();
    assert_eq!(
        sent,
        [
            (json!("firing"), json!(false)),
            (json!("firing"), json!(true)),
            (json!("firing"), json!(true)),
            (json!("resolved"), json!(false)),
        ]
    );
}

#[tokio::test]
async fn repeats_do_not_pile_up_while_the_webhook_is_down() {
    let store = support::fresh_store().await;
    let (server, url) = webhook().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
    let alerts = settings(Some(url), AlertFormat::Json, 10);
    seen(&store, "a1", 0).await;
    for now in (61..600).step_by(10) {
        evaluate(&store, None, &stale(), &alerts, at(now)).await.unwrap();
    }
    assert_eq!(undelivered(&store).await, 1);
}

#[tokio::test]
async fn missing_agents_alert_and_resolve_when_back() {
    let store = support::fresh_store().await;
    let (server, url) = webhook().await;
    accept_all(&server).await;
    let alerts = settings(Some(url), AlertFormat::Json, 0);
    seen(&store, "gone", 0).await;
    store.apply(vec![], &[AgentId::parse("gone").unwrap()]).await.unwrap();

    // Seen a second ago, so only being missing makes it stale.
    let e = evaluate(&store, None, &stale(), &alerts, at(1)).await.unwrap();
    assert_eq!((e.fired, e.stale_now, e.missing_now), (1, 1, 1));
    deliver(&store, &alerts, 1).await;
    let firing = &bodies(&server).await[0];
    assert_eq!(firing["status"], "firing");
    assert!(firing["missing_since"].is_string(), "{firing}");

    seen(&store, "gone", 5).await;
    let e = evaluate(&store, None, &stale(), &alerts, at(6)).await.unwrap();
    assert_eq!((e.resolved, e.missing_now), (1, 0));
}

#[tokio::test]
async fn an_outage_then_recovery_delivers_each_event_exactly_once() {
    let store = support::fresh_store().await;
    let (server, url) = webhook().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(4)
        .expect(4)
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(202)).expect(3).mount(&server).await;
    let alerts = settings(Some(url), AlertFormat::Json, 0);
    for id in ["a1", "a2", "a3"] {
        seen(&store, id, 0).await;
    }
    assert_eq!(evaluate(&store, None, &stale(), &alerts, at(61)).await.unwrap().fired, 3);

    let first = deliver(&store, &alerts, 61).await;
    assert_eq!((first.delivered, first.retrying), (0, 1), "a failure ends the pass");
    // Nothing is due again before the backoff passes.
    assert_eq!(deliver(&store, &alerts, 62).await, DeliveryReport { delivered: 0, retrying: 1, rejected: 0 });
    let mut now = 62;
    let mut delivered = 0;
    while undelivered(&store).await > 0 {
        now += 11 * 60;
        delivered += deliver(&store, &alerts, now).await.delivered;
        assert!(now < 24 * 3600, "events were not delivered after the webhook recovered");
    }
    assert_eq!(delivered, 3);
    assert_eq!(deliver(&store, &alerts, now + 3600).await, DeliveryReport::default());
    let mut agents: Vec<String> =
        bodies(&server).await[4..].iter().map(|b| b["agent_id"].to_string()).collect();
    agents.sort();
    assert_eq!(agents, ["\"a1\"", "\"a2\"", "\"a3\""]);
}

#[tokio::test]
async fn a_crash_before_delivery_loses_nothing() {
    let pool = support::fresh_pool().await;
    let options = pool.connect_options().as_ref().clone();
    let store = Store::from_pool(pool);
    let alerts = settings(None, AlertFormat::Json, 0);
    seen(&store, "a1", 0).await;
    evaluate(&store, None, &stale(), &alerts, at(61)).await.unwrap();
    // A sender that took the event and died mid-request: its transaction rolls back.
    let claimed = store.claim_alerts(at(61), 1).await.unwrap().expect("an event is due");
    drop(claimed);
    store.pool().close().await;
    drop(store);

    let (server, url) = webhook().await;
    accept_all(&server).await;
    let restarted = Store::from_pool(PgPoolOptions::new().connect_with(options).await.unwrap());
    let alerts = settings(Some(url), AlertFormat::Json, 0);
    assert_eq!(
        evaluate(&restarted, None, &stale(), &alerts, at(62)).await.unwrap().fired,
        0,
        "no re-fire after restart"
    );
    assert_eq!(deliver(&restarted, &alerts, 62).await.delivered, 1);
    assert_eq!(bodies(&server).await.len(), 1);
}

/// The bodies sent for one episode of agent `a1`: stale at 61 s (sent at 70 s), seen again
/// at 100 s, resolved at 120 s (sent at 125 s).
async fn fired_then_resolved(format: AlertFormat) -> Vec<Value> {
    let store = support::fresh_store().await;
    let (server, url) = webhook().await;
    accept_all(&server).await;
    let alerts = settings(Some(url), format, 0);
    seen(&store, "a1", 0).await;
    evaluate(&store, None, &stale(), &alerts, at(61)).await.unwrap();
    deliver(&store, &alerts, 70).await;
    seen(&store, "a1", 100).await;
    evaluate(&store, None, &stale(), &alerts, at(120)).await.unwrap();
    deliver(&store, &alerts, 125).await;
    bodies(&server).await
}

#[tokio::test]
async fn alertmanager_body_field_by_field() {
    let sent = fired_then_resolved(AlertFormat::Alertmanager).await;
    let labels = json!({
        "alertname": "ScanAgentStale",
        "tenant": "default",
        "agent_id": "a1",
        "computer_dns_name": "a1.example.org",
        "severity": "warning",
    });
    let firing = sent[0].as_array().expect("an array of alerts");
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0]["labels"], labels);
    assert_eq!(firing[0]["annotations"]["last_seen"], "2026-01-01T00:00:00Z");
    assert_eq!(firing[0]["annotations"]["stale_since"], "2026-01-01T00:01:00Z");
    let summary = firing[0]["annotations"]["summary"].as_str().unwrap();
    assert!(summary.contains("a1.example.org") && summary.contains("not been seen"), "{summary}");
    assert_eq!(firing[0]["startsAt"], "2026-01-01T00:01:01Z");
    // No repeats: the alert must stay active until the resolve, so endsAt is a year out.
    assert_eq!(firing[0]["endsAt"], "2027-01-01T00:01:10Z");
    assert!(firing[0].get("generatorURL").is_none());

    let resolved = &sent[1][0];
    assert_eq!(resolved["labels"], labels);
    assert_eq!(resolved["annotations"]["last_seen"], "2026-01-01T00:01:40Z");
    assert_eq!(resolved["startsAt"], "2026-01-01T00:01:01Z");
    assert_eq!(resolved["endsAt"], "2026-01-01T00:02:00Z");
}

#[tokio::test]
async fn alertmanager_end_time_covers_two_repeats() {
    let store = support::fresh_store().await;
    let (server, url) = webhook().await;
    accept_all(&server).await;
    let alerts = settings(Some(url), AlertFormat::Alertmanager, 2 * 3600);
    seen(&store, "a1", 0).await;
    evaluate(&store, None, &stale(), &alerts, at(61)).await.unwrap();
    deliver(&store, &alerts, 61).await;
    assert_eq!(bodies(&server).await[0][0]["endsAt"], "2026-01-01T04:01:01Z");
}

#[tokio::test]
async fn json_body_field_by_field() {
    let sent = fired_then_resolved(AlertFormat::Json).await;
    assert_eq!(
        sent[0],
        json!({
            "status": "firing",
            "tenant": "default",
            "agent_id": "a1",
            "computer_dns_name": "a1.example.org",
            "last_seen": "2026-01-01T00:00:00Z",
            "missing_since": null,
            "stale_since": "2026-01-01T00:01:00Z",
            "fired_at": "2026-01-01T00:01:01Z",
            "resolved_at": null,
            "repeat": false,
        })
    );
    assert_eq!(
        sent[1],
        json!({
            "status": "resolved",
            "tenant": "default",
            "agent_id": "a1",
            "computer_dns_name": "a1.example.org",
            "last_seen": "2026-01-01T00:01:40Z",
            "missing_since": null,
            "stale_since": "2026-01-01T00:01:00Z",
            "fired_at": "2026-01-01T00:01:01Z",
            "resolved_at": "2026-01-01T00:02:00Z",
            "repeat": false,
        })
    );
}

#[tokio::test]
async fn a_4xx_is_logged_as_a_configuration_problem_and_kept() {
    let logs = support::Captured::default();
    let _guard = logs.install(tracing::Level::INFO);
    let store = support::fresh_store().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad alert: unknown field"))
        .mount(&server)
        .await;
    let address = server.address();
    let url = format!("http://alerts:hunter2@{address}/hook");
    let alerts = settings(Some(url), AlertFormat::Alertmanager, 0);
    seen(&store, "a1", 0).await;
    evaluate(&store, None, &stale(), &alerts, at(61)).await.unwrap();

    let report = deliver(&store, &alerts, 61).await;
    assert_eq!(report, DeliveryReport { delivered: 0, retrying: 0, rejected: 1 });
    let text = logs.text();
    assert!(text.contains("configuration problem"), "{text}");
    assert!(text.contains(&format!("http://alerts:[redacted]@{address}/hook")), "{text}");
    assert!(text.contains("400") && text.contains("bad alert: unknown field"), "{text}");
    assert!(!text.contains("hunter2"), "the webhook password leaked: {text}");

    // Kept, and retried at the maximum backoff.
    let (attempts, next): (i32, DateTime<Utc>) =
        sqlx::query_as("SELECT attempts, next_attempt_at FROM alert_outbox WHERE delivered_at IS NULL")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!((attempts, next), (1, at(61 + 600)));
}

#[tokio::test]
async fn without_a_webhook_alerts_are_logged_firing_warn_resolved_info() {
    let logs = support::Captured::default();
    let _guard = logs.install(tracing::Level::INFO);
    let store = support::fresh_store().await;
    let alerts = settings(None, AlertFormat::Alertmanager, 0);
    seen(&store, "a1", 0).await;
    evaluate(&store, None, &stale(), &alerts, at(61)).await.unwrap();
    assert_eq!(deliver(&store, &alerts, 61).await.delivered, 1);
    seen(&store, "a1", 100).await;
    evaluate(&store, None, &stale(), &alerts, at(101)).await.unwrap();
    assert_eq!(deliver(&store, &alerts, 101).await.delivered, 1);

    let text = logs.text();
    let firing = text.lines().find(|l| l.contains("alert=\"firing\"")).expect(&text);
    assert!(firing.contains("WARN") && firing.contains("a1.example.org"), "{firing}");
    let resolved = text.lines().find(|l| l.contains("alert=\"resolved\"")).expect(&text);
    assert!(resolved.contains("INFO"), "{resolved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_evaluations_do_not_double_fire() {
    let store = support::fresh_store().await;
    let alerts = settings(None, AlertFormat::Json, 0);
    let records: Vec<AgentRecord> = (0..50)
        .map(|i| {
            AgentRecord::from_json(json!({"id": format!("agent-{i}"), "lastSeen": t0().to_rfc3339()}))
                .unwrap()
        })
        .collect();
    store.apply(records, &[]).await.unwrap();

    let runs = (0..4).map(|_| {
        let (store, alerts) = (store.clone(), alerts.clone());
        tokio::spawn(async move { evaluate(&store, None, &stale(), &alerts, at(61)).await.unwrap() })
    });
    let mut fired = 0;
    for run in runs {
        fired += run.await.unwrap().fired;
    }
    assert_eq!(fired, 50);
    let queued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alert_outbox").fetch_one(store.pool()).await.unwrap();
    assert_eq!(queued, 50);
}
