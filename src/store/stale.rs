//! Staleness as the database sees it: the threshold the `stale_scan_agents` view uses, and
//! the agents stale now.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{QueryContext, Store, StoreError, interval};
use crate::tenant_name::TenantName;

/// One row of `stale_scan_agents`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct StaleAgent {
    pub tenant: String,
    pub agent_id: String,
    pub computer_dns_name: Option<String>,
    pub last_seen: DateTime<Utc>,
    /// Seconds since `last_seen`.
    pub stale_for_seconds: f64,
    pub missing_since: Option<DateTime<Utc>>,
}

impl Store {
    /// Writes `stale.after` where the view reads it, so SQL users and the service agree.
    pub async fn set_stale_after(&self, after: Duration) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO service_settings (name, value) VALUES ('stale_after', $1::interval::text)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(interval(after))
        .execute(&self.pool)
        .await
        .during("storing stale.after")?;
        Ok(())
    }

    /// The `last_seen` of every agent of `tenants`, for the per-agent metric.
    pub async fn all_last_seen(
        &self,
        tenants: &[TenantName],
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        sqlx::query_as("SELECT agent_id, last_seen FROM scan_agents WHERE tenant = ANY($1) ORDER BY agent_id")
            .bind(super::tenant::names(tenants))
            .fetch_all(&self.pool)
            .await
            .during("reading every agent's lastSeen")
    }

    /// The `last_seen` of every agent of `tenants` stale now, by `stale_scan_agents`, for the
    /// per-agent metric when `http.agent_series = "stale"`.
    pub async fn stale_last_seen(
        &self,
        tenants: &[TenantName],
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        sqlx::query_as(
            "SELECT agent_id, last_seen FROM stale_scan_agents WHERE tenant = ANY($1) ORDER BY agent_id",
        )
        .bind(super::tenant::names(tenants))
        .fetch_all(&self.pool)
        .await
        .during("reading stale agents' lastSeen")
    }

    /// The agents stale now, longest stale first: of the tenants named, or of every tenant
    /// for `None`.
    pub async fn stale_agents(&self, tenants: Option<&[TenantName]>) -> Result<Vec<StaleAgent>, StoreError> {
        let tenants = tenants.map(super::tenant::names);
        sqlx::query_as(
            "SELECT tenant, agent_id, computer_dns_name, last_seen,
                    extract(epoch FROM stale_for)::float8 AS stale_for_seconds, missing_since
             FROM stale_scan_agents
             WHERE $1::text[] IS NULL OR tenant = ANY($1)
             ORDER BY last_seen, agent_id",
        )
        .bind(tenants)
        .fetch_all(&self.pool)
        .await
        .during("listing stale agents")
    }
}
