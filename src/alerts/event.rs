//! The facts of one notification, as queued in `alert_outbox.payload`.
//!
//! Facts rather than a rendered body are queued, so the body follows the configuration in
//! force when it is sent (format, Alertmanager's `endsAt` horizon).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whether a notification opens (or repeats) an episode or closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// One notification about one agent's stale episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub status: AlertStatus,
    pub agent_id: String,
    pub computer_dns_name: Option<String>,
    /// The agent's `lastSeen` when the notification was queued.
    pub last_seen: DateTime<Utc>,
    /// Set while the API no longer returns the agent.
    pub missing_since: Option<DateTime<Utc>>,
    /// When the agent became stale: `last_seen + stale.after`, or `missing_since` if earlier.
    pub stale_since: DateTime<Utc>,
    /// When the service opened the episode (its first firing).
    pub fired_at: DateTime<Utc>,
    /// When the service saw the agent fresh again; set on resolves only.
    pub resolved_at: Option<DateTime<Utc>>,
    /// A reminder for an episode already notified, not a new one.
    pub repeat: bool,
}

impl AlertEvent {
    /// The name on-call knows the machine by, falling back to the agent ID.
    pub fn display_name(&self) -> &str {
        self.computer_dns_name.as_deref().unwrap_or(&self.agent_id)
    }

    /// One line for people: what happened to which agent.
    pub fn summary(&self) -> String {
        let name = self.display_name();
        match (self.status, self.missing_since) {
            (AlertStatus::Resolved, _) => {
                format!("scan agent {name} is reporting again (last seen {})", self.last_seen)
            }
            (AlertStatus::Firing, Some(missing)) => {
                format!("scan agent {name} is missing from the Defender API since {missing}")
            }
            (AlertStatus::Firing, None) => {
                format!("scan agent {name} has not been seen since {}", self.last_seen)
            }
        }
    }
}
