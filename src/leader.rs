//! Which tenants this process syncs, among several `run` processes sharing a database.
//!
//! Each tenant has a lease, a session advisory lock (see [`crate::store::leader_lock`]), and
//! whoever holds it syncs that tenant. A process holds all its locks on one dedicated
//! connection (never a pooled one, which would hand a lock to whatever borrows it next), so
//! PostgreSQL drops them the moment that connection ends: a killed or partitioned process
//! loses its tenants without cooperation. Every [`LeadershipSettings::poll_interval`] each
//! process counts the live processes (holders of the shared membership lock), takes free
//! leases up to its share, ceil(tenants / live processes), and gives up what it holds beyond
//! it, so tenants spread evenly and a dead process's tenants are taken over within about one
//! interval. A lease is given up only once its tenant's running cycle has ended (it holds
//! the tenant's [`SyncPermit`]), so two processes never sync one tenant side by side. The
//! same poll proves the connection: at its first failure or slow answer the process stands
//! down from every tenant, since it cannot prove it still holds any.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::leader_lock;
use crate::store::{QueryContext, StoreError, describe};
use crate::tenant_name::TenantName;

/// What this instance knows about leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderState {
    /// No working connection to the database: nobody here can tell who leads.
    Unknown,
    /// Connected; this instance holds no tenant (the others hold them all).
    Standby,
    /// This instance holds at least one tenant's lease and runs its cycles.
    Leader,
}

/// How eagerly leases are pursued and checked. Tests shorten these.
#[derive(Debug, Clone)]
pub struct LeadershipSettings {
    /// How often leases are balanced and the connection re-checked; a takeover after a
    /// process dies takes about this long.
    pub poll_interval: Duration,
    /// Bound on connecting and on each query; a slower answer counts as a lost connection.
    pub query_timeout: Duration,
    /// Longest wait between reconnection attempts while the database is unreachable.
    pub max_backoff: Duration,
}

impl Default for LeadershipSettings {
    fn default() -> Self {
        LeadershipSettings {
            poll_interval: Duration::from_secs(1),
            query_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// One lock per tenant, held by its running cycle: a lease is given up only when it is free.
type Permits = Arc<BTreeMap<TenantName, Arc<Mutex<()>>>>;

/// The background task that campaigns for leases, and what it publishes.
///
/// Dropping it (or cancelling the token given to [`Leadership::spawn`]) stops the task, which
/// releases every lease; [`Leadership::shutdown`] does the same and waits until they are
/// released. Stop it only after sync work has stopped, or another process may start a cycle
/// beside the last one.
#[derive(Debug)]
pub struct Leadership {
    state: watch::Receiver<LeaderState>,
    leases: Leases,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The tenants this process holds now, and the permits their cycles take.
#[derive(Debug, Clone)]
pub struct Leases {
    held: watch::Receiver<BTreeSet<TenantName>>,
    permits: Permits,
}

/// Held by a tenant's running cycle: while it lives, this process keeps the tenant's lease.
#[derive(Debug)]
pub struct SyncPermit {
    _cycle: OwnedMutexGuard<()>,
}

impl Leases {
    /// The tenants held now.
    pub fn held(&self) -> BTreeSet<TenantName> {
        self.held.borrow().clone()
    }

    /// Waits until the held tenants change; `Err` once the leadership task has stopped.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.held.changed().await
    }

    /// The permit to run a cycle of `tenant`: `None` unless this process holds its lease and
    /// no cycle of it runs. Taken before the lease is looked at, the reverse of a hand-over,
    /// so a lease is never given up between the look and the cycle's start.
    pub fn try_permit(&self, tenant: &TenantName) -> Option<SyncPermit> {
        let permit = self.permits.get(tenant)?.clone().try_lock_owned().ok()?;
        self.held.borrow().contains(tenant).then_some(SyncPermit { _cycle: permit })
    }
}

impl Leadership {
    /// Starts campaigning for `tenants`' leases on a connection of its own made from `options`.
    pub fn spawn(
        options: PgConnectOptions,
        tenants: Vec<TenantName>,
        settings: LeadershipSettings,
        cancel: &CancellationToken,
    ) -> Leadership {
        let stop = cancel.child_token();
        let (state_sender, state) = watch::channel(LeaderState::Unknown);
        let (held_sender, held) = watch::channel(BTreeSet::new());
        let permits: Permits =
            Arc::new(tenants.iter().map(|tenant| (tenant.clone(), Arc::default())).collect());
        // Named so operators can spot the lease holders in pg_stat_activity.
        let options = options.application_name("scan-agent-sync leadership");
        let campaign = Campaign {
            // Each process tries the tenants from its own starting point, so processes
            // starting together mostly reach for different leases.
            offset: std::process::id() as usize % tenants.len().max(1),
            tenants,
            permits: permits.clone(),
            settings,
            state: state_sender,
            held: held_sender,
        };
        let task = tokio::spawn(campaign.run(options, stop.clone()));
        Leadership { state, leases: Leases { held, permits }, stop, task }
    }

    /// A receiver for the state, for `/readyz` and the metrics.
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.state.clone()
    }

    /// The tenants held, for the daemon's cycles.
    pub fn leases(&self) -> Leases {
        self.leases.clone()
    }

    /// The state right now.
    pub fn current(&self) -> LeaderState {
        *self.state.borrow()
    }

    /// Stops campaigning and waits until the leases are released and the connection closed.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "the leadership task failed");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Returns once this instance holds a tenant; `Err` when the leadership task has stopped first.
pub async fn wait_until_leader(
    state: &mut watch::Receiver<LeaderState>,
) -> Result<(), watch::error::RecvError> {
    state.wait_for(|s| *s == LeaderState::Leader).await.map(drop)
}

/// Why a leadership connection was given up.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
}

/// The leadership task's own state.
struct Campaign {
    tenants: Vec<TenantName>,
    permits: Permits,
    settings: LeadershipSettings,
    state: watch::Sender<LeaderState>,
    held: watch::Sender<BTreeSet<TenantName>>,
    offset: usize,
}

/// The leases on one connection, by index into [`Campaign::tenants`].
#[derive(Default)]
struct Holding {
    /// Locked in PostgreSQL by this connection.
    locked: BTreeSet<usize>,
    /// Of those, the ones the daemon may sync; the others wait for their cycle to end before
    /// they are given up.
    published: BTreeSet<usize>,
}

impl Campaign {
    /// Connects, holds leases while the connection works, reconnects with backoff when it
    /// does not, until `stop`.
    async fn run(self, options: PgConnectOptions, stop: CancellationToken) {
        let mut backoff = reconnect_backoff(&self.settings);
        loop {
            let connected = bounded(self.settings.query_timeout, async {
                options
                    .connect()
                    .await
                    .map_err(|source| StoreError::Connect { target: describe(&options), source })
            })
            .await;
            match connected {
                Ok(mut conn) => {
                    backoff = reconnect_backoff(&self.settings);
                    match self.hold(&mut conn, &stop).await {
                        Ok(()) => {
                            close(conn, &self.settings).await;
                            return;
                        }
                        Err(e) => {
                            self.publish(None);
                            tracing::warn!(error = %e, "leadership connection lost; standing down from every tenant and reconnecting");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot connect for leadership; retrying"),
            }
            let delay = backoff.next().unwrap_or(self.settings.max_backoff);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Joins the live processes and balances leases every poll while the connection works.
    /// `Ok` when stopped (the leases released), `Err` when the connection failed.
    async fn hold(&self, conn: &mut PgConnection, stop: &CancellationToken) -> Result<(), Lost> {
        let timeout = self.settings.query_timeout;
        let keys = bounded(timeout, leader_lock::lease_keys(conn, &self.tenants)).await?;
        bounded(timeout, leader_lock::join(conn)).await?;
        let mut holding = Holding::default();
        loop {
            self.balance(conn, &keys, &mut holding).await?;
            self.publish(Some(&holding.published));
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        // Stop claiming before letting go, so nothing here syncs once another process can.
        self.publish(None);
        bounded(timeout, leader_lock::leave(conn)).await?;
        if !holding.locked.is_empty() {
            tracing::info!(tenants = holding.locked.len(), "tenant leases released");
        }
        Ok(())
    }

    /// One poll: this process's share is ceil(tenants / live processes); it gives up what
    /// it holds beyond it (once the cycle ends) and takes free leases up to it.
    async fn balance(
        &self,
        conn: &mut PgConnection,
        keys: &[i64],
        holding: &mut Holding,
    ) -> Result<(), Lost> {
        let timeout = self.settings.query_timeout;
        let survey = bounded(timeout, leader_lock::survey(conn, keys)).await?;
        let live = usize::try_from(survey.members).unwrap_or(1).max(1);
        let share = self.tenants.len().div_ceil(live);
        while holding.published.len() > share {
            let surplus = self.surplus(&holding.published);
            holding.published.remove(&surplus);
            tracing::info!(tenant = %self.tenants[surplus], live, share, "handing a tenant over to spread them evenly");
        }
        let waiting: Vec<usize> = holding.locked.difference(&holding.published).copied().collect();
        for index in waiting {
            if holding.published.len() < share {
                holding.published.insert(index);
                continue;
            }
            let Ok(_idle) = self.permits[&self.tenants[index]].try_lock() else { continue };
            bounded(timeout, leader_lock::give_up(conn, keys[index])).await?;
            holding.locked.remove(&index);
            tracing::info!(tenant = %self.tenants[index], "tenant lease given up");
        }
        let n = self.tenants.len();
        for index in (0..n).map(|i| (i + self.offset) % n) {
            if holding.locked.len() >= share {
                break;
            }
            // A key this process holds already may be another tenant's too (a hash
            // collision): taking it again is what lets this process sync both.
            let ours = holding.locked.iter().any(|&held| keys[held] == keys[index]);
            if holding.locked.contains(&index) || (survey.taken.contains(&keys[index]) && !ours) {
                continue;
            }
            if bounded(timeout, leader_lock::try_take(conn, keys[index])).await? {
                holding.locked.insert(index);
                holding.published.insert(index);
                tracing::info!(tenant = %self.tenants[index], live, share, "tenant lease taken");
            }
        }
        Ok(())
    }

    /// The published tenant to give up first: one with no cycle running, so it goes at once.
    fn surplus(&self, published: &BTreeSet<usize>) -> usize {
        let idle =
            published.iter().rev().find(|&&index| self.permits[&self.tenants[index]].try_lock().is_ok());
        *idle.or_else(|| published.last()).expect("only called while something is published")
    }

    /// Publishes the tenants the daemon may sync (`None`: not connected), logging changes of
    /// the state only (so a steady state does not fill the journal).
    fn publish(&self, held: Option<&BTreeSet<usize>>) {
        let tenants: BTreeSet<TenantName> =
            held.into_iter().flatten().map(|&index| self.tenants[index].clone()).collect();
        let new = match held {
            None => LeaderState::Unknown,
            Some(_) if tenants.is_empty() => LeaderState::Standby,
            Some(_) => LeaderState::Leader,
        };
        self.held.send_if_modified(|current| {
            let changed = *current != tenants;
            *current = tenants;
            changed
        });
        self.state.send_if_modified(|current| {
            if *current == new {
                return false;
            }
            tracing::info!(from = ?*current, to = ?new, "leadership state changed");
            *current = new;
            true
        });
    }
}

/// Closes the connection politely; if that fails the server drops it (and any lock) anyway.
async fn close(conn: PgConnection, settings: &LeadershipSettings) {
    if let Err(e) = bounded(settings.query_timeout, async {
        conn.close().await.during("closing the leadership connection")
    })
    .await
    {
        tracing::debug!(error = %e, "closing the leadership connection");
    }
}

/// Runs a database step with a deadline: a hung connection must not keep a leader claiming.
async fn bounded<T>(limit: Duration, step: impl Future<Output = Result<T, StoreError>>) -> Result<T, Lost> {
    tokio::time::timeout(limit, step).await.map_err(|_| Lost::Timeout(limit))?.map_err(Lost::from)
}

/// Jittered exponential waits from one poll interval up to `max_backoff`, never giving up:
/// the daemon outlives database outages.
fn reconnect_backoff(settings: &LeadershipSettings) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(settings.poll_interval)
        .with_max_delay(settings.max_backoff)
        .with_jitter()
        .without_max_times()
        .build()
}
