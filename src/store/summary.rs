//! What the tables hold, per tenant, in a few numbers and the latest version changes: the
//! read side of the demo's closing summary.

use super::{QueryContext, Store, StoreError};

/// One tenant's row counts of the agent and run tables, and how many of its agents are
/// stale now.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TableCounts {
    pub tenant: String,
    pub agents: i64,
    pub versions: i64,
    pub last_seen: i64,
    pub runs: i64,
    /// In `stale_scan_agents` for not reporting in, though the API still returns them.
    pub silent: i64,
    /// Gone from the API (404 or absent from a complete list).
    pub missing: i64,
}

/// One agent's change of scanner version: the version row that ended and the one that
/// followed it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ScannerUpgrade {
    pub tenant: String,
    pub agent_id: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl Store {
    /// Per tenant with runs or agents, by name: how many rows the agent tables and
    /// `sync_runs` hold, and how many agents are silent or missing.
    pub async fn table_counts(&self) -> Result<Vec<TableCounts>, StoreError> {
        sqlx::query_as(
            "SELECT t.tenant,
                    (SELECT count(*) FROM scan_agents a WHERE a.tenant = t.tenant) AS agents,
                    (SELECT count(*) FROM scan_agent_versions v WHERE v.tenant = t.tenant) AS versions,
                    (SELECT count(*) FROM scan_agent_last_seen l WHERE l.tenant = t.tenant) AS last_seen,
                    (SELECT count(*) FROM sync_runs r WHERE r.tenant = t.tenant) AS runs,
                    (SELECT count(*) FROM stale_scan_agents s
                     WHERE s.tenant = t.tenant AND s.missing_since IS NULL) AS silent,
                    (SELECT count(*) FROM scan_agents a
                     WHERE a.tenant = t.tenant AND a.missing_since IS NOT NULL) AS missing
             FROM (SELECT tenant FROM sync_runs UNION SELECT tenant FROM scan_agent_state) t
             ORDER BY t.tenant",
        )
        .fetch_all(&self.pool)
        .await
        .during("counting the rows of the tables per tenant")
    }

    /// Every version change recorded, per tenant and oldest first, with the scanner version
    /// before and after (unchanged when another attribute changed).
    pub async fn scanner_upgrades(&self) -> Result<Vec<ScannerUpgrade>, StoreError> {
        sqlx::query_as(
            "SELECT v.tenant, v.agent_id, p.scanner_software_version AS old, v.scanner_software_version AS new
             FROM scan_agent_versions v
             JOIN scan_agent_versions p ON p.agent_id = v.agent_id AND p.valid_to = v.valid_from
             ORDER BY v.tenant, v.valid_from, v.agent_id",
        )
        .fetch_all(&self.pool)
        .await
        .during("reading the version changes")
    }
}
