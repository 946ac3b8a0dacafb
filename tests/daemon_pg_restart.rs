//! `scan-agent-sync run` across a restart of the PostgreSQL cluster it uses: it keeps running
//! and resumes by itself.
//!
//! Alone in its binary because the restart cuts every connection on the server: cargo runs
//! test binaries one after another, so no other test of this crate sees it.

mod support;

use std::time::Duration;

use chrono::Utc;
use support::daemon::{DaemonConfig, Fixture, eventually};

/// How the machine's cluster is restarted (root, no systemd in containers).
const RESTART: [&str; 4] = ["--skip-systemctl-redirect", "15", "main", "restart"];

/// After the server is back: the leadership connection's backoff (at most 10 s), the pool's
/// reconnection and the next tick of a 2 s schedule, with slack for a loaded machine.
const RECOVERY: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_is_waited_out_and_the_next_cycle_succeeds() {
    // 5 agents at 200 ms, one at a time: a cycle fills half of each 2 s period.
    let fixture = Fixture::start(5, 5, Duration::from_millis(200)).await;
    let mut daemon = fixture.spawn(&DaemonConfig { max_in_flight: 1, ..DaemonConfig::default() }).await;
    let ok = fixture.wait_for_run("an ok run", Duration::from_secs(20), |run| run.status == "ok").await;
    // Restart while a later cycle runs, so the outage hits one in progress.
    let cut = fixture
        .wait_for_run("a later cycle running", Duration::from_secs(10), |run| {
            run.run_id > ok.run_id && run.status == "running"
        })
        .await;

    let output =
        std::process::Command::new("pg_ctlcluster").args(RESTART).output().expect("running pg_ctlcluster");
    assert!(
        output.status.success(),
        "pg_ctlcluster restart failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let restarted = Utc::now();

    // Readiness may or may not catch the outage (it lasts about a second); only report it.
    let mut saw_not_ready = false;
    let run = eventually("an ok run started after the restart", RECOVERY, async || {
        saw_not_ready |= daemon.get("/readyz").await.is_some_and(|(status, _)| status == 503);
        fixture.runs().await.into_iter().find(|run| run.started_at > restarted && run.status == "ok")
    })
    .await;
    println!(
        "recovered: run {} started {:?} after the restart; /readyz 503 seen: {saw_not_ready}",
        run.run_id,
        (run.started_at - restarted).to_std().unwrap_or_default()
    );
    assert!(daemon.is_running(), "the daemon exited on a database restart");
    assert_eq!(daemon.get("/readyz").await.map(|r| r.0), Some(200), "ready again");

    let runs = fixture.runs().await;
    let cut = runs.iter().find(|r| r.run_id == cut.run_id).expect("the cut run's row");
    assert_ne!(cut.status, "running", "a run cut by the restart is left 'running' for good: {runs:#?}");
    let open: Vec<_> = runs.iter().filter(|r| r.status == "running" && r.run_id < run.run_id).collect();
    assert!(open.is_empty(), "runs left 'running': {open:#?}");
    fixture.assert_history_consistent().await;
}
