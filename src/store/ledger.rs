//! The rate-budget ledger: one `api_calls` row per request, written BEFORE the request is
//! sent, so every process sharing the database (and a restarted one) sees every call.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::tenant::TenantStore;
use super::{QueryContext, Store, StoreError, interval};
use crate::rate_window::RateWindow;
use crate::tenant_name::TenantName;

/// Advisory lock class that serializes one tenant's slot grants across processes: the lock
/// is the pair (this, `hashtext(tenant)`), so tenants, whose budgets are separate, never
/// wait for each other (two names with one hash only share a lock). Pairs of 32-bit keys
/// and 64-bit keys are separate key spaces in PostgreSQL, so no other lock clashes with it.
pub const LEDGER_LOCK: i32 = 0x5CA5_0002;

/// The answer to a slot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The call is recorded; send it now.
    Granted(Grant),
    /// Every window is full or a 429 pause is on: ask again after this long.
    Wait(Duration),
}

/// A call recorded in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The ledger row, for [`Store::finish_call`].
    pub call_id: i64,
    /// From just before the database clock reading that timed the call to the commit's return:
    /// the request leaves at least this much later than its recorded time. Measured from the
    /// reading, not from the start of the transaction, so time spent queueing for the ledger
    /// lock does not push the recorded time (and with it the next free slot) later than the
    /// request really left.
    pub lag: Duration,
}

/// Extra spacing added to every window: the API counts calls when they arrive, and the trip
/// there varies. 0.5% of the window, between 10 ms and 1 s: 300 ms for a minute window and
/// 1 s for an hour, so utilization stays above 99.5% of the real limits.
pub fn guard(window: &RateWindow) -> Duration {
    (window.per / 200).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl Store {
    /// [`TenantStore::take_slot`] of the tenant of a single-tenant configuration.
    pub async fn take_slot(&self, windows: &[RateWindow], endpoint: &str) -> Result<Slot, StoreError> {
        self.for_tenant(TenantName::default()).take_slot(windows, endpoint).await
    }

    /// [`TenantStore::remaining`] of the tenant of a single-tenant configuration.
    pub async fn remaining(&self, windows: &[RateWindow]) -> Result<Vec<u32>, StoreError> {
        self.for_tenant(TenantName::default()).remaining(windows).await
    }
}

impl TenantStore {
    /// Grants a slot if every window has room for one more of this tenant's calls and no
    /// 429 pause of this tenant is on, recording the call; otherwise says how long to wait.
    /// Serialized per tenant by [`LEDGER_LOCK`] and timed by the database clock, so all
    /// processes agree on the count and on "now".
    pub async fn take_slot(&self, windows: &[RateWindow], endpoint: &str) -> Result<Slot, StoreError> {
        let mut tx = self.store.pool.begin().await.during("starting a budget transaction")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LEDGER_LOCK)
            .bind(&*self.tenant)
            .execute(&mut *tx)
            .await
            .during("waiting for the budget lock")?;
        let (now, paused_until): (DateTime<Utc>, Option<DateTime<Utc>>) = sqlx::query_as(
            "SELECT clock_timestamp(),
                    (SELECT max(pause_until) FROM api_calls
                     WHERE tenant = $1 AND pause_until > clock_timestamp())",
        )
        .bind(&*self.tenant)
        .fetch_one(&mut *tx)
        .await
        .during("reading the 429 pause")?;
        let mut wait_until = paused_until;
        for window in windows {
            let span = window.per + guard(window);
            // The `calls`-th most recent call inside the span: if it exists, the window is full
            // until that call is `span` old.
            let oldest_blocking: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT called_at FROM api_calls
                 WHERE tenant = $4 AND called_at > $1 - $2::interval
                 ORDER BY called_at DESC OFFSET $3 LIMIT 1",
            )
            .bind(now)
            .bind(interval(span))
            .bind(i64::from(window.calls) - 1)
            .bind(&*self.tenant)
            .fetch_optional(&mut *tx)
            .await
            .during("counting calls in a rate window")?;
            if let Some(t) = oldest_blocking {
                let free_at = t + span;
                wait_until = wait_until.max(Some(free_at));
            }
        }
        if let Some(until) = wait_until.filter(|until| *until > now) {
            tx.rollback().await.during("ending a budget transaction")?;
            return Ok(Slot::Wait((until - now).to_std().unwrap_or_default()));
        }
        // Timed by a fresh clock reading rather than `now`: every window that had room at
        // `now` still has it, and the later the recorded time, the less it lags the send.
        let reading = Instant::now();
        let call_id: i64 = sqlx::query_scalar(
            "INSERT INTO api_calls (called_at, endpoint, tenant) VALUES (clock_timestamp(), $1, $2)
             RETURNING call_id",
        )
        .bind(endpoint)
        .bind(&*self.tenant)
        .fetch_one(&mut *tx)
        .await
        .during("recording an API call in the ledger")?;
        tx.commit().await.during("committing an API call to the ledger")?;
        Ok(Slot::Granted(Grant { call_id, lag: reading.elapsed() }))
    }

    /// Records a call's HTTP status (None: no answer), moves its time `sent_later` forward
    /// to when it really left, and for a 429 sets the pause every process must respect for
    /// this tenant.
    pub async fn finish_call(
        &self,
        call_id: i64,
        sent_later: Duration,
        status: Option<u16>,
        pause: Option<Duration>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_calls SET status = $2, pause_until = clock_timestamp() + $3::interval,
                 called_at = called_at + $4::interval
             WHERE call_id = $1",
        )
        .bind(call_id)
        .bind(status.map(|s| s as i16))
        .bind(pause.map(interval))
        .bind(interval(sent_later))
        .execute(&self.store.pool)
        .await
        .during("recording an API call's answer")?;
        Ok(())
    }

    /// Calls of this tenant still allowed now in each window (for metrics and planning).
    pub async fn remaining(&self, windows: &[RateWindow]) -> Result<Vec<u32>, StoreError> {
        let mut remaining = Vec::with_capacity(windows.len());
        for window in windows {
            let used: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM api_calls
                 WHERE tenant = $2 AND called_at > clock_timestamp() - $1::interval",
            )
            .bind(interval(window.per + guard(window)))
            .bind(&*self.tenant)
            .fetch_one(&self.store.pool)
            .await
            .during("counting calls in a rate window")?;
            remaining.push(window.calls.saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)));
        }
        Ok(remaining)
    }

    /// This tenant's calls recorded after ledger row `after`, by endpoint and status (0: no
    /// answer), and the newest of its row ids seen. The daemon reads this once the tenant's
    /// cycle is over, so each call has its answer (another tenant's cycle may still be
    /// waiting for some); it turns them into request counters without the client knowing
    /// metrics.
    pub async fn calls_since(&self, after: i64) -> Result<(Vec<(String, i16, i64)>, i64), StoreError> {
        let rows: Vec<(String, i16, i64, i64)> = sqlx::query_as(
            "SELECT endpoint, coalesce(status, 0::smallint), count(*), max(call_id) FROM api_calls
             WHERE call_id > $1 AND tenant = $2
             GROUP BY 1, 2",
        )
        .bind(after)
        .bind(&*self.tenant)
        .fetch_all(&self.store.pool)
        .await
        .during("counting recent API calls")?;
        let newest = rows.iter().map(|r| r.3).max().unwrap_or(after);
        Ok((rows.into_iter().map(|(endpoint, status, n, _)| (endpoint, status, n)).collect(), newest))
    }
}

impl Store {
    /// The newest ledger row id (0 for an empty ledger): where a process starts counting
    /// its requests.
    pub async fn last_call_id(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT coalesce(max(call_id), 0) FROM api_calls")
            .fetch_one(&self.pool)
            .await
            .during("reading the newest ledger row")
    }
}
