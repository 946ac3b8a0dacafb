//! `scan_agent_not_found`: when each configured ID last answered 404 (migration
//! 20261207000012), so that [`TenantStore::fetch_order`] counts a 404 as a fetch and an ID
//! known to be gone takes its turn in the rotation instead of going first in every cycle.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::tenant::TenantStore;
use super::{QueryContext, StoreError};
use crate::agent_id::AgentId;

/// Stamps `ids` of `tenant` as answering 404 at `at`. Called in the transaction that records
/// the 404s, so the stamp and the missing marks commit together.
pub(super) async fn stamp<'e>(
    executor: impl PgExecutor<'e>,
    tenant: &str,
    ids: &[AgentId],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let ids: Vec<&str> = ids.iter().map(AgentId::as_str).collect();
    // DISTINCT: one statement may not update a row twice.
    sqlx::query(
        "INSERT INTO scan_agent_not_found (tenant, agent_id, not_found_at)
         SELECT DISTINCT $1, u.agent_id, $3::timestamptz FROM UNNEST($2::text[]) AS u(agent_id)
         ON CONFLICT (tenant, agent_id) DO UPDATE SET not_found_at = excluded.not_found_at",
    )
    .bind(tenant)
    .bind(&ids)
    .bind(at)
    .execute(executor)
    .await
    .during("stamping the agents that answered 404")?;
    Ok(())
}

impl TenantStore {
    /// Stamps 404s that mark nothing (the mass-disappearance guard refused them): the IDs
    /// were asked all the same, and asking them first again in every cycle would spend the
    /// budget on them while the answers stay suspect.
    pub async fn stamp_not_found(&self, ids: &[AgentId]) -> Result<(), StoreError> {
        let at = self.clock().await?;
        stamp(&self.store.pool, &self.tenant, ids, at).await
    }

    /// Deletes this tenant's 404 stamps that no longer order anything: of IDs not in
    /// `configured` (the cycle's IDs), and of agents fetched since (the later stamp wins
    /// anyway). Keeps the table at about the configured IDs whose last answer was a 404.
    pub async fn forget_not_found(&self, configured: &[AgentId]) -> Result<u64, StoreError> {
        let configured: Vec<&str> = configured.iter().map(AgentId::as_str).collect();
        // Joins rather than `<> ALL($2)` or a sub-select in an OR, which test each row against
        // the whole array: a fleet of 100,000 IDs with a thousand 404s would cost 10^8 compares.
        let done = sqlx::query(
            "WITH configured AS (SELECT DISTINCT unnest($2::text[]) AS agent_id),
             stale AS (
                 SELECT n.agent_id FROM scan_agent_not_found n
                 LEFT JOIN configured c ON c.agent_id = n.agent_id
                 LEFT JOIN scan_agent_state s ON s.agent_id = n.agent_id AND s.tenant = n.tenant
                 WHERE n.tenant = $1 AND (c.agent_id IS NULL OR s.last_fetched_at >= n.not_found_at)
             )
             DELETE FROM scan_agent_not_found n USING stale
             WHERE n.tenant = $1 AND n.agent_id = stale.agent_id",
        )
        .bind(&*self.tenant)
        .bind(&configured)
        .execute(&self.store.pool)
        .await
        .during("forgetting stale 404 stamps")?;
        Ok(done.rows_affected())
    }
}
