//! The per-agent lastSeen series, bounded by `http.agent_series`: at 100,000 agents one
//! series each is a 15 MB scrape, so big fleets keep only the stale agents, or none.

use super::Metrics;
use crate::config::AgentSeries;
use crate::store::{Store, StoreError};
use crate::tenant_name::TenantName;

/// Replaces the `scan_agent_sync_agent_last_seen_timestamp_seconds` series with the agents
/// of `tenants` (those this process syncs, so processes sharing the work export each agent
/// once) that `mode` selects: every agent, the agents stale now (the `stale_scan_agents`
/// view), or none (no query at all). Called after each staleness evaluation; on an error
/// the previous series stay.
pub async fn refresh_agent_series(
    store: &Store,
    metrics: &Metrics,
    mode: AgentSeries,
    tenants: &[TenantName],
) -> Result<(), StoreError> {
    let agents = match mode {
        AgentSeries::All => store.all_last_seen(tenants).await?,
        AgentSeries::Stale => store.stale_last_seen(tenants).await?,
        AgentSeries::None => Vec::new(),
    };
    metrics.set_agent_last_seen(&agents);
    Ok(())
}
