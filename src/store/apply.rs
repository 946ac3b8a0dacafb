//! The diff and history engine: applies one fetched batch to the agent tables in ONE
//! transaction, with set-based statements (arrays through `UNNEST`), never one round trip
//! per agent.
//!
//! Layout (migration 20261128000003): an agent's current state is a row of
//! `scan_agent_state`, its fetch stamp a short row of `scan_agent_fetches`, and the BI
//! table `scan_agents` is a view joining the two. A sync cycle mostly re-fetches unchanged
//! agents, and for those the engine writes nothing but the stamp (an in-place HOT update of
//! the short row): the state row is rewritten only when the diff finds a change or the
//! payload text hashes differently from the stored `raw_sha256`, so `raw` is neither read
//! back nor re-sent for an unchanged agent. Nor is the state row read: the stamp statement
//! returns each agent's fingerprint (migration 20261128000005), a hash over everything the
//! diff compares, and only agents whose fingerprint differs from the fetched one's are read
//! and diffed in full; the others are known to hold exactly what was fetched.
//!
//! Concurrency: the transaction first takes the [`APPLY_LOCK`] advisory lock and only then
//! reads current state and picks its timestamp, so two appliers run strictly one after the
//! other and end with the same history as one applying both batches in order. A dropped
//! connection rolls the whole transaction back.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, RawFd};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Postgres, Transaction};

use super::{APPLY_LOCK, QueryContext, Store, StoreError};
use crate::agent::AgentRecord;
use crate::agent::Attributes;
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
        let ids: Vec<&AgentId> = fetched.iter().map(|r| &r.id).chain(missing).collect();
        let mut stored = Stored::with_capacity(fetched.len());
        stored.read(&mut conn, &ids, &(0..fetched.len()).collect::<Vec<_>>()).await?;
        Ok(Diff::compute(&stored.agents, &fetched, missing))
    }

    /// Applies a batch: new agents, changed attributes (closing and opening versions), new
    /// `lastSeen` values, missing marks, and the `last_fetched_at` stamp, all or nothing.
    #[tracing::instrument(skip_all, fields(fetched = fetched.len(), missing = missing.len()))]
    pub async fn apply(&self, fetched: Vec<AgentRecord>, missing: &[AgentId]) -> Result<Applied, StoreError> {
        let fetched = dedup_batch(fetched);
        let mut tx = self.pool.begin().await.during("starting the batch transaction")?;
        disable_nagle(&mut tx).await;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPLY_LOCK)
            .execute(&mut *tx)
            .await
            .during("waiting for the apply lock")?;
        // A connection's prepared statements switch to a generic plan after five runs, and
        // a generic plan guesses 10 rows for `UNNEST` of a parameter, so 100k-row batches
        // got 100k index probes; planning each run with the actual arrays picks hash joins
        // for big batches and index probes for small ones. A 100k-row batch needs more than
        // the default 4 MB of work_mem to hash its joins and hold its UNNEST rows in memory
        // rather than in temporary files.
        sqlx::raw_sql("SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL work_mem = '256MB'")
            .execute(&mut *tx)
            .await
            .during("tuning the batch transaction")?;
        // Taken after the lock, so serialized appliers get increasing timestamps.
        let applied_at: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *tx)
            .await
            .during("reading the database clock")?;
        let ids: Vec<String> = fetched.iter().map(|r| r.id.as_str().to_owned()).collect();
        // Serializing and hashing 100k payloads, and freeing their parsed form, takes about
        // as long as stamping them; on a blocking thread it runs while the server answers.
        let hashing = tokio::task::spawn_blocking(move || {
            let mut fetched = fetched;
            let payloads = Payloads::take(&mut fetched);
            (fetched, payloads)
        });
        let stored_fingerprints = stamp(&mut tx, &ids, applied_at).await;
        let (fetched, payloads) = hashing.await.expect("hashing payloads cannot panic");
        let stored_fingerprints = stored_fingerprints?;
        let known: Vec<bool> = stored_fingerprints
            .iter()
            .zip(&payloads.fingerprint)
            .map(|(stored, fetched)| stored.as_ref() == Some(fetched))
            .collect();
        let unknown: Vec<usize> = (0..fetched.len()).filter(|&i| !known[i]).collect();
        let mut stored = Stored::with_capacity(fetched.len());
        let read_ids: Vec<&AgentId> = unknown.iter().map(|&i| &fetched[i].id).chain(missing).collect();
        stored.read(&mut tx, &read_ids, &unknown).await?;
        let diff = Diff::compute_known(&stored.agents, &fetched, &known, missing);
        write(&mut tx, &fetched, payloads, &stored, &stored_fingerprints, &diff, applied_at).await?;
        tx.commit().await.during("committing the batch")?;
        Ok(Applied { diff, applied_at })
    }
}

/// sqlx 0.9.0 stopped setting TCP_NODELAY (transact-rs/sqlx#4335, fixed upstream but not
/// released), so a statement whose parameters end in a part-filled TCP segment waits for
/// the server's delayed ACK, about 40 ms: measured, that was 90% of a 1k-agent batch and
/// half of a 10k one. Until sqlx sets it again the engine sets it on the connection it
/// applies through: the server names the client's port, and /proc maps that port to this
/// process's socket. Best effort: over a Unix socket, or without /proc, nothing changes.
/// Public so the benchmark's comparator runs on equally configured connections.
pub async fn disable_nagle(conn: &mut PgConnection) {
    let port: Option<i32> =
        sqlx::query_scalar("SELECT inet_client_port()").fetch_one(&mut *conn).await.ok().flatten();
    if let Some(fd) = port.and_then(|port| u16::try_from(port).ok()).and_then(socket_with_local_port) {
        // SAFETY: the descriptor is the socket of `conn`, which stays open while borrowed here.
        let socket = unsafe { BorrowedFd::borrow_raw(fd) };
        // Best effort, as above: a failure only leaves the delay in place.
        let _ = socket2::SockRef::from(&socket).set_tcp_nodelay(true);
    }
}

/// The descriptor of this process's TCP socket bound to local `port`, found through the
/// kernel's socket tables (`/proc/net/tcp*`: local address, then the inode in field 10).
fn socket_with_local_port(port: u16) -> Option<RawFd> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
                    (local_port == port).then(|| fields.get(9).map(|inode| (*inode).to_owned()))?
                })
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::read_dir("/proc/self/fd").ok()?.filter_map(Result::ok).find_map(|entry| {
        let target = std::fs::read_link(entry.path()).ok()?;
        let inode = target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
        inodes.iter().any(|known| known == inode).then(|| entry.file_name().to_str()?.parse().ok())?
    })
}

/// What the database holds for a batch's agents.
struct Stored {
    agents: HashMap<AgentId, StoredAgent>,
    /// The stored payload hash of each fetched agent read, parallel to the batch: `None` for
    /// a new agent, one not read (its fingerprint matched), or one whose hash is unknown
    /// (written before the hash was kept).
    raw_sha256: Vec<Option<Vec<u8>>>,
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    /// 1-based position of the agent in the IDs sent.
    position: i64,
    machine_id: Option<String>,
    computer_dns_name: Option<String>,
    assigned_application_id: Option<String>,
    scanner_software_version: Option<String>,
    mde_client_version: Option<String>,
    last_seen: DateTime<Utc>,
    last_command_execution_at: Option<DateTime<Utc>>,
    missing_since: Option<DateTime<Utc>>,
    raw_sha256: Option<Vec<u8>>,
}

impl Stored {
    fn with_capacity(fetched_count: usize) -> Stored {
        Stored { agents: HashMap::with_capacity(fetched_count), raw_sha256: vec![None; fetched_count] }
    }

    /// Reads the stored state of `ids`, returned by position in the IDs sent so no ID
    /// text is sent back or parsed. The first `batch_index.len()` IDs are fetched agents,
    /// at those indexes of the batch; the rest are missing ones.
    async fn read(
        &mut self,
        conn: &mut PgConnection,
        ids: &[&AgentId],
        batch_index: &[usize],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let texts: Vec<&str> = ids.iter().map(|id| id.as_str()).collect();
        let rows: Vec<StoredRow> = sqlx::query_as(
            "SELECT u.position, s.machine_id, s.computer_dns_name, s.assigned_application_id,
                    s.scanner_software_version, s.mde_client_version, s.last_seen,
                    s.last_command_execution_at, s.missing_since, s.raw_sha256
             FROM UNNEST($1::text[]) WITH ORDINALITY AS u(agent_id, position)
             JOIN scan_agent_state s ON s.agent_id = u.agent_id",
        )
        .bind(&texts)
        .fetch_all(&mut *conn)
        .await
        .during("reading the stored agents")?;
        for row in rows {
            let position = usize::try_from(row.position - 1).expect("ORDINALITY counts from 1");
            if let Some(&index) = batch_index.get(position) {
                self.raw_sha256[index] = row.raw_sha256;
            }
            let agent = StoredAgent {
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
            self.agents.insert(ids[position].clone(), agent);
        }
        Ok(())
    }
}

/// Sets `last_fetched_at` of every stored agent among `ids` (which `apply` does whatever
/// the diff finds) and returns each one's stored fingerprint, parallel to `ids`: `None` for
/// an agent not stored or whose fingerprint is unknown. Only the narrow fetch table is
/// read, and its rows are rewritten in place (HOT).
async fn stamp(
    conn: &mut PgConnection,
    ids: &[String],
    at: DateTime<Utc>,
) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    let rows: Vec<(i64, Option<Vec<u8>>)> = sqlx::query_as(
        "UPDATE scan_agent_fetches f SET last_fetched_at = $2
         FROM UNNEST($1::text[]) WITH ORDINALITY AS u(agent_id, position)
         WHERE f.agent_id = u.agent_id
         RETURNING u.position, f.fingerprint",
    )
    .bind(ids)
    .bind(at)
    .fetch_all(&mut *conn)
    .await
    .during("stamping the fetched agents")?;
    let mut fingerprints = vec![None; ids.len()];
    for (position, fingerprint) in rows {
        fingerprints[usize::try_from(position - 1).expect("ORDINALITY counts from 1")] = fingerprint;
    }
    Ok(fingerprints)
}

/// The versioned attributes of a set of agents as column arrays, borrowed from the batch.
#[derive(Default)]
struct AttributeColumns<'a> {
    agent_id: Vec<&'a str>,
    machine_id: Vec<Option<&'a str>>,
    computer_dns_name: Vec<Option<&'a str>>,
    assigned_application_id: Vec<Option<&'a str>>,
    scanner_software_version: Vec<Option<&'a str>>,
    mde_client_version: Vec<Option<&'a str>>,
}

impl<'a> AttributeColumns<'a> {
    fn push(&mut self, record: &'a AgentRecord) {
        let a = &record.attributes;
        self.agent_id.push(record.id.as_str());
        self.machine_id.push(a.machine_id.as_deref());
        self.computer_dns_name.push(a.computer_dns_name.as_deref());
        self.assigned_application_id.push(a.assigned_application_id.as_deref());
        self.scanner_software_version.push(a.scanner_software_version.as_deref());
        self.mde_client_version.push(a.mde_client_version.as_deref());
    }

    /// Binds the six arrays as the next parameters of `query`, in column order (agent_id,
    /// machine_id, computer_dns_name, assigned_application_id, scanner_software_version,
    /// mde_client_version): every statement that writes attributes takes them first.
    fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.agent_id)
            .bind(&self.machine_id)
            .bind(&self.computer_dns_name)
            .bind(&self.assigned_application_id)
            .bind(&self.scanner_software_version)
            .bind(&self.mde_client_version)
    }
}

/// Whole state rows to write, one array per column.
#[derive(Default)]
struct StateColumns<'a> {
    attributes: AttributeColumns<'a>,
    last_seen: Vec<DateTime<Utc>>,
    last_command_execution_at: Vec<Option<DateTime<Utc>>>,
    raw: Vec<String>,
    raw_sha256: Vec<Vec<u8>>,
    /// Only inserts use it: other rows' fingerprints are written by `write` in one statement.
    fingerprint: Vec<Vec<u8>>,
    /// Whether the diff found a change (moves `last_changed_at`), rather than only a new payload.
    changed: Vec<bool>,
}

impl<'a> StateColumns<'a> {
    fn push(&mut self, record: &'a AgentRecord, payload: Payload, changed: bool) {
        let (raw, raw_sha256, fingerprint) = payload;
        self.fingerprint.push(fingerprint);
        self.attributes.push(record);
        self.last_seen.push(record.last_seen);
        self.last_command_execution_at.push(record.last_command_execution_at);
        self.raw.push(raw);
        self.raw_sha256.push(raw_sha256);
        self.changed.push(changed);
    }

    /// Binds the attributes, then last_seen, last_command_execution_at, raw and raw_sha256:
    /// the first ten parameters of both statements that write whole state rows.
    fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        self.attributes
            .bind(query)
            .bind(&self.last_seen)
            .bind(&self.last_command_execution_at)
            .bind(&self.raw)
            .bind(&self.raw_sha256)
    }
}

/// A statement with its parameters bound so far.
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Each fetched payload as stored: its text, the hash an unchanged payload is recognized
/// by, and the agent's fingerprint, parallel to the batch.
struct Payloads {
    text: Vec<String>,
    sha256: Vec<Vec<u8>>,
    fingerprint: Vec<Vec<u8>>,
}

impl Payloads {
    /// Serializes each record's `raw` and leaves `Value::Null` in its place: from here on
    /// the engine needs only the text.
    fn take(fetched: &mut [AgentRecord]) -> Payloads {
        let mut payloads = Payloads {
            text: Vec::with_capacity(fetched.len()),
            sha256: Vec::with_capacity(fetched.len()),
            fingerprint: Vec::with_capacity(fetched.len()),
        };
        for record in fetched {
            let text = std::mem::take(&mut record.raw).to_string();
            let sha256 = Sha256::digest(text.as_bytes()).to_vec();
            payloads.fingerprint.push(fingerprint(record, &sha256));
            payloads.text.push(text);
            payloads.sha256.push(sha256);
        }
        payloads
    }
}

/// One fetched payload: text, SHA-256, the agent's fingerprint.
type Payload = (String, Vec<u8>, Vec<u8>);

/// SHA-256 over everything [`Diff::compute`] compares for a present agent, and the payload
/// hash: equal fingerprints mean the diff finds the agent unchanged and `raw` need not be
/// rewritten. Each text is length-prefixed and each optional value tagged, so no two
/// different agents encode alike; timestamps are in microseconds, as stored (the parser
/// truncates to them).
fn fingerprint(record: &AgentRecord, raw_sha256: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for (_, value) in record.attributes.fields() {
        match value {
            None => hasher.update([0]),
            Some(text) => {
                hasher.update([1]);
                hasher.update((text.len() as u64).to_le_bytes());
                hasher.update(text.as_bytes());
            }
        }
    }
    hasher.update(record.last_seen.timestamp_micros().to_le_bytes());
    match record.last_command_execution_at {
        None => hasher.update([0]),
        Some(at) => {
            hasher.update([1]);
            hasher.update(at.timestamp_micros().to_le_bytes());
        }
    }
    hasher.update(raw_sha256);
    hasher.finalize().to_vec()
}

async fn write(
    tx: &mut Transaction<'_, Postgres>,
    fetched: &[AgentRecord],
    payloads: Payloads,
    stored: &Stored,
    stored_fingerprints: &[Option<Vec<u8>>],
    diff: &Diff,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut inserts = StateColumns::default();
    let mut rewrites = StateColumns::default();
    let mut versions = AttributeColumns::default();
    let mut closed_versions: Vec<&str> = Vec::new();
    let mut seen_ids: Vec<&str> = Vec::new();
    let mut seen_values: Vec<DateTime<Utc>> = Vec::new();
    let mut refingerprinted_ids: Vec<&str> = Vec::new();
    let mut refingerprinted: Vec<Vec<u8>> = Vec::new();
    let payloads = payloads.text.into_iter().zip(payloads.sha256).zip(payloads.fingerprint);
    for ((((record, agent), stored_sha256), stored_fingerprint), ((raw, sha256), fingerprint)) in
        fetched.iter().zip(&diff.agents).zip(&stored.raw_sha256).zip(stored_fingerprints).zip(payloads)
    {
        // A matching fingerprint means the row holds this very payload, too.
        let known = stored_fingerprint.as_ref() == Some(&fingerprint);
        // Every row written below then holds exactly the fetched agent, present: that is
        // what a fingerprint stands for.
        if agent.status != Status::New && !known {
            refingerprinted_ids.push(record.id.as_str());
            refingerprinted.push(fingerprint.clone());
        }
        match agent.status {
            Status::New => inserts.push(record, (raw, sha256, fingerprint), true),
            Status::Changed => rewrites.push(record, (raw, sha256, fingerprint), true),
            Status::Unchanged if !known && stored_sha256.as_ref() != Some(&sha256) => {
                rewrites.push(record, (raw, sha256, fingerprint), false);
            }
            Status::Unchanged => {}
        }
        if agent.attributes_changed {
            versions.push(record);
            if agent.status == Status::Changed {
                closed_versions.push(record.id.as_str());
            }
        }
        if agent.last_seen_changed {
            seen_ids.push(record.id.as_str());
            seen_values.push(record.last_seen);
        }
    }

    if !inserts.changed.is_empty() {
        insert_agents(tx, &inserts, at).await?;
    }
    if !rewrites.changed.is_empty() {
        rewrite_agents(tx, &rewrites, at).await?;
    }
    if !refingerprinted_ids.is_empty() {
        sqlx::query(
            "UPDATE scan_agent_fetches f SET fingerprint = u.fingerprint
             FROM UNNEST($1::text[], $2::bytea[]) AS u(agent_id, fingerprint)
             WHERE f.agent_id = u.agent_id",
        )
        .bind(&refingerprinted_ids)
        .bind(&refingerprinted)
        .execute(&mut **tx)
        .await
        .during("recording agent fingerprints")?;
    }
    if !closed_versions.is_empty() {
        sqlx::query(
            "UPDATE scan_agent_versions v SET valid_to = $2
             FROM UNNEST($1::text[]) AS u(agent_id)
             WHERE v.agent_id = u.agent_id AND v.valid_to IS NULL",
        )
        .bind(&closed_versions)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("closing superseded versions")?;
    }
    if !versions.agent_id.is_empty() {
        let insert = sqlx::query(
            "INSERT INTO scan_agent_versions (agent_id, machine_id, computer_dns_name,
                 assigned_application_id, scanner_software_version, mde_client_version, valid_from)
             SELECT u.*, $7 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                                        $5::text[], $6::text[]) AS u",
        );
        versions.bind(insert).bind(at).execute(&mut **tx).await.during("opening new versions")?;
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
        // A missing agent's row no longer holds the agent as fetched: its fingerprint goes.
        sqlx::query(
            "WITH marked AS (
                 UPDATE scan_agent_state a SET missing_since = $2, last_changed_at = $2
                 FROM UNNEST($1::text[]) AS u(agent_id)
                 WHERE a.agent_id = u.agent_id AND a.missing_since IS NULL
                 RETURNING a.agent_id)
             UPDATE scan_agent_fetches f SET fingerprint = NULL FROM marked
             WHERE f.agent_id = marked.agent_id",
        )
        .bind(&missing)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("marking missing agents")?;
    }
    Ok(())
}

/// Inserts agents seen for the first time, with their first fetch stamp.
async fn insert_agents(
    tx: &mut Transaction<'_, Postgres>,
    rows: &StateColumns<'_>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let insert = sqlx::query(
        "INSERT INTO scan_agent_state (agent_id, machine_id, computer_dns_name,
             assigned_application_id, scanner_software_version, mde_client_version,
             last_seen, last_command_execution_at, raw, raw_sha256,
             first_observed_at, last_changed_at)
         SELECT u.agent_id, u.machine_id, u.computer_dns_name, u.assigned_application_id,
                u.scanner_software_version, u.mde_client_version, u.last_seen,
                u.last_command_execution_at, u.raw::jsonb, u.raw_sha256, $11, $11
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::text[], $10::bytea[])
              AS u(agent_id, machine_id, computer_dns_name, assigned_application_id,
                   scanner_software_version, mde_client_version, last_seen,
                   last_command_execution_at, raw, raw_sha256)",
    );
    rows.bind(insert).bind(at).execute(&mut **tx).await.during("inserting new agents")?;
    sqlx::query(
        "INSERT INTO scan_agent_fetches (agent_id, last_fetched_at, fingerprint)
         SELECT u.agent_id, $3, u.fingerprint FROM UNNEST($1::text[], $2::bytea[]) AS u(agent_id, fingerprint)",
    )
    .bind(&rows.attributes.agent_id)
    .bind(&rows.fingerprint)
    .bind(at)
    .execute(&mut **tx)
    .await
    .during("stamping new agents")?;
    Ok(())
}

/// Rewrites the state of agents that changed, or whose payload alone differs. A fetched
/// agent is present, so `missing_since` clears.
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
             raw = u.raw::jsonb,
             raw_sha256 = u.raw_sha256,
             last_changed_at = CASE WHEN u.changed THEN $12 ELSE s.last_changed_at END,
             missing_since = NULL
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::text[], $10::bytea[], $11::bool[])
              AS u(agent_id, machine_id, computer_dns_name, assigned_application_id,
                   scanner_software_version, mde_client_version, last_seen,
                   last_command_execution_at, raw, raw_sha256, changed)
         WHERE s.agent_id = u.agent_id",
    );
    rows.bind(update)
        .bind(&rows.changed)
        .bind(at)
        .execute(&mut **tx)
        .await
        .during("updating changed agents")?;
    Ok(())
}
