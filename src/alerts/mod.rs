//! Alerting: on-call hears once when an agent goes stale, once when it is back (plus
//! repeats if configured), once when a tenant's whole fleet vanishes from the API, and
//! nothing is lost to a webhook outage, a crash or a stop.
//!
//! Two halves joined by an outbox table in PostgreSQL:
//! - [`evaluate`] compares the agents with the open episodes and, in one transaction,
//!   records every state change together with the notification it owes
//!   (`Store::record_staleness`); the sync cycle does the same for a vanished fleet
//!   (`Store::fleet_vanished`, `Store::fleet_returned`).
//! - [`deliver_pending`] / [`run_sender`] take the queued notifications in batches of
//!   `alerts.max_batch`, log them, POST each batch to `alerts.webhook_url` in the configured
//!   [`payload`] format, and retry with backoff until the receiver accepts.
//!
//! Delivery is at-least-once with a one-batch window: a batch is marked delivered in one
//! statement right after its 2xx, so only a crash (or a lost connection to PostgreSQL)
//! between the two resends it, once. Alertmanager de-duplicates that (same labels, same
//! `startsAt`); a generic JSON receiver may see up to `max_batch` events twice.

mod evaluate;
pub mod payload;
mod sender;

pub use self::evaluate::evaluate;
pub use self::sender::{DeliveryReport, deliver_pending, run_sender, webhook_client};
pub use crate::store::alerts::Evaluation;
pub use crate::store::notification::{AlertEvent, AlertStatus, FLEET_HINT, FleetEvent, Notification};
