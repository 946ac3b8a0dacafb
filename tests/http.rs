//! The HTTP endpoints over a real listener on port 0 and a real PostgreSQL.

mod support;

use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::agent_id::AgentId;
use scan_agent_sync::config::AgentSeries;
use scan_agent_sync::http::{HttpState, serve};
use scan_agent_sync::leader::LeaderState;
use scan_agent_sync::metrics::{Metrics, refresh_agent_series};
use scan_agent_sync::store::Store;
use scan_agent_sync::tenant_name::TenantName;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::exposition::{Labels, find, parse_exposition};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A running server; the listener stops when `stop` is cancelled.
struct Server {
    base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn spawn_server(metrics: Metrics, store: Store, leadership: watch::Receiver<LeaderState>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding port 0");
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let state = HttpState { metrics, store, leadership };
    let task = tokio::spawn(serve(listener, state, stop.clone().cancelled_owned()));
    Server { base, stop, task }
}

async fn get(server: &Server, path: &str) -> (u16, String, String) {
    let response = reqwest::get(format!("{}{path}", server.base)).await.expect("requesting");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// A store whose pool points at a port where nothing listens.
fn dead_store() -> Store {
    let options = PgConnectOptions::new().host("127.0.0.1").port(1).username("postgres");
    Store::from_pool(PgPoolOptions::new().acquire_timeout(Duration::from_secs(1)).connect_lazy_with(options))
}

/// Calls every recording method once, so every series has a sample.
fn record_everything(metrics: &Metrics) {
    let at = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap();
    metrics.record_api_requests("contoso", "by-id", "200", 1);
    metrics.record_throttled("contoso", 1);
    metrics.set_budget_remaining("contoso", "100/1m", 42);
    metrics.record_run("contoso", "ok", Duration::from_millis(1500), Some(at));
    metrics.set_agent_counts(10, 2, 1);
    metrics.set_agent_last_seen(&[("agent-a".into(), at), ("agent-b".into(), at)]);
    metrics.record_skipped_tick();
    metrics.set_leader(true);
    metrics.set_tenants_held(2);
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_carry_every_named_series() {
    let metrics = Metrics::new();
    record_everything(&metrics);
    let (_tx, leadership) = watch::channel(LeaderState::Leader);
    let server = spawn_server(metrics, dead_store(), leadership).await;

    let (status, content_type, body) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let samples = parse_exposition(&body);

    let expected: &[(&str, Labels, f64)] = &[
        (
            "scan_agent_sync_api_requests_total",
            &[("tenant", "contoso"), ("endpoint", "by-id"), ("code", "200")],
            1.0,
        ),
        ("scan_agent_sync_api_throttled_total", &[("tenant", "contoso")], 1.0),
        ("scan_agent_sync_rate_budget_remaining", &[("tenant", "contoso"), ("window", "100/1m")], 42.0),
        ("scan_agent_sync_sync_runs_total", &[("tenant", "contoso"), ("status", "ok")], 1.0),
        ("scan_agent_sync_last_success_timestamp_seconds", &[("tenant", "contoso")], 1_740_830_400.0),
        ("scan_agent_sync_agents", &[("state", "tracked")], 10.0),
        ("scan_agent_sync_agents", &[("state", "stale")], 2.0),
        ("scan_agent_sync_agents", &[("state", "missing")], 1.0),
        ("scan_agent_sync_agent_last_seen_timestamp_seconds", &[("agent_id", "agent-a")], 1_740_830_400.0),
        ("scan_agent_sync_agent_last_seen_timestamp_seconds", &[("agent_id", "agent-b")], 1_740_830_400.0),
        ("scan_agent_sync_sync_duration_seconds_count", &[("tenant", "contoso")], 1.0),
        ("scan_agent_sync_sync_duration_seconds_sum", &[("tenant", "contoso")], 1.5),
        ("scan_agent_sync_sync_duration_seconds_bucket", &[("tenant", "contoso"), ("le", "2.0")], 1.0),
        ("scan_agent_sync_skipped_ticks_total", &[], 1.0),
        ("scan_agent_sync_leader", &[], 1.0),
        ("scan_agent_sync_tenants_held", &[], 2.0),
    ];
    for (name, labels, value) in expected {
        let sample =
            find(&samples, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing:\n{body}"));
        assert_eq!(sample.value, *value, "{name}{labels:?}");
    }
    server.stop.cancel();
    server.task.await.unwrap().expect("the server shuts down cleanly");
}

#[tokio::test]
async fn replacing_the_agent_set_removes_agents_no_longer_tracked() {
    let metrics = Metrics::new();
    record_everything(&metrics);
    let at = Utc.with_ymd_and_hms(2025, 3, 2, 0, 0, 0).unwrap();
    metrics.set_agent_last_seen(&[("agent-b".into(), at)]);
    let samples = parse_exposition(&metrics.encode());
    let name = "scan_agent_sync_agent_last_seen_timestamp_seconds";
    assert!(find(&samples, name, &[("agent_id", "agent-a")]).is_none(), "agent-a should be gone");
    assert_eq!(find(&samples, name, &[("agent_id", "agent-b")]).unwrap().value, 1_740_873_600.0);
}

#[tokio::test]
async fn healthz_answers_without_a_database() {
    let (_tx, leadership) = watch::channel(LeaderState::Unknown);
    let server = spawn_server(Metrics::new(), dead_store(), leadership).await;
    let (status, _, body) = get(&server, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn readyz_needs_a_live_database_and_a_known_leadership_state() {
    let store = support::fresh_store().await;
    let (tx, leadership) = watch::channel(LeaderState::Leader);
    let server = spawn_server(Metrics::new(), store, leadership).await;

    assert_eq!(get(&server, "/readyz").await.0, 200, "leader with a live database");
    tx.send_replace(LeaderState::Standby);
    let (status, _, body) = get(&server, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ok: standby\n"));
    tx.send_replace(LeaderState::Unknown);
    let (status, _, body) = get(&server, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("leadership unknown"), "{body}");
}

#[tokio::test]
async fn readyz_is_503_when_the_database_is_unreachable() {
    let (_tx, leadership) = watch::channel(LeaderState::Leader);
    let server = spawn_server(Metrics::new(), dead_store(), leadership).await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(&server, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");
    assert!(started.elapsed() < Duration::from_secs(4), "the probe is bounded: {:?}", started.elapsed());
}

/// `http.agent_series` decides which agents `/metrics` shows, while the fleet-wide gauges
/// stay: every agent, the stale ones (here one too old and one missing), or none.
#[tokio::test]
async fn agent_series_selects_the_per_agent_series_on_metrics() {
    let store = support::fresh_store().await;
    let now = Utc::now();
    let record = |id: &str, seen: chrono::DateTime<Utc>| {
        AgentRecord::from_json(serde_json::json!({"id": id, "lastSeen": seen.to_rfc3339()})).unwrap()
    };
    let old = now - TimeDelta::days(2);
    store.apply(vec![record("fresh", now), record("old", old), record("gone", now)], &[]).await.unwrap();
    store.apply(vec![], &[AgentId::parse("gone").unwrap()]).await.unwrap();
    let metrics = Metrics::new();
    metrics.set_agent_counts(3, 2, 1);
    let (_tx, leadership) = watch::channel(LeaderState::Leader);
    let server = spawn_server(metrics.clone(), store.clone(), leadership).await;

    let name = "scan_agent_sync_agent_last_seen_timestamp_seconds";
    for (mode, expected) in [
        (AgentSeries::All, vec!["fresh", "gone", "old"]),
        (AgentSeries::Stale, vec!["gone", "old"]),
        (AgentSeries::None, vec![]),
    ] {
        refresh_agent_series(&store, &metrics, mode, &[TenantName::default()]).await.unwrap();
        let (status, _, body) = get(&server, "/metrics").await;
        assert_eq!(status, 200);
        let samples = parse_exposition(&body);
        let mut agents: Vec<&str> =
            samples.iter().filter(|s| s.name == name).map(|s| s.labels["agent_id"].as_str()).collect();
        agents.sort_unstable();
        assert_eq!(agents, expected, "{mode:?}");
        let old_sample = find(&samples, name, &[("agent_id", "old")]);
        if let Some(sample) = old_sample {
            assert_eq!(sample.value, old.timestamp_millis() as f64 / 1000.0);
        }
        for (state, count) in [("tracked", 3.0), ("stale", 2.0), ("missing", 1.0)] {
            let gauge = find(&samples, "scan_agent_sync_agents", &[("state", state)]);
            assert_eq!(gauge.map(|s| s.value), Some(count), "{mode:?}: agents{{state={state}}}");
        }
    }
    // Only the tenants this process holds: another process exports the rest.
    let elsewhere = [TenantName::parse("elsewhere").unwrap()];
    refresh_agent_series(&store, &metrics, AgentSeries::All, &elsewhere).await.unwrap();
    let body = get(&server, "/metrics").await.2;
    assert!(!parse_exposition(&body).iter().any(|s| s.name == name), "no series of tenants held elsewhere");
    server.stop.cancel();
}
