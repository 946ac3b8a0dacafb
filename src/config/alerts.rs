//! `[alerts]`: where stale-agent and fleet alerts go, in which body format, how often a
//! still-open episode is repeated, and how many events one POST carries.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::url::{PlainHttp, check_http_url, redact_url};
use super::{ConfigProblem, Finish, de};

/// Events per POST unless configured: an alert storm of 100,000 events then takes 1,000
/// POSTs instead of 100,000, while one body stays well under a megabyte.
const DEFAULT_MAX_BATCH: u32 = 100;

/// The body format of alert webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// Alertmanager's `POST /api/v2/alerts` body, so alerts can go straight to Alertmanager.
    #[default]
    Alertmanager,
    /// A plain JSON object per alert, for generic webhooks (an array of them when
    /// `max_batch` > 1).
    Json,
}

/// Where alerts go.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// Webhook to notify; `None` (written `""`) keeps alerts in the log and metrics only.
    #[serde(deserialize_with = "de::non_empty")]
    pub webhook_url: Option<String>,
    /// Body format.
    #[serde(deserialize_with = "de::variant")]
    pub format: AlertFormat,
    /// Re-notify a still-stale agent this often; zero notifies once per episode.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// Most events sent in one POST (at least 1). With 1 the `json` format posts a single
    /// object, as before batching existed.
    pub max_batch: u32,
}

/// Webhook URLs may carry credentials (`https://user:password@host/...`), so Debug hides
/// them as [`super::Settings::redacted`] does.
impl std::fmt::Debug for AlertSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSettings")
            .field("webhook_url", &self.webhook_url.as_deref().map(redact_url))
            .field("format", &self.format)
            .field("repeat_interval", &self.repeat_interval)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            webhook_url: None,
            format: AlertFormat::default(),
            repeat_interval: Duration::ZERO,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

impl Finish for AlertSettings {
    type Output = Self;

    fn finish(self, _env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> Self {
        // Alerts carry no secret, and Alertmanager commonly listens on plain http in-cluster.
        if let Some(Err(problem)) =
            self.webhook_url.as_deref().map(|url| check_http_url(url, PlainHttp::Allowed))
        {
            problems.push(ConfigProblem::new(
                "alerts.webhook_url",
                problem,
                "write an absolute http(s) URL such as http://alertmanager:9093/api/v2/alerts, or \"\" for no webhook",
            ));
        }
        if self.max_batch == 0 {
            problems.push(ConfigProblem::new(
                "alerts.max_batch",
                "is 0, so no alert could ever be sent",
                format!("set it to at least 1 (default {DEFAULT_MAX_BATCH}; 1 sends one event per POST)"),
            ));
        }
        self
    }
}
