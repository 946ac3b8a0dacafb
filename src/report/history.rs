//! `scan-agent-sync history AGENT_ID`: an agent's versions with their validity ranges and
//! its most recent `lastSeen` values.

use std::fmt;

use serde::Serialize;

use super::table::{Table, maybe_when, text, when};
use crate::store::history::{AgentState, LastSeenRow, VersionRow};
use crate::store::{Store, StoreError};

/// How many `lastSeen` values the report shows: enough to see the reporting rhythm and
/// when it stopped; the full list is in `scan_agent_last_seen`.
pub const RECENT_LAST_SEEN: i64 = 20;

/// One agent's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    pub agent: AgentState,
    /// Oldest first; the last one is current.
    pub versions: Vec<VersionRow>,
    /// Newest first, at most [`RECENT_LAST_SEEN`].
    pub recent_last_seen: Vec<LastSeenRow>,
}

/// Reads the history of `agent_id`; None when the service has never stored that agent
/// (the CLI exits 1).
pub async fn history_report(store: &Store, agent_id: &str) -> Result<Option<History>, StoreError> {
    let Some(agent) = store.agent_state(agent_id).await? else {
        return Ok(None);
    };
    let versions = store.agent_versions(agent_id).await?;
    let recent_last_seen = store.agent_last_seen(agent_id, RECENT_LAST_SEEN).await?;
    Ok(Some(History { agent, versions, recent_last_seen }))
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.agent;
        writeln!(f, "Agent           {}", a.agent_id)?;
        writeln!(f, "DNS name        {}", text(a.computer_dns_name.as_deref()))?;
        writeln!(f, "Scanner version {}", text(a.scanner_software_version.as_deref()))?;
        writeln!(f, "Last seen       {}", when(a.last_seen))?;
        writeln!(f, "Missing since   {}", maybe_when(a.missing_since))?;
        writeln!(f, "First observed  {}", when(a.first_observed_at))?;
        writeln!(f, "Last fetched    {}", when(a.last_fetched_at))?;

        writeln!(f, "\nVersions ({}, oldest first)", self.versions.len())?;
        let mut versions = Table::new(&[
            "VALID FROM",
            "VALID TO",
            "SCANNER",
            "MDE CLIENT",
            "DNS NAME",
            "MACHINE ID",
            "APPLICATION ID",
        ]);
        for v in &self.versions {
            versions.row(vec![
                when(v.valid_from),
                v.valid_to.map_or_else(|| "current".to_owned(), when),
                text(v.scanner_software_version.as_deref()),
                text(v.mde_client_version.as_deref()),
                text(v.computer_dns_name.as_deref()),
                text(v.machine_id.as_deref()),
                text(v.assigned_application_id.as_deref()),
            ]);
        }
        write!(f, "{versions}")?;

        writeln!(f, "\nRecent lastSeen values (newest first)")?;
        let mut seen = Table::new(&["LAST SEEN", "OBSERVED AT"]);
        for s in &self.recent_last_seen {
            seen.row(vec![when(s.last_seen), when(s.observed_at)]);
        }
        write!(f, "{seen}")
    }
}
