//! Reading what the database holds for a batch: the stored state of agents, or only whether
//! their fingerprints still match.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::super::{QueryContext, StoreError};
use super::columns::Payloads;
use crate::agent::{AgentRecord, Attributes};
use crate::agent_id::AgentId;
use crate::diff::StoredAgent;

/// An agent's stored state as [`read_stored`] and [`inspect`] return it.
#[derive(sqlx::FromRow)]
struct StoredRow {
    /// 1-based position of the agent in the IDs sent.
    position: i64,
    machine_id: Option<String>,
    computer_dns_name: Option<String>,
    assigned_application_id: Option<String>,
    scanner_software_version: Option<String>,
    mde_client_version: Option<String>,
    /// NULL only in [`inspect`]'s rows for agents known unchanged (the column is NOT NULL).
    last_seen: Option<DateTime<Utc>>,
    last_command_execution_at: Option<DateTime<Utc>>,
    missing_since: Option<DateTime<Utc>>,
    /// Only in [`inspect`]'s rows: fetched already since the listing began.
    #[sqlx(default)]
    again: Option<bool>,
    /// Only in [`inspect`]'s rows: the stored payload (without its time members) is the one
    /// fetched.
    #[sqlx(default)]
    payload_stored: Option<bool>,
    /// Only in [`inspect`]'s rows: the tenant the agent is stored under, when it is not the
    /// one applying the batch.
    #[sqlx(default)]
    other_tenant: Option<String>,
}

impl StoredRow {
    /// The batch index and the stored state, or `None` for an agent known unchanged.
    fn into_agent(self) -> (usize, Option<StoredAgent>) {
        let index = usize::try_from(self.position - 1).expect("ORDINALITY counts from 1");
        let agent = self.last_seen.map(|last_seen| StoredAgent {
            attributes: Attributes {
                machine_id: self.machine_id,
                computer_dns_name: self.computer_dns_name,
                assigned_application_id: self.assigned_application_id,
                scanner_software_version: self.scanner_software_version,
                mde_client_version: self.mde_client_version,
            },
            last_seen,
            last_command_execution_at: self.last_command_execution_at,
            missing_since: self.missing_since,
        });
        (index, agent)
    }
}

/// Reads the stored state of `ids` stored under `tenant`, returned by position in the IDs
/// sent so no ID text is sent back or parsed. IDs not stored under `tenant` are absent from
/// the map: to this tenant, an agent of another is one it has never seen.
pub(super) async fn read_stored(
    conn: &mut PgConnection,
    tenant: &str,
    ids: &[&AgentId],
) -> Result<HashMap<AgentId, StoredAgent>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let texts: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT u.position, s.machine_id, s.computer_dns_name, s.assigned_application_id,
                s.scanner_software_version, s.mde_client_version, s.last_seen,
                s.last_command_execution_at, s.missing_since
         FROM UNNEST($1::text[]) WITH ORDINALITY AS u(agent_id, position)
         JOIN scan_agent_state s ON s.agent_id = u.agent_id AND s.tenant = $2",
    )
    .bind(&texts)
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await
    .during("reading the stored agents")?;
    Ok(rows
        .into_iter()
        .filter_map(|row| match row.into_agent() {
            (index, Some(agent)) => Some((ids[index].clone(), agent)),
            (_, None) => None,
        })
        .collect())
}

/// What [`inspect`] found.
pub(super) struct Inspected {
    /// Parallel to the batch: the stored fingerprint equals the fetched one.
    pub known: Vec<bool>,
    /// The stored state of every stored agent whose fingerprint differs. An agent in
    /// neither is not stored.
    pub stored: HashMap<AgentId, StoredAgent>,
    /// Agents stamped at or after `listed_since`.
    pub refetched: usize,
    /// Parallel to the batch: the stored payload, time members apart, has the fetched hash
    /// (the state row's `payload_sha256` says so, no probe of the payloads), so only the
    /// time members need writing. A reported-in agent changes only those; not
    /// sending their unchanged payloads took a tenth off a 100k list cycle's statements and
    /// 7 MiB off its peak (BENCHMARKS.md, "Big fleets").
    pub payload_stored: Vec<bool>,
    /// Batch indexes of agents stored under another tenant, with that tenant: in neither
    /// `known` nor `stored`, and never written (PRODUCT.md, "Tenants": refused, never moved).
    pub foreign: Vec<(usize, String)>,
}

/// Compares each fetched agent's fingerprint with the stored one. Known agents' state is not
/// sent back: at 100k unchanged agents that would be most of the statement's time. Agents
/// stored under a tenant other than `tenant` come back as [`Inspected::foreign`].
pub(super) async fn inspect(
    conn: &mut PgConnection,
    tenant: &str,
    fetched: &[AgentRecord],
    payloads: &Payloads,
    listed_since: Option<DateTime<Utc>>,
) -> Result<Inspected, StoreError> {
    let ids: Vec<&str> = fetched.iter().map(|r| r.id.as_str()).collect();
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT u.position,
             CASE WHEN s.fingerprint = u.fingerprint THEN NULL ELSE s.machine_id END AS machine_id,
             CASE WHEN s.fingerprint = u.fingerprint THEN NULL ELSE s.computer_dns_name END
                 AS computer_dns_name,
             CASE WHEN s.fingerprint = u.fingerprint THEN NULL ELSE s.assigned_application_id END
                 AS assigned_application_id,
             CASE WHEN s.fingerprint = u.fingerprint THEN NULL ELSE s.scanner_software_version END
                 AS scanner_software_version,
             CASE WHEN s.fingerprint = u.fingerprint THEN NULL ELSE s.mde_client_version END
                 AS mde_client_version,
             CASE WHEN s.fingerprint = u.fingerprint THEN NULL ELSE s.last_seen END AS last_seen,
             CASE WHEN s.fingerprint = u.fingerprint THEN NULL ELSE s.last_command_execution_at END
                 AS last_command_execution_at,
             CASE WHEN s.fingerprint = u.fingerprint THEN NULL ELSE s.missing_since END
                 AS missing_since,
             s.last_fetched_at >= $3 AS again,
             CASE WHEN s.fingerprint IS DISTINCT FROM u.fingerprint
                  THEN s.payload_sha256 = u.raw_sha256 END AS payload_stored,
             nullif(s.tenant, $5) AS other_tenant
         FROM UNNEST($1::text[], $2::bytea[], $4::bytea[])
              WITH ORDINALITY AS u(agent_id, fingerprint, raw_sha256, position)
         JOIN scan_agent_state s ON s.agent_id = u.agent_id",
    )
    .bind(&ids)
    .bind(&payloads.fingerprint)
    .bind(listed_since)
    .bind(&payloads.sha256)
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await
    .during("reading the stored agents' fingerprints")?;
    let mut known = vec![false; fetched.len()];
    let mut payload_stored = vec![false; fetched.len()];
    let mut stored = HashMap::with_capacity(rows.len());
    let mut foreign = Vec::new();
    let refetched = rows.iter().filter(|row| row.again == Some(true) && row.other_tenant.is_none()).count();
    for mut row in rows {
        if let Some(other) = row.other_tenant.take() {
            foreign.push((usize::try_from(row.position - 1).expect("ORDINALITY counts from 1"), other));
            continue;
        }
        let same_payload = row.payload_stored == Some(true);
        match row.into_agent() {
            (index, None) => known[index] = true,
            (index, Some(agent)) => {
                payload_stored[index] = same_payload;
                stored.insert(fetched[index].id.clone(), agent);
            }
        }
    }
    Ok(Inspected { known, stored, refetched, payload_stored, foreign })
}
