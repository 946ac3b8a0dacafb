//! Stale-agent alerting: on-call hears once when an agent goes stale, once when it is back
//! (plus repeats if configured), and nothing is lost to a webhook outage or a crash.
//!
//! Two halves joined by an outbox table in PostgreSQL:
//! - [`evaluate`] compares the agents with the open episodes and, in one transaction,
//!   records every state change together with the notification it owes
//!   (`Store::record_staleness`).
//! - [`deliver_pending`] / [`run_sender`] take the queued notifications, log them, POST them
//!   to `alerts.webhook_url` in the configured [`payload`] format, and retry with backoff
//!   until the receiver accepts.
//!
//! Delivery is at-least-once with a one-event window: an event is marked delivered right
//! after the 2xx, so only a crash between the two resends it, once. Alertmanager
//! de-duplicates that (same labels, same `startsAt`); a generic JSON receiver may see it twice.

mod evaluate;
mod event;
pub mod payload;
mod sender;

pub use self::evaluate::evaluate;
pub use self::event::{AlertEvent, AlertStatus};
pub use self::sender::{DeliveryReport, deliver_pending, run_sender, webhook_client};
pub use crate::store::alerts::Evaluation;
