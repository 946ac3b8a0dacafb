//! `stale_episodes` and `alert_outbox`: the alert lifecycle and the notifications it owes.
//!
//! The state change (an episode opened, repeated or resolved) and the notification it owes
//! are written by one statement in one transaction, so they commit or vanish together: a
//! crash can delay a notification but never lose one or fire an episode twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::block_ranges::{block_ranges, in_block_range};
use super::notification::Notification;
use super::{QueryContext, Store, StoreError};
use crate::tenant_name::TenantName;

/// Advisory lock key that serializes [`Store::record_staleness`] and the fleet episodes: two
/// instances (or a timer tick racing a post-cycle call) evaluate one after the other, so the
/// second sees the first's episodes and fires nothing again.
pub const ALERT_LOCK: i64 = 0x5CA5_0004;

/// What one staleness evaluation changed and saw; the counts feed the agent metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// Episodes opened (first firing notifications queued).
    pub fired: u64,
    /// Episodes closed (resolve notifications queued).
    pub resolved: u64,
    /// Repeat firing notifications queued for episodes still open.
    pub repeated: u64,
    /// Agents stale now, missing ones included.
    pub stale_now: u64,
    /// Agents marked missing now.
    pub missing_now: u64,
    /// Agents in `scan_agents` (of the tenants evaluated).
    pub tracked: u64,
}

/// One undelivered notification, taken from the outbox.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub event_id: i64,
    /// Earlier failed attempts; 0 the first time the event is taken.
    pub attempts: i32,
    pub event: Notification,
}

/// Outbox events held under row locks until they are marked delivered or rescheduled, all
/// together. Dropping the batch unmarked (a crash, a cancelled task) releases it untouched
/// for the next try.
pub struct ClaimedBatch {
    tx: Transaction<'static, Postgres>,
    pub events: Vec<OutboxEvent>,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    event_id: i64,
    attempts: i32,
    /// The payload's text, parsed by the type its episode column says.
    payload: String,
    fleet: bool,
}

impl OutboxRow {
    fn into_event(self) -> Result<OutboxEvent, sqlx::Error> {
        let event = if self.fleet {
            serde_json::from_str(&self.payload).map(Notification::Fleet)
        } else {
            serde_json::from_str(&self.payload).map(Notification::Agent)
        };
        let event = event.map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        Ok(OutboxEvent { event_id: self.event_id, attempts: self.attempts, event })
    }
}

/// Most episodes one statement of [`Store::record_staleness`] opens, repeats or resolves: a
/// storm of 100,000 agents turning stale at once becomes twenty statements that each stay
/// well under sqlx's slow-statement threshold (1 s), also on a busy machine.
const EVALUATION_CHUNK: usize = 5_000;

/// What one chunk of stale agents did.
#[derive(sqlx::FromRow)]
struct StaleChunk {
    fired: i64,
    repeated: i64,
}

/// Queues a stale-agent event (payload: an [`AlertEvent`](super::notification::AlertEvent))
/// for each row of the statement's `ev` CTE (the episode and the event's kind), with the
/// agent's state row found by its primary key; `$1` is the evaluation's `now`. Returns
/// whether each was a repeat.
macro_rules! queue_agent_events {
    () => {
        "INSERT INTO alert_outbox (episode_id, agent_id, kind, payload, created_at, next_attempt_at)
         SELECT ev.episode_id, ev.agent_id, ev.kind,
                jsonb_build_object(
                    'status', ev.kind, 'tenant', s.tenant, 'agent_id', ev.agent_id,
                    'computer_dns_name', s.computer_dns_name, 'last_seen', s.last_seen,
                    'missing_since', s.missing_since, 'stale_since', ev.stale_since,
                    'fired_at', ev.started_at, 'resolved_at', ev.resolved_at, 'repeat', ev.repeat),
                $1, $1
         FROM ev JOIN scan_agent_state s ON s.agent_id = ev.agent_id
         ORDER BY ev.agent_id
         RETURNING (payload ->> 'repeat')::bool AS repeat"
    };
}

/// The agents of the evaluated tenants as one pass over the state table found them.
#[derive(Debug, Default, sqlx::FromRow)]
struct Census {
    tracked: i64,
    missing_now: i64,
    /// Stale now, missing ones included, sorted.
    stale: Vec<String>,
}

/// Counts the agents of `tenants` (all for `None`) and collects the stale ones, a range of
/// blocks per statement. A row an apply moves meanwhile may be counted twice or not at all;
/// the statements that write re-check staleness, so that only shifts a count or an episode
/// to the next evaluation.
async fn take_census(
    tx: &mut Transaction<'static, Postgres>,
    now: DateTime<Utc>,
    stale_after: Duration,
    tenants: Option<&[&str]>,
) -> Result<Census, StoreError> {
    let mut census = Census::default();
    for (first, end) in block_ranges(&mut **tx).await? {
        let part: Census = sqlx::query_as(concat!(
            "SELECT count(*) AS tracked,
                    count(*) FILTER (WHERE missing_since IS NOT NULL) AS missing_now,
                    coalesce(array_agg(agent_id)
                                 FILTER (WHERE missing_since IS NOT NULL OR last_seen < $3 - $4::interval),
                             '{}') AS stale
             FROM scan_agent_state
             WHERE ",
            in_block_range!(),
            " AND ($5::text[] IS NULL OR tenant = ANY($5))"
        ))
        .bind(first)
        .bind(end)
        .bind(now)
        .bind(stale_after)
        .bind(tenants)
        .fetch_one(&mut **tx)
        .await
        .during("finding stale agents")?;
        census.tracked += part.tracked;
        census.missing_now += part.missing_now;
        census.stale.extend(part.stale);
    }
    census.stale.sort_unstable();
    census.stale.dedup();
    Ok(census)
}

fn unsigned(n: i64) -> u64 {
    n.try_into().unwrap_or_default()
}

/// A transaction holding [`ALERT_LOCK`]: every writer of episodes (stale agents here, fleets
/// in `super::fleet`) takes it first.
pub(super) async fn lock_alerts(store: &Store) -> Result<Transaction<'static, Postgres>, StoreError> {
    let mut tx = store.pool.begin().await.during("starting an alert episode transaction")?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ALERT_LOCK)
        .execute(&mut *tx)
        .await
        .during("waiting for the alert lock")?;
    Ok(tx)
}

impl Store {
    /// Brings the episodes in line with the agents' state at `now` and queues the
    /// notifications that owes: resolves for fresh agents, repeats for episodes last
    /// notified `repeat_interval` ago or more (zero: never; and not while an earlier
    /// notification of the episode is still undelivered, so an outage does not pile them
    /// up), and a first firing for stale agents without an open episode.
    #[tracing::instrument(skip(self))]
    pub async fn record_staleness(
        &self,
        now: DateTime<Utc>,
        stale_after: Duration,
        repeat_interval: Duration,
        tenants: Option<&[TenantName]>,
    ) -> Result<Evaluation, StoreError> {
        let tenants = tenants.map(super::tenant::names);
        let mut tx = lock_alerts(self).await?;
        // Every statement selects its rows by primary-key or open-episode index lookups of a
        // chunk of agent IDs, never by a join the planner must estimate: right after a storm
        // the statistics say the episode table is empty, and a plan that scans it once per
        // agent took 100 s for 100,000 agents (BENCHMARKS.md, "Stale evaluation at scale").
        // The stale agents come from one pass over the state table, the agents with an
        // open episode from its partial index; each chunk statement re-checks staleness in
        // its own snapshot, so an agent that changed meanwhile is left for the next
        // evaluation, and the unique index on open episodes (ON CONFLICT) keeps one open
        // episode per agent.
        let census = take_census(&mut tx, now, stale_after, tenants.as_deref()).await?;
        let stale = &census.stale;
        let open: Vec<String> = sqlx::query_scalar(
            "SELECT e.agent_id FROM stale_episodes e JOIN scan_agent_state s USING (agent_id)
             WHERE e.resolved_at IS NULL AND ($1::text[] IS NULL OR s.tenant = ANY($1))",
        )
        .bind(&tenants)
        .fetch_all(&mut *tx)
        .await
        .during("finding open stale episodes")?;
        let fresh_again: Vec<&str> =
            open.iter().filter(|id| stale.binary_search(id).is_err()).map(String::as_str).collect();
        let mut resolved = 0;
        for chunk in fresh_again.chunks(EVALUATION_CHUNK) {
            let done: i64 = sqlx::query_scalar(concat!(
                "WITH ev AS (
                     UPDATE stale_episodes e SET resolved_at = greatest($1, e.started_at)
                     FROM scan_agent_state s
                     WHERE e.agent_id = ANY($3) AND e.resolved_at IS NULL
                       AND s.agent_id = ANY($3) AND s.agent_id = e.agent_id
                       AND s.missing_since IS NULL AND s.last_seen >= $1 - $2::interval
                     RETURNING e.episode_id, e.agent_id, 'resolved'::text AS kind, e.started_at,
                               e.stale_since, e.resolved_at, false AS repeat
                 ),
                 queued AS (",
                queue_agent_events!(),
                ")
                 SELECT count(*) FROM queued"
            ))
            .bind(now)
            .bind(stale_after)
            .bind(chunk)
            .fetch_one(&mut *tx)
            .await
            .during("resolving stale episodes and queueing their alerts")?;
            resolved += done;
        }
        let (mut fired, mut repeated) = (0, 0);
        for chunk in stale.chunks(EVALUATION_CHUNK) {
            let done: StaleChunk = sqlx::query_as(concat!(
                "WITH stale AS (
                     SELECT agent_id, last_seen, missing_since
                     FROM scan_agent_state
                     WHERE agent_id = ANY($4) AND (missing_since IS NOT NULL OR last_seen < $1 - $2::interval)
                 ),
                 repeated AS (
                     UPDATE stale_episodes e SET last_notified_at = $1
                     FROM stale s
                     WHERE $3::interval > interval '0' AND e.agent_id = ANY($4) AND s.agent_id = e.agent_id
                       AND e.resolved_at IS NULL AND e.last_notified_at <= $1 - $3::interval
                       AND NOT EXISTS (SELECT 1 FROM alert_outbox o
                                       WHERE o.episode_id = e.episode_id AND o.delivered_at IS NULL)
                     RETURNING e.episode_id, e.agent_id, 'firing'::text AS kind, e.started_at,
                               e.stale_since, e.resolved_at, true AS repeat
                 ),
                 opened AS (
                     INSERT INTO stale_episodes (agent_id, started_at, stale_since, last_notified_at)
                     SELECT s.agent_id, $1, least(s.last_seen + $2::interval, s.missing_since), $1
                     FROM stale s
                     ON CONFLICT (agent_id) WHERE resolved_at IS NULL DO NOTHING
                     RETURNING episode_id, agent_id, 'firing'::text, started_at, stale_since,
                               resolved_at, false
                 ),
                 ev AS (SELECT * FROM repeated UNION ALL SELECT * FROM opened),
                 queued AS (",
                queue_agent_events!(),
                ")
                 SELECT count(*) FILTER (WHERE NOT repeat) AS fired,
                        count(*) FILTER (WHERE repeat) AS repeated
                 FROM queued"
            ))
            .bind(now)
            .bind(stale_after)
            .bind(repeat_interval)
            .bind(chunk)
            .fetch_one(&mut *tx)
            .await
            .during("recording stale episodes and queueing their alerts")?;
            fired += done.fired;
            repeated += done.repeated;
        }
        tx.commit().await.during("committing stale episodes")?;
        Ok(Evaluation {
            fired: unsigned(fired),
            resolved: unsigned(resolved),
            repeated: unsigned(repeated),
            stale_now: u64::try_from(census.stale.len()).unwrap_or(u64::MAX),
            missing_now: unsigned(census.missing_now),
            tracked: unsigned(census.tracked),
        })
    }

    /// Takes up to `limit` notifications due at `now`, locked against other senders (they
    /// skip them). Each ordering key (an agent, or a tenant's fleet) has its notifications go
    /// out in the order they were queued: an event waits while an earlier one of the same key
    /// is undelivered, so a receiver never sees a resolve before its firing, and a batch
    /// holds at most one event per key. None when nothing is due.
    pub async fn claim_alerts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Option<ClaimedBatch>, StoreError> {
        let mut tx = self.pool.begin().await.during("starting an alert delivery transaction")?;
        // Walks alert_outbox_due_idx in its order and stops after `limit` rows, probing
        // alert_outbox_agent_pending_idx once per row: the cost follows the batch, not the
        // backlog (BENCHMARKS.md, "Alert storms").
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT o.event_id, o.attempts, o.payload::text AS payload,
                    o.fleet_episode_id IS NOT NULL AS fleet
             FROM alert_outbox o
             WHERE o.delivered_at IS NULL AND o.next_attempt_at <= $1
               AND NOT EXISTS (SELECT 1 FROM alert_outbox p
                               WHERE p.agent_id = o.agent_id AND p.delivered_at IS NULL
                                 AND p.event_id < o.event_id)
             ORDER BY o.next_attempt_at, o.event_id
             LIMIT $2
             FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .during("taking due alerts from the outbox")?;
        if rows.is_empty() {
            return Ok(None);
        }
        let events = rows
            .into_iter()
            .map(OutboxRow::into_event)
            .collect::<Result<_, _>>()
            .during("reading a queued alert's payload")?;
        Ok(Some(ClaimedBatch { tx, events }))
    }
}

impl ClaimedBatch {
    fn event_ids(&self) -> Vec<i64> {
        self.events.iter().map(|e| e.event_id).collect()
    }

    /// Marks the whole batch delivered in one statement and commits at once, keeping the
    /// window in which a crash could resend it as short as possible.
    pub async fn delivered(mut self, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE alert_outbox SET delivered_at = $2, last_error = NULL WHERE event_id = ANY($1)")
            .bind(self.event_ids())
            .bind(at)
            .execute(&mut *self.tx)
            .await
            .during("marking alerts delivered")?;
        self.tx.commit().await.during("committing an alert delivery")
    }

    /// Counts a failed attempt of every event of the batch and schedules the next one.
    pub async fn retry_at(mut self, next_attempt_at: DateTime<Utc>, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3
             WHERE event_id = ANY($1)",
        )
        .bind(self.event_ids())
        .bind(next_attempt_at)
        .bind(error)
        .execute(&mut *self.tx)
        .await
        .during("rescheduling alerts")?;
        self.tx.commit().await.during("committing an alert retry")
    }
}
