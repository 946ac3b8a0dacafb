//! One sync cycle: choose the agents and the fetch mode, fetch within the budget, apply what
//! arrives batch by batch through the diff engine, decide the missing agents once the cycle
//! has seen everything, and record the run. The daemon only schedules this; the `sync`
//! command calls it once.
//!
//! A cycle streams: each list page, and each chunk of by-ID answers, is applied in its own
//! transaction as it arrives, so the process holds one page whatever the fleet's size, and
//! agents show up in the tables seconds after their fetch. What the cycle keeps is counts.
//! A crash between two batches leaves every applied batch applied and the rest for the next
//! cycle; missing agents are marked only at the end, after a complete list.

mod by_id;
pub mod guard;
mod list;
mod report;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentRecord;
use crate::agent_id::AgentId;
use crate::budget::{Budget, BudgetError};
use crate::config::{FetchMode, ScheduleSettings, StaleSettings, TenantSettings};
use crate::defender::DefenderClient;
use crate::diff::{Diff, Tally};
use crate::rate_window::RateWindow;
use crate::scheduler::{Interval, Start};
use crate::store::apply::Refused;
use crate::store::runs::RunStatus;
use crate::store::tenant::TenantStore;
use crate::store::{Store, StoreError};

use self::guard::Guard;
use self::report::KEPT_FAILURES;
pub use self::report::{CycleReport, Failure};

/// What one tenant's cycles need, built once per process and tenant.
#[derive(Debug, Clone)]
pub struct Syncer {
    /// The store bound to this syncer's tenant.
    pub store: TenantStore,
    pub client: DefenderClient,
    pub mode: FetchMode,
    pub max_in_flight: usize,
    /// `rate_limit.windows`, which the client's budget enforces and a by-ID cycle paces to.
    pub windows: Vec<RateWindow>,
    /// `stale.mass_missing_guard`.
    pub mass_missing_guard: f64,
}

/// Which agents to sync.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub ids: Vec<AgentId>,
    /// Also every agent the list endpoint returns.
    pub track_all: bool,
}

/// How one cycle runs.
#[derive(Debug, Clone, Default)]
pub struct CycleOptions {
    /// Fetch and report the diff; write nothing but the call ledger.
    pub dry_run: bool,
    /// No request starts after this; agents left over wait for the next cycle.
    pub deadline: Option<Instant>,
    /// The scheduled interval this cycle stands for; a by-ID cycle over a fleet larger than
    /// the longest rate window takes only its share of it (see `Syncer::pace`). None: no pace.
    pub interval: Option<Interval>,
    /// Stops the fetching; what was fetched is still applied and the run is `interrupted`.
    pub cancel: CancellationToken,
    /// Mark agents missing even when the mass-disappearance guard would refuse (a
    /// deliberate decommission).
    pub accept_mass_missing: bool,
}

impl CycleOptions {
    /// A cycle of `schedule` starting now: no request after the next tick, and paced to the
    /// part of the interval that `start` makes it stand for (see [`Start`]).
    pub fn scheduled(schedule: &ScheduleSettings, start: Start) -> CycleOptions {
        let now = Utc::now();
        let deadline =
            schedule.next_tick(now).map(|next| Instant::now() + (next - now).to_std().unwrap_or_default());
        CycleOptions { deadline, interval: Interval::of(schedule, now, start), ..CycleOptions::default() }
    }
}

/// A cycle that could not record its outcome: the database failed.
#[derive(Debug, thiserror::Error)]
#[error("sync cycle failed: {0}")]
pub struct SyncError(#[from] pub StoreError);

/// What a cycle gathered so far: counts, never one entry per agent (but for a dry run's
/// changes, which it prints).
#[derive(Debug, Default)]
struct Progress {
    fetched: usize,
    tally: Tally,
    diff: Diff,
    failures: Vec<Failure>,
    failure_count: usize,
    deferred: usize,
    /// False when a list did not reach its last page: then nothing may be marked missing.
    complete: bool,
    /// A list stopped because the budget had no slot for its next page before the deadline.
    list_out_of_budget: bool,
    list_pages: Option<u32>,
    /// The guard refused to mark agents missing.
    refused: bool,
    fleet_vanished: bool,
}

impl Progress {
    fn fail(&mut self, subject: &str, error: String) {
        self.failure_count += 1;
        if self.failures.len() < KEPT_FAILURES {
            self.failures.push(Failure { subject: subject.to_owned(), error });
        }
    }

    /// Counts one applied (or planned) batch; a dry run also keeps its changes to print.
    fn add(&mut self, diff: Diff, options: &CycleOptions) {
        self.tally += diff.tally();
        if options.dry_run {
            self.diff.absorb(diff);
        }
    }
}

impl Syncer {
    /// The cycle machinery for `tenant`: its own budget, client (reading its client secret)
    /// and fetch mode, so one tenant's throttling or failures never reach another's.
    pub fn for_tenant(
        tenant: &TenantSettings,
        stale: &StaleSettings,
        store: Store,
    ) -> anyhow::Result<Syncer> {
        let store = store.for_tenant(tenant.name.clone());
        let budget = Budget::new(store.clone(), &tenant.rate_limit.windows, tenant.rate_limit.max_in_flight);
        let client = DefenderClient::new(&tenant.defender, tenant.defender.client_secret()?, budget)?;
        Ok(Syncer {
            store,
            client,
            mode: tenant.defender.fetch_mode,
            max_in_flight: tenant.rate_limit.max_in_flight,
            windows: tenant.rate_limit.windows.clone(),
            mass_missing_guard: stale.mass_missing_guard,
        })
    }

    /// Runs one cycle. Fetch failures end up in the report (and the run row); only a database
    /// failure is an error.
    #[tracing::instrument(skip_all, fields(dry_run = options.dry_run))]
    pub async fn run_cycle(
        &self,
        targets: &Targets,
        options: &CycleOptions,
    ) -> Result<CycleReport, SyncError> {
        let started = Instant::now();
        let counters_before = self.client.counters();
        let mode = self.resolve_mode(targets).await?;
        let mut ids = targets.ids.clone();
        if targets.track_all && mode == FetchMode::ById {
            // by-id cannot discover agents; it refreshes the ones earlier lists found.
            let known: HashSet<AgentId> = ids.iter().cloned().collect();
            ids.extend(self.store.stored_ids().await?.into_iter().filter(|id| !known.contains(id)));
        }
        if !options.dry_run {
            self.store.forget_not_found(&ids).await?;
        }
        let ids = self.store.fetch_order(&ids).await?;
        let requested = ids.len();
        let pace = match mode {
            FetchMode::List => None,
            _ => self.pace(requested, options),
        };
        let run_id = match options.dry_run {
            true => None,
            false => Some(self.store.start_run(mode_name(mode), requested).await?),
        };
        tracing::info!(run_id, mode = mode_name(mode), requested, pace, "sync cycle started");

        let since = self.store.clock().await?;
        let mut progress = Progress::default();
        let outcome = match mode {
            FetchMode::List => self.list_cycle(&ids, targets.track_all, since, options, &mut progress).await,
            _ => self.by_id_cycle(ids, pace, since, options, &mut progress).await,
        };
        let apply_error = outcome.err();
        if let Some(error) = &apply_error {
            tracing::error!(%error, "applying a fetched batch failed; that batch was not written");
        }
        let counters = self.client.counters();
        let mut report = CycleReport {
            run_id,
            status: RunStatus::Ok,
            mode,
            requested,
            fetched: progress.fetched,
            missing: progress.tally.went_missing + progress.tally.still_missing + progress.tally.never_seen,
            deferred: progress.deferred,
            pace,
            failures: progress.failures,
            failure_count: progress.failure_count,
            changes: progress.tally,
            diff: progress.diff,
            fleet_vanished: progress.fleet_vanished,
            api_calls: counters.requests - counters_before.requests,
            throttled: counters.throttled - counters_before.throttled,
            dry_run: options.dry_run,
            elapsed: Duration::ZERO,
        };
        if let Some(failure) = out_of_budget(&report, progress.list_out_of_budget) {
            report.failure_count += 1;
            report.failures.push(failure);
        }
        report.status = if options.cancel.is_cancelled() {
            RunStatus::Interrupted
        } else if apply_error.is_some()
            || progress.refused
            || (report.fetched + report.missing == 0 && report.failure_count > 0)
        {
            RunStatus::Failed
        } else if report.failure_count > 0 || !progress.complete {
            RunStatus::Partial
        } else {
            RunStatus::Ok
        };
        report.elapsed = started.elapsed();
        if let Some(run_id) = run_id {
            let record = report.record(progress.list_pages, apply_error.as_ref());
            if let Err(error) = self.store.finish_run(run_id, &record).await {
                return Err(apply_error.unwrap_or(error).into());
            }
        }
        if let Some(error) = apply_error {
            return Err(error.into());
        }
        tracing::info!(
            run_id,
            status = %report.status,
            fetched = report.fetched,
            changed = report.changes.changed + report.changes.new,
            api_calls = report.api_calls,
            "sync cycle finished"
        );
        Ok(report)
    }

    /// `auto` picks the mode needing fewer calls: by-id costs one call per ID, a list costs
    /// as many pages as the last complete list took (one if never listed). Tracking all
    /// agents needs the list, which is the only way to discover them.
    async fn resolve_mode(&self, targets: &Targets) -> Result<FetchMode, StoreError> {
        Ok(match self.mode {
            FetchMode::Auto if targets.track_all => FetchMode::List,
            FetchMode::Auto => {
                let pages = self.store.last_list_pages().await?.unwrap_or(1) as usize;
                if targets.ids.len() <= pages { FetchMode::ById } else { FetchMode::List }
            }
            chosen => chosen,
        })
    }

    /// Applies one batch (a dry run plans it) and counts it; returns how many of its agents
    /// were fetched already since `listed_since` (list pages only).
    async fn take_batch(
        &self,
        records: Vec<AgentRecord>,
        missing: &[AgentId],
        listed_since: Option<DateTime<Utc>>,
        options: &CycleOptions,
        progress: &mut Progress,
    ) -> Result<usize, StoreError> {
        if records.is_empty() && missing.is_empty() {
            return Ok(0);
        }
        progress.fetched += records.len();
        let applied = match (options.dry_run, listed_since) {
            (true, _) => {
                progress.add(self.store.plan(records, missing).await?, options);
                return Ok(0);
            }
            (false, Some(since)) => self.store.apply_page(records, since).await?,
            (false, None) => self.store.apply(records, missing).await?,
        };
        self.refuse(&applied.refused, progress);
        progress.add(applied.diff, options);
        Ok(applied.refetched)
    }

    /// Agents this tenant's API returned that are stored under another tenant: the batch
    /// left them out, and each is a failure of the cycle naming both tenants.
    fn refuse(&self, refused: &[Refused], progress: &mut Progress) {
        for agent in refused {
            let error = format!(
                "the API of tenant {} returned this agent, which is stored under tenant {}; it was \
                 refused, not moved: check each tenant's tenant_id and agent selection",
                self.store.tenant(),
                agent.stored_under
            );
            tracing::error!(agent_id = %agent.agent_id, tenant = %self.store.tenant(), stored_under = %agent.stored_under, "{error}");
            progress.fail(agent.agent_id.as_str(), error);
        }
    }

    fn guard(&self, options: &CycleOptions) -> Guard {
        Guard { share: self.mass_missing_guard, accept: options.accept_mass_missing }
    }

    /// The guard refused to mark `vanishing` of `known` agents missing: the run fails with
    /// `error`, and (outside dry runs) one fleet alert opens when `alert` says the answers
    /// look like another fleet's. The episode starts with the cycle (`since`) that saw it, so
    /// the agents that cycle stored first are not counted as known while it lasts.
    async fn refuse_missing(
        &self,
        error: String,
        alert: bool,
        (vanishing, known): (u64, u64),
        since: DateTime<Utc>,
        options: &CycleOptions,
        progress: &mut Progress,
    ) -> Result<(), StoreError> {
        tracing::error!("{error}");
        if alert && !options.dry_run {
            self.store.fleet_vanished(vanishing, known, &error, since).await?;
        }
        progress.refused = true;
        progress.fleet_vanished = alert;
        progress.fail("missing agents", error);
        Ok(())
    }

    /// Missing agents were marked normally: an open fleet-vanished alert resolves.
    async fn fleet_is_back(&self) -> Result<(), StoreError> {
        if self.store.fleet_returned(self.store.clock().await?).await? {
            tracing::info!(tenant = %self.store.tenant(), "the fleet is back; the fleet-vanished alert is resolved");
        }
        Ok(())
    }
}

/// Why the budget left part of the cycle for the next one, when that is a failure: a list
/// that stopped before its last page always is (nothing can be marked missing), deferred
/// agents only when 429s pushed them out (otherwise the budget just does not cover every
/// agent this cycle). After 429s the failure blames them, not the budget: the budget never
/// exceeds rate_limit.windows, so a 429 means the quota is shared or smaller than configured.
fn out_of_budget(report: &CycleReport, list_stopped: bool) -> Option<Failure> {
    let cut = if list_stopped {
        "the list stopped before its last page".to_owned()
    } else if report.deferred_by_budget() > 0 {
        format!("{} agents were deferred to the next cycle", report.deferred_by_budget())
    } else {
        return None;
    };
    if report.throttled == 0 {
        return list_stopped
            .then(|| Failure { subject: "list".into(), error: BudgetError::Exhausted.to_string() });
    }
    Some(Failure {
        subject: "rate limit".into(),
        error: format!(
            "the API answered 429 (throttled) {} times and {cut}: another client may be using this app \
             registration's quota, or the tenant's limits are below rate_limit.windows; lower \
             rate_limit.windows if it persists",
            report.throttled
        ),
    })
}

fn mode_name(mode: FetchMode) -> &'static str {
    match mode {
        FetchMode::Auto => "auto",
        FetchMode::ById => "by-id",
        FetchMode::List => "list",
    }
}
