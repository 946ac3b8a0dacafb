//! What a cycle did: the summary `sync` prints, the exit code, and the run row.

use std::fmt;
use std::time::Duration;

use super::mode_name;
use crate::config::FetchMode;
use crate::diff::{Diff, Tally};
use crate::store::StoreError;
use crate::store::runs::{RunRecord, RunStatus};

/// A fetch (or a decision) that did not produce an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The agent ID, or what failed (`list`, `list record`, `missing agents`, ...).
    pub subject: String,
    pub error: String,
}

/// At most this many failures are kept one by one; the rest are counted. A list of 100,000
/// unusable records should not hold 100,000 messages.
pub(super) const KEPT_FAILURES: usize = 100;

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
    /// Confirmed absent by a 404 or a complete list (newly, already, or never stored).
    pub missing: usize,
    /// Not attempted because the budget had no slot before the deadline, or beyond the pace.
    pub deferred: usize,
    /// A paced by-ID cycle: the most agents it asked for (`Syncer::pace`).
    pub pace: Option<usize>,
    /// The first [`KEPT_FAILURES`] failures.
    pub failures: Vec<Failure>,
    /// Every failure, kept or only counted.
    pub failure_count: usize,
    /// What the cycle changed, counted.
    pub changes: Tally,
    /// Dry runs only: every change, field by field, for printing.
    pub diff: Diff,
    /// The mass-disappearance guard refused to mark agents missing.
    pub fleet_vanished: bool,
    pub api_calls: u64,
    pub throttled: u64,
    pub dry_run: bool,
    pub elapsed: Duration,
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

    /// The deferred agents the budget (or 429s) left no slot for, those beyond the pace aside.
    pub fn deferred_by_budget(&self) -> usize {
        let paced_out = self.pace.map_or(0, |cap| self.requested.saturating_sub(cap));
        self.deferred.saturating_sub(paced_out)
    }

    pub(super) fn record(&self, list_pages: Option<u32>, apply_error: Option<&StoreError>) -> RunRecord {
        let error = apply_error.map(ToString::to_string).or_else(|| {
            let first = self.failures.first()?;
            let more = self.failure_count - 1;
            let tail = if more > 0 { format!(" (and {more} more failures)") } else { String::new() };
            Some(format!("{}: {}{tail}", first.subject, first.error))
        });
        RunRecord {
            status: self.status,
            agents_requested: self.requested,
            agents_fetched: self.fetched,
            agents_new: self.changes.new,
            agents_changed: self.changes.changed,
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
            write!(f, "{}", self.diff.changes())?;
            writeln!(f, "{}", self.changes)?;
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
            self.requested, self.fetched, self.missing, self.failure_count, self.deferred
        )?;
        if let Some(cap) = self.pace {
            writeln!(
                f,
                "  paced: at most {cap} agents this cycle, its share of the rate windows' sustained rate \
                 (the fleet is larger than the longest window's calls)"
            )?;
        }
        writeln!(
            f,
            "  changes: {} new, {} changed, {} unchanged, {} newly missing",
            self.changes.new, self.changes.changed, self.changes.unchanged, self.changes.went_missing
        )?;
        writeln!(f, "  API calls: {}, throttled (429): {}", self.api_calls, self.throttled)?;
        for failure in self.failures.iter().take(20) {
            writeln!(f, "  failed {}: {}", failure.subject, failure.error)?;
        }
        if self.failure_count > 20 {
            writeln!(f, "  ... and {} more failures (see the log)", self.failure_count - 20)?;
        }
        Ok(())
    }
}
