//! `scan-agent-sync run`: the long-running service.
//!
//! Wiring only: the store (migrated at start), leadership (each tenant synced by one of the
//! instances sharing the database), the HTTP endpoints, the alert sender, the retention job,
//! the cron schedule, and a loop that runs one sync cycle at a time per tenant this instance
//! holds, reloads the agent lists on SIGHUP, pings the systemd watchdog, and on
//! SIGTERM/SIGINT lets the running cycles apply what they fetched and record themselves
//! `interrupted`.

mod tenant;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent_id::AgentId;
use crate::alerts;
use crate::config::Settings;
use crate::http::{self, HttpState};
use crate::leader::{Leadership, LeadershipSettings, Leases};
use crate::metrics::{Metrics, refresh_agent_series};
use crate::notify;
use crate::retention::{self, Retention};
use crate::scheduler::{Busy, Schedule, Start};
use crate::store::{Store, StoreError};
use crate::sync::{CycleOptions, CycleReport, SyncError};
use crate::tenant_name::TenantName;

use self::tenant::TenantCycle;

/// The longest a stop takes, from SIGTERM to exit, whatever runs: a cycle, a staleness
/// evaluation, an alert drain, a slow PostgreSQL; well within the unit's `TimeoutStopSec`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Of [`SHUTDOWN_GRACE`], what is kept for closing leadership, the alert sender and the HTTP
/// server after the running cycle had its chance to apply what it fetched.
const CLOSING_TIME: Duration = Duration::from_secs(5);

/// How often queued alerts are looked for; an alert waits at most this long to leave.
const ALERT_POLL: Duration = Duration::from_secs(2);

/// Runs until `shutdown` completes. Errors only for what a restart cannot fix by waiting
/// (bad secret file, unusable listen address); a database outage is waited out.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            cancel.cancel();
        }
    });
    let Some(store) = connect_and_migrate(&settings, &cancel).await? else { return Ok(()) };
    let metrics = Metrics::new();
    let leadership = Leadership::spawn(
        store.pool().connect_options().as_ref().clone(),
        settings.tenants().iter().map(|tenant| tenant.name.clone()).collect(),
        LeadershipSettings::default(),
        &cancel,
    );
    let http = match settings.http.listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on http.listen = {addr}; pick a free address or set it to \"\"")
            })?;
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            let state = HttpState {
                metrics: metrics.clone(),
                store: store.clone(),
                leadership: leadership.subscribe(),
            };
            Some(tokio::spawn(http::serve(listener, state, cancel.clone().cancelled_owned())))
        }
        None => None,
    };
    let mut tenants: Vec<TenantCycle> = settings
        .tenants()
        .iter()
        .map(|tenant| TenantCycle::new(tenant, &settings, store.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let busy = Busy::default();
    let (schedule, ticks) = Schedule::start(&settings.schedule.cron, busy.clone(), {
        let metrics = metrics.clone();
        move || metrics.record_skipped_tick()
    })
    .await
    .context("starting the schedule")?;

    let sender = tokio::spawn(alerts::run_sender(
        store.clone(),
        alerts::webhook_client().context("building the alert webhook client")?,
        settings.alerts.clone(),
        cancel.clone(),
        ALERT_POLL,
    ));
    let retention = tokio::spawn(retention::run_retention_job(
        store.clone(),
        Retention::from_settings(&settings),
        metrics.clone(),
        cancel.clone(),
    ));
    let call_watermark = store.last_call_id().await?;
    tenants.iter_mut().for_each(|tenant| tenant.call_watermark = call_watermark);

    notify::ready();
    let mut daemon = Daemon {
        settings,
        store,
        tenants,
        metrics,
        busy,
        leases: leadership.leases(),
        cancel: cancel.clone(),
    };
    daemon.run_loop(ticks).await?;

    notify::stopping();
    let stop_by = Instant::now() + SHUTDOWN_GRACE;
    schedule.stop().await;
    daemon.finish_cycles(stop_by - CLOSING_TIME).await;
    let close = async {
        leadership.shutdown().await;
        let _ = sender.await;
        let _ = retention.await;
        if let Some(http) = http {
            let _ = http.await;
        }
    };
    match tokio::time::timeout_at(stop_by, close).await {
        Ok(()) => tracing::info!("stopped"),
        Err(_) => {
            tracing::error!(grace = ?SHUTDOWN_GRACE, "stopping took too long; exiting without waiting further")
        }
    }
    Ok(())
}

/// Connects and migrates, waiting out an unreachable database with backoff; None when
/// shutdown came first.
async fn connect_and_migrate(
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Store>> {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let attempt = async {
            let store = Store::connect(&settings.database.url, settings.database.max_connections).await?;
            store.migrate().await?;
            store.set_stale_after(settings.stale.after).await?;
            Ok::<_, StoreError>(store)
        };
        match attempt.await {
            Ok(store) => return Ok(Some(store)),
            Err(error) if error.is_transient() => {
                let delay = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::error!(%error, retry_in = ?delay, "database not available yet; retrying");
                notify::status("waiting for PostgreSQL");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Ok(None),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The loop's state.
struct Daemon {
    settings: Settings,
    store: Store,
    /// One entry per configured tenant, each with its own cycle.
    tenants: Vec<TenantCycle>,
    metrics: Metrics,
    busy: Busy,
    /// The tenants this instance holds, and the permits their cycles run under.
    leases: Leases,
    cancel: CancellationToken,
}

impl Daemon {
    async fn run_loop(&mut self, mut ticks: tokio::sync::mpsc::Receiver<()>) -> anyhow::Result<()> {
        let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let watchdog_every = notify::watchdog_interval().unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval(watchdog_every);
        // Time alone makes agents stale, so staleness is also checked between cycles.
        let mut staleness = tokio::time::interval(staleness_interval(self.settings.stale.after));
        self.maybe_start_cycles(Start::Resume);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                Some(()) = ticks.recv() => self.maybe_start_cycles(Start::Tick),
                changed = self.leases.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.leases_changed();
                }
                (index, done) = next_finished(&mut self.tenants) => self.cycle_finished(index, done).await,
                _ = hangup.recv() => self.reload_agents(),
                _ = watchdog.tick() => notify::watchdog(),
                _ = staleness.tick() => self.evaluate_staleness().await,
            }
        }
    }

    /// SIGHUP: re-reads every tenant's `agents.ids_file`. An agent ID now listed for two
    /// tenants is refused as at start, but by keeping every old list rather than exiting.
    fn reload_agents(&mut self) {
        let lists: Vec<Vec<AgentId>> = self.tenants.iter().map(TenantCycle::reread_agents).collect();
        let mut owners: HashMap<&AgentId, &TenantName> = HashMap::new();
        for (tenant, ids) in self.tenants.iter().zip(&lists) {
            for id in ids {
                if let Some(other) = owners.insert(id, &tenant.settings.name)
                    && *other != tenant.settings.name
                {
                    tracing::error!(agent_id = %id, tenants = ?[&**other, &*tenant.settings.name],
                        "agent list reload rejected: an agent ID is listed for two tenants; keeping every old list \
                         (configure every agent ID for one tenant only)");
                    return;
                }
            }
        }
        for (tenant, ids) in self.tenants.iter_mut().zip(lists) {
            tenant.replace_agents(ids);
        }
    }

    /// The held tenants changed: a tenant lost stops its running cycle, a tenant gained
    /// starts one at once.
    fn leases_changed(&mut self) {
        let held = self.leases.held();
        self.metrics.set_leader(!held.is_empty());
        self.metrics.set_tenants_held(held.len());
        tracing::info!(held = ?held.iter().map(ToString::to_string).collect::<Vec<_>>(), "held tenants changed");
        for index in 0..self.tenants.len() {
            let tenant = &mut self.tenants[index];
            if !held.contains(&tenant.settings.name) {
                tenant.newly_leading = true;
                // Another instance may hold it now, or soon: stop starting requests, so two
                // cycles never run side by side; what was fetched is still applied, and the
                // lease goes only once the cycle has ended.
                if let Some(cycle) = &tenant.cycle_cancel
                    && !cycle.is_cancelled()
                {
                    tracing::warn!(tenant = %tenant.settings.name, "tenant lease lost or handed over; stopping its running cycle");
                    cycle.cancel();
                }
            } else if tenant.newly_leading {
                self.maybe_start_cycle(index, Start::Resume);
            }
        }
    }

    /// A tick (or the start of leadership, for the tenants that wait for it): starts a cycle
    /// for every tenant that needs one.
    fn maybe_start_cycles(&mut self, start: Start) {
        for index in 0..self.tenants.len() {
            self.maybe_start_cycle(index, start);
        }
    }

    /// Starts a cycle of tenant `index` in the background if this instance holds the
    /// tenant and none of its cycles is running; `start` says what part of the interval the
    /// cycle stands for.
    fn maybe_start_cycle(&mut self, index: usize, start: Start) {
        let tenant = &mut self.tenants[index];
        if tenant.cycle.is_some() {
            // The scheduler lets a tick through only once the running cycle is past its
            // deadline (see `Busy`); one that still starts requests skips it.
            if self.busy.is_busy() {
                self.metrics.record_skipped_tick();
            } else {
                tenant.tick_waiting = true;
            }
            return;
        }
        let Some(permit) = self.leases.try_permit(&tenant.settings.name) else {
            tracing::debug!(tenant = %tenant.settings.name, "another instance holds this tenant; no cycle");
            return;
        };
        let first = std::mem::replace(&mut tenant.newly_leading, false);
        let cancel = self.cancel.child_token();
        tenant.cycle_cancel = Some(cancel.clone());
        // A cycle stops starting requests at the next tick, so the budget left over when a
        // cycle cannot cover everyone is not spent late, and the next cycle starts on time.
        let options = CycleOptions { cancel, ..CycleOptions::scheduled(&self.settings.schedule, start) };
        let (syncer, targets, guard) =
            (tenant.syncer.clone(), tenant.targets.clone(), self.busy.enter(options.deadline));
        tenant.cycle = Some(tokio::spawn(async move {
            let (_busy, _permit) = (guard, permit);
            if first {
                let closed = syncer.store.close_abandoned_runs().await?;
                if closed > 0 {
                    tracing::warn!(closed, "marked runs left 'running' by a stopped instance as interrupted");
                }
            }
            syncer.run_cycle(&targets, &options).await
        }));
    }

    async fn cycle_finished(
        &mut self,
        index: usize,
        done: Result<Result<CycleReport, SyncError>, tokio::task::JoinError>,
    ) {
        let tenant = &mut self.tenants[index];
        tenant.cycle = None;
        tenant.cycle_cancel = None;
        let name: &str = &tenant.settings.name;
        match done {
            Ok(Ok(report)) => {
                let succeeded = matches!(report.exit_code(), 0).then(chrono::Utc::now);
                self.metrics.record_run(name, report.status.as_str(), report.elapsed, succeeded);
                tracing::info!("{}", report.to_string().trim_end());
            }
            Ok(Err(error)) => {
                self.metrics.record_run(name, "failed", Duration::ZERO, None);
                tracing::error!(%error, "sync cycle could not complete; the next tick retries");
            }
            Err(panic) => {
                self.metrics.record_run(name, "failed", Duration::ZERO, None);
                tracing::error!(%panic, "sync cycle task failed");
            }
        }
        self.refresh_budget_metrics(index).await;
        self.count_api_calls(index).await;
        self.evaluate_staleness().await;
        if std::mem::take(&mut self.tenants[index].tick_waiting) && !self.cancel.is_cancelled() {
            self.maybe_start_cycle(index, Start::Tick);
        }
    }

    /// Opens, repeats and resolves the stale episodes of the tenants this instance holds
    /// (none on standby, so a standby adds no load), and refreshes the agent metrics.
    async fn evaluate_staleness(&self) {
        let held: Vec<_> = self.leases.held().into_iter().collect();
        if held.is_empty() {
            // The agents are another process's to count and export now.
            self.metrics.set_agent_counts(0, 0, 0);
            self.metrics.set_agent_last_seen(&[]);
            return;
        }
        // A stop does not wait for an evaluation: its transaction rolls back, and the next
        // start evaluates again.
        tokio::select! {
            () = self.record_staleness(&held) => {}
            () = self.cancel.cancelled() => tracing::info!("staleness evaluation abandoned for the stop"),
        }
    }

    async fn record_staleness(&self, held: &[TenantName]) {
        let (store, now) = (&self.store, chrono::Utc::now());
        match alerts::evaluate(store, Some(held), &self.settings.stale, &self.settings.alerts, now).await {
            Ok(seen) => self.metrics.set_agent_counts(seen.tracked, seen.stale_now, seen.missing_now),
            Err(error) => {
                tracing::error!(%error, "evaluating stale agents failed; retrying at the next check")
            }
        }
        let mode = self.settings.http.agent_series;
        if let Err(error) = refresh_agent_series(store, &self.metrics, mode, held).await {
            tracing::warn!(%error, "reading lastSeen for the per-agent metrics failed");
        }
    }

    /// Turns the ledger rows of tenant `index`'s last cycle into request and 429 counters.
    async fn count_api_calls(&mut self, index: usize) {
        let tenant = &mut self.tenants[index];
        match tenant.syncer.store.calls_since(tenant.call_watermark).await {
            Ok((counts, newest)) => {
                for (endpoint, status, n) in counts {
                    let code = if status == 0 { "none".to_owned() } else { status.to_string() };
                    let n = u64::try_from(n).unwrap_or(0);
                    self.metrics.record_api_requests(&tenant.settings.name, &endpoint, &code, n);
                    if status == 429 {
                        self.metrics.record_throttled(&tenant.settings.name, n);
                    }
                }
                tenant.call_watermark = newest;
            }
            Err(error) => tracing::warn!(%error, "reading the call ledger for the metrics failed"),
        }
    }

    /// The budget left in each of tenant `index`'s windows.
    async fn refresh_budget_metrics(&self, index: usize) {
        let tenant = &self.tenants[index];
        let windows = &tenant.settings.rate_limit.windows;
        match tenant.syncer.store.remaining(windows).await {
            Ok(remaining) => {
                for (window, left) in windows.iter().zip(remaining) {
                    self.metrics.set_budget_remaining(&tenant.settings.name, &window.label(), left);
                }
            }
            Err(error) => tracing::warn!(%error, "reading the remaining budget failed"),
        }
    }

    /// At shutdown: lets every running cycle apply what it fetched, until `until`.
    async fn finish_cycles(&mut self, until: Instant) {
        for tenant in &mut self.tenants {
            tenant.finish_cycle(until).await;
        }
    }
}

/// Often enough that an agent is reported stale within a few percent of `stale.after`,
/// never more than once a second or less than once a minute.
fn staleness_interval(after: Duration) -> Duration {
    (after / 20).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Completes when one tenant's running cycle does, with that tenant's index; never while
/// none runs.
async fn next_finished(
    tenants: &mut [TenantCycle],
) -> (usize, Result<Result<CycleReport, SyncError>, tokio::task::JoinError>) {
    std::future::poll_fn(|cx| {
        for (index, tenant) in tenants.iter_mut().enumerate() {
            if let Some(handle) = &mut tenant.cycle
                && let Poll::Ready(done) = Pin::new(handle).poll(cx)
            {
                return Poll::Ready((index, done));
            }
        }
        Poll::Pending
    })
    .await
}
