//! One active instance among several `run` processes sharing a database.
//!
//! Leadership is the session advisory lock [`LEADER_LOCK`] held on a dedicated connection
//! (never a pooled one, which would hand the lock to whatever borrows it next). PostgreSQL
//! drops the lock the moment that connection ends, so a killed or partitioned leader loses
//! it without cooperation, and a standby that retries every [`LeadershipSettings::poll_interval`]
//! takes over within about that long. The leader re-checks its connection just as often and
//! stands down at the first failure or slow answer: a leader that cannot prove it still holds
//! the lock must assume it does not.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::leader_lock::{self, LEADER_LOCK};
use crate::store::{QueryContext, StoreError, describe};

/// What this instance knows about leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderState {
    /// No working connection to the database: nobody here can tell who leads.
    Unknown,
    /// Connected; another instance holds the lock.
    Standby,
    /// This instance holds the lock and may run sync cycles.
    Leader,
}

/// How eagerly leadership is pursued and checked. Tests shorten these.
#[derive(Debug, Clone)]
pub struct LeadershipSettings {
    /// How often a standby retries the lock and a leader re-checks its connection; a takeover
    /// after a leader dies takes about this long.
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

/// The background task that campaigns for leadership, and its published state.
///
/// Dropping it (or cancelling the token given to [`Leadership::spawn`]) stops the task, which
/// releases the lock; [`Leadership::shutdown`] does the same and waits until it is released.
/// Stop it only after sync work has stopped, or a standby may start a cycle beside the last one.
#[derive(Debug)]
pub struct Leadership {
    state: watch::Receiver<LeaderState>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Starts campaigning on a connection of its own made from `options`.
    pub fn spawn(
        options: PgConnectOptions,
        settings: LeadershipSettings,
        cancel: &CancellationToken,
    ) -> Leadership {
        let stop = cancel.child_token();
        let (sender, state) = watch::channel(LeaderState::Unknown);
        // Named so operators can spot the lock holder in pg_stat_activity.
        let options = options.application_name("scan-agent-sync leadership");
        let task = tokio::spawn(campaign(options, settings, sender, stop.clone()));
        Leadership { state, stop, task }
    }

    /// A receiver for the state, for `/readyz`, the metrics and the scheduler.
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        self.state.clone()
    }

    /// The state right now.
    pub fn current(&self) -> LeaderState {
        *self.state.borrow()
    }

    /// Stops campaigning and waits until the lock is released and the connection closed.
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

/// Returns once this instance leads; `Err` when the leadership task has stopped first.
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

/// Connects, holds or waits for the lock while the connection works, reconnects with
/// backoff when it does not, until `stop`.
async fn campaign(
    options: PgConnectOptions,
    settings: LeadershipSettings,
    state: watch::Sender<LeaderState>,
    stop: CancellationToken,
) {
    let mut backoff = reconnect_backoff(&settings);
    loop {
        let connected = bounded(settings.query_timeout, async {
            options
                .connect()
                .await
                .map_err(|source| StoreError::Connect { target: describe(&options), source })
        })
        .await;
        match connected {
            Ok(mut conn) => {
                backoff = reconnect_backoff(&settings);
                match hold(&mut conn, &settings, &state, &stop).await {
                    Ok(()) => {
                        close(conn, &settings).await;
                        return;
                    }
                    Err(e) => {
                        publish(&state, LeaderState::Unknown);
                        tracing::warn!(error = %e, "leadership connection lost; standing down and reconnecting");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect for leadership; retrying"),
        }
        let delay = backoff.next().unwrap_or(settings.max_backoff);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Takes the lock when free and keeps proving the connection while held, publishing each
/// answer. `Ok` when stopped (the lock released), `Err` when the connection failed.
async fn hold(
    conn: &mut PgConnection,
    settings: &LeadershipSettings,
    state: &watch::Sender<LeaderState>,
    stop: &CancellationToken,
) -> Result<(), Lost> {
    let mut leader = false;
    loop {
        leader = if leader {
            bounded(settings.query_timeout, leader_lock::check(conn)).await.map(|()| true)?
        } else {
            bounded(settings.query_timeout, leader_lock::try_acquire(conn)).await?
        };
        publish(state, if leader { LeaderState::Leader } else { LeaderState::Standby });
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
    // Stop claiming before letting go, so nothing here acts as leader once a standby can.
    publish(state, LeaderState::Unknown);
    if leader {
        bounded(settings.query_timeout, leader_lock::release(conn)).await?;
        tracing::info!(lock = LEADER_LOCK, "leadership released");
    }
    Ok(())
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

/// Sets the state, logging transitions only (so a steady state does not fill the journal).
fn publish(state: &watch::Sender<LeaderState>, new: LeaderState) {
    state.send_if_modified(|current| {
        if *current == new {
            return false;
        }
        tracing::info!(from = ?*current, to = ?new, "leadership state changed");
        *current = new;
        true
    });
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
