//! The store as one tenant's cycles see it: every statement of a sync cycle (the budget
//! ledger, runs, applying agents, missing agents, the fleet alert) goes through a
//! [`TenantStore`], which binds the tenant in one place instead of in every caller.
//!
//! Every per-tenant table carries the tenant (migration 20261206000010): the statements are
//! `impl TenantStore` blocks next to their tables' other SQL (`ledger`, `runs`, `missing`,
//! `apply`), and bind [`TenantStore::tenant`].

use chrono::{DateTime, Utc};

use super::{Store, StoreError};
use crate::tenant_name::TenantName;

/// A [`Store`] bound to one tenant.
#[derive(Debug, Clone)]
pub struct TenantStore {
    pub(super) store: Store,
    pub(super) tenant: TenantName,
}

/// Tenant names as PostgreSQL binds them, for `tenant = ANY($n)`.
pub(super) fn names(tenants: &[TenantName]) -> Vec<&str> {
    tenants.iter().map(|name| &**name).collect()
}

impl Store {
    /// This store as `tenant`'s cycles and budget use it.
    pub fn for_tenant(&self, tenant: TenantName) -> TenantStore {
        TenantStore { store: self.clone(), tenant }
    }
}

impl TenantStore {
    /// The tenant this handle is bound to.
    pub fn tenant(&self) -> &TenantName {
        &self.tenant
    }

    /// The database's clock, which times every cycle.
    pub async fn clock(&self) -> Result<DateTime<Utc>, StoreError> {
        self.store.clock().await
    }

    /// The start of this tenant's open fleet-vanished episode, if one is open.
    pub async fn open_fleet_vanished(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.store.open_fleet_vanished(&self.tenant).await
    }

    /// Opens this tenant's fleet-vanished episode; see [`Store::fleet_vanished`].
    pub async fn fleet_vanished(
        &self,
        vanishing: u64,
        known: u64,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StoreError> {
        self.store.fleet_vanished(&self.tenant, vanishing, known, detail, now).await
    }

    /// Resolves this tenant's open fleet-vanished episode; see [`Store::fleet_returned`].
    pub async fn fleet_returned(&self, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.store.fleet_returned(&self.tenant, now).await
    }
}
