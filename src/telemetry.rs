//! Log output: `tracing` events to stderr, as text or JSON, filtered by `log.level`.
//!
//! Stderr because stdout belongs to command output (`check-config`, `stale --json`) and
//! systemd sends both to the journal anyway.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, ConfigProblem, FILTER_FIX, LogFormat, LogSettings, parse_filter};

/// Set by systemd when stderr goes to the journal, which timestamps lines itself.
const JOURNAL_STREAM_VAR: &str = "JOURNAL_STREAM";

/// The standard `tracing` override, so a developer can raise one module's level without
/// editing the configuration.
const RUST_LOG_VAR: &str = "RUST_LOG";

/// Levels from quietest to loudest, for `-v`/`-q` to step through.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Installs the global subscriber. `verbosity` is the number of `-v` minus the number of
/// `-q`: each step moves every level in the filter one step louder or quieter.
///
/// The filter is `RUST_LOG` when set, else `log.level`; an invalid one is a configuration
/// error naming where it came from. Under the journal (`JOURNAL_STREAM` set) text lines
/// carry no timestamp, since the journal adds its own; JSON lines keep theirs, because log
/// shippers read the record, not the journal entry around it. Colours only go to a
/// terminal.
///
/// # Panics
/// If a global subscriber is already installed: this runs once per process, from
/// [`crate::cli::execute`].
pub fn init(log: &LogSettings, verbosity: i8) -> Result<(), ConfigError> {
    let filter = filter(log, std::env::var(RUST_LOG_VAR).ok(), verbosity)?;
    let journal = std::env::var_os(JOURNAL_STREAM_VAR).is_some();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(!journal && std::io::stderr().is_terminal());
    let installed = match (log.format, journal) {
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Json, _) => builder.json().try_init(),
    };
    installed.expect("telemetry is initialised once per process");
    Ok(())
}

/// The filter in effect: `rust_log` (if set and not empty) or `log.level`, shifted by
/// `verbosity`.
fn filter(log: &LogSettings, rust_log: Option<String>, verbosity: i8) -> Result<EnvFilter, ConfigError> {
    let from_env = rust_log.filter(|value| !value.trim().is_empty());
    let directives = from_env.as_deref().unwrap_or(&log.level);
    let invalid = |problem: String| -> ConfigError {
        match from_env {
            Some(_) => ConfigProblem::unkeyed(problem, FILTER_FIX).at(RUST_LOG_VAR).into(),
            None => ConfigProblem::new("log.level", problem, FILTER_FIX).into(),
        }
    };
    // Checked as written first, so the message quotes what the operator wrote.
    parse_filter(directives).map_err(invalid)?;
    parse_filter(&shift(directives, verbosity)).map_err(invalid)
}

/// Moves the level of every directive (`info`, `scan_agent_sync=debug`) `steps` steps
/// louder (positive) or quieter, stopping at `trace` and `off`. Anything that does not end
/// in a level is left as written for the parser to judge.
fn shift(directives: &str, steps: i8) -> String {
    if steps == 0 {
        return directives.to_owned();
    }
    directives
        .split(',')
        .map(|directive| {
            let (target, level) = match directive.rsplit_once('=') {
                Some((target, level)) => (Some(target), level),
                None => (None, directive),
            };
            let Some(index) = LEVELS.iter().position(|known| known.eq_ignore_ascii_case(level.trim())) else {
                return directive.to_owned();
            };
            let shifted = LEVELS[index.saturating_add_signed(steps.into()).min(LEVELS.len() - 1)];
            match target {
                Some(target) => format!("{target}={shifted}"),
                None => shifted.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_shifts_every_level_within_bounds() {
        assert_eq!(shift("info", 1), "debug");
        assert_eq!(shift("info", -2), "error");
        assert_eq!(shift("warn", -9), "off");
        assert_eq!(shift("scan_agent_sync=debug,info", 5), "scan_agent_sync=trace,trace");
        assert_eq!(shift("sqlx=warn,my_target", 1), "sqlx=info,my_target");
        assert_eq!(shift("info", 0), "info");
    }

    #[test]
    fn rust_log_wins_and_is_named_when_invalid() {
        let log = LogSettings { level: "info".to_owned(), ..LogSettings::default() };
        assert!(filter(&log, Some("debug".to_owned()), 0).is_ok());
        let error = filter(&log, Some("x=loud".to_owned()), 0).unwrap_err().to_string();
        assert!(error.contains("RUST_LOG") && error.contains("x=loud"), "{error}");
        let bad = LogSettings { level: "x=loud".to_owned(), ..LogSettings::default() };
        let error = filter(&bad, Some(" ".to_owned()), 0).unwrap_err().to_string();
        assert!(error.contains("`log.level`"), "{error}");
    }
}
