//! `scan-agent-sync run` as operators run it, for the end-to-end daemon tests: the simulator
//! in-process, a fresh database, a configuration file in a temporary directory, and the real
//! binary in a child process, with bounded waits on what it shows from outside (HTTP, the
//! `sync_runs` table, its JSON log).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::simulator::{self, SimulatorHandle, SimulatorOptions};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::exposition::{Sample, parse_exposition};

/// Start-up of a fresh process (exec, migrations on an empty database, first leadership poll)
/// on a loaded two-core machine.
pub const STARTUP: Duration = Duration::from_secs(30);

/// How often the waits below look again: short next to every bound they enforce.
const POLL: Duration = Duration::from_millis(100);

/// The simulator and a database that one or more daemons share.
pub struct Fixture {
    pub sim: SimulatorHandle,
    /// A pool on the daemons' database, for the assertions.
    pub pool: PgPool,
    database_url: String,
    /// Holds the configuration files, `ids_file` and the daemons' logs.
    dir: tempfile::TempDir,
    ids_file: PathBuf,
}

/// What may differ between the daemons of the tests.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `schedule.cron`.
    pub cron: String,
    /// `rate_limit.max_in_flight`.
    pub max_in_flight: usize,
    /// `rate_limit.windows`; empty leaves the product's defaults.
    pub windows: Vec<RateWindow>,
    /// `defender.fetch_mode`.
    pub fetch_mode: &'static str,
    /// `alerts.webhook_url`; None leaves alerts in the log.
    pub webhook_url: Option<String>,
    /// `[[tenants]]` entries, as TOML. Empty: the one tenant of the simulator, tracking the
    /// fixture's `ids_file`. Otherwise `[defender]` is the simulator's partner-model section,
    /// shared by the entries, and these entries choose the agents.
    pub tenants: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            cron: "*/2 * * * * *".to_owned(),
            max_in_flight: 4,
            windows: Vec::new(),
            fetch_mode: "by-id",
            webhook_url: None,
            tenants: String::new(),
        }
    }
}

impl Fixture {
    /// A simulated tenant of `agents` agents answering after `latency`, a fresh database, and
    /// an `ids_file` listing the first `tracked` of them. The fleet is frozen (no agent
    /// upgrades, goes silent or disappears), so each cycle's outcome is known in advance.
    pub async fn start(agents: usize, tracked: usize, latency: Duration) -> Fixture {
        Fixture::with_simulator(SimulatorOptions { latency, ..SimulatorOptions::frozen(agents) }, tracked)
            .await
    }

    /// A simulator started from `options` (an evolving fleet, enforced windows...), a fresh
    /// database, and an `ids_file` listing the first `tracked` agents, also those that vanished
    /// while the database was created.
    pub async fn with_simulator(options: SimulatorOptions, tracked: usize) -> Fixture {
        let sim = simulator::start(options).await.expect("starting the simulator");
        let name = super::fresh_database().await;
        let database_url = super::database_url(&name);
        let options = PgConnectOptions::from_str(&database_url).expect("a database URL");
        let pool = PgPoolOptions::new().max_connections(2).connect_lazy_with(options);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let fixture = Fixture { ids_file: dir.path().join("agents.txt"), sim, pool, database_url, dir };
        fixture.write_ids(&fixture.sim.every_agent_id()[..tracked]);
        fixture
    }

    /// Replaces `agents.ids_file` with one ID per line.
    pub fn write_ids(&self, ids: &[String]) {
        self.write_ids_file(&ids.join("\n"));
    }

    /// Replaces `agents.ids_file` with `text` as written.
    pub fn write_ids_file(&self, text: &str) {
        write_list(&self.ids_file, text);
    }

    /// Replaces the `ids_file` of tenant t`n` (see [`Fixture::tenant_entries`]) with these IDs.
    pub fn write_tenant_ids(&self, n: usize, ids: &[String]) {
        write_list(&self.tenant_ids_file(n), &ids.join("\n"));
    }

    fn tenant_ids_file(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("t{n}.txt"))
    }

    /// [`DaemonConfig::tenants`] for the first `n` simulated tenants: t1..tn, each tracking
    /// its fleet by ID in its own `ids_file`.
    pub fn tenant_entries(&self, n: usize) -> String {
        let hosted = self.sim.tenants();
        assert!(hosted.len() >= n, "the simulator serves {} tenants, not {n}", hosted.len());
        (1..=n)
            .zip(&hosted)
            .map(|(i, tenant)| {
                self.write_tenant_ids(i, &tenant.agent_ids());
                let file = self.tenant_ids_file(i);
                format!(
                    "[[tenants]]\nname = \"t{i}\"\ntenant_id = \"{}\"\nids_file = {file:?}\n\n",
                    tenant.tenant_id()
                )
            })
            .collect()
    }

    /// Starts `scan-agent-sync run` on this fixture with its own HTTP port, configuration file
    /// and log file, and waits until `/readyz` answers 200.
    pub async fn spawn(&self, config: &DaemonConfig) -> Daemon {
        let port = free_port();
        let log_path = self.dir.path().join(format!("daemon-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("creating the log file");
        let child = self
            .command(config, port, "run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting scan-agent-sync run");
        let daemon = Daemon { child, base: format!("http://127.0.0.1:{port}"), log_path };
        daemon.wait_ready().await;
        daemon
    }

    /// `scan-agent-sync COMMAND` on this fixture's configuration (serving HTTP on `port`
    /// when the command does), with the simulator's client secret.
    pub fn command(&self, config: &DaemonConfig, port: u16, command: &str) -> std::process::Command {
        let config_path = self.dir.path().join(format!("config-{port}.toml"));
        std::fs::write(&config_path, self.config_toml(config, port)).expect("writing the configuration");
        let mut binary = super::binary();
        binary
            .args([command, "--config"])
            .arg(&config_path)
            .env("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", "sim-secret");
        binary
    }

    fn config_toml(&self, config: &DaemonConfig, port: u16) -> String {
        let windows: Vec<String> = config
            .windows
            .iter()
            .map(|w| format!("{{ calls = {}, per = \"{}\" }}", w.calls, humantime::format_duration(w.per)))
            .collect();
        let windows = match windows.is_empty() {
            true => String::new(),
            false => format!("windows = [{}]\n", windows.join(", ")),
        };
        let (defender, agents) = match config.tenants.is_empty() {
            true => {
                let ids = self.ids_file.to_str().expect("a UTF-8 temporary path");
                (self.sim.defender_config(), format!("[agents]\nids_file = {ids:?}\n\n"))
            }
            false => (self.sim.partner_defender_config(), String::new()),
        };
        format!(
            "{defender}fetch_mode = \"{mode}\"\n\n\
             [rate_limit]\nmax_in_flight = {in_flight}\n{windows}\n\
             {agents}\
             [schedule]\ncron = \"{cron}\"\n\n\
             [database]\nurl = \"{url}\"\n\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [alerts]\nwebhook_url = \"{webhook}\"\n\n\
             [log]\nformat = \"json\"\n\n\
             {tenants}",
            mode = config.fetch_mode,
            in_flight = config.max_in_flight,
            cron = config.cron,
            url = self.database_url,
            webhook = config.webhook_url.as_deref().unwrap_or_default(),
            tenants = config.tenants,
        )
    }

    /// Every run so far, oldest first; empty while the database does not answer.
    pub async fn runs(&self) -> Vec<Run> {
        sqlx::query_as(
            "SELECT run_id, tenant, started_at, finished_at, status, agents_requested, agents_fetched, error
             FROM sync_runs ORDER BY run_id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default()
    }

    /// Waits until some run satisfies `accept` and returns it.
    pub async fn wait_for_run(&self, what: &str, limit: Duration, accept: impl Fn(&Run) -> bool) -> Run {
        eventually(what, limit, async || self.runs().await.into_iter().find(|run| accept(run))).await
    }

    /// Asserts what must hold after any sequence of cycles, crashes and restarts: exactly one
    /// current version per agent, and every agent's `last_seen` kept in its history.
    pub async fn assert_history_consistent(&self) {
        let without_one_current: Vec<String> = sqlx::query_scalar(
            "SELECT agent_id FROM scan_agents a
             WHERE (SELECT count(*) FROM scan_agent_versions v
                    WHERE v.agent_id = a.agent_id AND v.valid_to IS NULL) <> 1",
        )
        .fetch_all(&self.pool)
        .await
        .expect("counting current versions");
        assert!(
            without_one_current.is_empty(),
            "agents without exactly one current version: {without_one_current:?}"
        );
        let last_seen_not_kept: Vec<String> = sqlx::query_scalar(
            "SELECT agent_id FROM scan_agents a
             WHERE NOT EXISTS (SELECT 1 FROM scan_agent_last_seen s
                               WHERE s.agent_id = a.agent_id AND s.last_seen = a.last_seen)",
        )
        .fetch_all(&self.pool)
        .await
        .expect("matching last_seen history");
        assert!(
            last_seen_not_kept.is_empty(),
            "agents whose last_seen has no history row: {last_seen_not_kept:?}"
        );
    }

    /// Asserts that the simulator never answered 429 and no window ever held more accepted
    /// requests than it allows, in any tenant: the budget held across every process of the test.
    pub fn assert_budget_respected(&self) {
        self.sim.tenants().iter().for_each(assert_budget_respected);
    }
}

/// Asserts that the simulated tenant of `sim` never answered 429 and none of its windows ever
/// held more accepted requests than it allows: that tenant's budget held.
#[track_caller]
pub fn assert_budget_respected(sim: &SimulatorHandle) {
    let stats = sim.stats();
    assert_eq!(stats.throttled, 0, "tenant {} throttled requests: {stats:?}", sim.tenant_id());
    for peak in &stats.window_peaks {
        assert!(
            peak.max_accepted <= peak.window.calls,
            "tenant {}: window exceeded: {peak:?}",
            sim.tenant_id()
        );
    }
}

/// Writes an ID list file as operators do, with a comment line first.
fn write_list(path: &std::path::Path, text: &str) {
    std::fs::write(path, format!("# agents the daemon tests track\n{text}\n")).expect("writing the ID file");
}

/// One row of `sync_runs`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub run_id: i64,
    pub tenant: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: String,
    pub agents_requested: i32,
    pub agents_fetched: i32,
    pub error: Option<String>,
}

/// A running `scan-agent-sync run`; killed when dropped, its log printed if the test failed.
pub struct Daemon {
    child: Child,
    base: String,
    log_path: PathBuf,
}

impl Daemon {
    /// Waits until `/readyz` answers 200: migrated, database reachable, leadership known.
    pub async fn wait_ready(&self) {
        eventually("/readyz 200", STARTUP, async || (self.get("/readyz").await?.0 == 200).then_some(()))
            .await;
    }

    /// Status and body of `GET path`; None while nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// `/metrics`, parsed (which fails the test if it is not valid exposition text).
    pub async fn metrics(&self) -> Vec<Sample> {
        let (status, body) = self.get("/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200, "{body}");
        parse_exposition(&body)
    }

    /// The value of an unlabelled sample, or of the first sample of a family; None if absent.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().await.iter().find(|sample| sample.name == name).map(|sample| sample.value)
    }

    /// Sends a signal by name (`TERM`, `HUP`) through kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("running kill(1)");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// SIGKILL, as a crash or the OOM killer would, and reaps the process.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        self.child.wait().expect("reaping the daemon");
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("polling the daemon").is_none()
    }

    /// Waits for the process to exit by itself within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        eventually("the daemon to exit", limit, async || self.child.try_wait().expect("polling the daemon"))
            .await
    }

    /// The JSON log events so far (stderr, one object per line). Other lines, such as the
    /// plain `error: ...` a failing command prints last, are left out.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log_path).expect("reading the daemon's log");
        text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Waits for a log event with this message and returns its fields.
    pub async fn wait_for_event(&self, message: &str, limit: Duration) -> Value {
        self.wait_for_event_with(message, "", limit).await
    }

    /// Waits for a log event with this message whose fields mention `detail` somewhere, and
    /// returns its fields.
    pub async fn wait_for_event_with(&self, message: &str, detail: &str, limit: Duration) -> Value {
        eventually(&format!("log event {message:?} mentioning {detail:?}"), limit, async || {
            self.events().into_iter().find_map(|event| {
                let fields = event.get("fields")?;
                let matches =
                    fields.get("message")?.as_str()? == message && fields.to_string().contains(detail);
                matches.then(|| fields.clone())
            })
        })
        .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        super::keep_log("daemon", &log);
        if std::thread::panicking() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}:", self.log_path.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `probe` until it returns Some, panicking with `what` after `limit`.
pub async fn eventually<T>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {what} within {limit:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// A loopback port nothing listens on right now (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding port 0").port()
}
