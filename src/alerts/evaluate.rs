//! One staleness evaluation: the step the daemon runs after every sync cycle and on its own
//! timer, because time alone makes agents stale (the API can be down while they go stale).

use chrono::{DateTime, Utc};

use crate::config::{AlertSettings, StaleSettings};
use crate::store::alerts::Evaluation;
use crate::store::{Store, StoreError};

/// Opens, repeats and resolves stale episodes as of `now` and queues their notifications, in
/// one transaction serialized across processes, so a standby instance or a concurrent call
/// never fires an episode twice. Sending is [`super::deliver_pending`]'s job.
#[tracing::instrument(skip_all, fields(%now))]
pub async fn evaluate(
    store: &Store,
    stale: &StaleSettings,
    alerts: &AlertSettings,
    now: DateTime<Utc>,
) -> Result<Evaluation, StoreError> {
    let evaluation = store.record_staleness(now, stale.after, alerts.repeat_interval).await?;
    tracing::debug!(?evaluation, "staleness evaluated");
    Ok(evaluation)
}
