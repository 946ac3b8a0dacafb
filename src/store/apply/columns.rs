//! A batch as column arrays, bound to the engine's statements, and each payload's text,
//! hashes and the agent's fingerprint.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Postgres};

use super::super::payload::PayloadText;
use crate::agent::AgentRecord;

/// The versioned attributes of a set of agents as column arrays, borrowed from the batch.
#[derive(Default)]
pub(super) struct AttributeColumns<'a> {
    pub(super) agent_id: Vec<&'a str>,
    pub(super) machine_id: Vec<Option<&'a str>>,
    pub(super) computer_dns_name: Vec<Option<&'a str>>,
    pub(super) assigned_application_id: Vec<Option<&'a str>>,
    pub(super) scanner_software_version: Vec<Option<&'a str>>,
    pub(super) mde_client_version: Vec<Option<&'a str>>,
}

impl<'a> AttributeColumns<'a> {
    pub(super) fn push(&mut self, record: &'a AgentRecord) {
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
    pub(super) fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
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
pub(super) struct StateColumns<'a> {
    pub(super) attributes: AttributeColumns<'a>,
    pub(super) last_seen: Vec<DateTime<Utc>>,
    pub(super) last_command_execution_at: Vec<Option<DateTime<Utc>>>,
    pub(super) fingerprint: Vec<Vec<u8>>,
    pub(super) raw_times: Vec<String>,
    pub(super) payload_sha256: Vec<Vec<u8>>,
    /// Only rewrites use it: whether the attributes changed, so a new version opens.
    pub(super) new_version: Vec<bool>,
}

impl<'a> StateColumns<'a> {
    pub(super) fn push(
        &mut self,
        record: &'a AgentRecord,
        fingerprint: Vec<u8>,
        raw_times: String,
        sha256: Vec<u8>,
    ) {
        self.attributes.push(record);
        self.last_seen.push(record.last_seen);
        self.last_command_execution_at.push(record.last_command_execution_at);
        self.fingerprint.push(fingerprint);
        self.raw_times.push(raw_times);
        self.payload_sha256.push(sha256);
    }

    /// Binds the attributes, then last_seen, last_command_execution_at, fingerprint,
    /// raw_times and payload_sha256: the first eleven parameters of both statements that
    /// write whole state rows.
    pub(super) fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        self.attributes
            .bind(query)
            .bind(&self.last_seen)
            .bind(&self.last_command_execution_at)
            .bind(&self.fingerprint)
            .bind(&self.raw_times)
            .bind(&self.payload_sha256)
    }
}

/// State rows of unchanged agents: the fetch stamp, and where the stored fingerprint was
/// not the fetched one, the fingerprint and the payload's time members and hash.
#[derive(Default)]
pub(super) struct StampColumns<'a> {
    pub(super) agent_id: Vec<&'a str>,
    pub(super) fingerprint: Vec<Vec<u8>>,
    /// `None` for an agent whose fingerprint is stored: its row holds these already.
    pub(super) raw_times: Vec<Option<String>>,
    pub(super) payload_sha256: Vec<Option<Vec<u8>>>,
}

impl<'a> StampColumns<'a> {
    pub(super) fn push(
        &mut self,
        record: &'a AgentRecord,
        fingerprint: Vec<u8>,
        payload: Option<(String, Vec<u8>)>,
    ) {
        let (raw_times, sha256) = payload.unzip();
        self.agent_id.push(record.id.as_str());
        self.fingerprint.push(fingerprint);
        self.raw_times.push(raw_times);
        self.payload_sha256.push(sha256);
    }
}

/// Payloads to write, one array per column: the members but the time ones, which are in
/// the state row.
#[derive(Default)]
pub(super) struct PayloadColumns<'a> {
    pub(super) agent_id: Vec<&'a str>,
    pub(super) raw: Vec<String>,
    pub(super) raw_sha256: Vec<Vec<u8>>,
}

impl<'a> PayloadColumns<'a> {
    pub(super) fn push(&mut self, record: &'a AgentRecord, raw: String, raw_sha256: Vec<u8>) {
        self.agent_id.push(record.id.as_str());
        self.raw.push(raw);
        self.raw_sha256.push(raw_sha256);
    }

    /// `sql` with agent_id, raw and raw_sha256 bound as $1 to $3, in an argument buffer
    /// sized for them up front: sqlx grows it by doubling, and for the 48 MB of a 100k-payload
    /// batch the copies and fresh pages took 0.13 s of the 0.2 s spent binding (measured).
    pub(super) fn bind(&self, sql: &'static str) -> PgQuery<'_> {
        // Each array element is prefixed with its 4-byte length; the array headers are small.
        let bytes = self.agent_id.iter().map(|id| id.len() + 4).sum::<usize>()
            + self.raw.iter().map(|raw| raw.len() + 4).sum::<usize>()
            + self.raw_sha256.iter().map(|sha| sha.len() + 4).sum::<usize>()
            + 3 * 64;
        let mut arguments = PgArguments::default();
        arguments.reserve(3, bytes);
        sqlx::query_with(sql, arguments).bind(&self.agent_id).bind(&self.raw).bind(&self.raw_sha256)
    }
}

/// A statement with its parameters bound so far.
pub(super) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Each fetched payload as stored: its text, the hash an unchanged payload is recognized
/// by (of the text without the time members), and the agent's fingerprint, parallel to the
/// batch.
pub(super) struct Payloads {
    pub(super) text: Vec<PayloadText>,
    pub(super) sha256: Vec<Vec<u8>>,
    pub(super) fingerprint: Vec<Vec<u8>>,
}

impl Payloads {
    /// Batches smaller than this are serialized on one thread: starting another costs more.
    const PARALLEL_FROM: usize = 1_000;

    /// [`Payloads::take_serially`] on up to `threads` threads: every batch waits for its
    /// hashes before its first statement, and 100k payloads take a quarter of a second on one
    /// core.
    pub(super) fn take(fetched: &mut [AgentRecord], threads: usize) -> Payloads {
        if threads <= 1 || fetched.len() < Self::PARALLEL_FROM {
            return Payloads::take_serially(fetched);
        }
        let count = fetched.len();
        std::thread::scope(|scope| {
            let parts: Vec<_> = fetched
                .chunks_mut(count.div_ceil(threads))
                .map(|part| scope.spawn(|| Payloads::take_serially(part)))
                .collect();
            let mut payloads = Payloads::with_capacity(count);
            for part in parts {
                let part = part.join().expect("serializing payloads cannot panic");
                payloads.text.extend(part.text);
                payloads.sha256.extend(part.sha256);
                payloads.fingerprint.extend(part.fingerprint);
            }
            payloads
        })
    }

    fn with_capacity(capacity: usize) -> Payloads {
        Payloads {
            text: Vec::with_capacity(capacity),
            sha256: Vec::with_capacity(capacity),
            fingerprint: Vec::with_capacity(capacity),
        }
    }

    /// Serializes each record's `raw` and leaves `Value::Null` in its place: from here on
    /// the engine needs only the text.
    fn take_serially(fetched: &mut [AgentRecord]) -> Payloads {
        let mut payloads = Payloads::with_capacity(fetched.len());
        let mut scratch = Vec::new();
        for record in fetched {
            let text = PayloadText::split(std::mem::take(&mut record.raw), &mut scratch);
            let sha256 = Sha256::digest(text.stable.as_bytes()).to_vec();
            let whole = Sha256::new().chain_update(&sha256).chain_update(text.times.as_bytes()).finalize();
            payloads.fingerprint.push(fingerprint(record, &whole));
            payloads.text.push(text);
            payloads.sha256.push(sha256);
        }
        payloads
    }
}

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
