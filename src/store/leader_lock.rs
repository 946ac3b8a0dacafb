//! The leadership locks: session-level advisory locks on one dedicated connection per process.
//!
//! Session-level (not transaction-level) because they must outlive every transaction and
//! vanish exactly when their connection does: a dead or partitioned holder loses them without
//! anyone cleaning up. These functions take the connection, never the pool, since a pooled
//! connection would carry a lock back into the pool.
//!
//! Two kinds of lock:
//! - a tenant's lease, exclusive: whoever holds it syncs that tenant. Its key is
//!   [`LEADER_LOCK`] for the tenant `default` (the key of the single-tenant versions, so an
//!   old process and a new one never sync it side by side during an upgrade), and
//!   [`TENANT_LEASES`] with the server's `hashtext` of the name in the low half for any other:
//!   computed by the one server every process shares, so every process agrees on it. Two
//!   names whose hashes collide share a lease, which costs spread, never exclusivity.
//! - membership, [`MEMBERS_LOCK`] taken shared by every `run` process: the number of its
//!   holders in `pg_locks` is the number of live processes.

use sqlx::PgConnection;

use super::{QueryContext, StoreError};
use crate::tenant_name::TenantName;

/// Lease key of the tenant `default`; the one leadership lock of the single-tenant versions.
pub const LEADER_LOCK: i64 = 0x5CA5_0003;

/// Held shared by every live `run` process, to count them.
pub const MEMBERS_LOCK: i64 = 0x5CA5_0005;

/// High half of every other tenant's lease key.
pub const TENANT_LEASES: i64 = 0x5CA5_0010 << 32;

/// Each tenant's lease key, in the order given.
pub async fn lease_keys(conn: &mut PgConnection, tenants: &[TenantName]) -> Result<Vec<i64>, StoreError> {
    sqlx::query_scalar(
        "SELECT CASE WHEN name = $2 THEN $3 ELSE $4 | (hashtext(name)::bigint & 4294967295) END
         FROM unnest($1::text[]) WITH ORDINALITY AS t(name, position)
         ORDER BY position",
    )
    .bind(super::tenant::names(tenants))
    .bind(crate::tenant_name::DEFAULT_TENANT)
    .bind(LEADER_LOCK)
    .bind(TENANT_LEASES)
    .fetch_all(conn)
    .await
    .during("computing the tenants' lease keys")
}

/// Counts this process among the live ones, until its connection ends.
pub async fn join(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_lock_shared($1)")
        .bind(MEMBERS_LOCK)
        .execute(conn)
        .await
        .during("joining the live processes")
        .map(drop)
}

/// Who is there, as one query (which also proves the connection, and with it the locks).
#[derive(Debug, sqlx::FromRow)]
pub struct Survey {
    /// Live `run` processes, this one included.
    pub members: i64,
    /// Those of the keys asked about that some process holds, this one included.
    pub taken: Vec<i64>,
}

/// Reads the live processes and which of `keys` are held, from `pg_locks`.
pub async fn survey(conn: &mut PgConnection, keys: &[i64]) -> Result<Survey, StoreError> {
    sqlx::query_as(
        "WITH held AS (
             SELECT (classid::bigint << 32) | objid::bigint AS key
             FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 1
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
         )
         SELECT count(*) FILTER (WHERE key = $1) AS members,
                coalesce(array_agg(DISTINCT key) FILTER (WHERE key = ANY($2)), '{}') AS taken
         FROM held",
    )
    .bind(MEMBERS_LOCK)
    .bind(keys)
    .fetch_one(conn)
    .await
    .during("surveying the live processes and the tenant leases")
}

/// Takes a lease if nobody holds it; true when this connection now holds it.
pub async fn try_take(conn: &mut PgConnection, key: i64) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
        .during("trying to take a tenant lease")
}

/// Gives a lease up so another process takes it at its next attempt.
pub async fn give_up(conn: &mut PgConnection, key: i64) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(conn)
        .await
        .during("giving up a tenant lease")
        .map(drop)
}

/// Releases every lease and the membership, so the others take over at once, not when the
/// connection closes.
pub async fn leave(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(conn)
        .await
        .during("releasing the tenant leases")
        .map(drop)
}
