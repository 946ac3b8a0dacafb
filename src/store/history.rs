//! The read side of one agent's history, for `scan-agent-sync history`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{QueryContext, Store, StoreError};

/// An agent's current state, as the history report heads it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct AgentState {
    pub agent_id: String,
    pub computer_dns_name: Option<String>,
    pub scanner_software_version: Option<String>,
    pub last_seen: DateTime<Utc>,
    pub first_observed_at: DateTime<Utc>,
    pub last_fetched_at: DateTime<Utc>,
    pub missing_since: Option<DateTime<Utc>>,
}

/// One row of `scan_agent_versions`: the attributes valid over `[valid_from, valid_to)`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct VersionRow {
    pub machine_id: Option<String>,
    pub computer_dns_name: Option<String>,
    pub assigned_application_id: Option<String>,
    pub scanner_software_version: Option<String>,
    pub mde_client_version: Option<String>,
    pub valid_from: DateTime<Utc>,
    /// None for the current version.
    pub valid_to: Option<DateTime<Utc>>,
}

/// One distinct `lastSeen` value and when the service first observed it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct LastSeenRow {
    pub last_seen: DateTime<Utc>,
    pub observed_at: DateTime<Utc>,
}

impl Store {
    /// The agent's current state, or None when the service never stored it.
    pub async fn agent_state(&self, agent_id: &str) -> Result<Option<AgentState>, StoreError> {
        sqlx::query_as(
            "SELECT agent_id, computer_dns_name, scanner_software_version, last_seen,
                    first_observed_at, last_fetched_at, missing_since
             FROM scan_agents WHERE agent_id = $1",
        )
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await
        .during("reading an agent")
    }

    /// Every version of the agent, oldest first.
    pub async fn agent_versions(&self, agent_id: &str) -> Result<Vec<VersionRow>, StoreError> {
        sqlx::query_as(
            "SELECT machine_id, computer_dns_name, assigned_application_id, scanner_software_version,
                    mde_client_version, valid_from, valid_to
             FROM scan_agent_versions WHERE agent_id = $1 ORDER BY valid_from, version_id",
        )
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await
        .during("reading an agent's versions")
    }

    /// The agent's `limit` most recent `lastSeen` values, newest first.
    pub async fn agent_last_seen(&self, agent_id: &str, limit: i64) -> Result<Vec<LastSeenRow>, StoreError> {
        sqlx::query_as(
            "SELECT last_seen, observed_at FROM scan_agent_last_seen
             WHERE agent_id = $1 ORDER BY last_seen DESC LIMIT $2",
        )
        .bind(agent_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .during("reading an agent's lastSeen values")
    }
}
