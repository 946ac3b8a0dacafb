//! What the tables hold, in a few numbers and the latest version changes: the read side of
//! the demo's closing summary.

use super::{QueryContext, Store, StoreError};

/// Row counts of the agent and run tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct TableCounts {
    pub agents: i64,
    pub versions: i64,
    pub last_seen: i64,
    pub runs: i64,
}

/// One agent's change of scanner version: the version row that ended and the one that
/// followed it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ScannerUpgrade {
    pub agent_id: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl Store {
    /// How many rows the agent tables and `sync_runs` hold.
    pub async fn table_counts(&self) -> Result<TableCounts, StoreError> {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM scan_agents) AS agents,
                    (SELECT count(*) FROM scan_agent_versions) AS versions,
                    (SELECT count(*) FROM scan_agent_last_seen) AS last_seen,
                    (SELECT count(*) FROM sync_runs) AS runs",
        )
        .fetch_one(&self.pool)
        .await
        .during("counting the rows of the tables")
    }

    /// Every version change recorded, oldest first, with the scanner version before and
    /// after (unchanged when another attribute changed).
    pub async fn scanner_upgrades(&self) -> Result<Vec<ScannerUpgrade>, StoreError> {
        sqlx::query_as(
            "SELECT v.agent_id, p.scanner_software_version AS old, v.scanner_software_version AS new
             FROM scan_agent_versions v
             JOIN scan_agent_versions p ON p.agent_id = v.agent_id AND p.valid_to = v.valid_from
             ORDER BY v.valid_from, v.agent_id",
        )
        .fetch_all(&self.pool)
        .await
        .during("reading the version changes")
    }
}
