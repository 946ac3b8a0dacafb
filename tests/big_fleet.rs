//! Cycles that stream (issue 12): pages applied as they arrive, missing agents decided only
//! after a complete list, the mass-disappearance guard, and a list cycle killed between pages.
//! The bundled simulator and a real PostgreSQL.

mod support;

use std::time::Duration;

use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::config::Settings;
use scan_agent_sync::simulator::{self, SimulatorHandle, SimulatorOptions};
use scan_agent_sync::store::missing::{Absence, Tracked};
use scan_agent_sync::store::runs::RunStatus;
use scan_agent_sync::store::{MIGRATOR, Store};
use scan_agent_sync::sync::{CycleOptions, Syncer, Targets};
use scan_agent_sync::tenant_name::TenantName;
use serde_json::json;
use sqlx::PgPool;
use support::daemon::{DaemonConfig, Fixture, eventually};

fn syncer(sim: &SimulatorHandle, pool: &PgPool) -> Syncer {
    let settings: Settings = support::settings(&format!(
        "{}fetch_mode = \"list\"\nmax_retries = 1\nrequest_timeout = \"5s\"\n",
        sim.defender_config()
    ));
    Syncer::for_tenant(&settings.tenants()[0], &settings.stale, Store::from_pool(pool.clone())).unwrap()
}

async fn fleet(agents: usize, seed: u64) -> SimulatorHandle {
    simulator::start(SimulatorOptions { page_size: 7, seed, ..SimulatorOptions::frozen(agents) })
        .await
        .unwrap()
}

async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

const TRACK_ALL: Targets = Targets { ids: Vec::new(), track_all: true };

/// What a wrong tenant, a wrong API host or a revoked consent looks like: the API answers
/// with another fleet. Nothing is marked missing, the run fails naming the likely causes, one
/// fleet alert fires (and stays one over further cycles), and a deliberate decommission
/// goes through with `accept_mass_missing`.
#[tokio::test]
async fn a_fleet_swap_marks_nothing_and_raises_one_fleet_alert() {
    let pool = support::fresh_pool().await;
    let ours = fleet(30, 1).await;
    let report = syncer(&ours, &pool).run_cycle(&TRACK_ALL, &CycleOptions::default()).await.unwrap();
    assert_eq!((report.status, report.changes.new), (RunStatus::Ok, 30), "{report}");

    let theirs = fleet(25, 2).await;
    assert!(ours.agent_ids().iter().all(|id| !theirs.agent_ids().contains(id)), "two distinct fleets");
    let swapped = syncer(&theirs, &pool);
    for cycle in 0..2 {
        let report = swapped.run_cycle(&TRACK_ALL, &CycleOptions::default()).await.unwrap();
        assert_eq!((report.status, report.changes.went_missing), (RunStatus::Failed, 0), "{report}");
        assert!(report.fleet_vanished, "{report}");
        let error = report.failures.iter().map(|f| f.error.as_str()).collect::<String>();
        assert!(error.contains("30 of the 30 known agents"), "cycle {cycle}: {error}");
        for cause in
            ["defender.tenant_id", "defender.api_base_url", "consent", "proxy", "--accept-mass-missing"]
        {
            assert!(error.contains(cause), "names {cause}: {error}");
        }
        assert_eq!(
            scalar(&pool, "SELECT count(*) FROM scan_agents WHERE missing_since IS NOT NULL").await,
            0
        );
        assert_eq!(
            scalar(&pool, "SELECT count(*) FROM alert_outbox WHERE fleet_episode_id IS NOT NULL").await,
            1,
            "one fleet alert, not one per agent, and not one per cycle"
        );
    }
    let status: String = sqlx::query_scalar("SELECT status FROM sync_runs ORDER BY run_id DESC LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "failed");

    let accept = CycleOptions { accept_mass_missing: true, ..CycleOptions::default() };
    let report = swapped.run_cycle(&TRACK_ALL, &accept).await.unwrap();
    assert_eq!((report.status, report.changes.went_missing), (RunStatus::Ok, 30), "{report}");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents WHERE missing_since IS NOT NULL").await, 30);
    assert_eq!(
        scalar(&pool, "SELECT count(*) FROM alert_outbox WHERE fleet_episode_id IS NOT NULL").await,
        2,
        "the accepted cycle resolves the fleet alert"
    );
}

/// A few agents gone is news, not a wrong tenant: they are marked as before.
#[tokio::test]
async fn a_few_agents_gone_are_marked_missing() {
    let pool = support::fresh_pool().await;
    let sim = fleet(30, 3).await;
    let syncer = syncer(&sim, &pool);
    syncer.run_cycle(&TRACK_ALL, &CycleOptions::default()).await.unwrap();
    for id in &sim.agent_ids()[..4] {
        assert!(sim.delete(id));
    }
    let report = syncer.run_cycle(&TRACK_ALL, &CycleOptions::default()).await.unwrap();
    assert_eq!(
        (report.status, report.changes.went_missing, report.fleet_vanished),
        (RunStatus::Ok, 4, false)
    );
}

/// Each page is applied as it arrives: agents show up while the listing still runs.
#[tokio::test]
async fn pages_are_visible_before_the_list_ends() {
    let pool = support::fresh_pool().await;
    let sim = fleet(70, 4).await;
    sim.set_latency(Duration::from_millis(300));
    let syncer = syncer(&sim, &pool);
    let cycle = tokio::spawn(async move { syncer.run_cycle(&TRACK_ALL, &CycleOptions::default()).await });
    let seen = eventually("agents stored while the list still runs", Duration::from_secs(20), async || {
        let stored = scalar(&pool, "SELECT count(*) FROM scan_agents").await;
        (stored > 0).then_some(stored)
    })
    .await;
    assert!(seen < 70, "the first pages are stored before the last one is fetched ({seen} of 70)");
    let report = cycle.await.unwrap().unwrap();
    assert_eq!((report.status, report.fetched), (RunStatus::Ok, 70), "{report}");
}

/// A `sync` process killed between two pages: every page it applied stays applied, the
/// tables stay consistent, nothing is marked missing (the list was incomplete), and the next
/// complete cycle marks the agents that really went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_cycle_killed_between_pages_marks_nothing_missing() {
    let options = SimulatorOptions { page_size: 5, ..SimulatorOptions::frozen(40) };
    let fixture = Fixture::with_simulator(options, 40).await;
    let config = DaemonConfig { fetch_mode: "list", ..DaemonConfig::default() };
    let sync = |fixture: &Fixture| support::output(&mut fixture.command(&config, 0, "sync"));
    assert!(sync(&fixture).status.success());
    let first: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(last_fetched_at) FROM scan_agents")
            .fetch_one(&fixture.pool)
            .await
            .unwrap();

    for id in &fixture.sim.agent_ids()[35..] {
        assert!(fixture.sim.delete(id));
    }
    fixture.sim.set_latency(Duration::from_millis(400));
    let mut child = fixture
        .command(&config, 0, "sync")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually("a page of the second cycle applied", Duration::from_secs(30), async || {
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM scan_agents WHERE last_fetched_at > $1")
            .bind(first)
            .fetch_one(&fixture.pool)
            .await
            .unwrap();
        (applied >= 5).then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        scalar(&fixture.pool, "SELECT count(*) FROM scan_agents WHERE missing_since IS NOT NULL").await,
        0
    );
    let check = support::output(&mut fixture.command(&config, 0, "check"));
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    fixture.sim.set_latency(Duration::ZERO);
    assert!(sync(&fixture).status.success());
    assert_eq!(
        scalar(&fixture.pool, "SELECT count(*) FROM scan_agents WHERE missing_since IS NOT NULL").await,
        5
    );
    fixture.assert_history_consistent().await;
}

/// SIGTERM while the daemon drains a 10,000-event outbox to a slow receiver: the process
/// exits 0 within the documented grace, the undelivered events stay queued, and the next
/// start delivers them. An event is lost never; one batch in flight at the stop may arrive
/// twice (the receiver had it, the mark did not commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_an_alert_drain_stops_in_time_and_the_rest_goes_out_after_restart() {
    use scan_agent_sync::agent::AgentRecord;
    use scan_agent_sync::daemon::SHUTDOWN_GRACE;
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};

    const EVENTS: usize = 10_000;
    let fixture = Fixture::start(1, 1, Duration::ZERO).await;
    let store = Store::from_pool(fixture.pool.clone());
    store.migrate().await.unwrap();
    // Agents no cycle touches (they are not in the ID file), silent for a year: every one is
    // stale at the daemon's first evaluation.
    let silent = (0..EVENTS)
        .map(|i| {
            AgentRecord::from_json(
                serde_json::json!({"id": format!("silent-{i:05}"), "lastSeen": "2025-01-01T00:00:00Z"}),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    store.apply(silent, &[]).await.unwrap();

    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(300)))
        .mount(&slow)
        .await;
    let config =
        DaemonConfig { webhook_url: Some(format!("{}/hook", slow.uri())), ..DaemonConfig::default() };
    let mut daemon = fixture.spawn(&config).await;
    eventually("the drain under way", Duration::from_secs(60), async || {
        (slow.received_requests().await.unwrap().len() >= 5).then_some(())
    })
    .await;
    daemon.signal("TERM");
    let stopping = std::time::Instant::now();
    let status = daemon.wait_exit(SHUTDOWN_GRACE + Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
    assert!(stopping.elapsed() < SHUTDOWN_GRACE, "stopped in {:?}", stopping.elapsed());
    let undelivered =
        scalar(&fixture.pool, "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL").await;
    assert!(undelivered > 0, "the stop came before the drain ended");

    let fast = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&fast).await;
    let config =
        DaemonConfig { webhook_url: Some(format!("{}/hook", fast.uri())), ..DaemonConfig::default() };
    let mut daemon = fixture.spawn(&config).await;
    eventually("the rest delivered after the restart", Duration::from_secs(120), async || {
        let left =
            scalar(&fixture.pool, "SELECT count(*) FROM alert_outbox WHERE delivered_at IS NULL").await;
        (left == 0).then_some(())
    })
    .await;
    daemon.signal("TERM");
    assert!(daemon.wait_exit(SHUTDOWN_GRACE).await.success());

    let mut received = std::collections::HashMap::<String, usize>::new();
    for request in
        slow.received_requests().await.unwrap().iter().chain(&fast.received_requests().await.unwrap())
    {
        let body: serde_json::Value = request.body_json().unwrap();
        for alert in body.as_array().unwrap() {
            *received.entry(alert["labels"]["agent_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    let silent_received = received.keys().filter(|agent| agent.starts_with("silent-")).count();
    assert_eq!(silent_received, EVENTS, "every event arrived");
    let twice = received.values().filter(|&&n| n > 1).count();
    assert!(twice <= 100, "at most the batch in flight at the stop arrives twice ({twice})");
}

fn agent(id: &str, version: &str, last_seen: &str) -> AgentRecord {
    AgentRecord::from_json(json!({
        "id": id,
        "lastSeen": last_seen,
        "computerDnsName": "h",
        "scannerSoftwareVersion": version,
        "lastCommandExecutionTimestamp": "2022-05-08T12:18:41.1234567Z",
    }))
    .unwrap()
}

async fn assert_history_holds(store: &Store) {
    let findings = store.check_invariants(&[]).await.unwrap();
    assert!(findings.iter().all(|f| f.holds()), "{findings:?}");
}

/// A batch of 2,000 agents or more (a list page) is applied in parts, one per shard of
/// agents, side by side: the diff still holds every agent once, and two such batches
/// applied at once by two processes still give every shared agent one contiguous history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_batches_are_applied_in_parts_and_concurrent_ones_stay_in_sequence() {
    let pool = support::fresh_pool().await;
    let store = Store::from_pool(pool.clone());
    let name = |i: usize| format!("b{i:04}");
    store
        .apply((0..3000).map(|i| agent(&name(i), "1", "2022-05-08T12:00:00Z")).collect(), &[])
        .await
        .unwrap();
    let batch_a: Vec<AgentRecord> = (0..2500).map(|i| agent(&name(i), "2", "2022-05-08T13:00:00Z")).collect();
    let batch_b: Vec<AgentRecord> =
        (500..3000).rev().map(|i| agent(&name(i), "3", "2022-05-08T14:00:00Z")).collect();
    let mut ids_b: Vec<String> = batch_b.iter().map(|r| r.id.to_string()).collect();
    // A second pool: its own connections, as a second process would have.
    let other =
        Store::from_pool(PgPool::connect_with(pool.connect_options().as_ref().clone()).await.unwrap());
    let (ra, rb) = tokio::join!(store.apply(batch_a, &[]), other.apply(batch_b, &[]));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!((ra.diff.changed_count(), rb.diff.changed_count()), (2500, 2500));
    let mut returned_b: Vec<String> = rb.diff.agents.iter().map(|a| a.id.to_string()).collect();
    returned_b.sort();
    ids_b.sort();
    assert_eq!(returned_b, ids_b, "the diff of a batch applied in parts holds each of its agents once");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_versions").await, 3000 + 2500 + 2500);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_last_seen").await, 3000 + 2500 + 2500);
    let three: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT agent_id FROM scan_agent_versions GROUP BY agent_id HAVING count(*) = 3) v",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(three, 2000, "every agent in both batches went through both versions");
    assert_history_holds(&store).await;
}

/// Migration 20261207000011 moves the time members and the payload's hash into the state
/// row: `raw` reads as before, and the next fetch of the same agent finds it unchanged.
#[tokio::test]
async fn the_migration_moving_the_time_members_keeps_raw_and_recognizes_unchanged_agents() {
    let pool = support::pool_before_migration("times in state").await;
    // As the engine stored an agent before: the payload without its time members, which
    // are in their own table, and one payload still whole from before migration 0009.
    let fetched = agent("t1", "1", "2022-05-08T12:00:00.1234567Z");
    sqlx::raw_sql(
        "INSERT INTO scan_agent_state (agent_id, computer_dns_name, scanner_software_version, last_seen,
             last_command_execution_at, first_observed_at, last_changed_at, valid_from, last_fetched_at)
         VALUES ('t1', 'h', '1', '2022-05-08T12:00:00.123456Z', '2022-05-08T12:18:41.123456Z', now(), now(), now(), now()),
                ('t2', 'h', '1', '2022-05-08T12:00:00Z', NULL, now(), now(), now(), now());
         INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
         VALUES ('t1', '2022-05-08T12:00:00.123456Z', now()), ('t2', '2022-05-08T12:00:00Z', now());
         INSERT INTO scan_agent_payloads (agent_id, raw, raw_sha256) VALUES
             ('t1', '{\"computerDnsName\":\"h\",\"id\":\"t1\",\"scannerSoftwareVersion\":\"1\"}',
              sha256('{\"computerDnsName\":\"h\",\"id\":\"t1\",\"scannerSoftwareVersion\":\"1\"}')),
             ('t2', '{\"id\": \"t2\", \"lastSeen\": \"2022-05-08T12:00:00Z\"}', NULL);
         INSERT INTO scan_agent_payload_times (agent_id, raw_times) VALUES
             ('t1', '{\"lastCommandExecutionTimestamp\":\"2022-05-08T12:18:41.1234567Z\",\"lastSeen\":\"2022-05-08T12:00:00.1234567Z\"}');",
    )
    .execute(&pool)
    .await
    .unwrap();
    const RAW: &str = "SELECT array_agg(raw::text ORDER BY agent_id) FROM scan_agents";
    let before: Vec<String> = sqlx::query_scalar(RAW).fetch_one(&pool).await.unwrap();

    MIGRATOR.run(&pool).await.unwrap();

    let after: Vec<String> = sqlx::query_scalar(RAW).fetch_one(&pool).await.unwrap();
    assert_eq!(after, before, "raw reads as before");
    let store = Store::from_pool(pool.clone());
    let applied = store.apply(vec![fetched], &[]).await.unwrap();
    assert_eq!(applied.diff.changed_count(), 0, "{:?}", applied.diff);
    let rewritten: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM scan_agent_payloads p JOIN scan_agent_state s USING (agent_id)
         WHERE p.raw_sha256 IS DISTINCT FROM s.payload_sha256",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rewritten, 0, "the state row holds the stored payload's hash");
    let after: Vec<String> = sqlx::query_scalar(RAW).fetch_one(&pool).await.unwrap();
    assert_eq!(after, before, "refetching the same agent changes no byte of raw");
    assert_history_holds(&store).await;
}

/// The statements that look at every agent (the end of a list, the staleness evaluation) read
/// the state table a range of 8,192 blocks at a time: with a table longer than one range,
/// they still find the agents of every range, and each once.
#[tokio::test]
async fn passes_over_a_state_table_longer_than_one_range_find_every_agent_once() {
    let pool = support::fresh_pool().await;
    // 20,000 rows of about 1.4 kB (an incompressible host name); at the table's fillfactor of
    // 50, two fit a block. Every thousandth agent is stale, and the one after it was left out
    // of the latest list.
    let store = Store::from_pool(pool.clone());
    let since = store.clock().await.unwrap();
    sqlx::query(
        "INSERT INTO scan_agent_state (agent_id, computer_dns_name, last_seen, first_observed_at,
             last_changed_at, valid_from, last_fetched_at)
         SELECT format('a%s', lpad(i::text, 5, '0')),
                (SELECT string_agg(md5(random()::text || i || j), '') FROM generate_series(1, 40) j),
                CASE WHEN i % 1000 = 0 THEN now() - interval '2 days' ELSE now() END,
                now() - interval '3 days', now(), now(),
                CASE WHEN i % 1000 = 1 THEN now() - interval '1 hour' ELSE now() END
         FROM generate_series(0, 19999) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let blocks = scalar(&pool, "SELECT pg_relation_size('scan_agent_state') / 8192").await;
    assert!(blocks > 8_192, "the table spans two ranges ({blocks} blocks)");

    let now = store.clock().await.unwrap();
    let day = Duration::from_secs(86_400);
    let evaluation = store.record_staleness(now, day, Duration::ZERO, None).await.unwrap();
    assert_eq!(
        (evaluation.tracked, evaluation.stale_now, evaluation.fired),
        (20_000, 20, 20),
        "{evaluation:?}"
    );

    let tenant = store.for_tenant(TenantName::default());
    let absence = tenant.count_unlisted(Tracked::All, since, now, &[]).await.unwrap();
    assert_eq!(
        absence,
        Absence { known: 20_000, vanishing: 20, unlisted: 20, still_missing: 0, never_seen: 0 }
    );
    assert_eq!(tenant.mark_unlisted(Tracked::All, since, &[]).await.unwrap(), 20);
    let marked: Vec<String> = sqlx::query_scalar(
        "SELECT agent_id FROM scan_agent_state WHERE missing_since IS NOT NULL ORDER BY agent_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(marked, (0..20).map(|k| format!("a{:05}", k * 1000 + 1)).collect::<Vec<_>>());
    let absence = tenant.count_unlisted(Tracked::All, since, now, &[]).await.unwrap();
    assert_eq!((absence.unlisted, absence.still_missing), (0, 20));
}
