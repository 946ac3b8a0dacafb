//! `[retention]`: how long history is kept (PRODUCT.md, "Retention and bounded growth").
//!
//! Each key is a human-readable duration or `"forever"`. The defaults keep what BI needs
//! (400 days of lastSeen values and sync runs: a year and a month, so a year-on-year
//! comparison works) and every version forever (they grow only when agents change).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer};

use super::{ConfigProblem, Finish};
use crate::rate_window::RateWindow;

/// One day, the unit the defaults are written in.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest horizon taken literally: PostgreSQL's timestamps start in 4713 BC, so a
/// cutoff further back than that could not even be compared; "forever" says it plainly.
const LONGEST: Duration = Duration::from_secs(1000 * 366 * 24 * 60 * 60);

/// How much of the budget ledger (`api_calls`) is kept beyond the longest rate window: far
/// more than the budget's guard (at most a second), so no window ever misses a call, and an
/// hour of recent calls to audit beyond it.
pub const LEDGER_MARGIN: Duration = Duration::from_secs(60 * 60);

/// How long the budget ledger keeps calls: always, whatever `[retention]` says, the longest
/// rate window plus [`LEDGER_MARGIN`].
pub fn ledger_keep(windows: &[RateWindow]) -> Duration {
    windows.iter().map(|window| window.per).max().unwrap_or_default() + LEDGER_MARGIN
}

/// How long rows of one kind are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Never deleted.
    Forever,
    /// Deleted once older than this (measured by the table's own timestamp column).
    For(Duration),
}

impl Keep {
    /// The age past which rows go; `None` keeps them forever.
    pub fn horizon(self) -> Option<Duration> {
        match self {
            Keep::Forever => None,
            Keep::For(duration) => Some(duration),
        }
    }
}

/// As written in the file: `forever`, whole days as `400d` (humantime would print
/// "1year 1month 4days 7h 26m 24s"), anything else as humantime prints it.
impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::Forever => f.write_str("forever"),
            Keep::For(duration) if duration.as_nanos() % DAY.as_nanos() == 0 => {
                write!(f, "{}d", duration.as_secs() / DAY.as_secs())
            }
            Keep::For(duration) => write!(f, "{}", humantime::format_duration(*duration)),
        }
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let text = text.trim();
        if text.eq_ignore_ascii_case("forever") {
            return Ok(Keep::Forever);
        }
        humantime::parse_duration(text).map(Keep::For).map_err(|_| {
            D::Error::invalid_value(Unexpected::Str(text), &"a duration such as \"400d\", or \"forever\"")
        })
    }
}

/// The `[retention]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// `scan_agent_last_seen` rows whose `last_seen` is older.
    pub last_seen: Keep,
    /// Closed versions (`scan_agent_versions` rows) whose `valid_to` is older.
    pub versions: Keep,
    /// `sync_runs` rows that finished longer ago.
    pub sync_runs: Keep,
    /// `alert_outbox` rows delivered longer ago.
    pub delivered_alerts: Keep,
    /// How often `run` runs the retention job (it also runs once at start).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            last_seen: Keep::For(400 * DAY),
            versions: Keep::Forever,
            sync_runs: Keep::For(400 * DAY),
            delivered_alerts: Keep::For(90 * DAY),
            every: Duration::from_secs(60 * 60),
        }
    }
}

impl RetentionSettings {
    /// The keys and their values, in file order, for `check-config` and the tests.
    pub fn entries(&self) -> [(&'static str, Keep); 4] {
        [
            ("last_seen", self.last_seen),
            ("versions", self.versions),
            ("sync_runs", self.sync_runs),
            ("delivered_alerts", self.delivered_alerts),
        ]
    }
}

impl Finish for RetentionSettings {
    type Output = Self;

    fn finish(self, _env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> Self {
        for (key, keep) in self.entries() {
            let problem = match keep {
                Keep::For(Duration::ZERO) => "is zero, so rows would be deleted as soon as they are written",
                Keep::For(duration) if duration > LONGEST => "is longer than 1000 years",
                _ => continue,
            };
            problems.push(ConfigProblem::new(
                &format!("retention.{key}"),
                problem,
                "set a duration such as \"400d\", or \"forever\" to keep every row",
            ));
        }
        if self.every.is_zero() {
            problems.push(ConfigProblem::new(
                "retention.every",
                "is zero, so the retention job would never pause",
                "set a duration such as \"1h\"",
            ));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(text: &str) -> Result<Keep, serde_json::Error> {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
    }

    #[test]
    fn forever_and_durations_parse_and_print_back() {
        assert_eq!(keep("forever").unwrap(), Keep::Forever);
        assert_eq!(keep(" Forever ").unwrap(), Keep::Forever);
        assert_eq!(keep("400d").unwrap(), Keep::For(400 * DAY));
        assert_eq!(Keep::For(400 * DAY).to_string(), "400d");
        assert_eq!(Keep::For(DAY + Duration::from_secs(3600)).to_string(), "1day 1h");
        assert_eq!(keep(&Keep::For(90 * DAY).to_string()).unwrap(), Keep::For(90 * DAY));
        let error = keep("a year").unwrap_err().to_string();
        assert!(error.contains("\"forever\""), "{error}");
    }
}
