//! `scan-agent-sync stale`: the agents stale now, as the `stale_scan_agents` view defines them.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::table::{Table, human_duration, maybe_when, text, when};
use crate::store::stale::StaleAgent;
use crate::store::{Store, StoreError};
use crate::tenant_name::TenantSelection;

/// The stale agents, longest stale first. `--json` prints the bare array.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct StaleReport {
    pub agents: Vec<StaleAgent>,
}

/// Reads the stale agents. The view's threshold is the one the service last stored
/// (`Store::set_stale_after`), so this agrees with what alerts fire on.
pub async fn stale_report(store: &Store, tenants: &TenantSelection) -> Result<StaleReport, StoreError> {
    Ok(StaleReport { agents: store.stale_agents(tenants.names()).await? })
}

impl fmt::Display for StaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.agents.is_empty() {
            return writeln!(f, "No stale agents.");
        }
        let mut table =
            Table::new(&["TENANT", "AGENT", "DNS NAME", "LAST SEEN", "STALE FOR", "MISSING SINCE"]);
        for agent in &self.agents {
            table.row(vec![
                agent.tenant.clone(),
                agent.agent_id.clone(),
                text(agent.computer_dns_name.as_deref()),
                when(agent.last_seen),
                human_duration(Duration::from_secs_f64(agent.stale_for_seconds.max(0.0))),
                maybe_when(agent.missing_since),
            ]);
        }
        write!(f, "{table}")?;
        writeln!(f, "{} stale agent(s).", self.agents.len())
    }
}
