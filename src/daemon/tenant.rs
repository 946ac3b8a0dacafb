//! One tenant's share of the daemon's loop: its syncer, its agent list and its running cycle.

use std::collections::HashSet;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent_id::AgentId;
use crate::config::{Settings, TenantSettings};
use crate::store::Store;
use crate::sync::{CycleReport, SyncError, Syncer, Targets};

/// One tenant's share of the loop: its syncer, its agents and its running cycle.
pub(super) struct TenantCycle {
    pub(super) settings: TenantSettings,
    pub(super) syncer: Syncer,
    pub(super) targets: Targets,
    pub(super) cycle: Option<JoinHandle<Result<CycleReport, SyncError>>>,
    /// Set at start and whenever the tenant's lease is lost: the next time this instance
    /// holds it, a cycle starts at once (not at the next tick) and first closes runs that a
    /// previous holder left `running`.
    pub(super) newly_leading: bool,
    /// Cancels the running cycle alone, when the lease is lost or handed over mid-cycle.
    pub(super) cycle_cancel: Option<CancellationToken>,
    /// A tick came while the running cycle, past its deadline, only applied what it fetched:
    /// the next cycle starts as soon as it ends.
    pub(super) tick_waiting: bool,
    /// The newest of the tenant's ledger rows already counted in the request metrics.
    pub(super) call_watermark: i64,
}

impl TenantCycle {
    pub(super) fn new(
        tenant: &TenantSettings,
        settings: &Settings,
        store: Store,
    ) -> anyhow::Result<TenantCycle> {
        Ok(TenantCycle {
            settings: tenant.clone(),
            syncer: Syncer::for_tenant(tenant, &settings.stale, store)?,
            targets: Targets { ids: tenant.agents.ids.clone(), track_all: tenant.agents.track_all },
            cycle: None,
            newly_leading: true,
            cycle_cancel: None,
            tick_waiting: false,
            call_watermark: 0,
        })
    }

    /// Re-reads `agents.ids_file`: the new list, or the old one when the new is broken.
    pub(super) fn reread_agents(&self) -> Vec<AgentId> {
        match self.settings.agents.reload() {
            Ok(ids) => ids,
            Err(error) => {
                tracing::error!(tenant = %self.settings.name, %error, kept = self.targets.ids.len(),
                    "agent list reload rejected; keeping the old list");
                self.targets.ids.clone()
            }
        }
    }

    /// Takes `ids` as the agent list, logging what changed.
    pub(super) fn replace_agents(&mut self, ids: Vec<AgentId>) {
        let old: HashSet<_> = self.targets.ids.iter().cloned().collect();
        let new: HashSet<_> = ids.iter().cloned().collect();
        if old != new {
            let added: Vec<String> = new.difference(&old).map(ToString::to_string).collect();
            let removed: Vec<String> = old.difference(&new).map(ToString::to_string).collect();
            tracing::info!(tenant = %self.settings.name, total = ids.len(), ?added, ?removed, "agent list reloaded");
        }
        self.targets.ids = ids;
    }

    /// At shutdown: lets the running cycle apply what it fetched (it was cancelled with the
    /// daemon and records itself `interrupted`), until `until`.
    pub(super) async fn finish_cycle(&mut self, until: Instant) {
        let Some(cycle) = self.cycle.take() else { return };
        match tokio::time::timeout_at(until, cycle).await {
            Ok(Ok(Ok(report))) => tracing::info!("{}", report.to_string().trim_end()),
            Ok(Ok(Err(error))) => tracing::error!(%error, "the last sync cycle could not complete"),
            Ok(Err(panic)) => tracing::error!(%panic, "sync cycle task failed"),
            Err(_) => tracing::error!(
                "the running cycle did not finish in time; its open transaction rolls back and the next \
                 start marks its run interrupted"
            ),
        }
    }
}
