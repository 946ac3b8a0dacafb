//! Everything the service reads from and writes to PostgreSQL.
//!
//! Each submodule owns one table group: `apply` the agent tables (the diff engine),
//! `ledger` the rate-budget ledger, `runs` the sync-run records, `alerts` the stale episodes
//! and their outbox, `history` the read side of one agent's history. SQL stays next to the
//! code that uses it.
//!
//! Advisory locks used (all transaction-scoped unless noted), in one place so keys never clash:
//! - [`APPLY_LOCK`]: serializes batch application, so concurrent appliers behave as if in sequence.
//! - `ledger::LEDGER_LOCK`: serializes budget slot grants across processes.
//! - `alerts::ALERT_LOCK`: serializes staleness evaluations, so no episode fires twice.

pub mod alerts;
pub mod apply;
pub mod history;
pub mod ledger;
pub mod runs;
pub mod stale;

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Embedded migrations, applied by `migrate` and at daemon start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Advisory lock key that serializes [`Store::apply`]. One global lock rather than row
/// locks: appliers never deadlock, and a second applier waits at most one batch.
pub const APPLY_LOCK: i64 = 0x5CA5_0001;

/// A failure talking to PostgreSQL. Messages never include the database password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database.url is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error(
        "cannot connect to PostgreSQL at {target}: {source}. Is the server running and is \
         database.url right? (locally: `pg_ctlcluster 15 main start`)"
    )]
    Connect { target: String, source: sqlx::Error },
    #[error("applying database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error while {what}: {source}")]
    Query { what: &'static str, source: sqlx::Error },
}

impl StoreError {
    /// True when retrying later may succeed (the server went away, a pool timed out).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Query { source, .. } => {
                matches!(source, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
            }
            StoreError::BadUrl(_) | StoreError::Migrate(_) => false,
        }
    }
}

/// Attaches what was being done to a sqlx error.
pub(crate) trait QueryContext<T> {
    fn during(self, what: &'static str) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, sqlx::Error> {
    fn during(self, what: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { what, source })
    }
}

/// The service's handle on PostgreSQL.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects a pool and checks the server answers, so a wrong URL fails at start with
    /// the host and database named (never the password).
    pub async fn connect(url: &SecretString, max_connections: u32) -> Result<Store, StoreError> {
        let options = PgConnectOptions::from_str(url.expose_secret())
            .map_err(|e| StoreError::BadUrl(redact_error(&e.to_string(), url)))?;
        let target = describe(&options);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect { target, source })?;
        Ok(Store { pool })
    }

    /// Wraps an existing pool (tests, benchmarks).
    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    /// The underlying pool, for queries that belong to no single table group.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies every pending migration; safe to run from several processes at once
    /// (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

/// `host:port/database` for messages: enough to spot a wrong target, nothing secret.
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    )
}

/// Removes the URL itself from a parser message, since it may carry a password.
fn redact_error(message: &str, url: &SecretString) -> String {
    message.replace(url.expose_secret(), "[database.url]")
}
