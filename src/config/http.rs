//! `[http]`: the metrics and health endpoints, and how many per-agent series `/metrics`
//! carries.

use std::net::SocketAddr;

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize};

use super::de;

/// Which agents get a `scan_agent_sync_agent_last_seen_timestamp_seconds` series. One series
/// per agent is what small fleets want on a dashboard; at 100,000 agents it is a 15 MB
/// scrape, so big fleets keep the stale ones (what on-call looks at) or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentSeries {
    /// Every tracked agent.
    #[default]
    All,
    /// Agents stale now (missing ones included).
    Stale,
    /// No per-agent series; the fleet-wide `scan_agent_sync_agents{state}` stays.
    None,
}

/// The metrics and health endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Listen address; `None` (written `""`) disables the endpoints.
    #[serde(deserialize_with = "listen_address")]
    pub listen: Option<SocketAddr>,
    /// Which agents get a lastSeen series on `/metrics`.
    #[serde(deserialize_with = "de::variant")]
    pub agent_series: AgentSeries,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))), agent_series: AgentSeries::default() }
    }
}

/// Parses `http.listen`, where `""` means disabled.
fn listen_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    de::non_empty::<D, String>(deserializer)?
        .map(|text| {
            text.trim().parse().map_err(|_| {
                D::Error::invalid_value(
                    Unexpected::Str(&text),
                    &"an IP:PORT address such as 127.0.0.1:9464, or \"\" to disable the endpoints",
                )
            })
        })
        .transpose()
}
