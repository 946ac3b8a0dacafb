//! `scan-agent-sync run` end to end: the real binary against the in-process simulator and a
//! fresh PostgreSQL database, observed from outside as an operator would (HTTP endpoints,
//! `sync_runs`, the JSON log, signals, exit codes).
//!
//! Every test drives a multi-threaded runtime, because the simulator serves from the test's
//! own runtime while the test waits.

mod support;

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use scan_agent_sync::daemon::SHUTDOWN_GRACE;
use scan_agent_sync::simulator::SimulatorOptions;
use support::daemon::{Daemon, DaemonConfig, Fixture, Run, STARTUP, eventually};
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
    let config = DaemonConfig { cron: "* * * * * *".to_owned(), max_in_flight: 1, ..DaemonConfig::default() };
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

/// Each tenant's run finished before its next one started (only the newest may still run):
/// no two processes ever synced one tenant at once.
#[track_caller]
fn assert_no_overlap(runs: &[Run]) {
    let tenants: std::collections::BTreeSet<&str> = runs.iter().map(|run| run.tenant.as_str()).collect();
    for tenant in tenants {
        let of_tenant: Vec<&Run> = runs.iter().filter(|run| run.tenant == tenant).collect();
        for pair in of_tenant.windows(2) {
            let finished = pair[0].finished_at.unwrap_or_else(|| panic!("run left open: {:#?}", pair[0]));
            assert!(finished <= pair[1].started_at, "overlapping runs: {pair:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_instances_one_syncs_and_the_other_takes_over_after_a_sigkill() {
    // Slow answers, one at a time: the leader is nearly always mid-cycle, so the kill leaves
    // a `running` run behind.
    let fixture = Fixture::start(20, 20, Duration::from_millis(300)).await;
    let config = DaemonConfig { max_in_flight: 1, ..DaemonConfig::default() };
    let (a, b) = (fixture.spawn(&config).await, fixture.spawn(&config).await);
    let roles = eventually("one leader and one standby", STARTUP_ROLES, async || {
        let roles = (a.get("/readyz").await?.1, b.get("/readyz").await?.1);
        match (roles.0.as_str(), roles.1.as_str()) {
            ("ok: leader\n", "ok: standby\n") => Some(true),
            ("ok: standby\n", "ok: leader\n") => Some(false),
            _ => None,
        }
    })
    .await;
    let (mut leader, standby) = if roles { (a, b) } else { (b, a) };
    let abandoned = fixture.wait_for_run("a running run", CYCLES, |run| run.status == "running").await;

    assert_eq!(leader.metric("scan_agent_sync_leader").await, Some(1.0));
    assert_eq!(standby.metric("scan_agent_sync_leader").await, Some(0.0));
    let standby_samples = standby.metrics().await;
    let synced = ["scan_agent_sync_sync_runs_total", "scan_agent_sync_api_requests_total"];
    assert!(
        !standby_samples.iter().any(|sample| synced.contains(&sample.name.as_str())),
        "the standby ran cycles or made requests: {standby_samples:#?}"
    );

    leader.kill();
    eventually("the standby to lead", TAKEOVER, async || {
        (standby.get("/readyz").await?.1 == "ok: leader\n").then_some(())
    })
    .await;
    let closed = fixture
        .wait_for_run("the killed leader's run closed", CYCLES, |run| {
            run.run_id == abandoned.run_id && run.status != "running"
        })
        .await;
    assert_eq!(closed.status, "interrupted", "{closed:#?}");
    fixture
        .wait_for_run("an ok run by the new leader", CYCLES, |run| {
            run.run_id > abandoned.run_id && run.status == "ok"
        })
        .await;
    assert_no_overlap(&fixture.runs().await);
    fixture.assert_budget_respected();
    fixture.assert_history_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_six_tenants_and_take_over_a_killed_ones_within_10_s() {
    // Slow answers, one at a time: most of the time some tenant's cycle is running.
    let options =
        SimulatorOptions { tenants: 6, latency: Duration::from_millis(400), ..SimulatorOptions::frozen(4) };
    let fixture = Fixture::with_simulator(options, 0).await;
    let config = DaemonConfig {
        tenants: fixture.tenant_entries(6),
        max_in_flight: 1,
        cron: "*/5 * * * * *".to_owned(),
        ..DaemonConfig::default()
    };
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(fixture.spawn(&config).await);
    }
    let held = async |daemons: &[Daemon]| {
        let mut held = Vec::new();
        for daemon in daemons {
            held.push(daemon.metric("scan_agent_sync_tenants_held").await? as usize);
        }
        Some(held)
    };
    eventually("two tenants each", STARTUP_ROLES, async || {
        held(&daemons).await.filter(|held| held == &[2, 2, 2])
    })
    .await;
    fixture.wait_for_run("a run of every tenant", CYCLES, |_| true).await;

    let mut killed = daemons.pop().unwrap();
    let killed_at = std::time::Instant::now();
    killed.kill();
    eventually("three tenants each on the other two", Duration::from_secs(10), async || {
        held(&daemons).await.filter(|held| held == &[3, 3])
    })
    .await;
    println!("failover: the other two held three tenants each {:?} after the kill", killed_at.elapsed());
    let after_kill = chrono::Utc::now();
    for tenant in 1..=6 {
        let name = format!("t{tenant}");
        fixture
            .wait_for_run(&format!("an ok run of {name} after the kill"), CYCLES, |run| {
                run.tenant == name && run.status == "ok" && run.started_at > after_kill
            })
            .await;
    }
    let runs = fixture.runs().await;
    assert_no_overlap(&runs);
    assert!(!runs.iter().any(|run| run.status == "running" && run.started_at < after_kill), "{runs:#?}");
    fixture.assert_budget_respected();
    fixture.assert_history_consistent().await;
}

/// Two fresh processes settling on their roles: start-up plus a few leadership polls.
const STARTUP_ROLES: Duration = Duration::from_secs(15);

/// A standby polls the lock every second; PostgreSQL frees it as soon as the killed
/// leader's connection drops. "Within a few seconds", with slack for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_cycle_exits_0_and_leaves_an_interrupted_run_and_consistent_tables() {
    // 40 agents at 500 ms each, one at a time: a 20 s cycle. The schedule never fires during
    // the test, so the only cycle is the one at start, with no deadline cutting it short.
    let fixture = Fixture::start(40, 40, Duration::from_millis(500)).await;
    let config = DaemonConfig { cron: "0 0 0 1 1 *".to_owned(), max_in_flight: 1, ..DaemonConfig::default() };
    let mut daemon = fixture.spawn(&config).await;
    let run = fixture.wait_for_run("the first cycle", STARTUP, |run| run.status == "running").await;
    eventually("a few agents fetched", CYCLES, async || {
        (fixture.sim.stats().by_id_requests >= 4).then_some(())
    })
    .await;

    daemon.signal("TERM");
    let asked = std::time::Instant::now();
    // The bound asserted is the documented one: SHUTDOWN_GRACE for the cycle to apply what it
    // fetched, plus 5 s for the rest of the shutdown (the unit's TimeoutStopSec is 45 s).
    // Here only one 500 ms request is in flight, so it takes about a second.
    let status = daemon.wait_exit(SHUTDOWN_GRACE + Duration::from_secs(5)).await;
    println!("exited {status} {:?} after SIGTERM", asked.elapsed());
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");

    let run = fixture.runs().await.into_iter().find(|r| r.run_id == run.run_id).expect("the run row");
    assert_eq!(run.status, "interrupted", "{run:#?}");
    assert!(run.finished_at.is_some(), "{run:#?}");
    assert!(run.agents_fetched > 0 && run.agents_fetched < 40, "stopped mid-cycle: {run:#?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM scan_agents")
        .fetch_one(&fixture.pool)
        .await
        .expect("counting agents");
    assert_eq!(stored, i64::from(run.agents_fetched), "what was fetched before the stop is applied");
    fixture.assert_history_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_good_agent_list_and_rejects_a_broken_one() {
    let fixture = Fixture::start(10, 4, Duration::ZERO).await;
    let ids = fixture.sim.agent_ids();
    let daemon = fixture.spawn(&DaemonConfig::default()).await;
    fixture.wait_for_run("an ok run of the first list", CYCLES, |run| run.status == "ok").await;

    // Drop the first ID, add two.
    fixture.write_ids(&ids[1..6]);
    daemon.signal("HUP");
    let reloaded = daemon.wait_for_event("agent list reloaded", SIGNAL_HANDLED).await;
    assert_eq!(reloaded["total"], 5, "{reloaded}");
    let (added, removed) = (reloaded["added"].to_string(), reloaded["removed"].to_string());
    assert!(added.contains(&ids[4]) && added.contains(&ids[5]) && !added.contains(&ids[1]), "{reloaded}");
    assert!(removed.contains(&ids[0]) && !removed.contains(&ids[1]), "{reloaded}");
    let reloaded_at = latest_run_id(&fixture).await;
    let next = fixture.wait_for_run("a run after the reload", CYCLES, |run| run.run_id > reloaded_at).await;
    assert_eq!(next.agents_requested, 5, "{next:#?}");

    // A repeated ID, then a control character: each rejected with its reason, the old list kept.
    let good = ids[1..6].join("\n");
    let broken = [
        (format!("{good}\n{}", ids[2]), "listed twice"),
        (format!("{good}\nbad\u{7}id"), "control character"),
    ];
    for (text, reason) in broken {
        fixture.write_ids_file(&text);
        daemon.signal("HUP");
        let rejected = daemon.wait_for_event_with(REJECTED, reason, SIGNAL_HANDLED).await;
        assert_eq!(rejected["kept"], 5, "{rejected}");
    }
    let rejected_at = latest_run_id(&fixture).await;
    let next = fixture
        .wait_for_run("a finished run after the rejection", CYCLES, |run| {
            run.run_id > rejected_at && run.finished_at.is_some()
        })
        .await;
    assert_eq!((next.status.as_str(), next.agents_requested), ("ok", 5), "{next:#?}");
    assert_eq!(daemon.get("/healthz").await.map(|r| r.0), Some(200), "still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_an_agent_id_listed_for_two_tenants_and_keeps_every_list() {
    let fixture =
        Fixture::with_simulator(SimulatorOptions { tenants: 2, ..SimulatorOptions::frozen(3) }, 0).await;
    let config = DaemonConfig { tenants: fixture.tenant_entries(2), ..DaemonConfig::default() };
    let daemon = fixture.spawn(&config).await;
    fixture.wait_for_run("an ok run of t2", CYCLES, |run| run.tenant == "t2" && run.status == "ok").await;
    let hosted = fixture.sim.tenants();
    let (first, second) = (hosted[0].agent_ids(), hosted[1].agent_ids());

    // t2's list takes one of t1's agents: refused as at start, naming both tenants.
    fixture.write_tenant_ids(2, &[second.clone(), vec![first[0].clone()]].concat());
    daemon.signal("HUP");
    let rejected = daemon.wait_for_event_with(TWO_TENANTS, &first[0], SIGNAL_HANDLED).await;
    let tenants = rejected["tenants"].to_string();
    assert!(tenants.contains("t1") && tenants.contains("t2"), "{rejected}");
    let rejected_at = latest_run_id(&fixture).await;
    let next = fixture
        .wait_for_run("a finished run of t2 after the rejection", CYCLES, |run| {
            run.tenant == "t2" && run.run_id > rejected_at && run.finished_at.is_some()
        })
        .await;
    assert_eq!((next.status.as_str(), next.agents_requested), ("ok", 3), "the old list is kept: {next:#?}");

    // Fixed: t2 keeps two of its own agents.
    fixture.write_tenant_ids(2, &second[..2]);
    daemon.signal("HUP");
    let reloaded = daemon.wait_for_event_with("agent list reloaded", "t2", SIGNAL_HANDLED).await;
    assert_eq!(reloaded["total"], 2, "{reloaded}");
}

const TWO_TENANTS: &str = "agent list reload rejected: an agent ID is listed for two tenants; keeping every old list \
                           (configure every agent ID for one tenant only)";

const REJECTED: &str = "agent list reload rejected; keeping the old list";

/// A signal is handled by the daemon's loop at once; the log line follows within this.
const SIGNAL_HANDLED: Duration = Duration::from_secs(5);

/// The newest run's id (0 before any run).
async fn latest_run_id(fixture: &Fixture) -> i64 {
    fixture.runs().await.last().map_or(0, |run| run.run_id)
}
