//! Turns `schedule.cron` into ticks for the daemon loop, skipping (and counting) every tick
//! that arrives while a cycle is still running.
//!
//! tokio-cron-scheduler starts each activation without waiting for the previous one, so the
//! job itself only signals; the daemon runs one cycle at a time and marks itself busy.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Timelike, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::config::{ScheduleSettings, cron_parser};

/// The part of the schedule a cycle stands for, up to the next tick. A by-ID cycle paces
/// itself to its share of it (`Syncer::pace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// What started a cycle, which decides how much of its interval it stands for.
///
/// A paced cycle's calls need the budget slots that the calls one longest window earlier
/// free, so where in its interval a cycle spends its share repeats, one window later, in
/// the cycle of that time. Spent late in an interval, the share makes those later cycles
/// wait as long, and the budget's guard (0.5% of a window, at most 1 s) adds to the wait
/// every window, until one runs into its deadline and leaves agents a cycle behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A tick, or a tick that waited for the previous cycle: the whole interval from that
    /// tick, however late after it the cycle starts (the scheduler polls every 500 ms).
    Tick,
    /// The daemon between ticks (at its start, or for a tenant it newly holds): none of the
    /// interval. A paced fleet waits for the next tick; any other syncs at once, as before.
    Resume,
    /// `sync` by hand: what is left of the interval. The user asked for a cycle now, and it
    /// takes no more than that part of the schedule sustains.
    Now,
}

impl Interval {
    /// The part of the interval of `schedule` around `at` that a cycle started by `start`
    /// stands for: up to the first tick after `at`, from the last tick at or before it
    /// ([`Start::Tick`]), from `at` ([`Start::Now`]), or from that next tick, which leaves
    /// nothing ([`Start::Resume`]). None when the expression has no tick on either side.
    pub fn of(schedule: &ScheduleSettings, at: DateTime<Utc>, start: Start) -> Option<Interval> {
        // From the whole second: croner keeps the fraction of the time it starts from, and
        // the shares of intervals shifted by each cycle's start would not add up to the rate.
        let second = at.with_nanosecond(0)?;
        let to = schedule.next_tick(second)?;
        let from = match start {
            Start::Tick => {
                cron_parser().parse(&schedule.cron).ok()?.find_previous_occurrence(&second, true).ok()?
            }
            Start::Resume => to,
            Start::Now => at,
        };
        Some(Interval { from, to })
    }
}

/// The running schedule; dropping it does not stop it, [`Schedule::stop`] does.
pub struct Schedule {
    scheduler: JobScheduler,
}

/// Set by the daemon while a cycle runs; a tick that finds it set is skipped. A cycle past
/// its deadline starts no request, it only applies what it fetched: a tick then is not
/// skipped but waits for it (the daemon starts the next cycle as soon as it ends), or every
/// cycle that runs to its deadline would cost the next one.
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<Mutex<Option<Option<Instant>>>>);

impl Busy {
    /// Marks a cycle with `deadline` as running until the returned guard drops (also on
    /// panic or cancel).
    pub fn enter(&self, deadline: Option<Instant>) -> BusyGuard {
        *self.lock() = Some(deadline);
        BusyGuard(self.clone())
    }

    /// A cycle runs and may still start requests.
    pub fn is_busy(&self) -> bool {
        match *self.lock() {
            Some(Some(deadline)) => Instant::now() < deadline,
            Some(None) => true,
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Option<Instant>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Clears [`Busy`] when dropped.
pub struct BusyGuard(Busy);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.0.lock() = None;
    }
}

impl Schedule {
    /// Starts firing on `cron` (six fields, seconds first, UTC). Ticks go to the returned
    /// receiver; a tick while `busy` is set, or while an earlier tick still waits, calls
    /// `on_skip` instead.
    pub async fn start(
        cron: &str,
        busy: Busy,
        on_skip: impl Fn() + Send + Sync + 'static,
    ) -> Result<(Schedule, mpsc::Receiver<()>), JobSchedulerError> {
        let (ticks, receiver) = mpsc::channel(1);
        let on_skip = Arc::new(on_skip);
        let job = Job::new_async(cron, move |_, _| {
            let (ticks, busy, on_skip) = (ticks.clone(), busy.clone(), on_skip.clone());
            Box::pin(async move {
                if busy.is_busy() || ticks.try_send(()).is_err() {
                    tracing::warn!("scheduled tick skipped: the previous sync cycle is still running");
                    on_skip();
                }
            })
        })?;
        let scheduler = JobScheduler::new().await?;
        scheduler.add(job).await?;
        scheduler.start().await?;
        Ok((Schedule { scheduler }, receiver))
    }

    /// Stops firing.
    pub async fn stop(mut self) {
        if let Err(error) = self.scheduler.shutdown().await {
            tracing::warn!(%error, "stopping the scheduler failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn ticks_during_a_running_cycle_are_skipped_and_counted() {
        let busy = Busy::default();
        let skipped = Arc::new(AtomicU32::new(0));
        let counter = skipped.clone();
        let (schedule, mut ticks) = Schedule::start("* * * * * *", busy.clone(), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(3), ticks.recv()).await.expect("a tick within 3 s");
        {
            let _cycle = busy.enter(None);
            tokio::time::sleep(Duration::from_millis(3500)).await;
        }
        assert!(ticks.try_recv().is_err(), "no tick may queue up behind a running cycle");
        assert!(skipped.load(Ordering::SeqCst) >= 3, "skipped {}", skipped.load(Ordering::SeqCst));
        tokio::time::timeout(Duration::from_secs(3), ticks.recv())
            .await
            .expect("ticks resume after the cycle");
        schedule.stop().await;
    }

    #[test]
    fn a_cycle_stands_for_its_interval_the_rest_of_it_or_none_of_it() {
        let quarter = ScheduleSettings::default();
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        let ticked = Interval::of(&quarter, at("2026-12-07T10:15:00.400Z"), Start::Tick).unwrap();
        assert_eq!(ticked, Interval { from: at("2026-12-07T10:15:00Z"), to: at("2026-12-07T10:30:00Z") });
        let late = Interval::of(&quarter, at("2026-12-07T10:29:59Z"), Start::Tick).unwrap();
        assert_eq!(late.from, at("2026-12-07T10:15:00Z"), "a ticked cycle started late stands for it all");
        let now = Interval::of(&quarter, at("2026-12-07T10:29:00.500Z"), Start::Now).unwrap();
        assert_eq!(now, Interval { from: at("2026-12-07T10:29:00.500Z"), to: at("2026-12-07T10:30:00Z") });
        let resumed = Interval::of(&quarter, at("2026-12-07T10:29:00.500Z"), Start::Resume).unwrap();
        assert_eq!(resumed, Interval { from: at("2026-12-07T10:30:00Z"), to: at("2026-12-07T10:30:00Z") });
    }

    #[tokio::test]
    async fn a_cycle_past_its_deadline_lets_the_tick_through() {
        let busy = Busy::default();
        let _cycle = busy.enter(Some(Instant::now() + Duration::from_millis(50)));
        assert!(busy.is_busy());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!busy.is_busy(), "only applying: the tick waits for it rather than being skipped");
    }
}
