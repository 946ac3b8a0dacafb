//! Turns `schedule.cron` into ticks for the daemon loop, skipping (and counting) every tick
//! that arrives while a cycle is still running.
//!
//! tokio-cron-scheduler starts each activation without waiting for the previous one, so the
//! job itself only signals; the daemon runs one cycle at a time and marks itself busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

/// The running schedule; dropping it does not stop it, [`Schedule::stop`] does.
pub struct Schedule {
    scheduler: JobScheduler,
}

/// Set by the daemon while a cycle runs; a tick that finds it set is skipped.
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<AtomicBool>);

impl Busy {
    /// Marks a cycle as running until the returned guard drops (also on panic or cancel).
    pub fn enter(&self) -> BusyGuard {
        self.0.store(true, Ordering::SeqCst);
        BusyGuard(self.0.clone())
    }

    fn is_busy(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Clears [`Busy`] when dropped.
pub struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
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
    use std::sync::atomic::AtomicU32;
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
            let _cycle = busy.enter();
            tokio::time::sleep(Duration::from_millis(3500)).await;
        }
        assert!(ticks.try_recv().is_err(), "no tick may queue up behind a running cycle");
        assert!(skipped.load(Ordering::SeqCst) >= 3, "skipped {}", skipped.load(Ordering::SeqCst));
        tokio::time::timeout(Duration::from_secs(3), ticks.recv())
            .await
            .expect("ticks resume after the cycle");
        schedule.stop().await;
    }
}
