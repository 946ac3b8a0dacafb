//! A by-ID cycle: one request per agent, `max_in_flight` at a time, the answers applied in
//! chunks while the cycle goes on, and the 404s judged together at the end.

use std::time::Duration;

use chrono::{DateTime, Utc};

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::guard::Verdict;
use super::{CycleOptions, Progress, Syncer};
use crate::agent::AgentRecord;
use crate::agent_id::AgentId;
use crate::budget::BudgetError;
use crate::defender::ApiError;
use crate::store::StoreError;

/// Answers are applied once this many wait, so a chunk's transaction stays short.
const CHUNK: usize = 500;

/// ... or once the oldest waiting answer is this old: under the API's 100 calls a minute a
/// chunk takes five minutes to fill, and the data would age meanwhile.
const CHUNK_AGE: Duration = Duration::from_secs(2);

impl Syncer {
    /// The most IDs a by-ID cycle over `fleet` IDs asks for, when it is paced: its
    /// interval's share of the sustained rate (each window's `calls` per `per`; the smallest
    /// share binds). Zero for an empty interval, and for some intervals of a schedule more
    /// frequent than one call's worth of the rate: the shares still add up to it.
    ///
    /// Only for a fleet larger than the longest window's calls, which no rotation can cover
    /// within one such window anyway. Unpaced, each longest window's calls would go out in
    /// one burst at the shorter windows' rate (Defender's 1,500 an hour as 15 minutes at 100
    /// a minute) and then wait, and where an agent falls in the bursts drifts from one
    /// rotation to the next, so its refetch gap swings around fleet ÷ rate (BENCHMARKS.md,
    /// "Freshness"). Paced, the cycles of one interval length each take the same share and
    /// every agent comes round every fleet ÷ rate exactly. A smaller fleet, or a cycle with
    /// no schedule, keeps the whole budget: it is all fetched within the window.
    pub(super) fn pace(&self, fleet: usize, options: &CycleOptions) -> Option<usize> {
        let longest = self.windows.iter().max_by_key(|window| window.per)?;
        let interval = options.interval?;
        if fleet <= longest.calls as usize {
            return None;
        }
        let share = self.windows.iter().map(|window| window.share(interval.from, interval.to)).min()?;
        Some(usize::try_from(share).unwrap_or(usize::MAX)).filter(|&cap| cap < fleet)
    }

    /// Fetches IDs in the given order until done, out of budget, cancelled, or stopped by an
    /// error that every further request would repeat; with a `pace`, at most that many.
    pub(super) async fn by_id_cycle(
        &self,
        mut ids: Vec<AgentId>,
        pace: Option<usize>,
        since: DateTime<Utc>,
        options: &CycleOptions,
        progress: &mut Progress,
    ) -> Result<(), StoreError> {
        let paced_out = pace.map_or(0, |cap| ids.len().saturating_sub(cap));
        ids.truncate(ids.len() - paced_out);
        let mut pending = ids.into_iter();
        let mut running = JoinSet::new();
        let mut chunk: Vec<AgentRecord> = Vec::new();
        let mut flush_at: Option<Instant> = None;
        let mut not_found: Vec<AgentId> = Vec::new();
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
            // With nothing in flight, join_next answers None at once and the loop ends.
            let next = tokio::select! {
                next = running.join_next() => next,
                _ = sleep_until(flush_at), if flush_at.is_some() => {
                    self.take_batch(std::mem::take(&mut chunk), &[], None, options, progress).await?;
                    flush_at = None;
                    continue;
                }
                _ = options.cancel.cancelled(), if !stop => {
                    // The answers in flight are given up: the agents wait for the next cycle.
                    stop = true;
                    running.abort_all();
                    continue;
                }
            };
            let Some(joined) = next else { break };
            let (id, outcome) = match joined {
                Ok(done) => done,
                Err(aborted) if aborted.is_cancelled() => continue,
                Err(panic) => {
                    progress.fail("fetch task", panic.to_string());
                    continue;
                }
            };
            match outcome {
                Ok(Some(record)) => {
                    chunk.push(record);
                    flush_at.get_or_insert_with(|| Instant::now() + CHUNK_AGE);
                    if chunk.len() >= CHUNK {
                        self.take_batch(std::mem::take(&mut chunk), &[], None, options, progress).await?;
                        flush_at = None;
                    }
                }
                Ok(None) => not_found.push(id),
                Err(ApiError::Budget(BudgetError::Exhausted)) => {
                    progress.deferred += 1;
                    stop = true;
                }
                Err(error) => {
                    if error.stops_cycle() {
                        stop = true;
                    }
                    tracing::warn!(agent_id = %id, %error, "fetching agent failed");
                    progress.fail(id.as_str(), error.to_string());
                }
            }
        }
        self.take_batch(chunk, &[], None, options, progress).await?;
        progress.deferred += pending.count();
        if progress.deferred > 0 {
            tracing::warn!(
                deferred = progress.deferred,
                "the rate budget does not cover every agent this cycle; the least recently fetched went first"
            );
        }
        // Beyond the pace by design, not for want of budget: no warning.
        progress.deferred += paced_out;
        progress.complete = true;
        self.mark_not_found(not_found, since, options, progress).await
    }

    /// Marks the agents that answered 404, unless the guard refuses: when most answers are
    /// 404, a wrong URL or tenant is likelier than a vanished fleet. Either way their 404s
    /// count as fetches for the order of the next cycles.
    async fn mark_not_found(
        &self,
        not_found: Vec<AgentId>,
        since: DateTime<Utc>,
        options: &CycleOptions,
        progress: &mut Progress,
    ) -> Result<(), StoreError> {
        if not_found.is_empty() {
            return Ok(());
        }
        let plan = self.store.plan(Vec::new(), &not_found).await?;
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let vanishing = count(plan.went_missing.len());
        let answered = count(progress.fetched + not_found.len());
        match self.guard(options).judge_by_id(vanishing, count(not_found.len()), answered) {
            Verdict::Mark => {
                self.take_batch(Vec::new(), &not_found, None, options, progress).await?;
                if !options.dry_run {
                    self.fleet_is_back().await?;
                }
                Ok(())
            }
            Verdict::Refuse { error, alert } => {
                if !options.dry_run {
                    // Unstamped, IDs that the guard refused would go first again in every
                    // cycle: with as many as a cycle's budget, every cycle would ask only them,
                    // be refused again, and never reach the others.
                    self.store.stamp_not_found(&not_found).await?;
                }
                self.refuse_missing(error, alert, (vanishing, answered), since, options, progress).await
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
