//! One tenant's settings: everything a sync cycle of that tenant needs to reach its API,
//! stay within its budget and choose its agents. Each tenant gets its own syncer, budget
//! and client from these, so tenants stay independent of each other.

use super::{AgentsSettings, DefenderSettings, RateLimitSettings};
use crate::tenant_name::TenantName;

/// One tenant, with the section defaults already applied.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Names the tenant's rows, metrics and alerts.
    pub name: TenantName,
    /// Its Defender connection: cloud, hosts, app registration, secret, fetch mode.
    pub defender: DefenderSettings,
    /// Its API budget: the limits are per app registration and tenant.
    pub rate_limit: RateLimitSettings,
    /// Which of its agents to track.
    pub agents: AgentsSettings,
}

impl TenantSettings {
    /// The one tenant of a configuration without `[[tenants]]`: the `[defender]`,
    /// `[rate_limit]` and `[agents]` sections as written, named [`super::DEFAULT_TENANT`].
    pub(super) fn single(
        defender: &DefenderSettings,
        rate_limit: &RateLimitSettings,
        agents: &AgentsSettings,
    ) -> TenantSettings {
        TenantSettings {
            name: TenantName::default(),
            defender: defender.clone(),
            rate_limit: rate_limit.clone(),
            agents: agents.clone(),
        }
    }
}
