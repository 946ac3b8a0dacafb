//! One sync cycle: choose the agents and the fetch mode, fetch within the budget, apply the
//! batch through the diff engine, and record the run. The daemon only schedules this; the
//! `sync` command calls it once.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentRecord;
use crate::agent_id::AgentId;
use crate::budget::{Budget, BudgetError};
use crate::config::{FetchMode, Settings};
use crate::defender::{ApiError, DefenderClient};
use crate::diff::Diff;
use crate::store::runs::{RunRecord, RunStatus};
use crate::store::{Store, StoreError};

/// What a cycle needs, built once per process.
#[derive(Debug, Clone)]
pub struct Syncer {
    pub store: Store,
    pub client: DefenderClient,
    pub mode: FetchMode,
    pub max_in_flight: usize,
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
    /// Stops launching requests; what was fetched is still applied and the run is `interrupted`.
    pub cancel: CancellationToken,
}

/// A fetch that did not produce an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The agent ID, or `list` for a list page.
    pub subject: String,
    pub error: String,
}

/// What a cycle did, for the summary, the exit code and the tests.
#[derive(Debug, Clone)]
pub struct CycleReport {
    /// None for a dry run, which records no run.
    pub run_id: Option<i64>,
    pub status: RunStatus,
    /// The mode actually used (`auto` resolved).
    pub mode: FetchMode,
    pub requested: usize,
    pub fetched: usize,
    /// Confirmed absent by a 404 or a complete list.
    pub missing: usize,
    /// Not attempted because the budget had no slot before the deadline.
    pub deferred: usize,
    pub failures: Vec<Failure>,
    pub diff: Diff,
    pub api_calls: u64,
    pub throttled: u64,
    pub dry_run: bool,
    pub elapsed: Duration,
}

/// A cycle that could not record its outcome: the database failed.
#[derive(Debug, thiserror::Error)]
#[error("sync cycle failed: {0}")]
pub struct SyncError(#[from] pub StoreError);

/// What the fetch phase gathered.
#[derive(Debug, Default)]
struct Fetched {
    records: Vec<AgentRecord>,
    missing: Vec<AgentId>,
    failures: Vec<Failure>,
    deferred: usize,
    /// False when a list did not reach its last page: then nothing may be marked missing.
    complete: bool,
    list_pages: Option<u32>,
}

/// At least this many by-ID answers, all 404, are taken for a wrong URL rather than news.
const UNANIMOUS_NOT_FOUND: usize = 2;

impl Fetched {
    /// When every by-ID answer was 404, a wrong `defender.api_base_url` (a path the API does
    /// not serve answers 404 too) is likelier than every agent deleted at once, and marking the
    /// whole fleet missing would page on-call for each agent. So nothing is marked missing and
    /// the cycle fails, saying what to check; agents really deleted still turn stale by
    /// `lastSeen`.
    fn distrust_unanimous_not_found(mut self) -> Self {
        let answered = self.records.len() + self.missing.len();
        if self.records.is_empty() && answered >= UNANIMOUS_NOT_FOUND {
            let error = format!(
                "all {answered} agents asked for answered 404 Not Found, so none was marked missing: check \
                 defender.api_base_url (a wrong host or path answers 404 too); if the agents really were \
                 removed from Defender, remove them from agents.ids / agents.ids_file"
            );
            tracing::error!("{error}");
            self.failures.push(Failure { subject: "by-id fetch".into(), error });
            self.missing.clear();
        }
        self
    }
}

impl Syncer {
    /// The cycle machinery for `settings`: budget, client (reading the client secret) and
    /// fetch mode.
    pub fn from_settings(settings: &Settings, store: Store) -> anyhow::Result<Syncer> {
        let budget =
            Budget::new(store.clone(), &settings.rate_limit.windows, settings.rate_limit.max_in_flight);
        let client = DefenderClient::new(&settings.defender, settings.defender.client_secret()?, budget)?;
        Ok(Syncer {
            store,
            client,
            mode: settings.defender.fetch_mode,
            max_in_flight: settings.rate_limit.max_in_flight,
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
        let ids = self.store.fetch_order(&ids).await?;
        let requested = ids.len();
        let run_id = match options.dry_run {
            true => None,
            false => Some(self.store.start_run(mode_name(mode), requested).await?),
        };
        tracing::info!(run_id, mode = mode_name(mode), requested, "sync cycle started");

        let fetched = match mode {
            FetchMode::List => self.fetch_list(&ids, targets.track_all, options).await?,
            _ => self.fetch_by_id(ids, options).await.distrust_unanimous_not_found(),
        };
        let fetched_count = fetched.records.len();
        let missing_count = fetched.missing.len();
        let applied = match options.dry_run {
            true => self.store.plan(fetched.records, &fetched.missing).await,
            false => self.store.apply(fetched.records, &fetched.missing).await.map(|applied| applied.diff),
        };
        let counters = self.client.counters();
        let mut report = CycleReport {
            run_id,
            status: RunStatus::Ok,
            mode,
            requested,
            fetched: fetched_count,
            missing: missing_count,
            deferred: fetched.deferred,
            failures: fetched.failures,
            diff: Diff::default(),
            api_calls: counters.requests - counters_before.requests,
            throttled: counters.throttled - counters_before.throttled,
            dry_run: options.dry_run,
            elapsed: Duration::ZERO,
        };
        if report.throttled > 0 && report.deferred > 0 {
            // The budget never exceeds rate_limit.windows, so a 429 means the quota is shared
            // or smaller than configured; the agents it pushed out are not a routine deferral.
            report.failures.push(Failure {
                subject: "rate limit".into(),
                error: format!(
                    "the API answered 429 (throttled) {} times and {} agents were deferred to the next \
                     cycle: another client may be using this app registration's quota, or the tenant's \
                     limits are below rate_limit.windows; lower rate_limit.windows if it persists",
                    report.throttled, report.deferred
                ),
            });
        }
        let apply_error = match applied {
            Ok(diff) => {
                report.diff = diff;
                None
            }
            Err(error) => {
                tracing::error!(%error, "applying the fetched batch failed; nothing of it was written");
                Some(error)
            }
        };
        report.status = if options.cancel.is_cancelled() {
            RunStatus::Interrupted
        } else if apply_error.is_some() || (fetched_count + missing_count == 0 && !report.failures.is_empty())
        {
            RunStatus::Failed
        } else if !report.failures.is_empty() || !fetched.complete {
            RunStatus::Partial
        } else {
            RunStatus::Ok
        };
        report.elapsed = started.elapsed();
        if let Some(run_id) = run_id {
            let record = report.record(fetched.list_pages, apply_error.as_ref());
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
            changed = report.diff.changed_count() + report.diff.new_count(),
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

    /// Fetches IDs in the given order, `max_in_flight` at a time, until done, out of budget,
    /// cancelled, or stopped by an error that every further request would repeat.
    async fn fetch_by_id(&self, ids: Vec<AgentId>, options: &CycleOptions) -> Fetched {
        let mut fetched = Fetched { complete: true, ..Fetched::default() };
        let mut pending = ids.into_iter();
        let mut running = JoinSet::new();
        let mut stop = false;
        loop {
            while !stop && running.len() < self.max_in_flight.max(1) {
                let Some(id) = pending.next() else { break };
                let client = self.client.clone();
                let deadline = options.deadline;
                running.spawn(async move {
                    let outcome = client.get_agent(&id, deadline).await;
                    (id, outcome)
                });
            }
            let next = tokio::select! {
                next = running.join_next() => next,
                _ = options.cancel.cancelled(), if !stop => {
                    stop = true;
                    continue;
                }
            };
            let Some(joined) = next else { break };
            let (id, outcome) = match joined {
                Ok(done) => done,
                Err(panic) => {
                    fetched.failures.push(Failure { subject: "fetch task".into(), error: panic.to_string() });
                    continue;
                }
            };
            match outcome {
                Ok(Some(record)) => fetched.records.push(record),
                Ok(None) => fetched.missing.push(id),
                Err(ApiError::Budget(BudgetError::Exhausted)) => {
                    fetched.deferred += 1;
                    stop = true;
                }
                Err(error) => {
                    if error.stops_cycle() {
                        stop = true;
                    }
                    tracing::warn!(agent_id = %id, %error, "fetching agent failed");
                    fetched.failures.push(Failure { subject: id.to_string(), error: error.to_string() });
                }
            }
        }
        fetched.deferred += pending.count();
        if fetched.deferred > 0 {
            tracing::warn!(
                deferred = fetched.deferred,
                "the rate budget does not cover every agent this cycle; the least recently fetched went first"
            );
        }
        fetched
    }

    /// Lists every page and keeps the tracked agents. Only a complete list (every page)
    /// confirms that an absent agent is missing.
    async fn fetch_list(
        &self,
        ids: &[AgentId],
        track_all: bool,
        options: &CycleOptions,
    ) -> Result<Fetched, StoreError> {
        let outcome = self.client.list_agents(options.deadline).await;
        let wanted: HashSet<&AgentId> = ids.iter().collect();
        let records: Vec<AgentRecord> =
            outcome.records.into_iter().filter(|r| track_all || wanted.contains(&r.id)).collect();
        let mut failures: Vec<Failure> = outcome
            .bad_records
            .iter()
            .map(|error| Failure { subject: "list record".into(), error: error.to_string() })
            .collect();
        if let Some(error) = &outcome.error {
            failures.push(Failure { subject: "list".into(), error: error.to_string() });
        }
        let mut missing = Vec::new();
        if outcome.complete {
            let returned: HashSet<&AgentId> = records.iter().map(|r| &r.id).collect();
            let mut expected: Vec<AgentId> = ids.to_vec();
            if track_all {
                expected.extend(self.store.stored_ids().await?);
            }
            let mut seen = HashSet::new();
            missing =
                expected.into_iter().filter(|id| !returned.contains(id) && seen.insert(id.clone())).collect();
        }
        Ok(Fetched {
            records,
            missing,
            failures,
            deferred: 0,
            complete: outcome.complete,
            list_pages: outcome.complete.then_some(outcome.pages),
        })
    }
}

fn mode_name(mode: FetchMode) -> &'static str {
    match mode {
        FetchMode::Auto => "auto",
        FetchMode::ById => "by-id",
        FetchMode::List => "list",
    }
}

impl CycleReport {
    /// The `sync` command's exit code: 0 all fetched, 2 partial, 1 nothing synced.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            RunStatus::Ok => 0,
            RunStatus::Partial | RunStatus::Interrupted => 2,
            RunStatus::Failed => 1,
        }
    }

    fn record(&self, list_pages: Option<u32>, apply_error: Option<&StoreError>) -> RunRecord {
        let error = apply_error.map(ToString::to_string).or_else(|| {
            let first = self.failures.first()?;
            let more = self.failures.len() - 1;
            let tail = if more > 0 { format!(" (and {more} more failures)") } else { String::new() };
            Some(format!("{}: {}{tail}", first.subject, first.error))
        });
        RunRecord {
            status: self.status,
            agents_requested: self.requested,
            agents_fetched: self.fetched,
            agents_new: self.diff.new_count(),
            agents_changed: self.diff.changed_count(),
            agents_missing: self.missing,
            api_calls: self.api_calls,
            throttled: self.throttled,
            list_pages,
            error,
        }
    }
}

/// The summary `sync` prints.
impl fmt::Display for CycleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            write!(f, "{}", self.diff)?;
            writeln!(f, "dry run: nothing was written (the {} API calls are in the ledger)", self.api_calls)?;
        }
        let run = self.run_id.map(|id| format!(" run {id}")).unwrap_or_default();
        writeln!(
            f,
            "sync{run} ({}): {} in {:.1}s",
            mode_name(self.mode),
            self.status,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "  agents: {} requested, {} fetched, {} missing, {} failed, {} deferred to the next cycle",
            self.requested,
            self.fetched,
            self.missing,
            self.failures.len(),
            self.deferred
        )?;
        writeln!(
            f,
            "  changes: {} new, {} changed, {} unchanged, {} newly missing",
            self.diff.new_count(),
            self.diff.changed_count(),
            self.diff.unchanged_count(),
            self.diff.went_missing.len()
        )?;
        writeln!(f, "  API calls: {}, throttled (429): {}", self.api_calls, self.throttled)?;
        for failure in self.failures.iter().take(20) {
            writeln!(f, "  failed {}: {}", failure.subject, failure.error)?;
        }
        if self.failures.len() > 20 {
            writeln!(f, "  ... and {} more failures (see the log)", self.failures.len() - 20)?;
        }
        Ok(())
    }
}
