//! The facts of one notification, as queued in `alert_outbox.payload`: a stale agent's
//! ([`AlertEvent`]) or a vanished fleet's ([`FleetEvent`]).
//!
//! Facts rather than a rendered body are queued, so the body follows the configuration in
//! force when it is sent (format, Alertmanager's `endsAt` horizon). They live with the
//! store because they are the outbox's row format: the store writes and reads them, and
//! `alerts` renders and delivers them, so the dependency runs one way.

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
    /// The tenant the agent is stored under. Events queued before tenants existed carry
    /// none: theirs is the tenant `default`.
    #[serde(default = "default_tenant")]
    pub tenant: String,
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

/// One notification about a tenant's fleet vanishing from the API: the sync cycle refused
/// to mark most of the known agents missing at once, which is what a wrong tenant, a wrong
/// API host, a revoked consent or a proxy answering for the API looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetEvent {
    pub status: AlertStatus,
    pub tenant: String,
    /// Agents the cycle would newly have marked missing.
    pub vanishing: u64,
    /// Agents known for the tenant when it happened.
    pub known: u64,
    /// The run's error text: what the cycle saw.
    pub detail: String,
    /// When the episode opened.
    pub fired_at: DateTime<Utc>,
    /// When the fleet was back; set on resolves only.
    pub resolved_at: Option<DateTime<Utc>>,
}

/// What on-call should do about a vanished fleet, in every rendering of the alert.
pub const FLEET_HINT: &str = "check defender.tenant_id and defender.api_base_url, the app's consent in the \
     tenant, and any proxy in between; if the agents were decommissioned on purpose, run \
     `scan-agent-sync sync --accept-mass-missing`";

impl FleetEvent {
    /// One line for people: the numbers, the likely causes and what to do.
    pub fn summary(&self) -> String {
        let tenant = &self.tenant;
        match self.status {
            AlertStatus::Firing => format!(
                "{} of {} known scan agents of tenant {tenant} vanished from the Defender API in one \
                 cycle; none was marked missing. Likely a wrong tenant or API host, a revoked consent, \
                 or a proxy answering for the API: {FLEET_HINT}",
                self.vanishing, self.known
            ),
            AlertStatus::Resolved => {
                format!("the Defender API returns the scan agents of tenant {tenant} again")
            }
        }
    }
}

/// Anything the outbox delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// A stale agent (`ScanAgentStale`).
    Agent(AlertEvent),
    /// A tenant's vanished fleet (`ScanAgentFleetVanished`).
    Fleet(FleetEvent),
}

fn default_tenant() -> String {
    crate::tenant_name::DEFAULT_TENANT.to_owned()
}
