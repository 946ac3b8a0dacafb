//! Tenants kept apart end to end (issue 13, PRODUCT.md "Tenants"): five tenants of the
//! partner-model simulator in one configuration and one database, synced by the real binary.
//!
//! - `sync` stores each tenant's fleet under the tenant's name (agents, versions, lastSeen
//!   history, its own run and ledger rows), whichever way the tenant chooses its agents.
//! - Each tenant stays inside its own rate windows while using them fully.
//! - A tenant in trouble (a 429 storm, a wrong secret, a 5xx storm) fails alone: the other
//!   tenants' runs are `ok`, complete and on time, under `sync` and under the schedule of the
//!   `run` daemon.
//!
//! The store-level cases (the migration, refusing another tenant's agent, missing marks) are
//! in tests/tenants.rs, configuration conflicts in tests/config/tenants.rs. Every test drives
//! a multi-threaded runtime, because the simulator serves from the test's own runtime while
//! the binary runs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::simulator::{Faults, SimulatorHandle, SimulatorOptions};
use sqlx::PgPool;
use support::daemon::{DaemonConfig, Fixture, STARTUP, assert_budget_respected, eventually};

/// The `[[tenants]]` names, in the simulator's tenant order. The first is the one that gets
/// into trouble: first in the configuration, so a tenant queued behind it would be late.
const NAMES: [&str; 5] = ["contoso", "fabrikam", "northwind", "tailspin", "woodgrove"];

/// Agents in each simulated tenant.
const AGENTS: usize = 4;

/// Agents on one list page: a listing takes two pages.
const PAGE_SIZE: usize = 3;

/// A schedule whose next tick is months away: `sync` starts no request after the next tick,
/// and these runs must not meet that deadline whenever the test happens to run.
const NEVER_SOON: &str = "0 0 0 1 1 *";

/// How a `[[tenants]]` entry chooses and fetches its agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selection {
    /// `track_all = true`, and `[defender]`'s `fetch_mode = "auto"`: every agent the list
    /// returns.
    TrackAll,
    /// Its fleet's IDs in `ids`, fetched one by one (`fetch_mode = "by-id"`).
    Ids,
    /// Its fleet's IDs in an `ids_file`, fetched one by one (`fetch_mode = "by-id"`).
    IdsFile,
    /// All of its fleet's IDs but the last in `ids`, fetched through the list
    /// (`fetch_mode = "list"`), which returns the last one too.
    SomeIdsListed,
}

/// The five tenants' selections: every way there is. The first tenant, the one in trouble,
/// lists, so its retries wait for one request rather than one per agent.
const MIXED: [Selection; 5] =
    [Selection::TrackAll, Selection::Ids, Selection::IdsFile, Selection::SomeIdsListed, Selection::TrackAll];

impl Selection {
    /// The agents of `fleet` (in list order) this selection tracks.
    fn tracked(self, fleet: &[String]) -> &[String] {
        match self {
            Selection::SomeIdsListed => &fleet[..fleet.len() - 1],
            _ => fleet,
        }
    }

    /// The `sync_runs.agents_requested` of its cycles: the IDs it configures.
    fn requested(self, fleet: &[String]) -> usize {
        match self {
            Selection::TrackAll => 0,
            _ => self.tracked(fleet).len(),
        }
    }

    /// The `sync_runs.mode` of its cycles.
    fn mode(self) -> &'static str {
        match self {
            Selection::TrackAll | Selection::SomeIdsListed => "list",
            Selection::Ids | Selection::IdsFile => "by-id",
        }
    }

    /// The entry's keys that choose its agents, as `fleet` is now; an `ids_file` is written
    /// into `files`.
    fn keys(self, name: &str, fleet: &[String], files: &Path) -> String {
        let quoted = |ids: &[String]| ids.iter().map(|id| format!("{id:?}")).collect::<Vec<_>>().join(", ");
        match self {
            Selection::TrackAll => "track_all = true\n".to_owned(),
            Selection::Ids => format!("ids = [{}]\nfetch_mode = \"by-id\"\n", quoted(fleet)),
            Selection::IdsFile => {
                let path = files.join(format!("{name}.txt"));
                std::fs::write(&path, format!("# {name}'s agents\n{}\n", fleet.join("\n")))
                    .expect("writing the ID file");
                let path = path.to_str().expect("a UTF-8 temporary path");
                format!("ids_file = {path:?}\nfetch_mode = \"by-id\"\n")
            }
            Selection::SomeIdsListed => {
                format!("ids = [{}]\nfetch_mode = \"list\"\n", quoted(self.tracked(fleet)))
            }
        }
    }
}

/// One `[[tenants]]` entry: how it chooses its agents, and any further keys (one per line).
#[derive(Debug, Clone)]
struct Entry {
    selection: Selection,
    keys: String,
}

impl From<Selection> for Entry {
    fn from(selection: Selection) -> Self {
        Entry { selection, keys: String::new() }
    }
}

/// Five simulated tenants, a fresh database, and one configuration with an entry for each.
struct FiveTenants {
    fixture: Fixture,
    entries: Vec<Entry>,
    /// Holds the ID files the entries name.
    files: tempfile::TempDir,
}

impl FiveTenants {
    /// A simulator of five frozen tenants of `agents` agents each, enforcing `windows` per
    /// tenant (empty: Defender's defaults).
    async fn start(agents: usize, windows: Vec<RateWindow>, entries: Vec<Entry>) -> FiveTenants {
        assert_eq!(entries.len(), NAMES.len(), "one entry per tenant");
        let mut options = SimulatorOptions {
            tenants: NAMES.len(),
            page_size: PAGE_SIZE,
            ..SimulatorOptions::frozen(agents)
        };
        if !windows.is_empty() {
            options.windows = windows;
        }
        let fixture = Fixture::with_simulator(options, 0).await;
        let five =
            FiveTenants { fixture, entries, files: tempfile::tempdir().expect("a temporary directory") };
        let all: BTreeSet<String> = five.tenants().iter().flat_map(SimulatorHandle::agent_ids).collect();
        assert_eq!(all.len(), NAMES.len() * agents, "each simulated tenant has agents of its own");
        five
    }

    /// A handle on each simulated tenant, in [`NAMES`] order.
    fn tenants(&self) -> Vec<SimulatorHandle> {
        self.fixture.sim.tenants()
    }

    /// The configuration with every entry, on `cron`.
    fn config(&self, cron: &str) -> DaemonConfig {
        let tenants = NAMES
            .iter()
            .zip(&self.entries)
            .zip(self.tenants())
            .map(|((name, entry), tenant)| {
                format!(
                    "[[tenants]]\nname = \"{name}\"\ntenant_id = \"{}\"\n{}{}\n",
                    tenant.tenant_id(),
                    entry.selection.keys(name, &tenant.agent_ids(), self.files.path()),
                    entry.keys,
                )
            })
            .collect();
        DaemonConfig { cron: cron.to_owned(), fetch_mode: "auto", tenants, ..DaemonConfig::default() }
    }

    /// Runs `scan-agent-sync sync` for every tenant, off the runtime, so the in-process
    /// simulator keeps answering while the test waits.
    async fn sync(&self) -> Output {
        let mut command = self.fixture.command(&self.config(NEVER_SOON), 0, "sync");
        let output = tokio::task::spawn_blocking(move || support::output(&mut command))
            .await
            .expect("running scan-agent-sync sync");
        println!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        output
    }

    /// Per tenant name, the agent IDs its entry tracks of its simulated fleet.
    fn expected(&self) -> BTreeMap<String, BTreeSet<String>> {
        NAMES
            .iter()
            .zip(&self.entries)
            .zip(self.tenants())
            .map(|((name, entry), tenant)| {
                let fleet = tenant.agent_ids();
                ((*name).to_owned(), entry.selection.tracked(&fleet).iter().cloned().collect())
            })
            .collect()
    }

    /// Asserts that the agents, their versions and their lastSeen history are exactly
    /// `expected`, each row under its tenant's name, and every history consistent.
    async fn assert_rows(&self, expected: &BTreeMap<String, BTreeSet<String>>) {
        let pool = &self.fixture.pool;
        for (table, sql) in [
            ("scan_agents", "SELECT tenant, agent_id FROM scan_agents"),
            ("scan_agent_versions", "SELECT tenant, agent_id FROM scan_agent_versions"),
            ("scan_agent_last_seen", "SELECT tenant, agent_id FROM scan_agent_last_seen"),
        ] {
            assert_eq!(&ids_by_tenant(pool, sql).await, expected, "{table}: agent IDs by tenant");
        }
        self.fixture.assert_history_consistent().await;
    }

    /// Every run so far, by tenant name, oldest first.
    async fn runs(&self) -> BTreeMap<String, Vec<TenantRun>> {
        let runs: Vec<TenantRun> = sqlx::query_as(
            "SELECT tenant, started_at, finished_at, status, mode, agents_requested,
                    agents_fetched, api_calls, throttled, error
             FROM sync_runs ORDER BY run_id",
        )
        .fetch_all(&self.fixture.pool)
        .await
        .expect("reading sync_runs");
        let mut by_tenant: BTreeMap<String, Vec<TenantRun>> = BTreeMap::new();
        for run in runs {
            by_tenant.entry(run.tenant.clone()).or_default().push(run);
        }
        by_tenant
    }

    /// The one run of each tenant, after a single `sync`.
    async fn only_runs(&self) -> BTreeMap<String, TenantRun> {
        self.runs()
            .await
            .into_iter()
            .map(|(tenant, mut runs)| {
                assert_eq!(runs.len(), 1, "one run of {tenant}: {runs:#?}");
                (tenant, runs.remove(0))
            })
            .collect()
    }
}

/// One row of `sync_runs`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct TenantRun {
    tenant: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    status: String,
    mode: String,
    agents_requested: i32,
    agents_fetched: i32,
    api_calls: i32,
    throttled: i32,
    error: Option<String>,
}

impl TenantRun {
    /// When it finished; the runs asserted on all have.
    fn finished(&self) -> DateTime<Utc> {
        self.finished_at.unwrap_or_else(|| panic!("run left open: {self:#?}"))
    }

    /// From its start to its end, by the database's clock.
    fn lasted(&self) -> Duration {
        (self.finished() - self.started_at).to_std().unwrap_or_default()
    }

    /// Asserts an `ok`, unthrottled run that fetched every one of `tracked` agents.
    #[track_caller]
    fn assert_complete(&self, tracked: usize) {
        let tracked = i32::try_from(tracked).expect("a small fleet");
        assert_eq!(
            (self.status.as_str(), self.agents_fetched, self.throttled, self.error.as_deref()),
            ("ok", tracked, 0, None),
            "{self:#?}"
        );
    }
}

/// Per tenant, the agent IDs of `sql`'s `(tenant, agent_id)` rows.
async fn ids_by_tenant(pool: &PgPool, sql: &'static str) -> BTreeMap<String, BTreeSet<String>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as(sql).fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut by_tenant: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tenant, id) in rows {
        by_tenant.entry(tenant).or_default().insert(id);
    }
    by_tenant
}

/// Per tenant, its rows in the call ledger.
async fn ledger_by_tenant(pool: &PgPool) -> BTreeMap<String, u64> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT tenant, count(*) FROM api_calls GROUP BY tenant")
        .fetch_all(pool)
        .await
        .expect("counting the ledger");
    rows.into_iter().map(|(tenant, n)| (tenant, u64::try_from(n).expect("a count"))).collect()
}

/// Per tenant, the most ledger rows in any interval of length `per` (by the recorded times),
/// as tests/budget.rs measures one window.
async fn busiest_window_by_tenant(pool: &PgPool, per: Duration) -> BTreeMap<String, i64> {
    sqlx::query_as(
        "SELECT tenant, max(n) FROM (
           SELECT tenant, count(*) OVER (PARTITION BY tenant ORDER BY called_at
                                         RANGE BETWEEN CURRENT ROW AND $1::interval FOLLOWING) AS n
           FROM api_calls) c
         GROUP BY tenant",
    )
    .bind(per - Duration::from_micros(1))
    .fetch_all(pool)
    .await
    .expect("measuring the ledger's windows")
    .into_iter()
    .collect()
}

/// The exit code of a `sync`, which must not have been killed.
#[track_caller]
fn exit_code(output: &Output) -> i32 {
    output.status.code().expect("sync exits rather than being killed")
}

/// `defender.max_retries` when the configuration does not set it, as the tests here leave it.
fn default_max_retries() -> u32 {
    let settings = support::settings("[defender]\ntenant_id = \"t\"\nclient_id = \"c\"\n");
    settings.tenants()[0].defender.max_retries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_tenants_in_one_sync_each_store_their_own_fleet_under_their_name() {
    let five = FiveTenants::start(AGENTS, Vec::new(), MIXED.map(Entry::from).to_vec()).await;

    let output = five.sync().await;
    assert_eq!(exit_code(&output), 0, "every tenant fetched every agent");

    let expected = five.expected();
    let runs = five.only_runs().await;
    assert_eq!(runs.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "a run per tenant");
    for ((name, selection), tenant) in NAMES.iter().zip(MIXED).zip(five.tenants()) {
        let run = &runs[*name];
        run.assert_complete(expected[*name].len());
        let requested = i32::try_from(selection.requested(&tenant.agent_ids())).unwrap();
        assert_eq!((run.mode.as_str(), run.agents_requested), (selection.mode(), requested), "{run:#?}");
    }
    five.assert_rows(&expected).await;

    // Each tenant's calls went to its own API (its token) and into its own ledger rows: the
    // simulator saw exactly the calls each tenant recorded, and answered each with its fleet.
    let ledger = ledger_by_tenant(&five.fixture.pool).await;
    for (name, tenant) in NAMES.iter().zip(five.tenants()) {
        let stats = tenant.stats();
        assert!(stats.api_requests > 0, "{name} called its API: {stats:?}");
        assert_eq!(ledger.get(*name), Some(&stats.api_requests), "{name}'s ledger rows, {stats:?}");
        assert_eq!(runs[*name].api_calls, i32::try_from(stats.api_requests).unwrap(), "{name}");
        let served: BTreeSet<String> = tenant
            .served_agents()
            .iter()
            .filter_map(|served| served.agent["id"].as_str().map(str::to_owned))
            .collect();
        assert!(served.is_superset(&expected[*name]), "{name} stored only what its API served");
        assert_budget_respected(&tenant);
    }
    assert_eq!(ledger.len(), NAMES.len(), "no ledger rows of another tenant: {ledger:?}");
}

/// A second `sync`, with every tenant's agents stored: each complete list marks nothing of
/// another tenant missing, and an agent of contoso that woodgrove's API returns too is
/// refused there, naming both tenants, and stays contoso's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_mark_nothing_of_other_tenants_and_an_agent_returned_by_the_wrong_one_is_refused() {
    let five = FiveTenants::start(AGENTS, Vec::new(), MIXED.map(Entry::from).to_vec()).await;
    assert_eq!(exit_code(&five.sync().await), 0, "the first sync stores every tenant's agents");
    let expected = five.expected();
    let tenants = five.tenants();
    let (owner, stray, lister) = (NAMES[0], tenants[0].agent_ids()[0].clone(), NAMES[4]);
    assert_eq!(MIXED[4], Selection::TrackAll, "{lister} stores whatever its list returns");
    tenants[4].add_agent(&stray);

    let output = five.sync().await;
    assert_eq!(exit_code(&output), 2, "{lister}'s refusal makes the sync partial");
    let runs = five.runs().await;
    let refusing = runs[lister].last().expect("a second run");
    let error = refusing.error.as_deref().unwrap_or_default();
    assert_eq!(refusing.status, "partial", "{refusing:#?}");
    for says in [stray.as_str(), &format!("tenant {lister}"), &format!("stored under tenant {owner}")] {
        assert!(error.contains(says), "{says:?} missing from {error:?}");
    }
    for (name, tracked) in expected.iter().filter(|(name, _)| *name != lister) {
        runs[name].last().expect("a second run").assert_complete(tracked.len());
    }
    five.assert_rows(&expected).await;
    let missing: Vec<(String, String)> =
        sqlx::query_as("SELECT tenant, agent_id FROM scan_agents WHERE missing_since IS NOT NULL")
            .fetch_all(&five.fixture.pool)
            .await
            .expect("reading missing agents");
    assert!(missing.is_empty(), "no list marks another tenant's agents missing: {missing:?}");
}

/// What goes wrong for the first tenant alone.
#[derive(Debug, Clone, Copy)]
enum Trouble {
    /// Its API answers every call 429 with `Retry-After: 1`.
    Throttled,
    /// Its `client_secret_file` holds a secret Entra ID refuses.
    WrongSecret,
    /// Its API answers every call 500 or 503.
    ServerErrors,
}

/// The secret in the troubled tenant's `client_secret_file`; never to be printed.
const WRONG_SECRET: &str = "not-the-secret-of-contoso";

impl Trouble {
    /// The troubled tenant's entry: by list, with its own secret file for a wrong secret.
    fn entry(self, files: &Path) -> Entry {
        let mut entry = Entry::from(MIXED[0]);
        if let Trouble::WrongSecret = self {
            let path = files.join("contoso_secret");
            std::fs::write(&path, format!("{WRONG_SECRET}\n")).expect("writing the secret file");
            let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
            std::fs::set_permissions(&path, private).expect("making the secret file private");
            entry.keys = format!("client_secret_file = {:?}\n", path.to_str().expect("a UTF-8 path"));
        }
        entry
    }

    /// Sets up the simulated side of the trouble, for `tenant` alone.
    fn inflict(self, tenant: &SimulatorHandle) {
        match self {
            Trouble::Throttled => tenant.set_faults(Faults { throttle_rate: 1.0, ..Faults::default() }),
            Trouble::ServerErrors => tenant.set_faults(Faults { error_rate: 1.0, ..Faults::default() }),
            Trouble::WrongSecret => {}
        }
    }

    /// What the troubled tenant's run must say in `sync_runs.error`.
    fn error_says(self) -> &'static [&'static str] {
        match self {
            Trouble::Throttled => &["HTTP 429", "throttled"],
            Trouble::WrongSecret => &["access token", "the client secret is wrong or expired"],
            Trouble::ServerErrors => &["HTTP 50", "the service failed"],
        }
    }

    /// The least time the trouble holds the tenant's cycle: what its retries must wait (a
    /// pause of `Retry-After` per 429; backoff from 200 ms, doubling, per 5xx). A refused
    /// secret is not retried.
    fn lasts_at_least(self) -> Duration {
        let retries = default_max_retries();
        match self {
            Trouble::Throttled => Duration::from_secs(1) * retries,
            Trouble::ServerErrors => Duration::from_millis(200) * (2u32.pow(retries) - 1),
            Trouble::WrongSecret => Duration::ZERO,
        }
    }
}

/// One `sync` of five tenants with the first in `trouble`: its run fails saying why, the
/// exit code says a part failed, and the other four are `ok`, complete, unthrottled and on
/// time: finished before the troubled tenant's retries were over.
async fn one_tenant_in_trouble_fails_alone(trouble: Trouble) {
    let files = tempfile::tempdir().expect("a temporary directory");
    let mut entries: Vec<Entry> = MIXED.map(Entry::from).to_vec();
    entries[0] = trouble.entry(files.path());
    let five = FiveTenants::start(AGENTS, Vec::new(), entries).await;
    let tenants = five.tenants();
    trouble.inflict(&tenants[0]);

    let output = five.sync().await;
    assert_eq!(exit_code(&output), 2, "one tenant failed and the others fetched everything: partial");
    let printed = [&output.stdout[..], &output.stderr[..]].concat();
    assert!(!String::from_utf8_lossy(&printed).contains(WRONG_SECRET), "the secret was printed");

    let runs = five.only_runs().await;
    let troubled = &runs[NAMES[0]];
    let error = troubled.error.as_deref().unwrap_or_default();
    assert_eq!((troubled.status.as_str(), troubled.agents_fetched), ("failed", 0), "{troubled:#?}");
    for says in trouble.error_says() {
        assert!(error.contains(says), "{trouble:?}: {says:?} missing from {error:?}");
    }
    let least = trouble.lasts_at_least();
    assert!(troubled.lasted() >= least, "{trouble:?} held it at least {least:?}: {troubled:#?}");

    let mut expected = five.expected();
    expected.remove(NAMES[0]);
    for (name, tenant) in NAMES.iter().zip(&tenants).skip(1) {
        let run = &runs[*name];
        run.assert_complete(expected[*name].len());
        // A refused secret fails at once, so there is nothing to be late for.
        if !least.is_zero() {
            assert!(run.finished() < troubled.finished(), "{name} was late: {run:#?}\n{troubled:#?}");
        }
        assert_budget_respected(tenant);
    }
    five.assert_rows(&expected).await;
    if let Trouble::WrongSecret = trouble {
        let stats = tenants[0].stats();
        assert_eq!(
            (stats.token_requests, stats.api_requests),
            (1, 0),
            "the refusal is not retried: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_in_one_tenant_fails_it_alone_and_the_others_sync_on_time() {
    one_tenant_in_trouble_fails_alone(Trouble::Throttled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_of_one_tenant_fails_it_alone_and_the_others_sync_on_time() {
    one_tenant_in_trouble_fails_alone(Trouble::WrongSecret).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_in_one_tenant_fails_it_alone_and_the_others_sync_on_time() {
    one_tenant_in_trouble_fails_alone(Trouble::ServerErrors).await;
}

/// Between the daemon's ticks: less than the troubled tenant's retries need, so its every
/// cycle runs until the next tick.
const TICK: Duration = Duration::from_secs(4);

/// How long after its tick a cycle still counts as started on time, on a loaded machine (the
/// scheduler itself polls every 500 ms).
const ON_TIME: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_daemon_a_429_storm_in_one_tenant_leaves_the_others_on_schedule() {
    let five = FiveTenants::start(AGENTS, Vec::new(), MIXED.map(Entry::from).to_vec()).await;
    let tenants = five.tenants();
    Trouble::Throttled.inflict(&tenants[0]);
    let config = five.config(&format!("*/{} * * * * *", TICK.as_secs()));
    let _daemon = five.fixture.spawn(&config).await;

    // The start's cycle, then two at ticks, of the troubled tenant: each ran to the tick.
    let troubled_runs = 3;
    let limit = STARTUP + 6 * TICK;
    eventually(&format!("{troubled_runs} finished runs of {}", NAMES[0]), limit, async || {
        let runs = five.runs().await.remove(NAMES[0])?;
        (runs.iter().filter(|run| run.finished_at.is_some()).count() >= troubled_runs).then_some(())
    })
    .await;
    let runs = five.runs().await;
    let expected = five.expected();

    let on_tick = |run: &TenantRun| {
        let tick_millis = i64::try_from(TICK.as_millis()).unwrap();
        let into_tick = run.started_at.timestamp_millis().rem_euclid(tick_millis);
        u128::try_from(into_tick).unwrap() < ON_TIME.as_millis()
    };
    for troubled in runs[NAMES[0]].iter().filter(|run| run.finished_at.is_some()).skip(1) {
        assert_eq!(troubled.status, "failed", "{troubled:#?}");
        assert!(troubled.throttled > 0, "{troubled:#?}");
        let error = troubled.error.as_deref().unwrap_or_default();
        assert!(error.contains("429") && error.contains("throttled"), "it names the 429s: {troubled:#?}");
        assert!(troubled.lasted() >= Duration::from_secs(2), "its pauses held it: {troubled:#?}");
        // Every other tenant synced at the same tick and was done before the storm let go.
        for name in &NAMES[1..] {
            let alongside = runs[*name].iter().find(|run| {
                run.started_at >= troubled.started_at - ON_TIME && run.started_at < troubled.finished()
            });
            let run = alongside.unwrap_or_else(|| panic!("no run of {name} during {troubled:#?}"));
            run.assert_complete(expected[*name].len());
            assert!(run.finished() < troubled.finished(), "{name} was late: {run:#?}\n{troubled:#?}");
        }
    }
    for name in &NAMES[1..] {
        let finished: Vec<&TenantRun> = runs[*name].iter().filter(|run| run.finished_at.is_some()).collect();
        assert!(finished.len() >= troubled_runs, "{name} kept the schedule: {finished:#?}");
        for run in finished.iter().skip(1) {
            assert!(on_tick(run), "{name}'s run started late after its tick: {run:#?}");
            run.assert_complete(expected[*name].len());
        }
    }
    for (name, tenant) in NAMES.iter().zip(&tenants).skip(1) {
        assert!(tenant.stats().api_requests > 0, "{name}");
        assert_budget_respected(tenant);
    }
    five.fixture.assert_history_consistent().await;
}

/// Each tenant's window: `calls` grows with the tenant's index, so a tenant that used
/// another's budget, or shared one, would show a peak other than its own.
fn window_of(index: usize) -> RateWindow {
    RateWindow { calls: 6 + 2 * u32::try_from(index).unwrap(), per: Duration::from_secs(2) }
}

/// More agents than any tenant's window covers: each tenant needs several windows.
const MANY_AGENTS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_fills_its_own_windows_and_never_exceeds_them() {
    let windows: Vec<RateWindow> = (0..NAMES.len()).map(window_of).collect();
    let entries = windows
        .iter()
        .map(|w| Entry {
            selection: Selection::Ids,
            keys: format!("windows = [{{ calls = {}, per = \"{}s\" }}]\n", w.calls, w.per.as_secs()),
        })
        .collect();
    // The simulator enforces the largest window on each tenant, and measures each tenant's
    // busiest interval of that length.
    let largest = *windows.iter().max_by_key(|w| w.calls).unwrap();
    let five = FiveTenants::start(MANY_AGENTS, vec![largest], entries).await;

    let output = five.sync().await;
    assert_eq!(exit_code(&output), 0, "every tenant fetched every agent, window after window");

    let runs = five.only_runs().await;
    let busiest = busiest_window_by_tenant(&five.fixture.pool, largest.per).await;
    for ((name, tenant), window) in NAMES.iter().zip(five.tenants()).zip(&windows) {
        let run = &runs[*name];
        run.assert_complete(MANY_AGENTS);
        assert_eq!(run.api_calls, i32::try_from(MANY_AGENTS).unwrap(), "{run:#?}");
        // Its ledger and what its API saw both fill its own window exactly, never more.
        assert_eq!(busiest.get(*name), Some(&i64::from(window.calls)), "{name}'s ledger, {window:?}");
        let stats = tenant.stats();
        assert_eq!(stats.throttled, 0, "{name}: {stats:?}");
        let peaks: Vec<u32> = stats.window_peaks.iter().map(|peak| peak.max_accepted).collect();
        assert_eq!(peaks, [window.calls], "{name}'s busiest {:?} at the API, {window:?}", largest.per);
        // The window, not the API, paced it: all but its first window's calls waited.
        let windows_needed = MANY_AGENTS.div_ceil(window.calls as usize);
        let least = window.per * u32::try_from(windows_needed - 1).unwrap();
        assert!(run.lasted() >= least, "{name} waited for its window: {run:#?}");
    }
    five.assert_rows(&five.expected()).await;
}
