//! `[log]`: the line format and the `tracing` filter.
//!
//! The filter syntax is checked here rather than in telemetry, so loading reports a bad
//! `log.level` with every other problem, and telemetry only consumes what config accepted.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use super::{ConfigProblem, Finish, de};

/// How to write a filter, for every message about an invalid one.
pub const FILTER_FIX: &str =
    "write a level (error, warn, info, debug, trace) or directives such as \"scan_agent_sync=debug,info\"";

/// Log line format; also the value of `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal or the journal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Line format.
    #[serde(deserialize_with = "de::variant")]
    pub format: LogFormat,
    /// A `tracing` filter: a level (`info`) or directives (`scan_agent_sync=debug,info`).
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::default(), level: "info".to_owned() }
    }
}

impl Finish for LogSettings {
    type Output = Self;

    /// Checks the filter here, with the parser telemetry uses, so a typo is reported with
    /// the other problems and its source instead of when logging starts.
    fn finish(self, _env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> Self {
        if let Err(error) = parse_filter(&self.level) {
            problems.push(ConfigProblem::new("log.level", error, FILTER_FIX));
        }
        self
    }
}

/// Parses a filter in `EnvFilter` syntax, for config validation and the telemetry's
/// subscriber; the error quotes the filter and says what is wrong with it.
pub fn parse_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|error| format!("{directives:?} is not a valid log filter: {error}"))
}
