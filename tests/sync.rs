//! One sync cycle end to end: the bundled simulator (or wiremock) and a real PostgreSQL.

mod support;

use std::time::Duration;

use scan_agent_sync::agent_id::AgentId;
use scan_agent_sync::config::{FetchMode, Settings};
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::scheduler::Interval;
use scan_agent_sync::simulator::{self, Faults, SimulatorHandle, SimulatorOptions};
use scan_agent_sync::store::Store;
use scan_agent_sync::store::runs::RunStatus;
use scan_agent_sync::sync::{CycleOptions, Syncer, Targets};
use scan_agent_sync::tenant_name::TenantName;
use sqlx::PgPool;
use tokio::time::Instant;

async fn sim(agents: usize) -> SimulatorHandle {
    simulator::start(SimulatorOptions { page_size: 10, ..SimulatorOptions::frozen(agents) }).await.unwrap()
}

fn config(sim: &SimulatorHandle, mode: &str, windows: &str) -> Settings {
    support::settings(&format!(
        "{}fetch_mode = \"{mode}\"\nmax_retries = 1\nrequest_timeout = \"5s\"\n[rate_limit]\nwindows = {windows}\n",
        sim.defender_config()
    ))
}

fn syncer(settings: &Settings, pool: &PgPool) -> Syncer {
    Syncer::for_tenant(&settings.tenants()[0], &settings.stale, Store::from_pool(pool.clone())).unwrap()
}

fn ids(sim: &SimulatorHandle) -> Vec<AgentId> {
    sim.agent_ids().iter().map(|id| AgentId::from_api(id).unwrap()).collect()
}

const DEFENDER_WINDOWS: &str = "[{ calls = 100, per = \"1m\" }, { calls = 1500, per = \"1h\" }]";

async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn by_id_cycle_fetches_every_agent_and_records_the_run() {
    let sim = sim(12).await;
    let pool = support::fresh_pool().await;
    let syncer = syncer(&config(&sim, "by-id", DEFENDER_WINDOWS), &pool);
    let targets = Targets { ids: ids(&sim), track_all: false };
    let report = syncer.run_cycle(&targets, &CycleOptions::default()).await.unwrap();
    assert_eq!(
        (report.status, report.mode, report.exit_code()),
        (RunStatus::Ok, FetchMode::ById, 0),
        "{report}"
    );
    assert_eq!((report.fetched, report.changes.new, report.api_calls), (12, 12, 12));
    let run: (String, i32, i32, i32, i32) = sqlx::query_as(
        "SELECT status, agents_requested, agents_fetched, agents_new, api_calls FROM sync_runs",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(run, ("ok".into(), 12, 12, 12, 12));
    assert_eq!(scalar(&pool, "SELECT count(*) FROM api_calls WHERE status = 200").await, 12);

    // The simulator changes one agent and deletes another: one version, one missing mark.
    let all = sim.agent_ids();
    assert!(sim.upgrade(&all[0], "9.9.9"));
    assert!(sim.delete(&all[1]));
    let report = syncer.run_cycle(&targets, &CycleOptions::default()).await.unwrap();
    assert_eq!((report.changes.changed, report.missing, report.changes.went_missing), (1, 1, 1));
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agent_versions").await, 13);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents WHERE missing_since IS NOT NULL").await, 1);
    assert!(sim.stats().throttled == 0);
}

/// A wrong `api_base_url` answers 404 for every agent, like a fleet deleted at once: the cycle
/// fails and marks nothing missing, while one real 404 among answers still counts.
#[tokio::test]
async fn every_agent_answering_404_marks_nothing_missing_and_fails_the_cycle() {
    let sim = sim(6).await;
    let pool = support::fresh_pool().await;
    let settings = config(&sim, "by-id", DEFENDER_WINDOWS);
    let targets = Targets { ids: ids(&sim), track_all: false };
    syncer(&settings, &pool).run_cycle(&targets, &CycleOptions::default()).await.unwrap();

    let mut wrong_path = settings.tenants()[0].clone();
    wrong_path.defender.api_base_url.push_str("/v2");
    let wrong_syncer =
        Syncer::for_tenant(&wrong_path, &settings.stale, Store::from_pool(pool.clone())).unwrap();
    let report = wrong_syncer.run_cycle(&targets, &CycleOptions::default()).await.unwrap();
    assert_eq!((report.status, report.missing, report.exit_code()), (RunStatus::Failed, 0, 1), "{report}");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents WHERE missing_since IS NULL").await, 6);
    let error: String = sqlx::query_scalar("SELECT error FROM sync_runs ORDER BY run_id DESC LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(error.contains("all 6 agents") && error.contains("defender.api_base_url"), "{error}");

    let one_gone =
        Targets { ids: [ids(&sim), vec![AgentId::parse("deleted-agent").unwrap()]].concat(), ..targets };
    let report = syncer(&settings, &pool).run_cycle(&one_gone, &CycleOptions::default()).await.unwrap();
    assert_eq!((report.status, report.missing), (RunStatus::Ok, 1), "{report}");
}

#[tokio::test]
async fn list_mode_keeps_configured_agents_and_marks_absent_ones_missing() {
    let sim = sim(25).await;
    let pool = support::fresh_pool().await;
    let syncer = syncer(&config(&sim, "auto", DEFENDER_WINDOWS), &pool);
    let mut wanted = ids(&sim)[..15].to_vec();
    wanted.push(AgentId::parse("not-in-tenant").unwrap());
    let targets = Targets { ids: wanted, track_all: false };
    let report = syncer.run_cycle(&targets, &CycleOptions::default()).await.unwrap();
    assert_eq!(report.mode, FetchMode::List, "16 IDs cost 16 by-id calls but about one list");
    assert_eq!(report.api_calls, 3, "25 agents in pages of 10");
    assert_eq!((report.fetched, report.missing), (15, 1));
    assert_eq!(report.changes.never_seen, 1);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents").await, 15);

    // Now a list that fails part-way marks nothing missing, and stored data stays.
    assert!(sim.delete(targets.ids[0].as_str()));
    sim.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    let report = syncer.run_cycle(&targets, &CycleOptions::default()).await.unwrap();
    assert_eq!((report.status, report.exit_code()), (RunStatus::Failed, 1));
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents WHERE missing_since IS NOT NULL").await, 0);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents").await, 15);
    let error: Option<String> =
        sqlx::query_scalar("SELECT error FROM sync_runs ORDER BY run_id DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(error.is_some_and(|e| e.starts_with("list")));
}

#[tokio::test]
async fn track_all_follows_every_agent_the_list_returns() {
    let sim = sim(14).await;
    let pool = support::fresh_pool().await;
    let syncer = syncer(&config(&sim, "auto", DEFENDER_WINDOWS), &pool);
    let targets = Targets { ids: Vec::new(), track_all: true };
    let report = syncer.run_cycle(&targets, &CycleOptions::default()).await.unwrap();
    assert_eq!((report.mode, report.fetched), (FetchMode::List, 14));
    assert!(sim.delete(&sim.agent_ids()[3]));
    let report = syncer.run_cycle(&targets, &CycleOptions::default()).await.unwrap();
    assert_eq!(report.changes.went_missing, 1);
}

#[tokio::test]
async fn a_budget_short_of_the_list_defers_the_rest_and_rotates_least_recently_fetched_first() {
    let sim = sim(8).await;
    let pool = support::fresh_pool().await;
    let syncer = syncer(&config(&sim, "by-id", "[{ calls = 5, per = \"1h\" }]"), &pool);
    let targets = Targets { ids: ids(&sim), track_all: false };
    let options =
        || CycleOptions { deadline: Some(Instant::now() + Duration::from_millis(300)), ..Default::default() };
    let first = syncer.run_cycle(&targets, &options()).await.unwrap();
    assert_eq!((first.status, first.fetched, first.deferred), (RunStatus::Ok, 5, 3));
    // A fresh hour for the second cycle: the three never fetched go first.
    next_hour(&pool).await;
    let second = syncer.run_cycle(&targets, &options()).await.unwrap();
    assert_eq!(second.changes.new, 3, "the deferred agents are fetched before the others");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents").await, 8);
}

/// Moves the ledger two hours back: the next cycle finds an hour window with nothing in it.
async fn next_hour(pool: &PgPool) {
    sqlx::query("UPDATE api_calls SET called_at = called_at - interval '2 hours'")
        .execute(pool)
        .await
        .unwrap();
}

/// The agent IDs of the by-ID requests in `log`, in the order they arrived.
fn asked(log: &[simulator::LoggedRequest]) -> Vec<String> {
    log.iter()
        .filter(|r| r.kind == simulator::EndpointKind::ById)
        .map(|r| r.path_and_query.rsplit('/').next().unwrap().to_owned())
        .collect()
}

/// A 404 counts as a fetch when a cycle orders its IDs, so IDs known to be gone (never
/// stored, or stored and then marked missing) take their turn in the rotation instead of
/// going first in every cycle and using up budget meant for the live agents. They are
/// still asked once per rotation: an agent that comes back is found.
#[tokio::test]
async fn ids_that_answer_404_wait_their_turn_in_the_rotation() {
    let sim = sim(10).await;
    let pool = support::fresh_pool().await;
    let syncer = syncer(&config(&sim, "by-id", "[{ calls = 4, per = \"1h\" }]"), &pool);
    let live = ids(&sim);
    let never_stored = ["gone-1", "gone-2"].map(|id| AgentId::parse(id).unwrap());
    let targets = Targets { ids: [live.clone(), never_stored.to_vec()].concat(), track_all: false };
    // The budget runs out at once, without waiting for the next hour.
    let options =
        || CycleOptions { deadline: Some(Instant::now() + Duration::from_secs(30)), ..Default::default() };

    // 12 IDs at 4 a cycle: a rotation is three cycles. An agent stored in the first is
    // deleted after it, so it answers 404 from the fourth on and is marked missing.
    let mut cycles: Vec<Vec<String>> = Vec::new();
    for cycle in 0..9 {
        if cycle == 1 {
            assert!(sim.delete(live[1].as_str()));
        }
        let before = sim.request_log().len();
        let report = syncer.run_cycle(&targets, &options()).await.unwrap();
        assert_eq!((report.status, report.api_calls, report.deferred), (RunStatus::Ok, 4, 8), "{report}");
        cycles.push(asked(&sim.request_log()[before..]));
        next_hour(&pool).await;
    }
    let mut every_id: Vec<String> = targets.ids.iter().map(ToString::to_string).collect();
    every_id.sort();
    for (first, rotation) in cycles.windows(3).enumerate() {
        let mut rotation = rotation.concat();
        rotation.sort();
        assert_eq!(rotation, every_id, "cycles {first} to {} ask every ID once: {cycles:?}", first + 2);
    }
    let missing = "SELECT count(*) FROM scan_agents WHERE missing_since IS NOT NULL";
    assert_eq!(scalar(&pool, missing).await, 1);

    // The deleted agent comes back and gone-2 is no longer configured: the agent is found
    // within a rotation and un-marked, and neither keeps a 404 stamp.
    assert!(sim.restore(live[1].as_str()));
    let targets = Targets { ids: targets.ids[..11].to_vec(), ..targets };
    for _ in 0..3 {
        syncer.run_cycle(&targets, &options()).await.unwrap();
        next_hour(&pool).await;
    }
    assert_eq!(scalar(&pool, missing).await, 0);
    syncer.store.forget_not_found(&targets.ids).await.unwrap();
    let stamped: Vec<String> =
        sqlx::query_scalar("SELECT agent_id FROM scan_agent_not_found").fetch_all(&pool).await.unwrap();
    assert_eq!(stamped, ["gone-1"]);
}

/// A by-ID fleet larger than the longest window's calls is paced: each cycle asks for its
/// interval's share of the sustained rate, so every agent comes round after the same number
/// of cycles. Unpaced, a cycle with time to spare would take the whole window in one burst.
/// The intervals are given, not waited for: the counts cannot depend on the machine's speed.
#[tokio::test]
async fn a_fleet_larger_than_the_longest_window_is_paced_to_its_sustained_rate() {
    let windows = ["20/500ms", "60/3s"].map(|w| RateWindow::parse_compact(w).unwrap());
    let sim =
        simulator::start(SimulatorOptions { windows: windows.to_vec(), ..SimulatorOptions::frozen(70) })
            .await
            .unwrap();
    let pool = support::fresh_pool().await;
    let windows = "[{ calls = 20, per = \"500ms\" }, { calls = 60, per = \"3s\" }]";
    let syncer = syncer(&config(&sim, "by-id", windows), &pool);
    let all = ids(&sim);
    // Half-second intervals on the windows' clock: 60 per 3 s is 10 per interval, 20 per
    // 500 ms allows 20; the smaller binds.
    let start = chrono::DateTime::from_timestamp(1_796_000_400, 0).unwrap();
    let options = |cycle: i32| CycleOptions {
        deadline: Some(Instant::now() + Duration::from_secs(60)),
        interval: Some(Interval {
            from: start + chrono::Duration::milliseconds(500) * cycle,
            to: start + chrono::Duration::milliseconds(500) * (cycle + 1),
        }),
        ..Default::default()
    };

    // 60 agents fit in the longest window: not paced.
    let fits = Targets { ids: all[..60].to_vec(), track_all: false };
    let report = syncer.run_cycle(&fits, &options(0)).await.unwrap();
    assert_eq!((report.pace, report.fetched, report.deferred), (None, 60, 0), "{report}");

    let targets = Targets { ids: all.clone(), track_all: false };
    // The daemon between ticks stands for none of the interval: a paced fleet waits.
    let resumed = CycleOptions { interval: Some(Interval { from: start, to: start }), ..options(0) };
    let report = syncer.run_cycle(&targets, &resumed).await.unwrap();
    assert_eq!((report.status, report.pace, report.api_calls), (RunStatus::Ok, Some(0), 0), "{report}");

    let mut cycles: Vec<Vec<String>> = Vec::new();
    for cycle in 1..=15 {
        let before = sim.request_log().len();
        let report = syncer.run_cycle(&targets, &options(cycle)).await.unwrap();
        // A 429 retried is one call more for the same agent: on a loaded machine a call can
        // reach the simulator late enough to crowd the next ones into its window.
        assert_eq!(
            (report.status, report.pace, report.api_calls - report.throttled, report.deferred),
            (RunStatus::Ok, Some(10), 10, 60),
            "{report}"
        );
        assert!(report.to_string().contains("paced: at most 10 agents"), "{report}");
        cycles.push(asked(&sim.request_log()[before..]));
    }
    // Every agent is asked every seventh cycle (70 / 10), never sooner or later.
    for id in &all {
        let at: Vec<usize> = (0..cycles.len()).filter(|&c| cycles[c].contains(&id.to_string())).collect();
        assert!(at.len() >= 2, "{id} asked in cycles {at:?}");
        assert!(at.windows(2).all(|pair| pair[1] - pair[0] == 7), "{id} asked in cycles {at:?}");
    }
    assert_eq!(sim.stats().throttled, 0);
}

#[tokio::test]
async fn dry_run_prints_the_diff_and_writes_only_the_ledger() {
    let sim = sim(5).await;
    let pool = support::fresh_pool().await;
    let syncer = syncer(&config(&sim, "by-id", DEFENDER_WINDOWS), &pool);
    let targets = Targets { ids: ids(&sim), track_all: false };
    let options = CycleOptions { dry_run: true, ..Default::default() };
    let report = syncer.run_cycle(&targets, &options).await.unwrap();
    assert_eq!((report.run_id, report.changes.new), (None, 5));
    let printed = report.to_string();
    assert!(printed.contains("new       ") && printed.contains("dry run: nothing was written"), "{printed}");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents").await, 0);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM sync_runs").await, 0);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM api_calls").await, 5, "the calls were spent");

    syncer.run_cycle(&targets, &CycleOptions::default()).await.unwrap();
    sim.upgrade(targets.ids[2].as_str(), "8.0.0");
    let report = syncer.run_cycle(&targets, &options).await.unwrap();
    let printed = report.to_string();
    assert!(printed.contains("scanner_software_version: ") && printed.contains(" -> 8.0.0"), "{printed}");
    assert_eq!(report.changes.changed, 1);
}

#[tokio::test]
async fn two_sync_processes_at_once_stay_within_every_window() {
    let sim = simulator::start(SimulatorOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        agents: 30,
        windows: vec![RateWindow::parse_compact("10/1s").unwrap()],
        evolve_every: Duration::ZERO,
        ..SimulatorOptions::default()
    })
    .await
    .unwrap();
    let pool = support::fresh_pool().await;
    let other_pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let settings = config(&sim, "by-id", "[{ calls = 10, per = \"1s\" }]");
    let (a, b) = (syncer(&settings, &pool), syncer(&settings, &other_pool));
    let targets = Targets { ids: ids(&sim), track_all: false };
    let options = CycleOptions::default();
    let (ra, rb) = tokio::join!(a.run_cycle(&targets, &options), b.run_cycle(&targets, &options));
    assert_eq!((ra.unwrap().status, rb.unwrap().status), (RunStatus::Ok, RunStatus::Ok));
    let stats = sim.stats();
    assert_eq!(stats.throttled, 0, "no window was exceeded: {stats:?}");
    assert!(stats.window_peaks.iter().all(|p| p.max_accepted <= 10), "{stats:?}");
    assert_eq!(stats.api_requests, 60);
}

/// PRODUCT.md, "Tenants": an agent that a tenant's API returns but that is stored under
/// another tenant is refused and logged, never moved; the cycle fails that agent, names both
/// tenants, and the other tenant's row stays as it was.
#[tokio::test]
async fn an_agent_stored_under_another_tenant_is_refused_by_the_cycle() {
    let sim = sim(12).await;
    let pool = support::fresh_pool().await;
    let settings = config(&sim, "list", DEFENDER_WINDOWS);
    let mut other = settings.tenants()[0].clone();
    other.name = TenantName::parse("other").unwrap();
    let first = ids(&sim).remove(0);
    let other_syncer = Syncer::for_tenant(&other, &settings.stale, Store::from_pool(pool.clone())).unwrap();
    let targets = Targets { ids: vec![first.clone()], track_all: false };
    let report = other_syncer.run_cycle(&targets, &CycleOptions::default()).await.unwrap();
    assert_eq!((report.status, report.changes.new), (RunStatus::Ok, 1), "{report}");
    const OTHERS: &str = "SELECT json_agg(a)::text FROM scan_agents a WHERE tenant = 'other'";
    let before: String = sqlx::query_scalar(OTHERS).fetch_one(&pool).await.unwrap();

    let report = syncer(&settings, &pool)
        .run_cycle(&Targets { ids: vec![], track_all: true }, &CycleOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (report.status, report.changes.new, report.failure_count),
        (RunStatus::Partial, 11, 1),
        "{report}"
    );
    assert_eq!(report.failures[0].subject, first.as_str());
    let error = &report.failures[0].error;
    assert!(error.contains("tenant default") && error.contains("tenant other"), "{error}");
    let after: String = sqlx::query_scalar(OTHERS).fetch_one(&pool).await.unwrap();
    assert_eq!(after, before, "the other tenant's agent is not touched");
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents WHERE tenant = 'default'").await, 11);
    assert_eq!(scalar(&pool, "SELECT count(*) FROM scan_agents WHERE missing_since IS NOT NULL").await, 0);
    let runs: Vec<(String, String)> = sqlx::query_as("SELECT tenant, status FROM sync_runs ORDER BY run_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(runs, vec![("other".into(), "ok".into()), ("default".into(), "partial".into())]);
}
