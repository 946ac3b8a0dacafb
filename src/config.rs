//! The configuration: one TOML file, every key overridable by `SCAN_AGENT_SYNC__SECTION__KEY`
//! environment variables (PRODUCT.md, "Configuration").
//!
//! Loading checks everything that can be checked without the network and reports every
//! problem at once, each naming its key, where the value came from and the fix, so `run`
//! fails before it starts rather than hours later. The client secret is the exception: it is
//! read only when needed ([`DefenderSettings::client_secret`]).

mod agents;
mod alerts;
mod de;
mod defender;
mod error;
mod exposure;
mod http;
mod log;
mod rate_limit;
mod retention;
mod show;
mod tenant;
mod url;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

pub use self::agents::{AgentsSettings, parse_ids_file};
pub use self::alerts::{AlertFormat, AlertSettings};
pub use self::defender::{Cloud, DefenderSettings, FetchMode};
pub use self::error::{ConfigError, ConfigProblem};
pub use self::http::{AgentSeries, HttpSettings};
pub use self::log::{FILTER_FIX, LogFormat, LogSettings, parse_filter};
pub use self::rate_limit::RateLimitSettings;
pub use self::retention::{Keep, LEDGER_MARGIN, RetentionSettings, ledger_keep};
pub use self::tenant::TenantSettings;
pub(crate) use self::url::redact_url;
pub use crate::tenant_name::{DEFAULT_TENANT, TenantSelection};

/// Prefix of the environment variables that override keys; `__` separates section and key.
const ENV_PREFIX: &str = "SCAN_AGENT_SYNC__";

/// Consulted when `database.url` is unset, because every PostgreSQL tool (and sqlx) reads it.
const DATABASE_URL_VAR: &str = "DATABASE_URL";

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[defender]`: the Defender API connection, as written (what every tenant starts from).
    pub defender: DefenderSettings,
    /// `[rate_limit]`: the API budget, as written.
    pub rate_limit: RateLimitSettings,
    /// `[agents]`: which agents to track, as written.
    pub agents: AgentsSettings,
    /// When sync cycles run.
    pub schedule: ScheduleSettings,
    /// The PostgreSQL connection.
    pub database: DatabaseSettings,
    /// When an agent counts as stale.
    pub stale: StaleSettings,
    /// Where stale alerts go.
    pub alerts: AlertSettings,
    /// The metrics and health endpoints.
    pub http: HttpSettings,
    /// Log output.
    pub log: LogSettings,
    /// How long history is kept.
    pub retention: RetentionSettings,
    /// Problems worth an operator's attention that do not stop the service, such as a
    /// password in a config file every local user may read; logged once logging starts.
    pub warnings: Vec<String>,
    /// The tenants to sync, each with its effective settings; see [`Settings::tenants`].
    tenants: Vec<TenantSettings>,
}

/// When sync cycles run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSettings {
    /// Six-field cron expression, seconds first, in UTC; validated with the parser settings
    /// tokio-cron-scheduler uses, so the scheduler cannot reject what loading accepted.
    pub cron: String,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self { cron: "0 */15 * * * *".to_owned() }
    }
}

impl ScheduleSettings {
    /// The first tick strictly after `after`; None only if the expression never fires again.
    pub fn next_tick(&self, after: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        cron_parser().parse(&self.cron).ok()?.find_next_occurrence(&after, false).ok()
    }
}

/// The cron parser configured as tokio-cron-scheduler configures it (seconds required).
pub(crate) fn cron_parser() -> croner::parser::CronParser {
    croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Required).dom_and_dow(true).build()
}

/// The PostgreSQL connection.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Connection URL; secret because it usually carries the password.
    pub url: SecretString,
    /// Pool size.
    pub max_connections: u32,
}

/// When an agent counts as stale.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaleSettings {
    /// Stale when `now - last_seen` exceeds this.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// When one cycle would newly mark more than this share of the known agents missing,
    /// it marks none and raises one fleet alert instead (see `sync::guard`).
    pub mass_missing_guard: f64,
}

impl Default for StaleSettings {
    fn default() -> Self {
        Self { after: Duration::from_secs(24 * 60 * 60), mass_missing_guard: 0.5 }
    }
}

impl Settings {
    /// The tenants to sync, in configuration order, each with its own connection, budget
    /// and agents. A configuration without `[[tenants]]` has one, [`DEFAULT_TENANT`], made of
    /// the `[defender]`, `[rate_limit]` and `[agents]` sections.
    pub fn tenants(&self) -> &[TenantSettings] {
        &self.tenants
    }

    /// The tenants `names` selects (`--tenant NAME`, repeatable; none means every tenant), or
    /// an error listing the configured names when one is not configured: a typo must not
    /// quietly sync or report nothing.
    pub fn select_tenants(&self, names: &[String]) -> Result<TenantSelection, ConfigError> {
        if names.is_empty() {
            return Ok(TenantSelection::all());
        }
        let mut selected = Vec::new();
        let mut problems = Vec::new();
        for name in names {
            match self.tenants.iter().find(|tenant| *tenant.name == *name.trim()) {
                Some(tenant) if selected.contains(&tenant.name) => {}
                Some(tenant) => selected.push(tenant.name.clone()),
                None => {
                    let configured: Vec<&str> = self.tenants.iter().map(|tenant| &*tenant.name).collect();
                    problems.push(
                        ConfigProblem::unkeyed(
                            format!("{name:?} is not a configured tenant (configured: {})", configured.join(", ")),
                            "pass the name of a [[tenants]] entry (a configuration without [[tenants]] has the \
                             one tenant `default`), or leave out --tenant for every tenant",
                        )
                        .at("--tenant"),
                    );
                }
            }
        }
        if problems.is_empty() {
            Ok(TenantSelection::only(selected))
        } else {
            Err(ConfigError::new(problems))
        }
    }

    /// Every rate window in effect, the shared ones and each tenant's: the budget ledger must
    /// keep rows as long as the longest of them needs.
    pub fn all_windows(&self) -> Vec<crate::rate_window::RateWindow> {
        let tenants = self.tenants.iter().flat_map(|tenant| tenant.rate_limit.windows.iter());
        let mut windows: Vec<_> = self.rate_limit.windows.iter().chain(tenants).copied().collect();
        windows.sort_by_key(|window| (window.per, window.calls));
        windows.dedup();
        windows
    }

    /// Loads `path` with overrides from the process environment.
    ///
    /// Variables that are not valid Unicode are skipped; none of ours can need that.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        Self::load_with_env(path, &env)
    }

    /// Loads `path` with overrides from `env` instead of the process environment, so tests
    /// are isolated from it and from each other.
    pub fn load_with_env(path: &Path, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigProblem::unkeyed(
                format!("cannot read the config file: {error}"),
                "check the path (--config or SCAN_AGENT_SYNC_CONFIG) and that this user may read it",
            )
            .at(path.display())
        })?;
        let mut settings = Self::parse(&text, env).map_err(|error| {
            error.attribute(|key| match key {
                Some(key) => source_of(key, path, env),
                None => path.display().to_string(),
            })
        })?;
        settings.warnings.extend(exposure::config_file_warning(path, &text));
        Ok(settings)
    }

    /// Builds the settings from the file's text and the environment.
    fn parse(text: &str, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        // The secret variable is read by DefenderSettings itself, so it never becomes a key.
        let overrides: ::config::Map<String, String> = env
            .iter()
            .filter(|(key, _)| {
                key.starts_with(ENV_PREFIX)
                    && key.as_str() != defender::CLIENT_SECRET_VAR
                    && !key.starts_with(tenant::TENANT_VAR_PREFIX)
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let merged = ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
            .add_source(
                ::config::Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
                    .separator("__")
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|error| {
                ConfigProblem::unkeyed(summarize_parse_error(&error), "correct the TOML syntax")
            })?;
        let (merged, tenant_vars) = tenant::apply_env_overrides(merged, env)?;
        let raw: RawSettings = merged.try_deserialize().map_err(|error| {
            ConfigError::from(ConfigProblem::from_deserialize(None, error)).attribute_keys(&tenant_vars)
        })?;

        let mut problems = Vec::new();
        let defender_raw = raw.defender.0.as_ref().ok().cloned();
        let defender = finish("defender", raw.defender, env, &mut problems);
        let rate_limit = finish("rate_limit", raw.rate_limit, env, &mut problems);
        let agents = finish("agents", raw.agents, env, &mut problems);
        let schedule = finish("schedule", raw.schedule, env, &mut problems);
        let database = finish("database", raw.database, env, &mut problems);
        let stale = finish("stale", raw.stale, env, &mut problems);
        let alerts = finish("alerts", raw.alerts, env, &mut problems);
        let http = finish("http", raw.http, env, &mut problems);
        let log = finish("log", raw.log, env, &mut problems);
        let retention = finish("retention", raw.retention, env, &mut problems);
        let tenants = match (&defender_raw, &defender, &rate_limit, &agents, raw.tenants.0) {
            (Some(defender_raw), Some(defender), Some(rate_limit), Some(agents), Ok(entries)) => {
                let shared = tenant::Shared { defender_raw, defender, rate_limit, agents };
                tenant::tenants(entries, &shared, env, &mut problems)
            }
            (.., Err(error)) => {
                problems.push(ConfigProblem::from_deserialize(Some("tenants"), error));
                Vec::new()
            }
            // The shared section's problem is recorded; the entries cannot be finished without it.
            _ => Vec::new(),
        };
        match (defender, rate_limit, agents, schedule, database, stale, alerts, http, log, retention) {
            (
                Some(defender),
                Some(rate_limit),
                Some(agents),
                Some(schedule),
                Some(database),
                Some(stale),
                Some(alerts),
                Some(http),
                Some(log),
                Some(retention),
            ) if problems.is_empty() => Ok(Settings {
                tenants,
                defender,
                rate_limit,
                agents,
                schedule,
                database,
                stale,
                alerts,
                http,
                log,
                retention,
                warnings: Vec::new(),
            }),
            _ => Err(ConfigError::new(problems).attribute_keys(&tenant_vars)),
        }
    }
}

/// The first and last lines of a TOML syntax error. The lines between quote the offending
/// line of the file, which may hold the database password.
fn summarize_parse_error(error: &::config::ConfigError) -> String {
    let text = error.to_string();
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    match (lines.next(), lines.next_back()) {
        (Some(first), Some(last)) => format!("{first}: {last}"),
        (Some(only), None) => only.to_owned(),
        _ => text,
    }
}

/// Where the value of `key` came from: the environment variable that sets it (or anything
/// below it), else the config file.
fn source_of(key: &str, file: &Path, env: &HashMap<String, String>) -> String {
    let field = key.split('[').next().unwrap_or(key);
    // `[[tenants]]` variables name the tenant, not the index; parsing attributed them.
    if field == "tenants" {
        return file.display().to_string();
    }
    let var = format!("{ENV_PREFIX}{}", field.replace('.', "__").to_uppercase());
    let nested = format!("{var}__");
    let mut from_env: Vec<&String> =
        env.keys().filter(|name| **name == var || name.starts_with(&nested)).collect();
    from_env.sort();
    match from_env.first() {
        Some(name) => (*name).clone(),
        None => file.display().to_string(),
    }
}

/// A section as written, turned into its settings after the checks serde cannot express.
trait Finish: DeserializeOwned + Default {
    /// The validated settings.
    type Output;

    /// Checks the values, adding any problems to `problems`; `env` serves the few keys with
    /// non-prefixed fallbacks (`DATABASE_URL`, `CREDENTIALS_DIRECTORY`).
    fn finish(self, env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> Self::Output;
}

/// Finishes section `name`, or records why it could not be read.
fn finish<T: Finish>(
    name: &str,
    section: Section<T>,
    env: &HashMap<String, String>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T::Output> {
    match section.0 {
        Ok(raw) => Some(raw.finish(env, problems)),
        Err(error) => {
            problems.push(ConfigProblem::from_deserialize(Some(name), error));
            None
        }
    }
}

/// A section that keeps its own deserialization error, so a mistake in one section does not
/// hide the mistakes in the others.
struct Section<T>(Result<T, ::config::ConfigError>);

impl<T: Default> Default for Section<T> {
    fn default() -> Self {
        Self(Ok(T::default()))
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Section<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = ::config::Value::deserialize(deserializer)?;
        Ok(Self(value.try_deserialize()))
    }
}

/// The file and environment merged, section by section.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    defender: Section<defender::RawDefender>,
    rate_limit: Section<RateLimitSettings>,
    agents: Section<agents::RawAgents>,
    schedule: Section<ScheduleSettings>,
    database: Section<RawDatabase>,
    stale: Section<StaleSettings>,
    alerts: Section<AlertSettings>,
    http: Section<HttpSettings>,
    log: Section<LogSettings>,
    retention: Section<RetentionSettings>,
    tenants: Section<Vec<Section<tenant::RawTenant>>>,
}

/// `[database]` as written; `url` may instead come from `DATABASE_URL`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: Option<SecretString>,
    max_connections: u32,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self { url: None, max_connections: 4 }
    }
}

impl Finish for RawDatabase {
    type Output = DatabaseSettings;

    fn finish(self, env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> DatabaseSettings {
        let fallback = || {
            env.get(DATABASE_URL_VAR)
                .filter(|url| !url.is_empty())
                .map(|url| SecretString::from(url.as_str()))
        };
        let (url, source) = match self.url {
            Some(url) => (Some(url), None),
            None => (fallback(), Some(DATABASE_URL_VAR)),
        };
        match &url {
            // The URL is never quoted: it usually holds the password.
            Some(url)
                if !["postgres://", "postgresql://"]
                    .iter()
                    .any(|scheme| url.expose_secret().starts_with(scheme)) =>
            {
                let problem = ConfigProblem::new(
                    "database.url",
                    "is not a postgres:// or postgresql:// URL",
                    "write it as postgres://USER@HOST/DATABASE (the password is best kept in ~/.pgpass or PGPASSWORD)",
                );
                problems.push(match source {
                    Some(source) => problem.at(source),
                    None => problem,
                });
            }
            Some(_) => {}
            None => problems.push(ConfigProblem::new(
                "database.url",
                "is not set",
                "set database.url, SCAN_AGENT_SYNC__DATABASE__URL or DATABASE_URL to a postgres:// URL",
            )),
        }
        if self.max_connections == 0 {
            problems.push(ConfigProblem::new(
                "database.max_connections",
                "is 0, so no query could run",
                "set it to at least 1",
            ));
        }
        DatabaseSettings { url: url.unwrap_or_default(), max_connections: self.max_connections }
    }
}

impl Finish for ScheduleSettings {
    type Output = Self;

    fn finish(self, _env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> Self {
        const FIX: &str =
            "write six fields, second minute hour day-of-month month day-of-week, e.g. \"0 */15 * * * *\"";
        let fields = self.cron.split_whitespace().count();
        if fields != 6 {
            let problem = format!("{:?} is not six fields, seconds first (found {fields})", self.cron);
            problems.push(ConfigProblem::new("schedule.cron", problem, FIX));
        } else if let Err(error) = cron_parser().parse(&self.cron) {
            problems.push(ConfigProblem::new(
                "schedule.cron",
                format!("{:?} is not a valid schedule: {error}", self.cron),
                FIX,
            ));
        }
        self
    }
}

impl Finish for StaleSettings {
    type Output = Self;

    fn finish(self, _env: &HashMap<String, String>, problems: &mut Vec<ConfigProblem>) -> Self {
        if self.after.is_zero() {
            problems.push(ConfigProblem::new(
                "stale.after",
                "is zero, so every agent would be stale",
                "set a duration such as \"24h\"",
            ));
        }
        if !(self.mass_missing_guard > 0.0 && self.mass_missing_guard <= 1.0) {
            problems.push(ConfigProblem::new(
                "stale.mass_missing_guard",
                format!("is {}, not a share between 0 (exclusive) and 1", self.mass_missing_guard),
                "set a share such as 0.5 (1 turns the guard off)",
            ));
        }
        self
    }
}

/// Sections whose values serde checks completely.
macro_rules! finished_by_serde {
    ($($section:ty),*) => {$(
        impl Finish for $section {
            type Output = Self;

            fn finish(self, _env: &HashMap<String, String>, _problems: &mut Vec<ConfigProblem>) -> Self {
                self
            }
        }
    )*};
}

finished_by_serde!(HttpSettings);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_attribution_matches_nested_variables_only() {
        let env = HashMap::from([
            ("SCAN_AGENT_SYNC__AGENTS__IDS_FILE".to_owned(), "/x".to_owned()),
            ("SCAN_AGENT_SYNC__TYPO__KEY".to_owned(), "1".to_owned()),
        ]);
        let file = Path::new("/etc/c.toml");
        assert_eq!(source_of("agents.ids[2]", file, &env), "/etc/c.toml");
        assert_eq!(source_of("agents.ids_file", file, &env), "SCAN_AGENT_SYNC__AGENTS__IDS_FILE");
        assert_eq!(source_of("typo", file, &env), "SCAN_AGENT_SYNC__TYPO__KEY");
    }
}
