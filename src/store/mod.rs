//! Everything the service reads from and writes to PostgreSQL.
//!
//! Each submodule owns one table group: `apply` the agent tables (the diff engine),
//! `not_found` the 404 stamps that order by-ID fetches, `ledger` the rate-budget ledger,
//! `runs` the sync-run records, `alerts` the stale episodes
//! and their outbox (whose payloads are the `notification` types), `history` the read side
//! of one agent's history, `invariants` the consistency checks across all of them,
//! `retention` partitions and deleting old rows, `summary` the demo's counts, `database`
//! the demo's own database, `block_ranges` the passes over the whole state table. SQL stays
//! next to the code that uses it. A sync cycle reaches its statements through
//! `tenant::TenantStore`, which binds the tenant.
//!
//! Advisory locks used (all transaction-scoped unless noted), in one place so keys never clash:
//! - [`APPLY_LOCK`]: serializes batch application, so concurrent appliers behave as if in sequence;
//!   the parts of a big batch hold it shared, each with its shard's key (`APPLY_LOCK << 32 | shard`).
//! - `ledger::LEDGER_LOCK`: with the tenant's name hashed as the second of a pair of 32-bit
//!   keys, serializes one tenant's budget slot grants across processes.
//! - `leader_lock::LEADER_LOCK` (session-scoped, on a dedicated connection): held by the one
//!   active `run` instance among several sharing the database.
//! - `alerts::ALERT_LOCK`: serializes staleness evaluations, so no episode fires twice.

pub mod alerts;
pub mod apply;
mod block_ranges;
pub mod database;
pub mod fleet;
pub mod history;
pub mod invariants;
pub mod leader_lock;
pub mod ledger;
pub mod missing;
pub mod not_found;
pub mod notification;
mod payload;
pub mod retention;
pub mod runs;
pub mod stale;
pub mod summary;
pub mod tenant;

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::migrate::{Migrate, Migration};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Embedded migrations, applied by `migrate` and at daemon start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The table where sqlx records applied migrations (its default, which `migrate!` keeps).
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Advisory lock key that serializes [`Store::apply`]. One global lock rather than row
/// locks: appliers never deadlock, and a second applier waits at most one batch.
pub const APPLY_LOCK: i64 = 0x5CA5_0001;

/// A failure talking to PostgreSQL. Messages never include the database password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database.url is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error("cannot connect to PostgreSQL at {target}: {source}. {}", connect_hint(source))]
    Connect { target: String, source: sqlx::Error },
    #[error("applying database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error while {what}: {source}{}", hint(source).map(|h| format!(". {h}")).unwrap_or_default())]
    Query { what: &'static str, source: sqlx::Error },
}

/// What to do when the first connection fails. No connection exists yet, so a pool timeout
/// here means the server never answered, not that the pool was busy.
fn connect_hint(source: &sqlx::Error) -> &'static str {
    const NO_SERVER: &str =
        "Is the server running and is database.url right? (locally: `pg_ctlcluster 15 main start`)";
    match source {
        sqlx::Error::PoolTimedOut => NO_SERVER,
        other => hint(other).unwrap_or(NO_SERVER),
    }
}

/// What to do about the failures an operator can fix without a code change: the ones the
/// fault tests (`tests/faults.rs`) provoke.
fn hint(source: &sqlx::Error) -> Option<&'static str> {
    let code = source.as_database_error().and_then(|e| e.code());
    match (source, code.as_deref()) {
        (sqlx::Error::PoolTimedOut, _) => Some(
            "Every connection of the pool stayed busy: raise database.max_connections, or look in \
             pg_stat_activity for sessions that hold connections or locks for long",
        ),
        // query_canceled: statement_timeout (set on the role or database), or an administrator.
        (_, Some("57014")) => Some(
            "PostgreSQL cancelled the statement (statement_timeout or pg_cancel_backend); nothing \
             of it was written. Look in pg_stat_activity and pg_locks for what held it up, or \
             raise the role's statement_timeout (ALTER ROLE ... SET statement_timeout)",
        ),
        (_, Some("55P03")) => Some(
            "A lock was not granted within lock_timeout; nothing of it was written. Look in \
             pg_locks for the session holding it",
        ),
        (_, Some("53300")) => Some(
            "PostgreSQL has no connection slot left for this role or database (max_connections, \
             or a CONNECTION LIMIT): lower database.max_connections of the instances sharing \
             it, or free connections",
        ),
        _ => None,
    }
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

    /// Proves the database answers a query now (readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        select_one(&self.pool, "checking the database answers").await
    }

    /// Applies every pending migration and returns the ones that were pending, so
    /// `migrate` can say what it did; safe to run from several processes at once (sqlx
    /// takes an advisory lock), though then each may list what another applied.
    pub async fn migrate(&self) -> Result<Vec<&'static Migration>, StoreError> {
        let mut conn = self.pool.acquire().await.during("connecting to apply migrations")?;
        // sqlx creates its bookkeeping table on the first run; until then nothing is applied.
        let has_table: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(MIGRATIONS_TABLE)
            .fetch_one(&mut *conn)
            .await
            .during("looking for the migrations table")?;
        let applied: HashSet<i64> = if has_table {
            conn.list_applied_migrations(MIGRATIONS_TABLE).await?.into_iter().map(|m| m.version).collect()
        } else {
            HashSet::new()
        };
        MIGRATOR.run(&mut *conn).await?;
        Ok(MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
            .collect())
    }
}

/// `SELECT 1` on any executor: the cheapest proof that a connection (or pool) works.
pub(crate) async fn select_one<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    what: &'static str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(executor).await.during(what).map(drop)
}

/// A duration PostgreSQL's `interval` can hold: it keeps microseconds and sqlx refuses to
/// drop the rest silently. Rounded up, so a budget span never shrinks.
pub(crate) fn interval(duration: Duration) -> Duration {
    let micros = duration.as_nanos().div_ceil(1000);
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Session and transaction advisory locks share one key space: a clash would make, say,
    /// the leader's session lock block every alert evaluation forever.
    #[test]
    fn advisory_lock_keys_are_distinct() {
        // ledger::LEDGER_LOCK is a pair of 32-bit keys, a separate key space.
        let keys: Vec<i64> = [APPLY_LOCK, leader_lock::LEADER_LOCK, alerts::ALERT_LOCK]
            .into_iter()
            .chain(apply::shard_locks())
            .collect();
        let distinct: HashSet<i64> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), keys.len());
    }
}
