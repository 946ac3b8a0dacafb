//! The rate budget: every API request first takes a slot, so that no configured window ever
//! holds more than `calls` requests in ANY interval of length `per`.
//!
//! Not a token bucket (a GCRA such as `governor` can put twice the quota into one sliding
//! minute): slots are granted from the persisted ledger ([`TenantStore::take_slot`]), which makes
//! the guarantee hold across restarts and across processes sharing the database. At most
//! `max_in_flight` requests run at once, so a slow API still gets the whole budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::rate_window::RateWindow;
use crate::store::StoreError;
use crate::store::ledger::Slot;
use crate::store::tenant::TenantStore;

/// Used when a 429 carries no usable `Retry-After`: long enough to let a minute window drain
/// noticeably, short enough not to stall a cycle.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Shared by every request of a process.
#[derive(Debug, Clone)]
pub struct Budget {
    /// The tenant's ledger: the limits are per app registration and tenant.
    store: TenantStore,
    windows: Arc<[RateWindow]>,
    in_flight: Arc<Semaphore>,
    /// The one request of this process asking the ledger for a slot; the others queue here
    /// in order. Without it every request waiting for a full window sleeps until the same
    /// instant, wakes with the rest, and queues for the ledger lock only to be told to wait
    /// again: one slot freeing up cost a transaction per waiting request, and the one that
    /// got the slot went out late by however many of those ran before it.
    asking: Arc<Mutex<()>>,
}

/// Why no slot was granted.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("the rate budget has no slot before this cycle's deadline")]
    Exhausted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The right to send one request, recorded in the ledger. Dropping it without
/// [`Permit::finish`] leaves the call counted with no status, which is the safe reading.
#[derive(Debug)]
pub struct Permit {
    store: TenantStore,
    call_id: i64,
    /// How much later than its recorded time the request leaves, at least (see
    /// [`Grant::lag`](crate::store::ledger::Grant::lag) and [`Permit::finish`]).
    lag: Duration,
    _in_flight: OwnedSemaphorePermit,
}

impl Budget {
    /// A budget over `windows` allowing `max_in_flight` concurrent requests.
    pub fn new(store: TenantStore, windows: &[RateWindow], max_in_flight: usize) -> Budget {
        Budget {
            store,
            windows: windows.into(),
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            asking: Arc::new(Mutex::new(())),
        }
    }

    /// The windows this budget enforces.
    pub fn windows(&self) -> &[RateWindow] {
        &self.windows
    }

    /// Waits for a slot in every window (and for any 429 pause), then records the call.
    /// Gives up with [`BudgetError::Exhausted`] when the slot would come after `deadline`.
    /// Requests of one process take slots first come, first served; other processes
    /// sharing the database compete through the ledger lock as before.
    pub async fn acquire(&self, endpoint: &str, deadline: Option<Instant>) -> Result<Permit, BudgetError> {
        let in_flight =
            self.in_flight.clone().acquire_owned().await.expect("the budget semaphore is never closed");
        let _asking = self.asking.lock().await;
        loop {
            match self.store.take_slot(&self.windows, endpoint).await? {
                Slot::Granted(grant) => {
                    return Ok(Permit {
                        store: self.store.clone(),
                        call_id: grant.call_id,
                        lag: grant.lag,
                        _in_flight: in_flight,
                    });
                }
                Slot::Wait(wait) => {
                    let wake = Instant::now() + wait;
                    if deadline.is_some_and(|d| wake > d) {
                        return Err(BudgetError::Exhausted);
                    }
                    tokio::time::sleep_until(wake).await;
                }
            }
        }
    }

    /// Calls still allowed now, per window, in the order of [`Budget::windows`].
    pub async fn remaining(&self) -> Result<Vec<u32>, StoreError> {
        self.store.remaining(&self.windows).await
    }
}

impl Permit {
    /// The request leaves `by` later than the grant allowed for (a token renewed in between).
    pub fn delay(&mut self, by: Duration) {
        self.lag += by;
    }

    /// Records the answer's status (None: no answer) and, for a 429, pauses every process
    /// for `retry_after`. The recorded call time moves forward by the grant's lag (the
    /// commit and the trip back), so it is no earlier than when the request really left:
    /// the server counts arrivals, and a call recorded too early would let the next window
    /// open too soon.
    ///
    /// A ledger failure is a [`BudgetError::Store`], so a store error reaches the client's
    /// callers one way only: through the budget.
    pub async fn finish(self, status: Option<u16>, retry_after: Option<Duration>) -> Result<(), BudgetError> {
        Ok(self.store.finish_call(self.call_id, self.lag, status, retry_after).await?)
    }
}
