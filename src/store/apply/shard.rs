//! Applying a big batch on several connections at once.
//!
//! A steady 100k-agent list cycle spends most of its time in PostgreSQL, and one
//! connection's statements run on one server core: the cycle waited on one backend while
//! the others idled. A batch of at least [`SHARD_FROM`] agents is therefore split by agent
//! into [`SHARDS`] parts, each applied in its own transaction on its own connection, at the
//! same time. Each part takes the shard's advisory lock (and [`super::APPLY_LOCK`] shared):
//! an agent always falls in the same shard, in every process and version, so two appliers
//! of one agent still run one after the other, while the statements that must see no
//! applier at all (marking missing, creating partitions) still take `APPLY_LOCK` alone.
//!
//! A crash between the parts' commits leaves some of the batch's agents applied and the
//! rest not, as a crash between two list pages does: every agent's rows stay consistent.

use sha2::{Digest, Sha256};
use sqlx::{Postgres, Transaction};

use super::super::{APPLY_LOCK, QueryContext, StoreError};
use super::Applied;
use crate::agent::AgentRecord;
use crate::agent_id::AgentId;

/// Batches smaller than this are applied in one transaction: a part's fixed costs
/// (connection, lock, clock) would outweigh what the parallelism saves.
pub(super) const SHARD_FROM: usize = 2_000;

/// Parts a big batch is applied in. Two: the machine this is measured on has two cores,
/// shared by PostgreSQL, the service and the API; more parts only queue for the cores.
pub(super) const SHARDS: usize = 2;

/// The advisory lock of shard `k`: `APPLY_LOCK` in the high 32 bits, so it clashes with no
/// other key (`store::tests::advisory_lock_keys_are_distinct`).
pub(super) fn shard_lock(k: usize) -> i64 {
    (APPLY_LOCK << 32) | i64::try_from(k).expect("a shard number fits")
}

/// The shards' advisory lock keys, for the check that no two keys of the store clash.
#[cfg(test)]
pub(in crate::store) fn shard_locks() -> impl Iterator<Item = i64> {
    (0..SHARDS).map(shard_lock)
}

/// The advisory lock a batch's transaction takes before it reads anything.
pub(super) enum Lock {
    /// [`APPLY_LOCK`]: no other applier runs meanwhile.
    Whole,
    /// `APPLY_LOCK` shared, then the shard's own lock (this module): only appliers of the
    /// shard's agents, and statements that take `APPLY_LOCK` alone, wait.
    Shard(usize),
}

impl Lock {
    pub(super) async fn take(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        // Shared first, always: an applier then never holds a shard while it waits for the
        // statements that take `APPLY_LOCK` alone, so none of them can deadlock.
        let key = match self {
            Lock::Whole => APPLY_LOCK,
            Lock::Shard(k) => {
                sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
                    .bind(APPLY_LOCK)
                    .execute(&mut **tx)
                    .await
                    .during("waiting for the apply lock")?;
                shard_lock(k)
            }
        };
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut **tx)
            .await
            .during("waiting for the apply lock")?;
        Ok(())
    }
}

/// The shard of an agent: from a hash of its ID that no process or version computes
/// differently (unlike std's hasher), so the shard's lock serializes its appliers.
fn shard_of(id: &AgentId) -> usize {
    usize::from(Sha256::digest(id.as_str().as_bytes())[0]) % SHARDS
}

/// Splits a deduplicated batch into one part per shard, each in batch order.
pub(super) fn split(fetched: Vec<AgentRecord>) -> [Vec<AgentRecord>; SHARDS] {
    let mut parts: [Vec<AgentRecord>; SHARDS] =
        std::array::from_fn(|_| Vec::with_capacity(fetched.len() / SHARDS + 1));
    for record in fetched {
        parts[shard_of(&record.id)].push(record);
    }
    parts
}

/// Joins what each part applied into what the whole batch did: the agents' diffs part after
/// part, each part's in batch order (putting them back in batch order would hold every ID
/// of the page a second time, at the peak of the cycle's memory). The batch's time is its
/// latest part's.
pub(super) fn merge(parts: [Applied; SHARDS]) -> Applied {
    let mut parts = parts.into_iter();
    let mut merged = parts.next().expect("a batch has at least one part");
    for mut applied in parts {
        merged.applied_at = merged.applied_at.max(applied.applied_at);
        merged.refetched += applied.refetched;
        merged.refused.append(&mut applied.refused);
        merged.diff.agents.append(&mut applied.diff.agents);
    }
    merged
}
