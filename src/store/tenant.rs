//! The store as one tenant's cycles see it: every statement of a sync cycle (the budget
//! ledger, runs, applying agents, missing agents, the fleet alert) goes through a
//! [`TenantStore`], which binds the tenant in one place instead of in every caller.
//!
//! The agent, run and ledger tables do not carry the tenant yet, so those statements still
//! cover the whole database; the fleet episodes already do.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::apply::Applied;
use super::ledger::Slot;
use super::missing::{Absence, Tracked, Unlisted};
use super::runs::RunRecord;
use super::{Store, StoreError};
use crate::agent::AgentRecord;
use crate::agent_id::AgentId;
use crate::diff::Diff;
use crate::rate_window::RateWindow;
use crate::tenant_name::TenantName;

/// A [`Store`] bound to one tenant.
#[derive(Debug, Clone)]
pub struct TenantStore {
    store: Store,
    tenant: TenantName,
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

    /// See [`Store::take_slot`].
    pub async fn take_slot(&self, windows: &[RateWindow], endpoint: &str) -> Result<Slot, StoreError> {
        self.store.take_slot(windows, endpoint).await
    }

    /// See [`Store::finish_call`].
    pub async fn finish_call(
        &self,
        call_id: i64,
        sent_later: Duration,
        status: Option<u16>,
        pause: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.store.finish_call(call_id, sent_later, status, pause).await
    }

    /// See [`Store::remaining`].
    pub async fn remaining(&self, windows: &[RateWindow]) -> Result<Vec<u32>, StoreError> {
        self.store.remaining(windows).await
    }

    /// See [`Store::start_run`].
    pub async fn start_run(&self, mode: &str, agents_requested: usize) -> Result<i64, StoreError> {
        self.store.start_run(mode, agents_requested).await
    }

    /// See [`Store::finish_run`].
    pub async fn finish_run(&self, run_id: i64, record: &RunRecord) -> Result<(), StoreError> {
        self.store.finish_run(run_id, record).await
    }

    /// See [`Store::close_abandoned_runs`].
    pub async fn close_abandoned_runs(&self) -> Result<u64, StoreError> {
        self.store.close_abandoned_runs().await
    }

    /// See [`Store::fetch_order`].
    pub async fn fetch_order(&self, ids: &[AgentId]) -> Result<Vec<AgentId>, StoreError> {
        self.store.fetch_order(ids).await
    }

    /// See [`Store::stored_ids`].
    pub async fn stored_ids(&self) -> Result<Vec<AgentId>, StoreError> {
        self.store.stored_ids().await
    }

    /// See [`Store::last_list_pages`].
    pub async fn last_list_pages(&self) -> Result<Option<u32>, StoreError> {
        self.store.last_list_pages().await
    }

    /// See [`Store::plan`].
    pub async fn plan(&self, fetched: Vec<AgentRecord>, missing: &[AgentId]) -> Result<Diff, StoreError> {
        self.store.plan(fetched, missing).await
    }

    /// See [`Store::apply`].
    pub async fn apply(&self, fetched: Vec<AgentRecord>, missing: &[AgentId]) -> Result<Applied, StoreError> {
        self.store.apply(fetched, missing).await
    }

    /// See [`Store::apply_page`].
    pub async fn apply_page(
        &self,
        fetched: Vec<AgentRecord>,
        listed_since: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        self.store.apply_page(fetched, listed_since).await
    }

    /// See [`Store::count_unlisted`].
    pub async fn count_unlisted(
        &self,
        tracked: Tracked<'_>,
        listed_since: DateTime<Utc>,
        known_before: DateTime<Utc>,
        spared: &[AgentId],
    ) -> Result<Absence, StoreError> {
        self.store.count_unlisted(tracked, listed_since, known_before, spared).await
    }

    /// See [`Store::mark_unlisted`].
    pub async fn mark_unlisted(
        &self,
        tracked: Tracked<'_>,
        listed_since: DateTime<Utc>,
        spared: &[AgentId],
    ) -> Result<Unlisted, StoreError> {
        self.store.mark_unlisted(tracked, listed_since, spared).await
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
