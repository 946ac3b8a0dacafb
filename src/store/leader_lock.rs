//! The leadership lock: a session-level advisory lock on one dedicated connection.
//!
//! Session-level (not transaction-level) because it must outlive every transaction and
//! vanish exactly when its connection does: a dead or partitioned holder loses it without
//! anyone cleaning up. These functions take the connection, never the pool, since a pooled
//! connection would carry the lock back into the pool.

use sqlx::PgConnection;

use super::{QueryContext, StoreError};

/// Advisory lock key (session-scoped) held by the one active `run` instance.
pub const LEADER_LOCK: i64 = 0x5CA5_0003;

/// Takes the leadership lock if nobody holds it; true when this connection now holds it.
pub async fn try_acquire(conn: &mut PgConnection) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(conn)
        .await
        .during("trying to take the leadership lock")
}

/// Releases the lock so a standby takes over at its next attempt, not when the connection closes.
pub async fn release(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LEADER_LOCK)
        .execute(conn)
        .await
        .during("releasing the leadership lock")
        .map(drop)
}

/// Proves the connection, and with it the lock, is still alive.
pub async fn check(conn: &mut PgConnection) -> Result<(), StoreError> {
    super::select_one(conn, "checking the leadership connection").await
}
