//! Shared test setup: a fresh, migrated PostgreSQL database per test.
//!
//! Tests never run without a real server: when PostgreSQL does not answer they fail with
//! a message saying what to start.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod daemon;
pub mod exposition;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use scan_agent_sync::store::Store;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Where the tests find PostgreSQL: `DATABASE_URL`, or the local server's `postgres` database.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Variables of the calling environment that would change what the binary loads or logs.
const INHERITED: [&str; 5] =
    ["DATABASE_URL", "RUST_LOG", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY", "SCAN_AGENT_SYNC_CONFIG"];

/// The `scan-agent-sync` binary with none of the caller's overrides in its environment, so a
/// developer's `DATABASE_URL` or `RUST_LOG` cannot change what a test sees.
pub fn binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_scan-agent-sync"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SCAN_AGENT_SYNC__") || INHERITED.contains(&name.as_str()) {
            command.env_remove(name);
        }
    }
    command
}

/// Where every test keeps what the product logged, so `tests/secrets_in_logs.rs` can scan the
/// whole suite's output for secrets afterwards (`.ci/run` empties it before the suite).
pub fn kept_logs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-logs")
}

/// Keeps `text`, something the product logged or printed, for the secrets scan. Best effort:
/// a test never fails for want of disk space here, the scan fails if too little was kept.
pub fn keep_log(label: &str, text: &str) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.file_stem()?.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let dir = kept_logs_dir();
    let name =
        format!("{binary}-{}-{}-{label}.log", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let _ = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(name), text));
}

/// Runs `command` to completion like [`std::process::Command::output`], keeping what it
/// printed for the secrets scan.
pub fn output(command: &mut std::process::Command) -> std::process::Output {
    let output = command.output().expect("running the scan-agent-sync binary");
    let printed = [&output.stdout[..], &output.stderr[..]].concat();
    keep_log("output", &String::from_utf8_lossy(&printed));
    output
}

/// Test databases older than this are left over from killed runs and are dropped.
const STALE_TEST_DB_SECS: u64 = 3600;
const PREFIX: &str = "sas_test_";

/// Creates a uniquely named database, applies the migrations, and returns a pool on it.
pub async fn fresh_pool() -> PgPool {
    let options = PgConnectOptions::from_str(&admin_url()).unwrap().database(&fresh_database().await);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("connecting to the test database");
    scan_agent_sync::store::MIGRATOR.run(&pool).await.expect("migrating the test database");
    pool
}

/// Creates a uniquely named, empty database (no migrations) and returns its name.
pub async fn fresh_database() -> String {
    let url = admin_url();
    let mut admin = PgConnection::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "the tests need PostgreSQL at {url} (from DATABASE_URL or the default) and it did not \
             answer: {e}. Start it with `pg_ctlcluster 15 main start` (or `bash .ci/run`), \
             or point DATABASE_URL at a server where this user may CREATE DATABASE."
        )
    });
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    drop_stale_databases(&mut admin, now).await;
    let name = format!("{PREFIX}{now}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("creating the test database");
    name
}

/// A pool on a new database migrated up to, not including, the migration named
/// `description`: the schema the previous release left, for tests of that migration.
pub async fn pool_before_migration(description: &str) -> PgPool {
    let migrator = &scan_agent_sync::store::MIGRATOR;
    let pool = PgPool::connect(&database_url(&fresh_database().await))
        .await
        .expect("connecting to the test database");
    let mine = migrator.iter().find(|m| m.description == description).expect("a migration so named").version;
    let previous =
        migrator.iter().map(|m| m.version).filter(|v| *v < mine).max().expect("an earlier migration");
    migrator.run_to(previous, &pool).await.expect("migrating the test database");
    pool
}

/// The URL of database `name` on the tests' server, for running the binary against it.
pub fn database_url(name: &str) -> String {
    let mut url = reqwest::Url::parse(&admin_url()).expect("DATABASE_URL is a URL");
    url.set_path(name);
    url.into()
}

/// A [`Store`] on a fresh database.
pub async fn fresh_store() -> Store {
    Store::from_pool(fresh_pool().await)
}

async fn drop_stale_databases(admin: &mut PgConnection, now: u64) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'sas\\_test\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for name in names {
        let created: Option<u64> = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse().ok());
        if created.is_some_and(|t| now.saturating_sub(t) > STALE_TEST_DB_SECS) {
            // Best effort: another run may be dropping the same database.
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}

/// Loads a configuration from TOML text through the normal loader, with the simulator's
/// client secret; `database.url` is a placeholder since tests hand pools over directly.
pub fn settings(toml: &str) -> scan_agent_sync::config::Settings {
    let file = tempfile::NamedTempFile::new().expect("a temporary config file");
    std::fs::write(file.path(), toml).expect("writing the temporary config file");
    let env = std::collections::HashMap::from([
        ("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET".to_owned(), "sim-secret".to_owned()),
        ("DATABASE_URL".to_owned(), "postgres://placeholder@127.0.0.1/unused".to_owned()),
    ]);
    scan_agent_sync::config::Settings::load_with_env(file.path(), &env)
        .unwrap_or_else(|e| panic!("test configuration rejected: {e}\n{toml}"))
}

/// Collects what is logged on the current thread, to check log levels and search for
/// secrets (tokio tests run on a current-thread runtime, so the default subscriber sees all).
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures logs while alive; keeps what was captured for the secrets scan when dropped.
pub struct CaptureGuard {
    _default: tracing::subscriber::DefaultGuard,
    captured: Captured,
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        keep_log("captured", &self.captured.text());
    }
}

impl Captured {
    /// Captures everything at `level` and above until the guard drops.
    pub fn install(&self, level: tracing::Level) -> CaptureGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(level)
            .finish();
        CaptureGuard { _default: tracing::subscriber::set_default(subscriber), captured: self.clone() }
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
