//! The end of a streamed list cycle: which tracked agents the complete list left out, and
//! marking them missing in one statement.
//!
//! A cycle applies each page as it arrives, and every agent it applies gets `last_fetched_at`
//! set to the apply's database time. So "listed in this cycle" is `last_fetched_at >=` the
//! cycle's start by the same clock, and the cycle needs no memory of the IDs it saw: at a
//! million agents that set alone would be a hundred megabytes.

use chrono::{DateTime, Utc};

use super::tenant::TenantStore;
use super::{APPLY_LOCK, QueryContext, Store, StoreError};
use crate::agent_id::AgentId;

/// The stored agents a cycle answers for.
#[derive(Debug, Clone, Copy)]
pub enum Tracked<'a> {
    /// Every stored agent (`agents.track_all`).
    All,
    /// The configured IDs.
    Ids(&'a [AgentId]),
}

impl Tracked<'_> {
    /// NULL for every agent, else the IDs: the `$1` of the statements below.
    fn ids(&self) -> Option<Vec<&str>> {
        match self {
            Tracked::All => None,
            Tracked::Ids(ids) => Some(ids.iter().map(AgentId::as_str).collect()),
        }
    }
}

/// What a complete list left out, counted before anything is marked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Absence {
    /// Tracked agents present (not missing) and first observed before the cutoff.
    pub known: u64,
    /// Of those, the ones the list did not return: they would newly be marked missing.
    pub vanishing: u64,
}

/// What marking the unlisted agents did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unlisted {
    /// Newly marked missing.
    pub went_missing: u64,
    /// Not listed and already marked: nothing written.
    pub still_missing: u64,
    /// Configured but never stored: there is no row to mark.
    pub never_seen: u64,
}

impl Store {
    /// The database's clock now: a cycle's start, compared with the stamps its applies write.
    pub async fn clock(&self) -> Result<DateTime<Utc>, StoreError> {
        sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.pool)
            .await
            .during("reading the database clock")
    }
}

impl TenantStore {
    /// Counts the agents of this tenant a complete list, fetched since `listed_since`, would
    /// newly mark missing, out of its present agents first observed before `known_before`.
    pub async fn count_unlisted(
        &self,
        tracked: Tracked<'_>,
        listed_since: DateTime<Utc>,
        known_before: DateTime<Utc>,
        spared: &[AgentId],
    ) -> Result<Absence, StoreError> {
        let spared: Vec<&str> = spared.iter().map(AgentId::as_str).collect();
        let (known, vanishing): (i64, i64) = sqlx::query_as(
            "SELECT count(*),
                    count(*) FILTER (WHERE s.last_fetched_at < $2 AND s.agent_id <> ALL($3::text[]))
             FROM scan_agent_state s
             WHERE s.tenant = $5 AND s.missing_since IS NULL AND s.first_observed_at < $4
               AND ($1::text[] IS NULL OR s.agent_id IN (SELECT unnest($1::text[])))",
        )
        .bind(tracked.ids())
        .bind(listed_since)
        .bind(&spared)
        .bind(known_before)
        .bind(&*self.tenant)
        .fetch_one(&self.store.pool)
        .await
        .during("counting the agents the list left out")?;
        Ok(Absence { known: unsigned(known), vanishing: unsigned(vanishing) })
    }

    /// Marks missing every tracked agent of this tenant that a complete list, fetched since
    /// `listed_since`, did not return (except `spared`), in one statement under the apply
    /// lock, so it is ordered with the batches like any apply. Another tenant's agents are
    /// never marked: they are neither listed nor counted as never seen here.
    pub async fn mark_unlisted(
        &self,
        tracked: Tracked<'_>,
        listed_since: DateTime<Utc>,
        spared: &[AgentId],
    ) -> Result<Unlisted, StoreError> {
        let spared: Vec<&str> = spared.iter().map(AgentId::as_str).collect();
        let mut tx = self.store.pool.begin().await.during("starting to mark unlisted agents")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPLY_LOCK)
            .execute(&mut *tx)
            .await
            .during("waiting for the apply lock")?;
        // A missing agent's row no longer holds the agent as fetched: its fingerprint goes.
        let (went_missing, still_missing, never_seen): (i64, i64, i64) = sqlx::query_as(
            "WITH unlisted AS (
                 SELECT s.agent_id, s.missing_since FROM scan_agent_state s
                 WHERE s.tenant = $4 AND s.last_fetched_at < $2
                   AND ($1::text[] IS NULL OR s.agent_id IN (SELECT unnest($1::text[])))
                   AND s.agent_id <> ALL($3::text[])
             ),
             now AS (SELECT clock_timestamp() AS at),
             marked AS (
                 UPDATE scan_agent_state a
                 SET missing_since = now.at, last_changed_at = now.at, fingerprint = NULL
                 FROM unlisted u, now
                 WHERE a.agent_id = u.agent_id AND u.missing_since IS NULL
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM marked),
                    (SELECT count(*) FROM unlisted WHERE missing_since IS NOT NULL),
                    (SELECT count(*) FROM unnest(coalesce($1::text[], '{}')) AS i(agent_id)
                     WHERE NOT EXISTS (SELECT 1 FROM scan_agent_state s
                                       WHERE s.agent_id = i.agent_id AND s.tenant = $4))",
        )
        .bind(tracked.ids())
        .bind(listed_since)
        .bind(&spared)
        .bind(&*self.tenant)
        .fetch_one(&mut *tx)
        .await
        .during("marking unlisted agents missing")?;
        tx.commit().await.during("committing the missing marks")?;
        Ok(Unlisted {
            went_missing: unsigned(went_missing),
            still_missing: unsigned(still_missing),
            never_seen: unsigned(never_seen),
        })
    }
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}
