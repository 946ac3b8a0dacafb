//! Turns `schedule.cron` into ticks for the daemon loop, skipping (and counting) every tick
//! that arrives while a cycle is still running.
//!
//! tokio-cron-scheduler starts each activation without waiting for the previous one, so the
//! job itself only signals; the daemon runs one cycle at a time and marks itself busy.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

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

    #[tokio::test]
    async fn a_cycle_past_its_deadline_lets_the_tick_through() {
        let busy = Busy::default();
        let _cycle = busy.enter(Some(Instant::now() + Duration::from_millis(50)));
        assert!(busy.is_busy());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!busy.is_busy(), "only applying: the tick waits for it rather than being skipped");
    }
}
