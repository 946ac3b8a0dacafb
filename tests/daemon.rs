//! `scan-agent-sync run` end to end: the real binary against the in-process simulator and a
//! fresh PostgreSQL database, observed from outside as an operator would (HTTP endpoints,
//! `sync_runs`, the JSON log, signals, exit codes).
//!
//! Every test drives a multi-threaded runtime, because the simulator serves from the test's
//! own runtime while the test waits.

mod support;

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use support::daemon::{DaemonConfig, Fixture, Run, eventually};
use support::exposition::find;

/// Runs on a cron that fires every second or two finish within this, with slack for a
/// loaded machine.
const CYCLES: Duration = Duration::from_secs(20);

/// A cron firing only on the two given instants' seconds (every minute), so the test knows
/// when scheduled cycles may start.
fn cron_at(first: DateTime<Utc>, second: DateTime<Utc>) -> String {
    format!("{},{} * * * * *", first.second(), second.second())
}

/// The next whole second `ahead` from now.
fn whole_second_in(ahead: Duration) -> DateTime<Utc> {
    let at = Utc::now() + ahead;
    at.with_nanosecond(0).expect("zero nanoseconds is valid") + Duration::from_secs(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_cycle_at_start_then_on_schedule_and_serves_the_named_metrics() {
    let fixture = Fixture::start(8, 5, Duration::ZERO).await;
    // Start-up takes a second or two; the first tick comes well after it.
    let (tick1, tick2) = (whole_second_in(Duration::from_secs(8)), whole_second_in(Duration::from_secs(11)));
    let daemon =
        fixture.spawn(&DaemonConfig { cron: cron_at(tick1, tick2), ..DaemonConfig::default() }).await;

    let limit = Duration::from_secs(11) + CYCLES;
    fixture
        .wait_for_run("three finished runs", limit, |run| run.run_id >= 3 && run.finished_at.is_some())
        .await;
    let runs = fixture.runs().await;
    assert!(runs[0].started_at < tick1, "the first cycle runs at start, before the first tick: {runs:#?}");
    // A tick fires at its second or just after, never before.
    assert!(runs[1].started_at >= tick1 && runs[1].started_at < tick2, "second run at tick 1: {runs:#?}");
    assert!(runs[2].started_at >= tick2, "third run at tick 2: {runs:#?}");
    for run in &runs[..3] {
        assert_eq!((run.status.as_str(), run.agents_requested, run.agents_fetched), ("ok", 5, 5), "{run:#?}");
    }

    // The metrics follow the run rows a moment later.
    let samples = eventually("three ok runs in /metrics", CYCLES, async || {
        let samples = daemon.metrics().await;
        let ok = find(&samples, "scan_agent_sync_sync_runs_total", &[("status", "ok")])?;
        (ok.value >= 3.0).then_some(samples)
    })
    .await;
    let value = |name: &str, labels: support::exposition::Labels| {
        find(&samples, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing from /metrics")).value
    };
    assert!(value("scan_agent_sync_api_requests_total", &[("endpoint", "by-id"), ("code", "200")]) >= 10.0);
    assert!(value("scan_agent_sync_sync_duration_seconds_count", &[]) >= 3.0);
    let last_success = value("scan_agent_sync_last_success_timestamp_seconds", &[]);
    let age = Utc::now().timestamp_millis() as f64 / 1000.0 - last_success;
    assert!((0.0..60.0).contains(&age), "last success {age} s ago");
    assert_eq!(value("scan_agent_sync_agents", &[("state", "tracked")]), 5.0);
    for state in ["stale", "missing"] {
        value("scan_agent_sync_agents", &[("state", state)]);
    }
    for window in ["100/1m", "1500/1h"] {
        let calls: f64 = window.split('/').next().unwrap().parse().unwrap();
        let left = value("scan_agent_sync_rate_budget_remaining", &[("window", window)]);
        assert!(left < calls && left >= calls - 20.0, "{window}: {left} left after three cycles of 5 calls");
    }
    for id in &fixture.sim.agent_ids()[..5] {
        value("scan_agent_sync_agent_last_seen_timestamp_seconds", &[("agent_id", id)]);
    }
    assert_eq!(value("scan_agent_sync_leader", &[]), 1.0);
    assert_eq!(daemon.get("/healthz").await, Some((200, "ok\n".to_owned())));
    assert_eq!(daemon.get("/readyz").await, Some((200, "ok: leader\n".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_during_a_long_cycle_are_skipped_not_overlapped() {
    // A cycle stops starting requests at the next tick, but the request in flight then
    // (700 ms, one at a time) carries it past that tick: the tick must be skipped.
    let fixture = Fixture::start(10, 10, Duration::from_millis(700)).await;
    let config = DaemonConfig { cron: "* * * * * *".to_owned(), max_in_flight: 1 };
    let daemon = fixture.spawn(&config).await;

    fixture
        .wait_for_run("five finished runs", CYCLES, |run| run.run_id >= 5 && run.finished_at.is_some())
        .await;
    let skipped = eventually("a skipped tick in /metrics", CYCLES, async || {
        daemon.metric("scan_agent_sync_skipped_ticks_total").await.filter(|n| *n > 0.0)
    })
    .await;
    let runs = fixture.runs().await;
    assert_no_overlap(&runs);
    assert!(runs.iter().all(|run| run.status != "failed"), "{runs:#?}");
    println!("{} runs, {skipped} ticks skipped", runs.len());
}

/// Each run finished before the next one started (only the newest may still run).
#[track_caller]
fn assert_no_overlap(runs: &[Run]) {
    for pair in runs.windows(2) {
        let finished = pair[0].finished_at.unwrap_or_else(|| panic!("run left open: {:#?}", pair[0]));
        assert!(finished <= pair[1].started_at, "overlapping runs: {pair:#?}");
    }
}
