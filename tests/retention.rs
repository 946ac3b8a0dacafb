//! Retention and the partitions of `scan_agent_last_seen` (issue 15), against a real
//! PostgreSQL: partitions ahead, prunes and dry runs, the ledger a window needs, `check`
//! after a prune, the migration of a populated database, and a prune next to a cycle.

mod support;

use std::time::Duration;

use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::config::{Keep, RetentionSettings};
use scan_agent_sync::metrics::Metrics;
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::retention::{Retention, RetentionOutcome, run_once, run_retention_job};
use scan_agent_sync::store::ledger::Slot;
use scan_agent_sync::store::{MIGRATOR, Store};
use serde_json::json;
use sqlx::PgPool;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The defaults, with versions kept 400 days too so every table has a horizon.
fn retention(windows: Vec<RateWindow>) -> Retention {
    let settings = RetentionSettings { versions: Keep::For(400 * DAY), ..RetentionSettings::default() };
    Retention { settings, windows }
}

fn hourly() -> Vec<RateWindow> {
    vec![RateWindow { calls: 3, per: Duration::from_secs(3600) }]
}

async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The weekly partitions of scan_agent_last_seen, by name.
async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'scan_agent_last_seen'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The names the partitions of this week and the `WEEKS_AHEAD` after it must have.
async fn weeks_ahead(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT 'scan_agent_last_seen_' || to_char(date_trunc('week', now(), 'UTC') AT TIME ZONE 'UTC'
                 + make_interval(weeks => n), 'YYYYMMDD')
         FROM generate_series(0, $1) AS n ORDER BY 1",
    )
    .bind(scan_agent_sync::store::retention::WEEKS_AHEAD)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Adds lastSeen rows `days_ago` days old (negative: in the future), creating their week's
/// partition first when `partitioned`; otherwise they land wherever a week covers them, or
/// in the DEFAULT partition.
async fn seen_rows(pool: &PgPool, agent: &str, days_ago: i32, count: i32, partitioned: bool) {
    if partitioned {
        sqlx::query("SELECT scan_agent_last_seen_add_week(now() - make_interval(days => $1))")
            .bind(days_ago)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
         SELECT $1, now() - make_interval(days => $2) + make_interval(secs => n), now()
         FROM generate_series(1, $3) AS n",
    )
    .bind(agent)
    .bind(days_ago)
    .bind(count)
    .execute(pool)
    .await
    .unwrap();
}

fn rows_of(outcome: &RetentionOutcome, table: &str) -> u64 {
    outcome.tables.iter().find(|t| t.table == table).unwrap_or_else(|| panic!("{table} in {outcome:?}")).rows
}

#[tokio::test]
async fn partitions_exist_ahead_and_come_back_after_a_long_stop() {
    let pool = support::fresh_pool().await;
    let store = Store::from_pool(pool.clone());
    let ahead = weeks_ahead(&pool).await;
    let existing = partitions(&pool).await;
    for week in &ahead {
        assert!(existing.contains(week), "the migration creates {week}: {existing:?}");
    }

    // A stop longer than the weeks ahead: as if the clock had moved past every partition
    // there is, the current week and those ahead are gone, and a `sync` run meanwhile
    // wrote into the DEFAULT partition. Rows far in the past and future also land there.
    for week in &ahead {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {week}"))).execute(&pool).await.unwrap();
    }
    seen_rows(&pool, "agent-now", 0, 3, false).await;
    seen_rows(&pool, "agent-silent-a-year", 365, 1, false).await;
    seen_rows(&pool, "agent-skewed", -2, 1, false).await;
    seen_rows(&pool, "agent-far-future", -800, 1, false).await;
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen_default").await, 6);

    let outcome = run_once(&store, &retention(hourly()), false).await.unwrap();
    assert_eq!(outcome.partitions_created, ahead, "{outcome}");
    let existing = partitions(&pool).await;
    for week in &ahead {
        assert!(existing.contains(week), "{week} again after the job: {existing:?}");
    }
    // This week's and the skewed rows moved into their weeks; only what no week covers stays.
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen_default").await, 2);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen").await, 6);
    // A second pass creates nothing.
    let again = run_once(&store, &retention(hourly()), false).await.unwrap();
    assert!(again.partitions_created.is_empty(), "{again}");
}

/// Rows of every pruned table on both sides of its horizon.
async fn seed_every_table(pool: &PgPool) {
    seen_rows(pool, "agent-old", 500, 10, true).await; // its week ends long before 400 days
    seen_rows(pool, "agent-straggler", 2000, 2, false).await; // DEFAULT partition, expired
    seen_rows(pool, "agent-recent", 10, 5, true).await;
    seen_rows(pool, "agent-edge", 395, 4, true).await; // inside the horizon
    sqlx::raw_sql(
        "INSERT INTO scan_agent_version_history (version_id, agent_id, valid_from, valid_to)
         VALUES (1, 'agent-old', now() - interval '900 days', now() - interval '500 days'),
                (2, 'agent-old', now() - interval '500 days', now() - interval '20 days');
         INSERT INTO sync_runs (started_at, finished_at, status, mode)
         VALUES (now() - interval '500 days', now() - interval '500 days', 'ok', 'list'),
                (now() - interval '1 day', now() - interval '1 day', 'ok', 'list'),
                (now() - interval '500 days', NULL, 'running', 'list');
         INSERT INTO api_calls (called_at, endpoint, status, pause_until)
         VALUES (now() - interval '3 hours', 'list', 200, NULL),
                (now() - interval '3 hours', 'list', 429, now() + interval '1 minute'),
                (now() - interval '90 minutes', 'list', 200, NULL);
         INSERT INTO scan_agent_state (agent_id, last_seen, first_observed_at, last_changed_at,
                                       valid_from, last_fetched_at)
         VALUES ('agent-old', now() - interval '500 days', now() - interval '900 days',
                 now() - interval '500 days', now() - interval '20 days', now());
         INSERT INTO stale_episodes (agent_id, started_at, stale_since, last_notified_at)
         VALUES ('agent-old', now() - interval '200 days', now() - interval '200 days', now());
         INSERT INTO alert_outbox (episode_id, agent_id, kind, payload, created_at, delivered_at, next_attempt_at)
         SELECT episode_id, 'agent-old', 'firing', '{}', now() - interval '200 days', d, now()
         FROM stale_episodes,
              (VALUES (now() - interval '100 days'), (now() - interval '10 days'), (NULL)) AS v(d);",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Row counts of the pruned tables and the partition list: everything a prune may change.
async fn footprint(pool: &PgPool) -> (Vec<i64>, Vec<String>) {
    let counts = sqlx::query_as::<_, (i64, i64, i64, i64, i64)>(
        "SELECT (SELECT count(*) FROM scan_agent_last_seen), (SELECT count(*) FROM scan_agent_version_history),
                (SELECT count(*) FROM sync_runs), (SELECT count(*) FROM api_calls),
                (SELECT count(*) FROM alert_outbox)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (vec![counts.0, counts.1, counts.2, counts.3, counts.4], partitions(pool).await)
}

#[tokio::test]
async fn a_dry_run_says_what_a_prune_then_drops_and_changes_nothing() {
    let pool = support::fresh_pool().await;
    let store = Store::from_pool(pool.clone());
    seed_every_table(&pool).await;
    let old_week: String = sqlx::query_scalar(
        "SELECT 'scan_agent_last_seen_' || to_char(date_trunc('week', now() - interval '500 days', 'UTC')
                 AT TIME ZONE 'UTC', 'YYYYMMDD')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let before = footprint(&pool).await;
    assert!(before.1.contains(&old_week));

    let dry = run_once(&store, &retention(hourly()), true).await.unwrap();
    assert_eq!(footprint(&pool).await, before, "a dry run changes nothing");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM retention_runs").await, 0);
    let expected = [
        ("scan_agent_last_seen", 12), // 10 in the expired week, 2 stragglers in DEFAULT
        ("scan_agent_versions", 1),
        ("sync_runs", 1),
        ("alert_outbox", 1),
        ("api_calls", 1), // the 3-hour-old call whose 429 pause is over; not the paused one
    ];
    for (table, rows) in expected {
        assert_eq!(rows_of(&dry, table), rows, "{table} in the dry run: {dry}");
    }
    let printed = dry.to_string();
    assert!(printed.contains(&format!("would drop partition {old_week}")), "{printed}");
    assert!(printed.contains("dry run: nothing was changed"), "{printed}");

    let real = run_once(&store, &retention(hourly()), false).await.unwrap();
    for (table, rows) in expected {
        assert_eq!(rows_of(&real, table), rows, "{table} in the prune: {real}");
    }
    let after = footprint(&pool).await;
    assert_eq!(after.0, vec![before.0[0] - 12, 1, 2, 2, 2], "{real}");
    assert!(!after.1.contains(&old_week), "the expired week is dropped: {:?}", after.1);
    // What stays: everything inside its horizon, running cycles, undelivered alerts.
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen WHERE agent_id = 'agent-edge'").await,
        4
    );
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen WHERE agent_id = 'agent-recent'").await,
        5
    );
    assert_eq!(scalar(&pool, "SELECT count(*) FROM sync_runs WHERE status = 'running'").await, 1);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL").await, 1);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM api_calls WHERE pause_until > now()").await, 1);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM retention_runs").await, 5);
    // Nothing left to do.
    let again = run_once(&store, &retention(hourly()), false).await.unwrap();
    assert_eq!(again.total_rows(), 0, "{again}");
}

#[tokio::test]
async fn forever_keeps_every_row() {
    let pool = support::fresh_pool().await;
    let store = Store::from_pool(pool.clone());
    seed_every_table(&pool).await;
    let before = footprint(&pool).await;
    let mut keep_all = retention(hourly());
    keep_all.settings.last_seen = Keep::Forever;
    keep_all.settings.versions = Keep::Forever;
    keep_all.settings.sync_runs = Keep::Forever;
    keep_all.settings.delivered_alerts = Keep::Forever;
    let outcome = run_once(&store, &keep_all, false).await.unwrap();
    // Only the ledger, which always keeps just what the budget needs, loses its old call.
    assert_eq!(outcome.total_rows(), 1, "{outcome}");
    let after = footprint(&pool).await;
    assert_eq!(after.0, vec![before.0[0], before.0[1], before.0[2], before.0[3] - 1, before.0[4]]);
}

#[tokio::test]
async fn the_ledger_keeps_every_call_a_window_still_counts() {
    let pool = support::fresh_pool().await;
    let store = Store::from_pool(pool.clone());
    let windows = hourly();
    // The window is full: three calls 50 minutes ago. One call is older than any window.
    sqlx::raw_sql(
        "INSERT INTO api_calls (called_at, endpoint, status)
         SELECT now() - interval '50 minutes', 'by-id', 200 FROM generate_series(1, 3);
         INSERT INTO api_calls (called_at, endpoint, status) VALUES (now() - interval '5 hours', 'by-id', 200);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let wait_before = match store.take_slot(&windows, "by-id").await.unwrap() {
        Slot::Wait(wait) => wait,
        granted => panic!("a full window must wait, got {granted:?}"),
    };
    let outcome = run_once(&store, &retention(windows.clone()), false).await.unwrap();
    assert_eq!(rows_of(&outcome, "api_calls"), 1, "{outcome}");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM api_calls").await, 3);
    match store.take_slot(&windows, "by-id").await.unwrap() {
        Slot::Wait(wait) => {
            assert!(
                wait <= wait_before && wait + Duration::from_secs(5) > wait_before,
                "{wait:?} {wait_before:?}"
            )
        }
        granted => panic!("the prune must not free the window, got {granted:?}"),
    }
    let windows_hold = store.check_invariants(&windows).await.unwrap();
    assert!(windows_hold.iter().all(|f| f.holds()), "{windows_hold:?}");
}

fn agent(id: &str, last_seen: &str) -> AgentRecord {
    AgentRecord::from_json(json!({
        "id": id,
        "lastSeen": last_seen,
        "lastCommandExecutionTimestamp": last_seen,
        "scannerSoftwareVersion": "1.0",
        "computerDnsName": format!("{id}.example"),
    }))
    .unwrap()
}

fn ago(age: Duration) -> String {
    (chrono::Utc::now() - age).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[tokio::test]
async fn check_holds_after_a_prune_and_the_silent_agent_keeps_its_state() {
    let pool = support::fresh_pool().await;
    let store = Store::from_pool(pool.clone());
    // One agent silent for longer than retention, one seen an hour ago.
    store.apply(vec![agent("silent", &ago(500 * DAY)), agent("fresh", &ago(DAY / 24))], &[]).await.unwrap();
    let outcome = run_once(&store, &retention(hourly()), false).await.unwrap();
    assert_eq!(rows_of(&outcome, "scan_agent_last_seen"), 1, "{outcome}");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents").await, 2, "agents are never pruned");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen").await, 1);
    let findings = store.check_invariants(&hourly()).await.unwrap();
    assert!(findings.iter().all(|f| f.holds()), "{findings:?}");

    // The invariant still looks inside the horizon: without the record of the prune, the
    // silent agent's missing row is a violation.
    sqlx::query("DELETE FROM retention_runs").execute(&pool).await.unwrap();
    let findings = store.check_invariants(&hourly()).await.unwrap();
    let kept = findings.iter().find(|f| f.name == "last_seen_kept").unwrap();
    assert_eq!(kept.examples, vec!["silent".to_owned()], "{kept:?}");
}

#[tokio::test]
async fn the_migration_moves_a_populated_table_without_losing_a_row() {
    let pool = support::pool_before_migration("retention partitions").await;
    // 30,000 rows over about three years, 20 far in the past and in the future, and an agent
    // with its payload as the engine stored it before (whole, timestamps inside).
    sqlx::raw_sql(
        "INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
         SELECT 'agent-' || (n % 1000), now() - make_interval(hours => n), now() - make_interval(hours => n)
         FROM generate_series(1, 30000) AS n;
         INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
         SELECT 'agent-odd', t, now()
         FROM generate_series(timestamptz '1999-01-01', timestamptz '1999-01-10', interval '1 day') t
         UNION ALL
         SELECT 'agent-odd', t, now()
         FROM generate_series(now() + interval '2 years', now() + interval '2 years 9 days', interval '1 day') t;
         INSERT INTO scan_agent_state (agent_id, last_seen, first_observed_at, last_changed_at, valid_from, last_fetched_at)
         VALUES ('agent-1', '2026-01-01', now(), now(), now(), now());
         INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at) VALUES ('agent-1', '2026-01-01', now());
         INSERT INTO scan_agent_payloads (agent_id, raw)
         VALUES ('agent-1', '{\"id\": \"agent-1\", \"lastSeen\": \"2026-01-01T00:00:00.1234567Z\"}');",
    )
    .execute(&pool)
    .await
    .unwrap();
    const CONTENT: &str = "SELECT md5(string_agg(agent_id || '|' || last_seen || '|' || observed_at, ','
                                    ORDER BY agent_id, last_seen)) FROM scan_agent_last_seen";
    let before: String = sqlx::query_scalar(CONTENT).fetch_one(&pool).await.unwrap();
    let raw_before: serde_json::Value =
        sqlx::query_scalar("SELECT raw FROM scan_agents").fetch_one(&pool).await.unwrap();

    MIGRATOR.run(&pool).await.unwrap();

    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen").await, 30_021);
    let after: String = sqlx::query_scalar(CONTENT).fetch_one(&pool).await.unwrap();
    assert_eq!(after, before, "every row, unchanged");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen_default").await, 0);
    let raw_after: serde_json::Value =
        sqlx::query_scalar("SELECT raw FROM scan_agents").fetch_one(&pool).await.unwrap();
    assert_eq!(raw_after, raw_before);
    assert!(partitions(&pool).await.len() > 150, "a week per week of data");
    let store = Store::from_pool(pool.clone());
    let findings = store.check_invariants(&hourly()).await.unwrap();
    // The seeded lastSeen rows have no agents (history_has_agents); their key still holds.
    let kept = findings.iter().find(|f| f.name == "last_seen_kept").unwrap();
    assert!(kept.holds(), "{kept:?}");
}

#[tokio::test]
async fn a_prune_waiting_for_a_reader_holds_up_a_cycle_briefly_and_loses_no_row() {
    let pool = support::fresh_pool().await;
    let store = Store::from_pool(pool.clone());
    seen_rows(&pool, "agent-old", 500, 10, true).await;
    // A BI query in a long transaction holds its lock on every partition it read.
    let mut reader = pool.acquire().await.unwrap().detach();
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM scan_agent_last_seen;").execute(&mut reader).await.unwrap();

    let pruning = tokio::spawn({
        let store = store.clone();
        async move { run_once(&store, &retention(hourly()), false).await }
    });
    // Give the prune time to queue for the table (it holds the apply lock meanwhile).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batch: Vec<AgentRecord> = (0..500).map(|n| agent(&format!("agent-{n}"), &ago(DAY / 24))).collect();
    let applying = tokio::spawn({
        let store = store.clone();
        async move { store.apply(batch, &[]).await }
    });
    // The drop gives up after its lock timeout; the cycle then goes on.
    let pruned = tokio::time::timeout(Duration::from_secs(60), pruning).await.unwrap().unwrap();
    let error = pruned.expect_err("the drop cannot get its lock while the reader holds the table");
    assert!(error.to_string().contains("lock_timeout"), "{error}");
    tokio::time::timeout(Duration::from_secs(60), applying).await.unwrap().unwrap().unwrap();
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen").await, 510);

    // Once the reader is done, the next run drops the week, and only it.
    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
    let outcome = run_once(&store, &retention(hourly()), false).await.unwrap();
    assert_eq!(rows_of(&outcome, "scan_agent_last_seen"), 10, "{outcome}");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen").await, 500);
}

#[tokio::test]
async fn the_job_runs_at_once_counts_what_it_deleted_and_stops_when_cancelled() {
    let pool = support::fresh_pool().await;
    let store = Store::from_pool(pool.clone());
    seen_rows(&pool, "agent-old", 500, 7, true).await;
    let metrics = Metrics::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let job = tokio::spawn(run_retention_job(store, retention(hourly()), metrics.clone(), cancel.clone()));
    support::daemon::eventually("the first retention pass", Duration::from_secs(30), async || {
        (scalar(&pool, "SELECT count(*) FROM retention_runs").await > 0).then_some(())
    })
    .await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), job).await.expect("the job stops when cancelled").unwrap();
    let exposition = metrics.encode();
    assert!(
        exposition.contains("scan_agent_sync_retention_deleted_rows_total{table=\"scan_agent_last_seen\"} 7"),
        "{exposition}"
    );
}

#[tokio::test]
async fn an_agent_that_only_reported_in_leaves_its_payload_row_alone() {
    let pool = support::fresh_pool().await;
    let store = Store::from_pool(pool.clone());
    let report = |seen: &str| {
        AgentRecord::from_json(json!({
            "id": "agent-1",
            "LastSeen": seen,
            "lastCommandExecutionTimestamp": "2026-01-01T00:00:00Z",
            "computerDnsName": "host.example",
            "scanHealth": {"status": "Healthy"},
        }))
        .unwrap()
    };
    let payload_row = async || -> (String, String) {
        sqlx::query_as("SELECT xmin::text, raw::text FROM scan_agent_payloads")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let raw = async || -> serde_json::Value {
        sqlx::query_scalar("SELECT raw FROM scan_agents").fetch_one(&pool).await.unwrap()
    };
    store.apply(vec![report("2026-12-01T10:00:00.1234567Z")], &[]).await.unwrap();
    let (first_version, stored) = payload_row().await;
    assert!(!stored.contains("2026-12-01"), "the time members are stored apart: {stored}");

    // Reporting in again changes lastSeen only: the payload row is not rewritten, and raw
    // is the new payload as received, original strings (seven digits, member case) kept.
    store.apply(vec![report("2026-12-01T10:15:00.7654321Z")], &[]).await.unwrap();
    assert_eq!(payload_row().await.0, first_version);
    assert_eq!(raw().await, report("2026-12-01T10:15:00.7654321Z").raw);

    // Any other change rewrites it.
    let mut changed = report("2026-12-01T10:30:00Z");
    changed.raw["scanHealth"]["status"] = json!("Degraded");
    let expected = changed.raw.clone();
    store.apply(vec![changed], &[]).await.unwrap();
    assert_ne!(payload_row().await.0, first_version);
    assert_eq!(raw().await, expected);
}

fn load(toml: &str) -> Result<scan_agent_sync::config::Settings, scan_agent_sync::config::ConfigError> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("[database]\nurl = \"postgres://u@localhost/d\"\n{toml}")).unwrap();
    scan_agent_sync::config::Settings::load_with_env(file.path(), &std::collections::HashMap::new())
}

#[test]
fn retention_keys_take_durations_or_forever_and_name_the_key_when_wrong() {
    let defaults = load("").unwrap().retention;
    assert_eq!(defaults.last_seen, Keep::For(400 * DAY));
    assert_eq!(defaults.versions, Keep::Forever);
    assert_eq!(defaults.delivered_alerts, Keep::For(90 * DAY));
    let custom = load("[retention]\nlast_seen = \"forever\"\nsync_runs = \"30d\"\nevery = \"10m\"").unwrap();
    assert_eq!(custom.retention.last_seen, Keep::Forever);
    assert_eq!(custom.retention.sync_runs, Keep::For(30 * DAY));
    assert_eq!(custom.retention.every, Duration::from_secs(600));

    let zero = load("[retention]\nversions = \"0s\"").unwrap_err().to_string();
    assert!(zero.contains("retention.versions") && zero.contains("forever"), "{zero}");
    let long = load("[retention]\nsync_runs = \"2000y\"").unwrap_err().to_string();
    assert!(long.contains("retention.sync_runs") && long.contains("1000 years"), "{long}");
    let bad = load("[retention]\nlast_seen = \"a year\"").unwrap_err().to_string();
    assert!(bad.contains("retention.last_seen") && bad.contains("\"forever\""), "{bad}");

    // check-config shows the effective retention, the ledger's included.
    let shown = custom.redacted();
    assert!(shown.contains("[retention]\nlast_seen = \"forever\""), "{shown}");
    assert!(shown.contains("api_calls (the budget ledger) keeps 2h"), "{shown}");
}
