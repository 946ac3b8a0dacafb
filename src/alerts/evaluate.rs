//! One staleness evaluation: the step the daemon runs after every sync cycle and on its own
//! timer, because time alone makes agents stale (the API can be down while they go stale).

use chrono::{DateTime, Utc};

use crate::config::{AlertSettings, StaleSettings};
use crate::store::alerts::Evaluation;
use crate::store::{Store, StoreError};
use crate::tenant_name::TenantName;

/// Opens, repeats and resolves the stale episodes of `tenants` (`None`: every tenant) as of
/// `now` and queues their notifications, in one transaction serialized across processes, so
/// another instance or a concurrent call never fires an episode twice. Sending is
/// [`super::deliver_pending`]'s job.
#[tracing::instrument(skip_all, fields(%now))]
pub async fn evaluate(
    store: &Store,
    tenants: Option<&[TenantName]>,
    stale: &StaleSettings,
    alerts: &AlertSettings,
    now: DateTime<Utc>,
) -> Result<Evaluation, StoreError> {
    let evaluation = store.record_staleness(now, stale.after, alerts.repeat_interval, tenants).await?;
    tracing::debug!(?evaluation, "staleness evaluated");
    Ok(evaluation)
}
