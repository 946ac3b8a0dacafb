//! The diff and history engine: applies one fetched batch to the agent tables in ONE
//! transaction, with set-based statements (arrays through `UNNEST`), never one round trip
//! per agent.
//!
//! Concurrency: the transaction first takes the [`APPLY_LOCK`] advisory lock and only then
//! reads current state and picks its timestamp, so two appliers run strictly one after the
//! other and end with the same history as one applying both batches in order. A dropped
//! connection rolls the whole transaction back.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};

use super::{APPLY_LOCK, QueryContext, Store, StoreError};
use crate::agent::{AgentRecord, Attributes};
use crate::agent_id::AgentId;
use crate::diff::{Diff, Status, StoredAgent, dedup_batch};

/// The outcome of applying one batch.
#[derive(Debug, Clone)]
pub struct Applied {
    pub diff: Diff,
    /// The database time the batch was applied at: `valid_from`, `observed_at`, `last_fetched_at`.
    pub applied_at: DateTime<Utc>,
}

impl Store {
    /// Computes what applying `fetched` and `missing` would change, writing nothing.
    #[tracing::instrument(skip_all, fields(fetched = fetched.len(), missing = missing.len()))]
    pub async fn plan(&self, fetched: Vec<AgentRecord>, missing: &[AgentId]) -> Result<Diff, StoreError> {
        let fetched = dedup_batch(fetched);
        let mut conn = self.pool.acquire().await.during("connecting to plan a batch")?;
        let stored = load_stored(&mut conn, &fetched, missing).await?;
        Ok(Diff::compute(&stored, &fetched, missing))
    }

    /// Applies a batch: new agents, changed attributes (closing and opening versions), new
    /// `lastSeen` values, missing marks, and the `last_fetched_at` stamp, all or nothing.
    #[tracing::instrument(skip_all, fields(fetched = fetched.len(), missing = missing.len()))]
    pub async fn apply(&self, fetched: Vec<AgentRecord>, missing: &[AgentId]) -> Result<Applied, StoreError> {
        let fetched = dedup_batch(fetched);
        let mut tx = self.pool.begin().await.during("starting the batch transaction")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPLY_LOCK)
            .execute(&mut *tx)
            .await
            .during("waiting for the apply lock")?;
        // The planner assumes 10 rows for UNNEST of a parameter, so it joins batches of 100k
        // by probing an index 100k times; without nested loops it hashes them instead.
        sqlx::query("SET LOCAL enable_nestloop = off")
            .execute(&mut *tx)
            .await
            .during("tuning the batch transaction")?;
        // Taken after the lock, so serialized appliers get increasing timestamps.
        let applied_at: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *tx)
            .await
            .during("reading the database clock")?;
        let stored = load_stored(&mut tx, &fetched, missing).await?;
        let diff = Diff::compute(&stored, &fetched, missing);
        write(&mut tx, &fetched, &diff, applied_at).await?;
        tx.commit().await.during("committing the batch")?;
        Ok(Applied { diff, applied_at })
    }
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    agent_id: String,
    machine_id: Option<String>,
    computer_dns_name: Option<String>,
    assigned_application_id: Option<String>,
    scanner_software_version: Option<String>,
    mde_client_version: Option<String>,
    last_seen: DateTime<Utc>,
    last_command_execution_at: Option<DateTime<Utc>>,
    missing_since: Option<DateTime<Utc>>,
}

async fn load_stored(
    conn: &mut PgConnection,
    fetched: &[AgentRecord],
    missing: &[AgentId],
) -> Result<HashMap<AgentId, StoredAgent>, StoreError> {
    let ids: Vec<&str> =
        fetched.iter().map(|r| r.id.as_str()).chain(missing.iter().map(AgentId::as_str)).collect();
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT agent_id, machine_id, computer_dns_name, assigned_application_id,
                scanner_software_version, mde_client_version, last_seen,
                last_command_execution_at, missing_since
         FROM scan_agents WHERE agent_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .during("reading the stored agents")?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            // Stored IDs passed validation when written; one that no longer parses cannot
            // match a fetched ID either, so it is simply not part of this diff.
            let id = AgentId::from_api(&row.agent_id).ok()?;
            let stored = StoredAgent {
                attributes: Attributes {
                    machine_id: row.machine_id,
                    computer_dns_name: row.computer_dns_name,
                    assigned_application_id: row.assigned_application_id,
                    scanner_software_version: row.scanner_software_version,
                    mde_client_version: row.mde_client_version,
                },
                last_seen: row.last_seen,
                last_command_execution_at: row.last_command_execution_at,
                missing_since: row.missing_since,
            };
            Some((id, stored))
        })
        .collect())
}

/// Column arrays for a set of records, bound as one parameter each.
#[derive(Default)]
struct Columns {
    agent_id: Vec<String>,
    machine_id: Vec<Option<String>>,
    computer_dns_name: Vec<Option<String>>,
    assigned_application_id: Vec<Option<String>>,
    scanner_software_version: Vec<Option<String>>,
    mde_client_version: Vec<Option<String>>,
    last_seen: Vec<DateTime<Utc>>,
    last_command_execution_at: Vec<Option<DateTime<Utc>>>,
    raw: Vec<String>,
    changed: Vec<bool>,
}

impl Columns {
    fn push(&mut self, record: &AgentRecord, changed: bool) {
        let a = &record.attributes;
        self.agent_id.push(record.id.to_string());
        self.machine_id.push(a.machine_id.clone());
        self.computer_dns_name.push(a.computer_dns_name.clone());
        self.assigned_application_id.push(a.assigned_application_id.clone());
        self.scanner_software_version.push(a.scanner_software_version.clone());
        self.mde_client_version.push(a.mde_client_version.clone());
        self.last_seen.push(record.last_seen);
        self.last_command_execution_at.push(record.last_command_execution_at);
        self.raw.push(record.raw.to_string());
        self.changed.push(changed);
    }
}

async fn write(
    tx: &mut Transaction<'_, Postgres>,
    fetched: &[AgentRecord],
    diff: &Diff,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut inserts = Columns::default();
    let mut updates = Columns::default();
    let mut versions = Columns::default();
    let mut closed_versions: Vec<&str> = Vec::new();
    let mut seen_ids: Vec<&str> = Vec::new();
    let mut seen_values: Vec<DateTime<Utc>> = Vec::new();
    for (record, agent) in fetched.iter().zip(&diff.agents) {
        match agent.status {
            Status::New => inserts.push(record, true),
            Status::Changed => updates.push(record, true),
            Status::Unchanged => updates.push(record, false),
        }
        if agent.attributes_changed {
            versions.push(record, true);
            if agent.status == Status::Changed {
                closed_versions.push(record.id.as_str());
            }
        }
        if agent.last_seen_changed {
            seen_ids.push(record.id.as_str());
            seen_values.push(record.last_seen);
        }
    }

    if !inserts.agent_id.is_empty() {
        sqlx::query(
            "INSERT INTO scan_agents (agent_id, machine_id, computer_dns_name,
                 assigned_application_id, scanner_software_version, mde_client_version,
                 last_seen, last_command_execution_at, raw,
                 first_observed_at, last_fetched_at, last_changed_at)
             SELECT u.agent_id, u.machine_id, u.computer_dns_name, u.assigned_application_id,
                    u.scanner_software_version, u.mde_client_version, u.last_seen,
                    u.last_command_execution_at, u.raw::jsonb, $10, $10, $10
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::timestamptz[], $9::text[])
                  AS u(agent_id, machine_id, computer_dns_name, assigned_application_id,
                       scanner_software_version, mde_client_version, last_seen,
                       last_command_execution_at, raw)",
        )
        .bind(&inserts.agent_id)
        .bind(&inserts.machine_id)
        .bind(&inserts.computer_dns_name)
        .bind(&inserts.assigned_application_id)
        .bind(&inserts.scanner_software_version)
        .bind(&inserts.mde_client_version)
        .bind(&inserts.last_seen)
        .bind(&inserts.last_command_execution_at)
        .bind(&inserts.raw)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("inserting new agents")?;
    }

    if !updates.agent_id.is_empty() {
        // Every fetched agent gets its fetch stamp and latest raw payload; only changed ones
        // move last_changed_at. A fetched agent is present, so missing_since clears.
        sqlx::query(
            "UPDATE scan_agents a SET
                 machine_id = u.machine_id,
                 computer_dns_name = u.computer_dns_name,
                 assigned_application_id = u.assigned_application_id,
                 scanner_software_version = u.scanner_software_version,
                 mde_client_version = u.mde_client_version,
                 last_seen = u.last_seen,
                 last_command_execution_at = u.last_command_execution_at,
                 raw = u.raw::jsonb,
                 last_fetched_at = $11,
                 last_changed_at = CASE WHEN u.changed THEN $11 ELSE a.last_changed_at END,
                 missing_since = NULL
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::timestamptz[], $9::text[], $10::bool[])
                  AS u(agent_id, machine_id, computer_dns_name, assigned_application_id,
                       scanner_software_version, mde_client_version, last_seen,
                       last_command_execution_at, raw, changed)
             WHERE a.agent_id = u.agent_id",
        )
        .bind(&updates.agent_id)
        .bind(&updates.machine_id)
        .bind(&updates.computer_dns_name)
        .bind(&updates.assigned_application_id)
        .bind(&updates.scanner_software_version)
        .bind(&updates.mde_client_version)
        .bind(&updates.last_seen)
        .bind(&updates.last_command_execution_at)
        .bind(&updates.raw)
        .bind(&updates.changed)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("updating fetched agents")?;
    }

    if !closed_versions.is_empty() {
        sqlx::query(
            "UPDATE scan_agent_versions SET valid_to = $2
             WHERE valid_to IS NULL AND agent_id = ANY($1)",
        )
        .bind(&closed_versions)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("closing superseded versions")?;
    }

    if !versions.agent_id.is_empty() {
        sqlx::query(
            "INSERT INTO scan_agent_versions (agent_id, machine_id, computer_dns_name,
                 assigned_application_id, scanner_software_version, mde_client_version, valid_from)
             SELECT u.*, $7 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                                        $5::text[], $6::text[]) AS u",
        )
        .bind(&versions.agent_id)
        .bind(&versions.machine_id)
        .bind(&versions.computer_dns_name)
        .bind(&versions.assigned_application_id)
        .bind(&versions.scanner_software_version)
        .bind(&versions.mde_client_version)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("opening new versions")?;
    }

    if !seen_ids.is_empty() {
        // A lastSeen value held before (it went back and forth) is already recorded once.
        sqlx::query(
            "INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
             SELECT u.agent_id, u.last_seen, $3
             FROM UNNEST($1::text[], $2::timestamptz[]) AS u(agent_id, last_seen)
             ON CONFLICT (agent_id, last_seen) DO NOTHING",
        )
        .bind(&seen_ids)
        .bind(&seen_values)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("recording lastSeen values")?;
    }

    if !diff.went_missing.is_empty() {
        let missing: Vec<&str> = diff.went_missing.iter().map(AgentId::as_str).collect();
        sqlx::query(
            "UPDATE scan_agents SET missing_since = $2, last_changed_at = $2
             WHERE agent_id = ANY($1) AND missing_since IS NULL",
        )
        .bind(&missing)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("marking missing agents")?;
    }
    Ok(())
}
