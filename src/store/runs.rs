//! `sync_runs`: one row per cycle, opened when it starts and closed with its outcome, so
//! operators and BI see every cycle, including the ones that failed or were interrupted.

use std::fmt;

use super::tenant::TenantStore;
use super::{QueryContext, StoreError};
use crate::agent_id::AgentId;

/// How a cycle ended (the `status` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Every requested agent was fetched (or confirmed missing) and applied.
    Ok,
    /// Some agents (or list pages) failed; what was fetched was applied.
    Partial,
    /// Nothing could be synced.
    Failed,
    /// Stopped by shutdown; what was fetched before it was applied.
    Interrupted,
}

impl RunStatus {
    /// The value stored in `sync_runs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The figures a finished cycle records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub status: RunStatus,
    pub agents_requested: usize,
    pub agents_fetched: usize,
    pub agents_new: usize,
    pub agents_changed: usize,
    pub agents_missing: usize,
    pub api_calls: u64,
    pub throttled: u64,
    pub list_pages: Option<u32>,
    pub error: Option<String>,
}

fn count(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

impl TenantStore {
    /// Opens a `running` row of this tenant and returns its id.
    pub async fn start_run(&self, mode: &str, agents_requested: usize) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO sync_runs (mode, agents_requested, tenant) VALUES ($1, $2, $3) RETURNING run_id",
        )
        .bind(mode)
        .bind(count(agents_requested))
        .bind(&*self.tenant)
        .fetch_one(&self.store.pool)
        .await
        .during("opening a sync run")
    }

    /// Closes a run with its outcome.
    pub async fn finish_run(&self, run_id: i64, record: &RunRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sync_runs SET finished_at = clock_timestamp(), status = $2, agents_requested = $3,
                 agents_fetched = $4, agents_new = $5, agents_changed = $6, agents_missing = $7,
                 api_calls = $8, throttled = $9, list_pages = $10, error = $11
             WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(record.status.as_str())
        .bind(count(record.agents_requested))
        .bind(count(record.agents_fetched))
        .bind(count(record.agents_new))
        .bind(count(record.agents_changed))
        .bind(count(record.agents_missing))
        .bind(count(record.api_calls))
        .bind(count(record.throttled))
        .bind(record.list_pages.map(count))
        .bind(&record.error)
        .execute(&self.store.pool)
        .await
        .during("closing a sync run")?;
        Ok(())
    }

    /// Marks this tenant's runs left `running` by a process that died (SIGKILL, power loss)
    /// as `interrupted`. Only the process leading the tenant runs its cycles, so when it
    /// starts leading every `running` row of the tenant belongs to a dead one.
    pub async fn close_abandoned_runs(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE sync_runs SET status = 'interrupted', finished_at = clock_timestamp(),
                 error = coalesce(error, 'the process stopped before the run finished')
             WHERE status = 'running' AND tenant = $1",
        )
        .bind(&*self.tenant)
        .execute(&self.store.pool)
        .await
        .during("closing abandoned runs")?;
        Ok(done.rows_affected())
    }

    /// Orders IDs for fetching: never-asked first (in the given order), then the least
    /// recently fetched, so a budget that cannot cover everyone rotates through all of them.
    /// A 404 counts as a fetch (its stamp in `scan_agent_not_found`, the later of the two
    /// wins): an ID known to be gone waits its turn instead of going first in every cycle.
    /// An agent stored under another tenant counts as never fetched by this one.
    pub async fn fetch_order(&self, ids: &[AgentId]) -> Result<Vec<AgentId>, StoreError> {
        let names: Vec<&str> = ids.iter().map(AgentId::as_str).collect();
        // GREATEST ignores NULLs: NULL only for an ID neither fetched nor answered 404.
        let ordered: Vec<String> = sqlx::query_scalar(
            "SELECT u.agent_id
             FROM UNNEST($1::text[]) WITH ORDINALITY AS u(agent_id, position)
             LEFT JOIN scan_agent_state s ON s.agent_id = u.agent_id AND s.tenant = $2
             LEFT JOIN scan_agent_not_found n ON n.agent_id = u.agent_id AND n.tenant = $2
             ORDER BY GREATEST(s.last_fetched_at, n.not_found_at) ASC NULLS FIRST, u.position",
        )
        .bind(&names)
        .bind(&*self.tenant)
        .fetch_all(&self.store.pool)
        .await
        .during("ordering agents by last fetch")?;
        Ok(ordered.iter().filter_map(|id| AgentId::from_api(id).ok()).collect())
    }

    /// Every agent ID stored under this tenant: with `track_all`, the set a complete list
    /// is compared with.
    pub async fn stored_ids(&self) -> Result<Vec<AgentId>, StoreError> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT agent_id FROM scan_agent_state WHERE tenant = $1 ORDER BY agent_id")
                .bind(&*self.tenant)
                .fetch_all(&self.store.pool)
                .await
                .during("listing stored agents")?;
        Ok(ids.iter().filter_map(|id| AgentId::from_api(id).ok()).collect())
    }

    /// How many pages this tenant's last complete list took, to estimate a list's cost in
    /// `auto` mode.
    pub async fn last_list_pages(&self) -> Result<Option<u32>, StoreError> {
        let pages: Option<i32> = sqlx::query_scalar(
            "SELECT list_pages FROM sync_runs
             WHERE tenant = $1 AND list_pages IS NOT NULL AND status = 'ok'
             ORDER BY run_id DESC LIMIT 1",
        )
        .bind(&*self.tenant)
        .fetch_optional(&self.store.pool)
        .await
        .during("reading the last list size")?
        .flatten();
        Ok(pages.and_then(|p| u32::try_from(p).ok()))
    }
}
