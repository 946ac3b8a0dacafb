//! The `ScanAgentFleetVanished` episode (issue 12): its storage, queued in the same
//! transaction, once per tenant, and its rendering in both formats, against real PostgreSQL
//! with wiremock as the webhook.

mod support;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use scan_agent_sync::alerts::{deliver_pending, webhook_client};
use scan_agent_sync::config::{AlertFormat, AlertSettings};
use scan_agent_sync::store::{MIGRATOR, Store};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const DETAIL: &str = "the list returned 12 agents; 950 of the 1000 known would become missing";

fn at(seconds: i64) -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::seconds(seconds)
}

/// (ordering key, kind) of every outbox row, in queue order.
async fn outbox(store: &Store) -> Vec<(String, String)> {
    sqlx::query_as("SELECT agent_id, kind FROM alert_outbox ORDER BY event_id")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fleet_episode_opens_once_per_tenant_and_resolves_once() {
    let store = support::fresh_store().await;
    assert_eq!(store.open_fleet_vanished("default").await.unwrap(), None);

    assert_eq!(store.fleet_vanished("default", 950, 1000, DETAIL, at(10)).await.unwrap(), at(10));
    assert_eq!(
        store.fleet_vanished("default", 990, 1000, "again", at(20)).await.unwrap(),
        at(10),
        "an open episode is kept, not reopened"
    );
    assert_eq!(store.open_fleet_vanished("default").await.unwrap(), Some(at(10)));
    assert_eq!(store.fleet_vanished("contoso", 40, 50, DETAIL, at(15)).await.unwrap(), at(15));
    assert_eq!(
        outbox(&store).await,
        [("fleet default".into(), "firing".into()), ("fleet contoso".into(), "firing".into())]
    );

    assert!(store.fleet_returned("default", at(30)).await.unwrap());
    assert!(!store.fleet_returned("default", at(31)).await.unwrap(), "nothing left to resolve");
    assert_eq!(store.open_fleet_vanished("default").await.unwrap(), None);
    assert_eq!(store.open_fleet_vanished("contoso").await.unwrap(), Some(at(15)));
    assert_eq!(store.fleet_vanished("default", 950, 1000, DETAIL, at(40)).await.unwrap(), at(40));
    let kinds: Vec<String> = outbox(&store).await.into_iter().map(|(_, kind)| kind).collect();
    assert_eq!(kinds, ["firing", "firing", "resolved", "firing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cycles_open_one_episode() {
    let store = support::fresh_store().await;
    let calls = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.fleet_vanished("default", 950, 1000, DETAIL, at(i)).await.unwrap() })
    });
    let mut starts = Vec::new();
    for call in calls {
        starts.push(call.await.unwrap());
    }
    starts.dedup();
    assert_eq!(starts.len(), 1, "every call saw one episode: {starts:?}");
    assert_eq!(outbox(&store).await.len(), 1);
}

/// The bodies a webhook receives for an episode fired at 10 s (sent at 12 s) and resolved
/// at 30 s (sent at 31 s).
async fn fired_then_resolved(format: AlertFormat) -> Vec<Value> {
    let store = support::fresh_store().await;
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let alerts = AlertSettings {
        webhook_url: Some(format!("{}/hook", server.uri())),
        format,
        repeat_interval: Duration::from_secs(3600),
        max_batch: 1,
    };
    let client = webhook_client().unwrap();
    let never = CancellationToken::new();
    store.fleet_vanished("default", 950, 1000, DETAIL, at(10)).await.unwrap();
    assert_eq!(deliver_pending(&store, &client, &alerts, at(12), &never).await.unwrap().delivered, 1);
    store.fleet_returned("default", at(30)).await.unwrap();
    assert_eq!(deliver_pending(&store, &client, &alerts, at(31), &never).await.unwrap().delivered, 1);
    server.received_requests().await.unwrap().iter().map(|r| r.body_json().unwrap()).collect()
}

#[track_caller]
fn assert_firing_summary(summary: &str) {
    for needle in [
        "950 of 1000",
        "tenant default",
        "wrong tenant or API host",
        "consent",
        "proxy",
        "--accept-mass-missing",
    ] {
        assert!(summary.contains(needle), "{needle:?} missing from {summary:?}");
    }
}

#[tokio::test]
async fn alertmanager_body_of_a_vanished_fleet() {
    let sent = fired_then_resolved(AlertFormat::Alertmanager).await;
    let labels = json!({"alertname": "ScanAgentFleetVanished", "tenant": "default", "severity": "critical"});
    let firing = sent[0].as_array().expect("an array of alerts");
    assert_eq!(firing.len(), 1);
    assert_eq!(firing[0]["labels"], labels);
    assert_firing_summary(firing[0]["annotations"]["summary"].as_str().unwrap());
    assert_eq!(firing[0]["annotations"]["detail"], DETAIL);
    assert_eq!(firing[0]["annotations"]["vanishing"], "950");
    assert_eq!(firing[0]["annotations"]["known"], "1000");
    assert_eq!(firing[0]["startsAt"], "2026-01-01T00:00:10Z");
    // Never repeated, so it stays active until the resolve whatever repeat_interval says.
    assert_eq!(firing[0]["endsAt"], "2027-01-01T00:00:12Z");

    let resolved = &sent[1][0];
    assert_eq!(resolved["labels"], labels);
    assert_eq!(resolved["startsAt"], "2026-01-01T00:00:10Z");
    assert_eq!(resolved["endsAt"], "2026-01-01T00:00:30Z");
}

#[tokio::test]
async fn json_body_of_a_vanished_fleet() {
    let sent = fired_then_resolved(AlertFormat::Json).await;
    assert_firing_summary(sent[0]["summary"].as_str().unwrap());
    let mut firing = sent[0].clone();
    firing.as_object_mut().unwrap().remove("summary");
    assert_eq!(
        firing,
        json!({
            "alertname": "ScanAgentFleetVanished",
            "status": "firing",
            "tenant": "default",
            "vanishing": 950,
            "known": 1000,
            "detail": DETAIL,
            "fired_at": "2026-01-01T00:00:10Z",
            "resolved_at": null,
        })
    );
    assert_eq!(sent[1]["status"], "resolved");
    assert_eq!(sent[1]["resolved_at"], "2026-01-01T00:00:30Z");
    assert_eq!(sent[1]["fired_at"], "2026-01-01T00:00:10Z");
}

/// An event queued by the previous release (migration 7, payload as its evaluation wrote
/// it) is still delivered after migration 8, rendered as before.
#[tokio::test]
async fn events_queued_before_the_fleet_migration_are_still_delivered() {
    let name = support::fresh_database().await;
    let pool = PgPoolOptions::new().connect(&support::database_url(&name)).await.unwrap();
    MIGRATOR.run_to(20261128000007, &pool).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO scan_agent_state (agent_id, last_seen, first_observed_at, last_changed_at,
                                       valid_from, last_fetched_at)
         VALUES ('a1', '2026-01-01T00:00:00Z', '2026-01-01', '2026-01-01', '2026-01-01', '2026-01-01');
         INSERT INTO stale_episodes (agent_id, started_at, stale_since, last_notified_at)
         VALUES ('a1', '2026-01-01T00:01:01Z', '2026-01-01T00:01:00Z', '2026-01-01T00:01:01Z');
         INSERT INTO alert_outbox (episode_id, agent_id, kind, payload, created_at, next_attempt_at)
         SELECT episode_id, 'a1', 'firing',
                jsonb_build_object('status', 'firing', 'agent_id', 'a1', 'computer_dns_name', NULL,
                                   'last_seen', '2026-01-01T00:00:00+00:00'::timestamptz,
                                   'missing_since', NULL, 'stale_since', stale_since,
                                   'fired_at', started_at, 'resolved_at', NULL, 'repeat', false),
                started_at, started_at
         FROM stale_episodes",
    )
    .execute(&pool)
    .await
    .unwrap();
    MIGRATOR.run(&pool).await.unwrap();

    let store = Store::from_pool(pool);
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let alerts = AlertSettings {
        webhook_url: Some(format!("{}/hook", server.uri())),
        format: AlertFormat::Json,
        max_batch: 1,
        ..AlertSettings::default()
    };
    let report =
        deliver_pending(&store, &webhook_client().unwrap(), &alerts, at(70), &CancellationToken::new()).await;
    assert_eq!(report.unwrap().delivered, 1);
    let body: Value = server.received_requests().await.unwrap()[0].body_json().unwrap();
    assert_eq!(body["agent_id"], "a1");
    assert_eq!(body["fired_at"], "2026-01-01T00:01:01Z");
    assert_eq!(body["last_seen"], "2026-01-01T00:00:00Z");
}
