//! The end of a streamed list cycle: which tracked agents the complete list left out, and
//! marking them missing in one statement.
//!
//! A cycle applies each page as it arrives, and every agent it applies gets `last_fetched_at`
//! set to the apply's database time. So "listed in this cycle" is `last_fetched_at >=` the
//! cycle's start by the same clock, and the cycle needs no memory of the IDs it saw: at a
//! million agents that set alone would be a hundred megabytes.

use chrono::{DateTime, Utc};

use super::block_ranges::{block_ranges, in_block_range};
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
    /// Present agents the list did not return, first observed at any time: what
    /// [`TenantStore::mark_unlisted`] would mark.
    pub unlisted: u64,
    /// Not listed and already marked: nothing to write.
    pub still_missing: u64,
    /// Configured but never stored: there is no row to mark.
    pub never_seen: u64,
}

#[derive(sqlx::FromRow)]
struct AbsencePart {
    known: i64,
    vanishing: i64,
    unlisted: i64,
    still_missing: i64,
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
    /// Counts the agents of this tenant a complete list, fetched since `listed_since`, left
    /// out (except `spared`), and how many of them would newly be marked missing out of its
    /// present agents first observed before `known_before`. One pass over the state table, a
    /// range of blocks per statement: the cycle's own pages are applied by then, so nothing
    /// moves this tenant's rows.
    pub async fn count_unlisted(
        &self,
        tracked: Tracked<'_>,
        listed_since: DateTime<Utc>,
        known_before: DateTime<Utc>,
        spared: &[AgentId],
    ) -> Result<Absence, StoreError> {
        let spared: Vec<&str> = spared.iter().map(AgentId::as_str).collect();
        let ids = tracked.ids();
        let mut absence = Absence::default();
        for (first, end) in block_ranges(&self.store.pool).await? {
            let part: AbsencePart = sqlx::query_as(concat!(
                "SELECT count(*) FILTER (WHERE present AND known) AS known,
                        count(*) FILTER (WHERE present AND known AND unlisted) AS vanishing,
                        count(*) FILTER (WHERE present AND unlisted) AS unlisted,
                        count(*) FILTER (WHERE NOT present AND unlisted) AS still_missing
                 FROM (SELECT s.missing_since IS NULL AS present, s.first_observed_at < $6 AS known,
                              s.last_fetched_at < $4 AND s.agent_id <> ALL($5::text[]) AS unlisted
                       FROM scan_agent_state s
                       WHERE ",
                in_block_range!(),
                " AND s.tenant = $7
                         AND ($3::text[] IS NULL OR s.agent_id IN (SELECT unnest($3::text[])))) s"
            ))
            .bind(first)
            .bind(end)
            .bind(&ids)
            .bind(listed_since)
            .bind(&spared)
            .bind(known_before)
            .bind(&*self.tenant)
            .fetch_one(&self.store.pool)
            .await
            .during("counting the agents the list left out")?;
            absence.known += unsigned(part.known);
            absence.vanishing += unsigned(part.vanishing);
            absence.unlisted += unsigned(part.unlisted);
            absence.still_missing += unsigned(part.still_missing);
        }
        if let Some(ids) = &ids {
            let never_seen: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM unnest($1::text[]) AS i(agent_id)
                 WHERE NOT EXISTS (SELECT 1 FROM scan_agent_state s WHERE s.agent_id = i.agent_id AND s.tenant = $2)",
            )
            .bind(ids)
            .bind(&*self.tenant)
            .fetch_one(&self.store.pool)
            .await
            .during("counting the configured agents never stored")?;
            absence.never_seen = unsigned(never_seen);
        }
        Ok(absence)
    }

    /// Marks missing every tracked agent of this tenant that a complete list, fetched since
    /// `listed_since`, did not return (except `spared`), and returns how many, under the
    /// apply lock so it is ordered with the batches like any apply and no applier moves rows
    /// during its pass over the table; a row this pass marks and moves to a later range is
    /// not marked again (`missing_since IS NULL`). Another tenant's agents are never marked.
    pub async fn mark_unlisted(
        &self,
        tracked: Tracked<'_>,
        listed_since: DateTime<Utc>,
        spared: &[AgentId],
    ) -> Result<u64, StoreError> {
        let spared: Vec<&str> = spared.iter().map(AgentId::as_str).collect();
        let ids = tracked.ids();
        let mut tx = self.store.pool.begin().await.during("starting to mark unlisted agents")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPLY_LOCK)
            .execute(&mut *tx)
            .await
            .during("waiting for the apply lock")?;
        // One time for every range: the agents one list left out went missing together.
        let marked_at: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *tx)
            .await
            .during("reading the database clock")?;
        let mut went_missing = 0;
        for (first, end) in block_ranges(&mut *tx).await? {
            // A missing agent's row no longer holds the agent as fetched: its fingerprint goes.
            let marked = sqlx::query(concat!(
                "UPDATE scan_agent_state s
                 SET missing_since = $6, last_changed_at = $6, fingerprint = NULL
                 WHERE ",
                in_block_range!(),
                " AND s.tenant = $7 AND s.missing_since IS NULL AND s.last_fetched_at < $4
                   AND ($3::text[] IS NULL OR s.agent_id IN (SELECT unnest($3::text[])))
                   AND s.agent_id <> ALL($5::text[])"
            ))
            .bind(first)
            .bind(end)
            .bind(&ids)
            .bind(listed_since)
            .bind(&spared)
            .bind(marked_at)
            .bind(&*self.tenant)
            .execute(&mut *tx)
            .await
            .during("marking unlisted agents missing")?;
            went_missing += marked.rows_affected();
        }
        tx.commit().await.during("committing the missing marks")?;
        Ok(went_missing)
    }
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}
