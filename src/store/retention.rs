//! Retention (PRODUCT.md, "Retention and bounded growth"): the weekly partitions of
//! `scan_agent_last_seen` (migration 20261206000009), and deleting what is older than each
//! table's horizon, or counting it for a dry run.
//!
//! `scan_agent_last_seen` loses whole weeks: a partition whose range ends at or before the
//! horizon is dropped, so data stays at most one week longer than configured, never
//! shorter; its DEFAULT partition (stragglers no week covers) loses rows. The other tables
//! are small enough for a DELETE by an indexed timestamp (BENCHMARKS.md).
//!
//! Locks: creating and dropping partitions takes the [`APPLY_LOCK`], so it waits for the
//! batch being applied (never breaking into it) and no batch starts while the catalog
//! changes; the DDL itself then waits at most [`DDL_LOCK_TIMEOUT`] for readers (a long BI
//! query), so a waiting drop holds up new batches no longer than that. A drop that times
//! out fails this run, and the next run tries again. Row deletes need neither: they touch
//! only old rows, which no writer updates.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{APPLY_LOCK, QueryContext, Store, StoreError};

/// How many weeks past the current one have partitions ready: a stopped service coming back
/// within a month finds its week in place, and any row beyond lands in the DEFAULT partition.
pub const WEEKS_AHEAD: i32 = 4;

/// The longest a partition's creation or drop waits for readers of the table.
const DDL_LOCK_TIMEOUT: &str = "5s";

/// The partitioned table.
const LAST_SEEN: &str = "scan_agent_last_seen";

/// How long each table keeps rows; `None` keeps them forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub last_seen: Option<Duration>,
    pub versions: Option<Duration>,
    pub sync_runs: Option<Duration>,
    pub delivered_alerts: Option<Duration>,
    /// The budget ledger always has a horizon: the longest window plus a margin.
    pub ledger: Duration,
}

/// What a prune did (or, dry, would do) to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TablePrune {
    /// The table (`scan_agent_last_seen`, `scan_agent_versions`, ...).
    pub table: &'static str,
    /// Rows older than this go; `None`: the table is kept forever.
    pub cutoff: Option<DateTime<Utc>>,
    /// Rows deleted, or that would be.
    pub rows: u64,
    /// Partitions dropped, or that would be.
    pub partitions: Vec<String>,
}

/// The tables pruned by a row DELETE: name as reported, name in SQL, and the condition
/// selecting rows older than the cutoff `$1`.
struct RowTarget {
    table: &'static str,
    count: &'static str,
    delete: &'static str,
}

/// One [`RowTarget`] from its table and condition, so the count a dry run makes and the
/// DELETE it stands for can never select different rows.
macro_rules! row_target {
    ($table:literal, $sql_table:literal, $condition:literal) => {
        RowTarget {
            table: $table,
            count: concat!("SELECT count(*) FROM ", $sql_table, " WHERE ", $condition),
            delete: concat!("DELETE FROM ", $sql_table, " WHERE ", $condition),
        }
    };
}

/// A row whose 429 pause is later than the cutoff stays: the pause may still be on.
const LEDGER: RowTarget = row_target!("api_calls", "api_calls", "greatest(called_at, pause_until) < $1");
/// Closed versions only: current versions live in scan_agent_state.
const VERSIONS: RowTarget = row_target!("scan_agent_versions", "scan_agent_version_history", "valid_to < $1");
/// Running cycles (no finished_at) stay.
const SYNC_RUNS: RowTarget = row_target!("sync_runs", "sync_runs", "finished_at < $1");
/// Undelivered alerts (no delivered_at) stay.
const DELIVERED_ALERTS: RowTarget = row_target!("alert_outbox", "alert_outbox", "delivered_at < $1");
/// Stragglers in the DEFAULT partition are deleted row by row.
const LAST_SEEN_STRAGGLERS: RowTarget =
    row_target!("scan_agent_last_seen", "scan_agent_last_seen_default", "last_seen < $1");

impl Store {
    /// Creates the weekly partitions of `scan_agent_last_seen` from the current week to
    /// [`WEEKS_AHEAD`] weeks after it, moving rows of those weeks out of the DEFAULT
    /// partition; returns the partitions created.
    pub async fn ensure_partitions(&self) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await.during("starting to create partitions")?;
        lock_for_ddl(&mut tx).await?;
        let created: Vec<String> = sqlx::query_scalar(
            "SELECT 'scan_agent_last_seen_' || to_char(w AT TIME ZONE 'UTC', 'YYYYMMDD')
             FROM (SELECT date_trunc('week', now(), 'UTC') + make_interval(weeks => n) AS w
                   FROM generate_series(0, $1) AS n) weeks
             WHERE scan_agent_last_seen_add_week(w)
             ORDER BY w",
        )
        .bind(WEEKS_AHEAD)
        .fetch_all(&mut *tx)
        .await
        .during("creating partitions of scan_agent_last_seen")?;
        tx.commit().await.during("committing new partitions")?;
        Ok(created)
    }

    /// Deletes what `policy` says is too old (dry: counts it and changes nothing), table by
    /// table; each table's step commits on its own, so a failure keeps what earlier steps
    /// did. A real prune records each table's outcome in `retention_runs` for `check`.
    pub async fn prune(&self, policy: &Policy, dry_run: bool) -> Result<Vec<TablePrune>, StoreError> {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .during("reading the database clock")?;
        // A horizon longer than the calendar reaches keeps everything (configuration caps it).
        let cutoff = |keep: Option<Duration>| {
            keep.and_then(|keep| chrono::Duration::from_std(keep).ok())
                .and_then(|keep| now.checked_sub_signed(keep))
        };
        if !dry_run {
            // Before anything goes, so `check` never expects a row this run may delete.
            self.record_horizon(LAST_SEEN, cutoff(policy.last_seen)).await?;
        }
        let mut outcome = vec![self.prune_last_seen(cutoff(policy.last_seen), dry_run).await?];
        for (target, keep) in [
            (&VERSIONS, policy.versions),
            (&SYNC_RUNS, policy.sync_runs),
            (&DELIVERED_ALERTS, policy.delivered_alerts),
            (&LEDGER, Some(policy.ledger)),
        ] {
            let cutoff = cutoff(keep);
            let rows = match cutoff {
                Some(cutoff) => self.delete_rows(target, cutoff, dry_run).await?,
                None => 0,
            };
            outcome.push(TablePrune { table: target.table, cutoff, rows, partitions: Vec::new() });
        }
        if !dry_run {
            self.record_prune(&outcome).await?;
        }
        Ok(outcome)
    }

    /// `scan_agent_last_seen`: drops the weeks that end at or before the cutoff, then
    /// deletes older rows from the DEFAULT partition.
    async fn prune_last_seen(
        &self,
        cutoff: Option<DateTime<Utc>>,
        dry_run: bool,
    ) -> Result<TablePrune, StoreError> {
        let Some(cutoff) = cutoff else {
            return Ok(TablePrune { table: LAST_SEEN, cutoff, rows: 0, partitions: Vec::new() });
        };
        // The upper bound is read back from the partition's definition; printed and parsed
        // in one session, so in one time zone.
        let expired: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = $1::regclass
               AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']+)''\\)')::timestamptz <= $2
             ORDER BY 1",
        )
        .bind(LAST_SEEN)
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await
        .during("listing expired partitions of scan_agent_last_seen")?;
        let mut rows = 0;
        for partition in &expired {
            // Counted before the drop, outside its lock: an expired week gets no new rows
            // but for a rare straggler, and counting a week takes seconds at 100k agents.
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {}",
                quote_identifier(partition)
            )))
            .fetch_one(&self.pool)
            .await
            .during("counting the rows of an expired partition")?;
            rows += u64::try_from(count).unwrap_or_default();
            if !dry_run {
                let mut tx = self.pool.begin().await.during("starting to drop a partition")?;
                lock_for_ddl(&mut tx).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {}", quote_identifier(partition))))
                    .execute(&mut *tx)
                    .await
                    .during("dropping an expired partition of scan_agent_last_seen")?;
                tx.commit().await.during("committing a partition drop")?;
            }
        }
        rows += self.delete_rows(&LAST_SEEN_STRAGGLERS, cutoff, dry_run).await?;
        Ok(TablePrune { table: LAST_SEEN, cutoff: Some(cutoff), rows, partitions: expired })
    }

    /// Deletes (dry: counts) the rows of `target` older than `cutoff`.
    async fn delete_rows(
        &self,
        target: &RowTarget,
        cutoff: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        if dry_run {
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(target.count))
                .bind(cutoff)
                .fetch_one(&self.pool)
                .await
                .during("counting rows past retention")?;
            return Ok(u64::try_from(count).unwrap_or_default());
        }
        let done = sqlx::query(sqlx::AssertSqlSafe(target.delete))
            .bind(cutoff)
            .execute(&self.pool)
            .await
            .during("deleting rows past retention")?;
        Ok(done.rows_affected())
    }

    /// Overwrites each table's row of `retention_runs` with this prune's outcome.
    async fn record_prune(&self, outcome: &[TablePrune]) -> Result<(), StoreError> {
        let tables: Vec<&str> = outcome.iter().map(|t| t.table).collect();
        let cutoffs: Vec<Option<DateTime<Utc>>> = outcome.iter().map(|t| t.cutoff).collect();
        let rows: Vec<i64> = outcome.iter().map(|t| i64::try_from(t.rows).unwrap_or(i64::MAX)).collect();
        sqlx::query(
            "INSERT INTO retention_runs (table_name, kept_from, last_run_at, deleted_rows)
             SELECT u.table_name, u.kept_from, now(), u.deleted_rows
             FROM UNNEST($1::text[], $2::timestamptz[], $3::bigint[]) AS u(table_name, kept_from, deleted_rows)
             ON CONFLICT (table_name) DO UPDATE
                 SET kept_from = excluded.kept_from, last_run_at = excluded.last_run_at,
                     deleted_rows = excluded.deleted_rows",
        )
        .bind(&tables)
        .bind(&cutoffs)
        .bind(&rows)
        .execute(&self.pool)
        .await
        .during("recording the retention run")?;
        Ok(())
    }

    /// Records that rows of `table` older than `kept_from` may be gone, keeping the rest of
    /// its `retention_runs` row (a new row says no rows deleted yet).
    async fn record_horizon(&self, table: &str, kept_from: Option<DateTime<Utc>>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO retention_runs (table_name, kept_from, last_run_at, deleted_rows)
             VALUES ($1, $2, now(), 0)
             ON CONFLICT (table_name) DO UPDATE SET kept_from = excluded.kept_from",
        )
        .bind(table)
        .bind(kept_from)
        .execute(&self.pool)
        .await
        .during("recording the retention horizon")?;
        Ok(())
    }

    /// The last prune of each table, oldest table name first: what `check` prints.
    pub async fn last_prunes(&self) -> Result<Vec<LastPrune>, StoreError> {
        sqlx::query_as(
            "SELECT table_name, kept_from, last_run_at, deleted_rows FROM retention_runs ORDER BY table_name",
        )
        .fetch_all(&self.pool)
        .await
        .during("reading the last retention run")
    }
}

/// A table's row of `retention_runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LastPrune {
    pub table_name: String,
    /// Rows older than this may be gone; `None`: kept forever.
    pub kept_from: Option<DateTime<Utc>>,
    pub last_run_at: DateTime<Utc>,
    pub deleted_rows: i64,
}

/// Takes the apply lock, then bounds how long the DDL that follows waits for readers.
async fn lock_for_ddl(tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPLY_LOCK)
        .execute(&mut *tx)
        .await
        .during("waiting for the apply lock to change partitions")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")))
        .execute(&mut *tx)
        .await
        .during("bounding the wait for the partitioned table's lock")?;
    Ok(())
}

/// `name` as a quoted SQL identifier. Partition names come from the catalog, and the
/// service names them itself, but an operator may have attached one by another name.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
