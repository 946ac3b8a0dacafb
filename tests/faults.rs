//! The faults matrix (docs/faults.md): every upstream and database failure the service is
//! expected to survive, each provoked for real (the bundled simulator's fault modes, a real
//! PostgreSQL with a statement timeout or a pool with no free connection), and each checked
//! for the same four things: the cycle ends with the documented status, the `sync_runs` row
//! says what failed and what to do, nothing stored before the fault is lost, and the next
//! cycle without the fault recovers. A PostgreSQL restart mid-cycle is covered by
//! `tests/daemon_pg_restart.rs`.

mod support;

use std::time::Duration;

use scan_agent_sync::agent_id::AgentId;
use scan_agent_sync::simulator::{self, Faults, SimulatorHandle, SimulatorOptions};
use scan_agent_sync::store::runs::RunStatus;
use scan_agent_sync::store::{APPLY_LOCK, Store};
use scan_agent_sync::sync::{CycleOptions, CycleReport, SyncError, Syncer, Targets};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use support::daemon::{DaemonConfig, Fixture, eventually};

/// Agents in the simulated tenant; all of them are tracked.
const AGENTS: usize = 4;

/// Short enough that a timeout case stays quick, long enough for a loaded machine's loopback.
const REQUEST_TIMEOUT: &str = "1s";

/// What the faulted cycle would have changed, had it succeeded: the agent upgraded meanwhile.
const UPGRADE: &str = "9.9.9";

/// Everything stored about the agents, one JSON text per row, sorted.
/// `last_fetched_at` is left out: a successful cycle moves it without changing anything.
async fn stored(pool: &PgPool) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT 'agent ' || (to_jsonb(a) - 'last_fetched_at')::text FROM scan_agents a
         UNION ALL SELECT 'version ' || to_jsonb(v)::text FROM scan_agent_versions v
         UNION ALL SELECT 'seen ' || to_jsonb(s)::text FROM scan_agent_last_seen s",
    )
    .fetch_all(pool)
    .await
    .expect("reading the stored agents");
    assert!(!rows.is_empty(), "a fault test starts from stored agents");
    rows.sort();
    rows
}

/// The newest `sync_runs` row: status, error and throttled count.
async fn last_run(pool: &PgPool) -> (String, Option<String>, i32) {
    sqlx::query_as("SELECT status, error, throttled FROM sync_runs ORDER BY run_id DESC LIMIT 1")
        .fetch_one(pool)
        .await
        .expect("reading the last run")
}

/// A simulated tenant and a fresh database, synced once without faults.
struct Bench {
    sim: SimulatorHandle,
    pool: PgPool,
    targets: Targets,
}

impl Bench {
    async fn start() -> Bench {
        let sim = simulator::start(SimulatorOptions::frozen(AGENTS)).await.expect("starting the simulator");
        let ids = sim.agent_ids().iter().map(|id| AgentId::from_api(id).expect("a valid ID")).collect();
        let bench =
            Bench { sim, pool: support::fresh_pool().await, targets: Targets { ids, track_all: false } };
        let report = bench.cycle("by-id", &bench.pool).await.expect("the first cycle");
        assert_eq!(report.status, RunStatus::Ok, "{report}");
        bench
    }

    /// One cycle in `mode` on `pool`, with a client of its own (no cached token), as one
    /// `scan-agent-sync sync` would run it.
    async fn cycle(&self, mode: &str, pool: &PgPool) -> Result<CycleReport, SyncError> {
        let settings = support::settings(&format!(
            "{}fetch_mode = \"{mode}\"\nmax_retries = 1\nrequest_timeout = \"{REQUEST_TIMEOUT}\"\n",
            self.sim.defender_config()
        ));
        let store = Store::from_pool(pool.clone());
        let syncer = Syncer::for_tenant(&settings.tenants()[0], &settings.stale, store).expect("a syncer");
        syncer.run_cycle(&self.targets, &CycleOptions::default()).await
    }

    /// Upgrades the first agent in the simulator, so a cycle that gets through changes data.
    fn upgrade_one(&self) {
        assert!(self.sim.upgrade(self.targets.ids[0].as_str(), UPGRADE));
    }

    /// Runs a cycle without faults and checks it recovers: ok, and the upgrade stored.
    async fn assert_recovers(&self, pool: &PgPool) {
        let report = self.cycle("by-id", pool).await.expect("the recovery cycle");
        assert_eq!(report.status, RunStatus::Ok, "{report}");
        assert_eq!(report.changes.changed, 1, "the upgrade made during the fault is stored now");
        let versions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM scan_agent_versions WHERE scanner_software_version = $1",
        )
        .bind(UPGRADE)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(versions, 1);
    }
}

/// One upstream fault: how to provoke it and what the run must then say.
struct Case {
    name: &'static str,
    mode: &'static str,
    faults: Faults,
    latency: Duration,
    /// Every one of these must appear in `sync_runs.error`.
    error_says: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let case =
        |name, mode, faults, error_says| Case { name, mode, faults, latency: Duration::ZERO, error_says };
    vec![
        case(
            "5xx burst",
            "by-id",
            Faults { error_rate: 1.0, ..Faults::default() },
            &["HTTP 50", "the service failed: it was retried, and the next cycle tries again"],
        ),
        Case {
            latency: Duration::from_millis(1500),
            ..case(
                "timeout",
                "by-id",
                Faults::default(),
                &["did not answer within defender.request_timeout (1s)", "raise it"],
            )
        },
        case(
            "connection reset",
            "by-id",
            Faults { reset_rate: 1.0, ..Faults::default() },
            &["the connection to the Defender API failed", "check defender.api_base_url"],
        ),
        case(
            "truncated JSON",
            "list",
            Faults { malformed_rate: 1.0, ..Faults::default() },
            &["list endpoint", "not valid JSON", "EOF while parsing"],
        ),
        case(
            "oversized list page",
            "list",
            Faults { oversized_rate: 1.0, ..Faults::default() },
            &["list endpoint", "larger than 16 MiB", "refused without reading the rest", "fetch_mode"],
        ),
        case(
            "oversized by-ID answer",
            "by-id",
            Faults { oversized_rate: 1.0, ..Faults::default() },
            &["by-ID endpoint", "larger than 1 MiB"],
        ),
        case(
            "HTML instead of JSON",
            "by-id",
            Faults { wrong_content_type_rate: 1.0, ..Faults::default() },
            &["`text/html; charset=utf-8` instead of JSON", "proxy", "check defender.api_base_url"],
        ),
        case(
            "token endpoint 503",
            "by-id",
            Faults { token_error_rate: 1.0, ..Faults::default() },
            &["getting an access token", "did not answer properly", "HTTP 503", "next cycle tries again"],
        ),
        case(
            "token endpoint invalid_client",
            "by-id",
            Faults { token_refusal_rate: 1.0, ..Faults::default() },
            &["HTTP 401, invalid_client", "the client secret is wrong or expired", "create a new secret"],
        ),
        case(
            "429 storm",
            "by-id",
            Faults { throttle_rate: 1.0, ..Faults::default() },
            &["HTTP 429", "API calls quota exceeded", "throttled"],
        ),
    ]
}

/// Each upstream fault, alone, on every request of one cycle: the cycle fails (exit 1) with
/// an error that says what failed and what to do, the stored agents are exactly as before,
/// and the next cycle without the fault stores what changed meanwhile.
#[tokio::test]
async fn every_upstream_fault_fails_the_cycle_cleanly_and_the_next_one_recovers() {
    for case in cases() {
        let bench = Bench::start().await;
        let before = stored(&bench.pool).await;
        bench.upgrade_one();
        bench.sim.set_faults(case.faults);
        bench.sim.set_latency(case.latency);
        let report = bench.cycle(case.mode, &bench.pool).await.expect("a fault upstream is no SyncError");
        assert_eq!((report.status, report.exit_code()), (RunStatus::Failed, 1), "{}: {report}", case.name);
        let (status, error, throttled) = last_run(&bench.pool).await;
        let error = error.unwrap_or_default();
        assert_eq!(status, "failed", "{}", case.name);
        for says in case.error_says {
            assert!(error.contains(says), "{}: the run's error does not say {says:?}: {error}", case.name);
        }
        if case.faults.throttle_rate > 0.0 {
            assert!(throttled > 0, "the storm's 429s are counted");
        }
        assert_eq!(stored(&bench.pool).await, before, "{}: stored data changed", case.name);

        bench.sim.set_faults(Faults::default());
        bench.sim.set_latency(Duration::ZERO);
        bench.assert_recovers(&bench.pool).await;
    }
}

/// The simulator's by-ID answers are about half a kilobyte: a 10,000-agent list page, the
/// page size Defender's sibling APIs use, fits well under the list body limit.
#[tokio::test]
async fn a_ten_thousand_agent_page_fits_the_list_limit() {
    let sim = simulator::start(SimulatorOptions { page_size: 10_000, ..SimulatorOptions::frozen(10_000) })
        .await
        .unwrap();
    let pool = support::fresh_pool().await;
    let bench = Bench { sim, pool, targets: Targets { ids: Vec::new(), track_all: true } };
    let report = bench.cycle("list", &bench.pool).await.unwrap();
    assert_eq!((report.status, report.fetched), (RunStatus::Ok, 10_000), "{report}");
    assert_eq!(bench.sim.stats().list_requests, 1, "one page");
}

/// `scan-agent-sync sync` against a 5xx burst exits 1 and prints what failed and what to do.
#[tokio::test]
async fn sync_command_exits_1_during_a_5xx_burst() {
    let sim = simulator::start(SimulatorOptions::frozen(AGENTS)).await.unwrap();
    sim.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    let database = support::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{}max_retries = 1\n[agents]\nids = {:?}\n[database]\nurl = \"{}\"\n",
            sim.defender_config(),
            sim.agent_ids(),
            support::database_url(&database)
        ),
    )
    .unwrap();
    let mut command = support::binary();
    command
        .args(["sync", "--config"])
        .arg(&config)
        .env("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", "sim-secret");
    // The simulator runs on this test's runtime, so the blocking wait happens elsewhere.
    let output = tokio::task::spawn_blocking(move || support::output(&mut command)).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(": failed in "), "{stdout}");
    assert!(stdout.contains("the next cycle tries again"), "{stdout}");
}

/// The database of `pool` and a pool of `size` connections on it that gives up waiting for a
/// free connection after a second.
async fn second_pool(pool: &PgPool, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("a second pool on the test database")
}

/// A statement timeout (set on the database, as an administrator would on the role) while
/// another session holds the apply lock: the cycle's write is cancelled, the run is recorded
/// failed with the reason and what to look at, and nothing is half-applied.
#[tokio::test]
async fn a_statement_timeout_fails_the_apply_and_loses_nothing() {
    let bench = Bench::start().await;
    let database: String =
        sqlx::query_scalar("SELECT current_database()").fetch_one(&bench.pool).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{database}\" SET statement_timeout = '500ms'"
    )))
    .execute(&bench.pool)
    .await
    .unwrap();
    // Only connections opened from now on get the setting.
    let timed = second_pool(&bench.pool, 4).await;
    let mut holder = PgConnection::connect_with(&bench.pool.connect_options()).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(APPLY_LOCK).execute(&mut holder).await.unwrap();
    let before = stored(&bench.pool).await;
    bench.upgrade_one();

    let error = bench.cycle("by-id", &timed).await.expect_err("the apply was cancelled");
    let message = error.to_string();
    assert!(message.contains("canceling statement due to statement timeout"), "{message}");
    assert!(message.contains("pg_locks"), "says where to look: {message}");
    let (status, recorded, _) = last_run(&bench.pool).await;
    assert_eq!(status, "failed");
    assert!(recorded.unwrap_or_default().contains("statement_timeout"));
    assert_eq!(stored(&bench.pool).await, before);

    holder.close().await.unwrap();
    bench.assert_recovers(&timed).await;
}

/// A pool whose only connection is taken: the cycle cannot even open its run, says so and
/// what to raise, writes nothing, and the next cycle, with the connection free, recovers.
#[tokio::test]
async fn a_full_pool_fails_the_cycle_and_loses_nothing() {
    let bench = Bench::start().await;
    let small = second_pool(&bench.pool, 1).await;
    let before = stored(&bench.pool).await;
    let runs_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_runs").fetch_one(&bench.pool).await.unwrap();
    bench.upgrade_one();
    let taken = small.acquire().await.unwrap();

    let error = bench.cycle("by-id", &small).await.expect_err("no connection for the cycle");
    let message = error.to_string();
    assert!(message.contains("pool timed out"), "{message}");
    assert!(message.contains("raise database.max_connections"), "{message}");
    let runs_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_runs").fetch_one(&bench.pool).await.unwrap();
    assert_eq!(runs_after, runs_before, "a run that could not be opened is not recorded");
    assert_eq!(stored(&bench.pool).await, before);

    drop(taken);
    bench.assert_recovers(&small).await;
}

/// A `sync_runs` row as the daemon tests look at it.
#[derive(Debug, sqlx::FromRow)]
struct RunRow {
    run_id: i64,
    status: String,
    agents_fetched: i32,
    throttled: i32,
    error: Option<String>,
}

/// Waits for a run after `after` (a run id) that `accept` takes.
async fn wait_for_run(pool: &PgPool, what: &str, after: i64, accept: impl Fn(&RunRow) -> bool) -> RunRow {
    eventually(what, Duration::from_secs(60), async || {
        let runs: Vec<RunRow> = sqlx::query_as(
            "SELECT run_id, status, agents_fetched, throttled, error FROM sync_runs
             WHERE run_id > $1 AND finished_at IS NOT NULL ORDER BY run_id",
        )
        .bind(after)
        .fetch_all(pool)
        .await
        .ok()?;
        runs.into_iter().find(|run| accept(run))
    })
    .await
}

/// The daemon through a burst of upstream faults: a cycle during it is recorded as `during`
/// accepts, the log event `event` says what happened and what to do, the process keeps
/// running, nothing stored is lost, and after the burst a cycle fetches every agent again.
async fn daemon_survives(faults: Faults, during: impl Fn(&RunRow) -> bool, event: (&str, &str)) {
    let fixture = Fixture::start(AGENTS, AGENTS, Duration::ZERO).await;
    let mut daemon = fixture.spawn(&DaemonConfig::default()).await;
    let all_fetched = |run: &RunRow| run.status == "ok" && run.agents_fetched == AGENTS as i32;
    let first_ok = wait_for_run(&fixture.pool, "a first complete run", 0, all_fetched).await;
    let before = stored(&fixture.pool).await;

    fixture.sim.set_faults(faults);
    let faulted = wait_for_run(&fixture.pool, "a run that met the fault", first_ok.run_id, during).await;
    daemon.wait_for_event_with(event.0, event.1, Duration::from_secs(10)).await;
    assert!(daemon.is_running(), "the daemon survives the fault");
    assert_eq!(stored(&fixture.pool).await, before, "nothing stored was lost");

    fixture.sim.set_faults(Faults::default());
    wait_for_run(&fixture.pool, "a complete run after the fault", faulted.run_id, all_fetched).await;
    assert!(daemon.is_running());
    fixture.assert_history_consistent().await;
}

#[tokio::test]
async fn daemon_keeps_running_through_a_5xx_burst_and_recovers() {
    let failed = |run: &RunRow| {
        run.status == "failed"
            && run.error.as_deref().is_some_and(|e| e.contains("the next cycle tries again"))
    };
    daemon_survives(
        Faults { error_rate: 1.0, ..Faults::default() },
        failed,
        ("fetching agent failed", "the next cycle tries again"),
    )
    .await;
}

/// In a storm the 429 pauses push the agents past the cycle's deadline, so they are deferred
/// to the next cycle, and the run is partial saying the quota is shared or too small; or the
/// retries run out first, which fails them with the quota message.
#[tokio::test]
async fn daemon_keeps_running_through_a_429_storm_and_recovers() {
    let throttled = |run: &RunRow| {
        run.throttled > 0
            && run.agents_fetched == 0
            && run.status != "ok"
            && run.error.as_deref().is_some_and(|e| e.contains("HTTP 429") || e.contains("429 (throttled)"))
    };
    daemon_survives(
        Faults { throttle_rate: 1.0, ..Faults::default() },
        throttled,
        ("throttled; retrying after the pause", "API calls quota exceeded"),
    )
    .await;
}
