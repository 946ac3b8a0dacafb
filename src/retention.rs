//! The retention job (PRODUCT.md, "Retention and bounded growth"): one pass creates the
//! partitions ahead and deletes what `[retention]` no longer keeps ([`run_once`], also
//! `scan-agent-sync prune`); [`run_retention_job`] repeats it on its own schedule in `run`.
//!
//! Several instances may run it at once: partition changes are serialized in the store, and
//! deleting rows twice deletes nothing the second time.

use std::fmt;

use chrono::SecondsFormat;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{RetentionSettings, Settings, ledger_keep};
use crate::metrics::Metrics;
use crate::rate_window::RateWindow;
use crate::store::retention::{Policy, TablePrune};
use crate::store::{Store, StoreError};

/// What the job keeps: `[retention]` and the ledger's horizon, which follows the rate windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub settings: RetentionSettings,
    pub windows: Vec<RateWindow>,
}

impl Retention {
    /// The job as the configuration sets it.
    pub fn from_settings(settings: &Settings) -> Retention {
        Retention { settings: settings.retention.clone(), windows: settings.all_windows() }
    }

    /// Each table's horizon, for the store.
    pub fn policy(&self) -> Policy {
        Policy {
            last_seen: self.settings.last_seen.horizon(),
            versions: self.settings.versions.horizon(),
            sync_runs: self.settings.sync_runs.horizon(),
            delivered_alerts: self.settings.delivered_alerts.horizon(),
            ledger: ledger_keep(&self.windows),
        }
    }
}

/// The outcome of one pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionOutcome {
    /// True when nothing was changed, only counted.
    pub dry_run: bool,
    /// Partitions of `scan_agent_last_seen` created ahead (none in a dry run).
    pub partitions_created: Vec<String>,
    /// Per table: the cutoff and what went (or would go).
    pub tables: Vec<TablePrune>,
}

impl RetentionOutcome {
    /// Rows deleted (or that would be) across all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|table| table.rows).sum()
    }

    /// One line: per table, rows and partitions that went (a dry run: would go).
    pub fn summary(&self) -> String {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        let parts: Vec<String> = self
            .tables
            .iter()
            .map(|table| match table.cutoff {
                None => format!("{} kept forever", table.table),
                Some(_) if table.partitions.is_empty() => format!("{} {} rows", table.table, table.rows),
                Some(_) => {
                    format!("{} {} rows ({} partitions)", table.table, table.rows, table.partitions.len())
                }
            })
            .collect();
        format!("{verb} {}", parts.join(", "))
    }
}

/// One pass: partitions ahead, then every table's prune. A dry run creates nothing and
/// deletes nothing, and says what a real pass would delete.
#[tracing::instrument(skip_all, fields(dry_run))]
pub async fn run_once(
    store: &Store,
    retention: &Retention,
    dry_run: bool,
) -> Result<RetentionOutcome, StoreError> {
    let partitions_created = if dry_run { Vec::new() } else { store.ensure_partitions().await? };
    let tables = store.prune(&retention.policy(), dry_run).await?;
    Ok(RetentionOutcome { dry_run, partitions_created, tables })
}

/// Runs [`run_once`] now and then every `retention.every` until `cancel`: one log line per
/// pass, and the deleted rows counted in `scan_agent_sync_retention_deleted_rows_total`. A
/// failed pass is logged and retried at the next interval; it stops nothing else.
pub async fn run_retention_job(
    store: Store,
    retention: Retention,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    loop {
        match run_once(&store, &retention, false).await {
            Ok(outcome) => {
                for table in &outcome.tables {
                    metrics.record_retention_deleted(table.table, table.rows);
                }
                tracing::info!(
                    deleted_rows = outcome.total_rows(),
                    partitions_created = outcome.partitions_created.len(),
                    "retention: {}",
                    outcome.summary()
                );
            }
            Err(error) => tracing::warn!(
                "retention job failed: {error}; it runs again in {}",
                humantime::format_duration(retention.settings.every)
            ),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(retention.settings.every) => {}
        }
    }
}

/// The report of `prune`: one line per table, then the partitions created or dropped.
impl fmt::Display for RetentionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        for table in &self.tables {
            match table.cutoff {
                None => writeln!(f, "{:<22} kept forever", table.table)?,
                Some(cutoff) => writeln!(
                    f,
                    "{:<22} {verb} {} rows older than {}",
                    table.table,
                    table.rows,
                    cutoff.to_rfc3339_opts(SecondsFormat::Secs, true)
                )?,
            }
            for partition in &table.partitions {
                let verb = if self.dry_run { "would drop" } else { "dropped" };
                writeln!(f, "{:<22} {verb} partition {partition}", "")?;
            }
        }
        for partition in &self.partitions_created {
            writeln!(f, "created partition {partition}")?;
        }
        if self.dry_run {
            writeln!(f, "dry run: nothing was changed")?;
        }
        Ok(())
    }
}
