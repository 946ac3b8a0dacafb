//! The keys of issue 12 on the alerting side: `alerts.max_batch` and `http.agent_series`,
//! loaded from a file and from the environment, and refused with the key and the fix.

use std::collections::HashMap;

use scan_agent_sync::config::{AgentSeries, ConfigError, Settings};

const MINIMAL: &str = "[database]\nurl = \"postgres://sync@db.example/scan_agents\"\n";

fn load(extra: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("{MINIMAL}\n{extra}")).unwrap();
    let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Settings::load_with_env(&path, &env)
}

fn rejected(extra: &str) -> String {
    match load(extra, &[]) {
        Ok(settings) => panic!("should be rejected, loaded {settings:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn defaults_are_batches_of_100_and_every_agent_series() {
    let settings = load("", &[]).unwrap();
    assert_eq!(settings.alerts.max_batch, 100);
    assert_eq!(settings.http.agent_series, AgentSeries::All);
}

#[test]
fn values_load_from_the_file_and_the_environment() {
    let settings = load("[alerts]\nmax_batch = 1\n[http]\nagent_series = \"stale\"\n", &[]).unwrap();
    assert_eq!((settings.alerts.max_batch, settings.http.agent_series), (1, AgentSeries::Stale));
    let settings = load(
        "",
        &[("SCAN_AGENT_SYNC__ALERTS__MAX_BATCH", "500"), ("SCAN_AGENT_SYNC__HTTP__AGENT_SERIES", "none")],
    )
    .unwrap();
    assert_eq!((settings.alerts.max_batch, settings.http.agent_series), (500, AgentSeries::None));
    assert!(settings.redacted().contains("max_batch = 500"), "{}", settings.redacted());
    assert!(settings.redacted().contains("agent_series = \"none\""), "{}", settings.redacted());
}

#[test]
fn max_batch_zero_is_refused_naming_the_key() {
    let error = rejected("[alerts]\nmax_batch = 0\n");
    assert!(error.contains("alerts.max_batch") && error.contains("at least 1"), "{error}");
}

#[test]
fn an_unknown_agent_series_names_the_key_and_the_allowed_values() {
    let error = rejected("[http]\nagent_series = \"some\"\n");
    for needle in ["http.agent_series", "some", "`all`", "`stale`", "`none`"] {
        assert!(error.contains(needle), "{needle:?} missing from {error}");
    }
}
