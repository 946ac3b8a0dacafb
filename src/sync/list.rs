//! A list cycle: every page applied as it arrives, then the agents the complete list left
//! out decided in one statement (`store::missing`), through the mass-disappearance guard.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::guard::Verdict;
use super::{CycleOptions, Progress, Syncer};
use crate::agent::RecordError;
use crate::agent_id::AgentId;
use crate::budget::BudgetError;
use crate::defender::ApiError;
use crate::store::StoreError;
use crate::store::missing::Tracked;

/// What the list told about the agents, beyond the pages applied.
#[derive(Default)]
struct Listed {
    /// Agents named by unusable records: listed, so not missing.
    spared: Vec<AgentId>,
    /// Agents returned by more than one page (counted by the database, see `Store::apply_page`).
    refetched: usize,
    /// Dry runs only (nothing is stamped then): every ID listed.
    seen: HashSet<AgentId>,
}

impl Syncer {
    /// Lists every page, applying the tracked agents of each. Only a complete list (every
    /// page, no agent twice) confirms that an absent agent is missing.
    pub(super) async fn list_cycle(
        &self,
        ids: &[AgentId],
        track_all: bool,
        since: DateTime<Utc>,
        options: &CycleOptions,
        progress: &mut Progress,
    ) -> Result<(), StoreError> {
        let wanted: HashSet<&AgentId> = ids.iter().collect();
        let mut listing = self.client.list(options.deadline);
        let mut listed = Listed::default();
        loop {
            // A page in flight is dropped on cancel: its budget slot is already in the ledger.
            let page = tokio::select! {
                page = listing.next_page() => page,
                _ = options.cancel.cancelled() => break,
            };
            let page = match page {
                None => break,
                Some(Ok(page)) => page,
                Some(Err(ApiError::Budget(BudgetError::Exhausted))) => {
                    // The cycle says why the budget ran out (see `Syncer::run_cycle`).
                    progress.list_out_of_budget = true;
                    break;
                }
                Some(Err(error)) => {
                    progress.fail("list", error.to_string());
                    break;
                }
            };
            for error in &page.bad_records {
                listed.spared.extend(named_agent(error));
                progress.fail("list record", error.to_string());
            }
            let records: Vec<_> =
                page.records.into_iter().filter(|r| track_all || wanted.contains(&r.id)).collect();
            if options.dry_run {
                listed.seen.extend(records.iter().map(|r| r.id.clone()));
            }
            // The API prepares the next page while this one is applied.
            listing.send_ahead();
            listed.refetched += self.take_batch(records, &[], Some(since), options, progress).await?;
        }
        let complete = listing.complete() && listed.refetched == 0 && !options.cancel.is_cancelled();
        if listed.refetched > 0 {
            progress.fail(
                "list",
                format!(
                    "the list returned {} agents on more than one page, so it pages inconsistently and may \
                     have skipped others: nothing was marked missing this cycle",
                    listed.refetched
                ),
            );
        }
        progress.complete = complete;
        progress.list_pages = complete.then_some(listing.pages());
        if complete {
            let tracked = if track_all { Tracked::All } else { Tracked::Ids(ids) };
            self.mark_unlisted(tracked, since, listed, options, progress).await?;
        }
        Ok(())
    }

    /// Marks the tracked agents the complete list left out, unless the guard refuses.
    async fn mark_unlisted(
        &self,
        tracked: Tracked<'_>,
        since: DateTime<Utc>,
        listed: Listed,
        options: &CycleOptions,
        progress: &mut Progress,
    ) -> Result<(), StoreError> {
        let store = &self.store;
        // While a fleet-vanished alert is open, the agents that arrived since (the other
        // fleet) do not count as known: otherwise the second cycle of a wrong tenant would
        // find only half the known agents gone and mark them all.
        let open_since = store.open_fleet_vanished().await?;
        let absence =
            store.count_unlisted(tracked, since, open_since.unwrap_or(since), &listed.spared).await?;
        // A dry run stamped nothing: what the list left out is computed from the IDs it saw.
        let (vanishing, plan) = if options.dry_run {
            let mut expected: Vec<AgentId> = match tracked {
                Tracked::All => store.stored_ids().await?,
                Tracked::Ids(ids) => ids.to_vec(),
            };
            expected.retain(|id| !listed.seen.contains(id) && !listed.spared.contains(id));
            let plan = store.plan(Vec::new(), &expected).await?;
            (u64::try_from(plan.went_missing.len()).unwrap_or(u64::MAX), Some(plan))
        } else {
            (absence.vanishing, None)
        };
        match self.guard(options).judge_list(vanishing, absence.known) {
            Verdict::Mark => match plan {
                Some(plan) => progress.add(plan, options),
                None => {
                    if absence.unlisted > 0 {
                        let went_missing = store.mark_unlisted(tracked, since, &listed.spared).await?;
                        progress.tally.went_missing += to_usize(went_missing);
                    }
                    progress.tally.still_missing += to_usize(absence.still_missing);
                    progress.tally.never_seen += to_usize(absence.never_seen);
                    self.fleet_is_back().await?;
                }
            },
            Verdict::Refuse { error, alert } => {
                self.refuse_missing(error, alert, (vanishing, absence.known), since, options, progress)
                    .await?;
            }
        }
        Ok(())
    }
}

/// The agent an unusable record names, when it names one.
fn named_agent(error: &RecordError) -> Option<AgentId> {
    match error {
        RecordError::MissingField { id, .. } | RecordError::BadField { id, .. } => AgentId::from_api(id).ok(),
        _ => None,
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
