//! The diff and history engine: applies one fetched batch to the agent tables in ONE
//! transaction, with set-based statements (arrays through `UNNEST`), never one round trip
//! per agent.
//!
//! Layout (migration 20261128000006): an agent's current state, including its current
//! version (`version_id`, `valid_from`), its fetch stamp and its fingerprint, is a row of
//! `scan_agent_state`; its last payload a row of `scan_agent_payloads`, but for the time
//! members, which change whenever the agent reports in and are kept in the state row with
//! the hash of the rest (`raw_times`, `payload_sha256`, migration 20261207000011); closed
//! versions are rows of `scan_agent_version_history`, appended once when a version ends and
//! never updated. The BI names `scan_agents` and `scan_agent_versions` are views over them.
//!
//! A sync cycle mostly re-fetches unchanged agents. Their state is not even read: the
//! first statement compares each fetched agent's fingerprint (a hash over everything the
//! diff compares and the payload) with the stored one, and returns the stored state only of
//! agents whose fingerprints differ, which alone are diffed in full. Then every state row
//! of the batch is written exactly once, the stamp with whatever else changed, in place
//! (HOT: no index holds a column that changes, and the fillfactor leaves room on the page);
//! a payload is rewritten only when its hash differs; a change of attributes first appends
//! the closing version to the history, copied from the state row it leaves.
//!
//! Tenants (migration 20261206000010): a batch is applied for one tenant ([`TenantStore`]).
//! New agents are stored under it, history rows copy their state row's tenant, and an agent
//! the batch holds that is stored under another tenant is taken out of the batch before
//! anything is written and returned as [`Refused`]: an agent's tenant never changes.
//!
//! Concurrency: the transaction first takes the [`APPLY_LOCK`](super::APPLY_LOCK) advisory
//! lock and only then reads current state and picks its timestamp, so two appliers run
//! strictly one after the other and end with the same history as one applying both batches
//! in order. A big batch is applied in parts, one per shard of agents, side by side on their
//! own connections; each part locks only its shard, so appliers of one agent still run in
//! sequence (module `shard`). A dropped connection rolls its transaction back.

mod columns;
mod read;
mod shard;

#[cfg(test)]
pub(super) use self::shard::shard_locks;

use chrono::{DateTime, Utc};
use sqlx::{Connection, Postgres, Transaction};

use self::columns::{PayloadColumns, Payloads, StampColumns, StateColumns};
use self::read::{Inspected, inspect, read_stored};
use self::shard::Lock;
use super::not_found;
use super::tenant::TenantStore;
use super::{QueryContext, Store, StoreError};
use crate::agent::AgentRecord;
use crate::agent_id::AgentId;
use crate::diff::{Diff, Status, dedup_batch};
use crate::tenant_name::TenantName;

/// The outcome of applying one batch.
#[derive(Debug, Clone)]
pub struct Applied {
    /// What the batch changed. Its agents are in batch order, except for a batch applied in
    /// parts (module `shard`), whose agents come part after part, each part's in batch order.
    pub diff: Diff,
    /// The database time the batch was applied at: `valid_from`, `observed_at`,
    /// `last_fetched_at`. A batch applied in parts (module `shard`) has one per part; this is
    /// the latest.
    pub applied_at: DateTime<Utc>,
    /// Agents of the batch fetched already since the listing began ([`TenantStore::apply_page`]).
    pub refetched: usize,
    /// Agents of the batch stored under another tenant: not written, and not in `diff`.
    pub refused: Vec<Refused>,
}

/// An agent that a tenant's API returned while it is stored under another tenant: refused,
/// never moved (PRODUCT.md, "Tenants"). The cycle reports it as a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub agent_id: AgentId,
    /// The tenant the agent is stored under.
    pub stored_under: String,
}

impl Store {
    /// [`TenantStore::apply`] of the tenant of a single-tenant configuration.
    pub async fn apply(&self, fetched: Vec<AgentRecord>, missing: &[AgentId]) -> Result<Applied, StoreError> {
        self.for_tenant(TenantName::default()).apply(fetched, missing).await
    }
}

impl TenantStore {
    /// Computes what applying `fetched` and `missing` would change, writing nothing. An
    /// agent stored under another tenant shows as new here; applying refuses it.
    #[tracing::instrument(skip_all, fields(fetched = fetched.len(), missing = missing.len()))]
    pub async fn plan(&self, fetched: Vec<AgentRecord>, missing: &[AgentId]) -> Result<Diff, StoreError> {
        let fetched = dedup_batch(fetched);
        let mut conn = self.store.pool.acquire().await.during("connecting to plan a batch")?;
        let ids: Vec<&AgentId> = fetched.iter().map(|r| &r.id).chain(missing).collect();
        let stored = read_stored(&mut conn, &self.tenant, &ids).await?;
        Ok(Diff::compute(&stored, &fetched, missing))
    }

    /// Applies a batch for this tenant: new agents, changed attributes (closing and opening
    /// versions), new `lastSeen` values, missing marks, and the `last_fetched_at` stamp (for
    /// `missing`, the 404 stamp of [`not_found`]), all or nothing. Agents stored under
    /// another tenant are left out ([`Applied::refused`]).
    #[tracing::instrument(skip_all, fields(tenant = %self.tenant, fetched = fetched.len(), missing = missing.len()))]
    pub async fn apply(&self, fetched: Vec<AgentRecord>, missing: &[AgentId]) -> Result<Applied, StoreError> {
        self.apply_batch(fetched, missing, None).await
    }

    /// Applies one page of a listing that started at `listed_since` (database clock), and
    /// counts the page's agents that an earlier page of the same listing returned already:
    /// a list that repeats agents is paging inconsistently and may have skipped others.
    #[tracing::instrument(skip_all, fields(tenant = %self.tenant, fetched = fetched.len()))]
    pub async fn apply_page(
        &self,
        fetched: Vec<AgentRecord>,
        listed_since: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        self.apply_batch(fetched, &[], Some(listed_since)).await
    }

    async fn apply_batch(
        &self,
        fetched: Vec<AgentRecord>,
        missing: &[AgentId],
        listed_since: Option<DateTime<Utc>>,
    ) -> Result<Applied, StoreError> {
        let fetched = dedup_batch(fetched);
        if fetched.len() < shard::SHARD_FROM || !missing.is_empty() {
            return self.apply_part(fetched, missing, listed_since, Lock::Whole).await;
        }
        let [first, second] = shard::split(fetched);
        // Both in this task: each waits on PostgreSQL, not on this process. On an error the
        // other part is dropped, rolling back what it did not commit yet.
        let (first, second) = tokio::try_join!(
            self.apply_part(first, &[], listed_since, Lock::Shard(0)),
            self.apply_part(second, &[], listed_since, Lock::Shard(1)),
        )?;
        Ok(shard::merge([first, second]))
    }

    /// Applies a deduplicated batch, or one shard's part of one, in one transaction.
    async fn apply_part(
        &self,
        fetched: Vec<AgentRecord>,
        missing: &[AgentId],
        listed_since: Option<DateTime<Utc>>,
        lock: Lock,
    ) -> Result<Applied, StoreError> {
        let big = fetched.len() >= BIG_BATCH;
        // Serializing and hashing 100k payloads, and freeing their parsed form, takes a
        // few tenths of a second; on a blocking thread it overlaps opening the transaction.
        // On a thread per core, shared by the parts of a batch applied in shards.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = match lock {
            Lock::Whole => cores,
            Lock::Shard(_) => cores.div_ceil(shard::SHARDS),
        };
        let hashing = tokio::task::spawn_blocking(move || {
            let mut fetched = fetched;
            let payloads = Payloads::take(&mut fetched, threads);
            (fetched, payloads)
        });
        let mut conn = self.store.pool.acquire().await.during("connecting to apply a batch")?;
        let mut tx = conn.begin().await.during("starting the batch transaction")?;
        lock.take(&mut tx).await?;
        // A connection's prepared statements switch to a generic plan after five runs, and
        // a generic plan guesses 10 rows for `UNNEST` of a parameter, so 100k-row batches
        // got 100k index probes; planning each run with the actual arrays picks hash joins
        // for big batches and index probes for small ones. A 100k-row batch needs more than
        // the default 4 MB of work_mem to hash its joins and hold its UNNEST rows in memory
        // rather than in temporary files. The agent tables are read whole every cycle, so
        // their pages are cached: a random read costs about a sequential one, and at the
        // default random_page_cost (4) a 5,000-agent part of a list page hashed the whole
        // state table, 100k rows, for each of its statements (index probes: a third faster).
        sqlx::raw_sql(
            "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL work_mem = '256MB';
             SET LOCAL random_page_cost = 1.1",
        )
        .execute(&mut *tx)
        .await
        .during("tuning the batch transaction")?;
        // Taken after the lock, so serialized appliers get increasing timestamps.
        let applied_at: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *tx)
            .await
            .during("reading the database clock")?;
        let (mut fetched, mut payloads) = hashing.await.expect("hashing payloads cannot panic");
        let mut inspected = inspect(&mut tx, &self.tenant, &fetched, &payloads, listed_since).await?;
        let refused = refuse_foreign(&mut fetched, &mut payloads, &mut inspected);
        let (known, mut stored) = (inspected.known, inspected.stored);
        stored.extend(read_stored(&mut tx, &self.tenant, &missing.iter().collect::<Vec<_>>()).await?);
        let diff = Diff::compute_known(&stored, &fetched, &known, missing);
        let stored = Stored { known: &known, payload: &inspected.payload_stored };
        write(&mut tx, &self.tenant, &fetched, payloads, stored, &diff, applied_at).await?;
        if !missing.is_empty() {
            // A 404 counts as a fetch when by-ID cycles order their IDs.
            not_found::stamp(&mut *tx, &self.tenant, missing, applied_at).await?;
        }
        tx.commit().await.during("committing the batch")?;
        if big {
            // sqlx keeps a connection's buffers as large as its largest message, megabytes
            // after a big batch, for as long as the connection lives. Shrunk rather than
            // closed: a fresh backend for every list page cost a tenth of a steady cycle.
            conn.shrink_buffers();
        }
        Ok(Applied { diff, applied_at, refetched: inspected.refetched, refused })
    }
}

/// Takes the agents stored under another tenant out of the batch (and out of everything
/// parallel to it), so nothing of them is written, and returns them.
fn refuse_foreign(
    fetched: &mut Vec<AgentRecord>,
    payloads: &mut Payloads,
    inspected: &mut Inspected,
) -> Vec<Refused> {
    if inspected.foreign.is_empty() {
        return Vec::new();
    }
    let mut drop = vec![false; fetched.len()];
    let mut refused = Vec::with_capacity(inspected.foreign.len());
    for (index, stored_under) in inspected.foreign.drain(..) {
        drop[index] = true;
        refused.push(Refused { agent_id: fetched[index].id.clone(), stored_under });
    }
    keep_unmarked(fetched, &drop);
    keep_unmarked(&mut payloads.text, &drop);
    keep_unmarked(&mut payloads.sha256, &drop);
    keep_unmarked(&mut payloads.fingerprint, &drop);
    keep_unmarked(&mut inspected.known, &drop);
    keep_unmarked(&mut inspected.payload_stored, &drop);
    refused
}

/// Removes the items whose flag in `drop` (parallel to `items`) is set, keeping the order.
fn keep_unmarked<T>(items: &mut Vec<T>, drop: &[bool]) {
    let mut flags = drop.iter();
    items.retain(|_| !flags.next().copied().unwrap_or(false));
}

/// From this many agents a batch's statements are megabytes long (a list page is 10,000).
const BIG_BATCH: usize = 1_000;

/// What [`inspect`] found stored, parallel to the batch.
struct Stored<'a> {
    /// The agent's fingerprint is stored: nothing but its fetch stamp is written.
    known: &'a [bool],
    /// Its payload without the time members is stored: only those are written.
    payload: &'a [bool],
}

async fn write(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    fetched: &[AgentRecord],
    payloads: Payloads,
    stored: Stored<'_>,
    diff: &Diff,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut new_agents = StateColumns::default();
    let mut new_payloads = PayloadColumns::default();
    let mut changed_agents = StateColumns::default();
    let mut other_payloads = PayloadColumns::default();
    let mut stamped = StampColumns::default();
    let mut closed_versions: Vec<&str> = Vec::new();
    let mut seen_ids: Vec<&str> = Vec::new();
    let mut seen_values: Vec<DateTime<Utc>> = Vec::new();
    let payloads = payloads.text.into_iter().zip(payloads.sha256).zip(payloads.fingerprint);
    let stored = stored.known.iter().zip(stored.payload);
    for (((record, agent), (&known, &payload_stored)), ((text, sha256), fingerprint)) in
        fetched.iter().zip(&diff.agents).zip(stored).zip(payloads)
    {
        // The payload's members but the time ones are rewritten only when not stored; the
        // time members are in the state row.
        let mut rewrite_payload = |stable, sha256: &Vec<u8>| {
            if !payload_stored {
                other_payloads.push(record, stable, sha256.clone());
            }
        };
        // Every state row written below then holds exactly the fetched agent, present:
        // that is what its fingerprint stands for. Each is written once, stamp included, so
        // every rewrite finds room on its page (HOT).
        match agent.status {
            Status::New => {
                new_payloads.push(record, text.stable, sha256.clone());
                new_agents.push(record, fingerprint, text.times, sha256);
            }
            Status::Changed => {
                rewrite_payload(text.stable, &sha256);
                changed_agents.push(record, fingerprint, text.times, sha256);
                changed_agents.new_version.push(agent.attributes_changed);
            }
            // A known agent's payload is stored already.
            Status::Unchanged if known => stamped.push(record, fingerprint, None),
            Status::Unchanged => {
                rewrite_payload(text.stable, &sha256);
                stamped.push(record, fingerprint, Some((text.times, sha256)));
            }
        }
        if agent.attributes_changed && agent.status == Status::Changed {
            closed_versions.push(record.id.as_str());
        }
        if agent.last_seen_changed {
            seen_ids.push(record.id.as_str());
            seen_values.push(record.last_seen);
        }
    }

    if !new_agents.last_seen.is_empty() {
        insert_agents(tx, tenant, &new_agents, &new_payloads, at).await?;
    }
    if !closed_versions.is_empty() {
        // Before the state rows change: each closing version is copied from the row it leaves.
        sqlx::query(
            "INSERT INTO scan_agent_version_history (version_id, agent_id, machine_id,
                 computer_dns_name, assigned_application_id, scanner_software_version,
                 mde_client_version, valid_from, valid_to, tenant)
             SELECT s.version_id, s.agent_id, s.machine_id, s.computer_dns_name,
                    s.assigned_application_id, s.scanner_software_version, s.mde_client_version,
                    s.valid_from, $2, s.tenant
             FROM UNNEST($1::text[]) AS u(agent_id)
             JOIN scan_agent_state s ON s.agent_id = u.agent_id",
        )
        .bind(&closed_versions)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("closing superseded versions")?;
    }
    if !changed_agents.last_seen.is_empty() {
        rewrite_agents(tx, &changed_agents, at).await?;
    }
    if !stamped.agent_id.is_empty() {
        sqlx::query(
            "UPDATE scan_agent_state s SET last_fetched_at = $5, fingerprint = u.fingerprint,
                 raw_times = coalesce(u.raw_times::json, s.raw_times),
                 payload_sha256 = coalesce(u.payload_sha256, s.payload_sha256)
             FROM UNNEST($1::text[], $2::bytea[], $3::text[], $4::bytea[])
                  AS u(agent_id, fingerprint, raw_times, payload_sha256)
             WHERE s.agent_id = u.agent_id",
        )
        .bind(&stamped.agent_id)
        .bind(&stamped.fingerprint)
        .bind(&stamped.raw_times)
        .bind(&stamped.payload_sha256)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("stamping the fetched agents")?;
    }
    if !other_payloads.agent_id.is_empty() {
        // `raw` is not read back: a payload whose hash is unchanged is left as it is.
        other_payloads
            .bind(
                "UPDATE scan_agent_payloads p SET raw = u.raw::json, raw_sha256 = u.raw_sha256
                 FROM UNNEST($1::text[], $2::text[], $3::bytea[]) AS u(agent_id, raw, raw_sha256)
                 WHERE p.agent_id = u.agent_id AND p.raw_sha256 IS DISTINCT FROM u.raw_sha256",
            )
            .execute(&mut **tx)
            .await
            .during("updating changed payloads")?;
    }
    if !seen_ids.is_empty() {
        // A lastSeen value held before (it went back and forth) is already recorded once.
        sqlx::query(
            "INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at, tenant)
             SELECT u.agent_id, u.last_seen, $3, $4
             FROM UNNEST($1::text[], $2::timestamptz[]) AS u(agent_id, last_seen)
             ON CONFLICT (agent_id, last_seen) DO NOTHING",
        )
        .bind(&seen_ids)
        .bind(&seen_values)
        .bind(at)
        .bind(tenant)
        .execute(&mut **tx)
        .await
        .during("recording lastSeen values")?;
    }
    if !diff.went_missing.is_empty() {
        let missing: Vec<&str> = diff.went_missing.iter().map(AgentId::as_str).collect();
        // A missing agent's row no longer holds the agent as fetched: its fingerprint goes.
        sqlx::query(
            "UPDATE scan_agent_state a SET missing_since = $2, last_changed_at = $2, fingerprint = NULL
             FROM UNNEST($1::text[]) AS u(agent_id)
             WHERE a.agent_id = u.agent_id AND a.missing_since IS NULL",
        )
        .bind(&missing)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("marking missing agents")?;
    }
    Ok(())
}

/// Inserts agents seen for the first time, under `tenant`: state with its first version and
/// fetch stamp, and payload.
async fn insert_agents(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    rows: &StateColumns<'_>,
    payloads: &PayloadColumns<'_>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let insert = sqlx::query(
        "INSERT INTO scan_agent_state (agent_id, machine_id, computer_dns_name,
             assigned_application_id, scanner_software_version, mde_client_version,
             last_seen, last_command_execution_at, fingerprint, raw_times, payload_sha256,
             first_observed_at, last_changed_at, valid_from, last_fetched_at, tenant)
         SELECT u.agent_id, u.machine_id, u.computer_dns_name, u.assigned_application_id,
                u.scanner_software_version, u.mde_client_version, u.last_seen,
                u.last_command_execution_at, u.fingerprint, u.raw_times::json, u.payload_sha256,
                $12, $12, $12, $12, $13
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::bytea[], $10::text[], $11::bytea[])
              AS u(agent_id, machine_id, computer_dns_name, assigned_application_id,
                   scanner_software_version, mde_client_version, last_seen,
                   last_command_execution_at, fingerprint, raw_times, payload_sha256)",
    );
    rows.bind(insert).bind(at).bind(tenant).execute(&mut **tx).await.during("inserting new agents")?;
    payloads
        .bind(
            "INSERT INTO scan_agent_payloads (agent_id, raw, raw_sha256)
             SELECT u.agent_id, u.raw::json, u.raw_sha256
             FROM UNNEST($1::text[], $2::text[], $3::bytea[]) AS u(agent_id, raw, raw_sha256)",
        )
        .execute(&mut **tx)
        .await
        .during("storing new payloads")?;
    Ok(())
}

/// Rewrites the state of agents that changed, stamp included. A fetched agent is present, so
/// `missing_since` clears; changed attributes open a new version (the closing one is
/// already in the history).
async fn rewrite_agents(
    tx: &mut Transaction<'_, Postgres>,
    rows: &StateColumns<'_>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let update = sqlx::query(
        "UPDATE scan_agent_state s SET
             machine_id = u.machine_id,
             computer_dns_name = u.computer_dns_name,
             assigned_application_id = u.assigned_application_id,
             scanner_software_version = u.scanner_software_version,
             mde_client_version = u.mde_client_version,
             last_seen = u.last_seen,
             last_command_execution_at = u.last_command_execution_at,
             fingerprint = u.fingerprint,
             raw_times = u.raw_times::json,
             payload_sha256 = u.payload_sha256,
             last_fetched_at = $13,
             last_changed_at = $13,
             missing_since = NULL,
             version_id = CASE WHEN u.new_version THEN nextval('scan_agent_version_id_seq') ELSE s.version_id END,
             valid_from = CASE WHEN u.new_version THEN $13 ELSE s.valid_from END
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::bytea[], $10::text[], $11::bytea[],
                     $12::bool[])
              AS u(agent_id, machine_id, computer_dns_name, assigned_application_id,
                   scanner_software_version, mde_client_version, last_seen,
                   last_command_execution_at, fingerprint, raw_times, payload_sha256, new_version)
         WHERE s.agent_id = u.agent_id",
    );
    rows.bind(update)
        .bind(&rows.new_version)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("updating changed agents")?;
    Ok(())
}
