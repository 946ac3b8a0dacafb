//! Loading, validating and showing the configuration, through the public API only.
//!
//! Every test injects its environment through `Settings::load_with_env`, so none depends on
//! the process environment or on another test.

mod support;
#[path = "config/tenants.rs"]
mod tenants;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scan_agent_sync::agent_id::AgentId;
use scan_agent_sync::config::{AlertFormat, Cloud, ConfigError, FetchMode, LogFormat, Settings};
use scan_agent_sync::rate_window::RateWindow;
use secrecy::ExposeSecret;

/// A database URL with a password that must never be shown.
const DB_URL: &str = "postgres://sync:db-hunter2@db.example:5432/scan_agents";

/// The smallest file that loads: everything else has a default.
const MINIMAL: &str = "[database]\nurl = \"postgres://sync:db-hunter2@db.example:5432/scan_agents\"\n";

/// A temporary directory for the config file and the files it points at, plus the
/// environment the load sees.
struct Case {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Case {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("temporary directory"), env: HashMap::new() }
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Writes `name` in the case's directory and returns its path.
    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// Writes a secret file only its owner may read, as the product requires.
    fn secret_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.file(name, contents);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        path
    }

    fn load(&self, toml: &str) -> Result<Settings, ConfigError> {
        let path = self.file("config.toml", toml);
        Settings::load_with_env(&path, &self.env)
    }

    fn settings(&self, toml: &str) -> Settings {
        self.load(toml).unwrap_or_else(|error| panic!("should load: {error}"))
    }

    /// The error message for a configuration that must be rejected.
    fn reject(&self, toml: &str) -> String {
        match self.load(toml) {
            Ok(settings) => panic!("should be rejected, loaded {settings:?}"),
            Err(error) => error.to_string(),
        }
    }
}

/// `text` names every one of `needles`.
#[track_caller]
fn assert_mentions(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
    }
}

/// `MINIMAL` plus `extra`.
fn with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}")
}

fn id(text: &str) -> AgentId {
    AgentId::parse(text).expect("valid test ID")
}

#[test]
fn defaults_match_the_documented_example() {
    let settings = Case::new().settings(MINIMAL);

    let defender = &settings.defender;
    assert_eq!(defender.cloud, Cloud::Commercial);
    assert_eq!(defender.api_base_url, "https://api.security.microsoft.com");
    assert_eq!(defender.token_url, "https://login.microsoftonline.com//oauth2/v2.0/token");
    assert_eq!(defender.scope, "https://api.securitycenter.microsoft.com/.default");
    assert_eq!((defender.tenant_id.as_str(), defender.client_id.as_str()), ("", ""));
    assert_eq!(defender.client_secret_file, None);
    assert_eq!(defender.request_timeout, Duration::from_secs(30));
    assert_eq!(defender.fetch_mode, FetchMode::Auto);
    assert_eq!(defender.max_retries, 5);

    assert_eq!(
        settings.rate_limit.windows,
        [
            RateWindow { calls: 100, per: Duration::from_secs(60) },
            RateWindow { calls: 1500, per: Duration::from_secs(3600) }
        ]
    );
    assert_eq!(settings.rate_limit.max_in_flight, 4);
    assert!(settings.agents.ids.is_empty(), "an empty list with track_all = false loads");
    assert_eq!(settings.agents.ids_file, None);
    assert!(!settings.agents.track_all);
    assert_eq!(settings.schedule.cron, "0 */15 * * * *");
    assert_eq!(settings.database.url.expose_secret(), DB_URL);
    assert_eq!(settings.database.max_connections, 4);
    assert_eq!(settings.stale.after, Duration::from_secs(24 * 3600));
    assert_eq!(settings.alerts.webhook_url, None);
    assert_eq!(settings.alerts.format, AlertFormat::Alertmanager);
    assert_eq!(settings.alerts.repeat_interval, Duration::ZERO);
    assert_eq!(settings.http.listen, Some("127.0.0.1:9464".parse::<SocketAddr>().unwrap()));
    assert_eq!(settings.log.format, LogFormat::Text);
    assert_eq!(settings.log.level, "info");
}

#[test]
fn cloud_picks_hosts_and_scope_and_overrides_win() {
    let case = Case::new();
    let gov =
        case.settings(&with("[defender]\ncloud = \"gcc-high\"\ntenant_id = \"contoso.onmicrosoft.us\""));
    assert_eq!(gov.defender.api_base_url, "https://api-gov.securitycenter.microsoft.us");
    assert_eq!(
        gov.defender.token_url,
        "https://login.microsoftonline.us/contoso.onmicrosoft.us/oauth2/v2.0/token"
    );
    assert_eq!(gov.defender.scope, "https://api-gov.securitycenter.microsoft.us/.default");

    let gcc = case.settings(&with("[defender]\ncloud = \"gcc\""));
    assert_eq!(gcc.defender.api_base_url, "https://api-gcc.securitycenter.microsoft.us");
    assert!(gcc.defender.token_url.starts_with("https://login.microsoftonline.com/"));

    let custom = case.settings(&with(
        "[defender]\ntenant_id = \"t1\"\napi_base_url = \"http://127.0.0.1:8080/\"\n\
         token_url = \"http://127.0.0.1:8080/{tenant_id}/token\"\nscope = \"s\"\nfetch_mode = \"by-id\"",
    ));
    assert_eq!(custom.defender.api_base_url, "http://127.0.0.1:8080", "no trailing slash");
    assert_eq!(custom.defender.token_url, "http://127.0.0.1:8080/t1/token");
    assert_eq!(custom.defender.scope, "s");
    assert_eq!(custom.defender.fetch_mode, FetchMode::ById);
}

#[test]
fn environment_overrides_the_file() {
    let case = Case::new()
        .env("SCAN_AGENT_SYNC__RATE_LIMIT__MAX_IN_FLIGHT", "7")
        .env("SCAN_AGENT_SYNC__RATE_LIMIT__WINDOWS", "10/1s, 50/1m")
        .env("SCAN_AGENT_SYNC__AGENTS__IDS", "env-a,env-b")
        .env("SCAN_AGENT_SYNC__AGENTS__TRACK_ALL", "true")
        .env("SCAN_AGENT_SYNC__DATABASE__URL", "postgres://env@db/x")
        .env("SCAN_AGENT_SYNC__HTTP__LISTEN", "")
        .env("SCAN_AGENT_SYNC__STALE__AFTER", "2h")
        .env("SCAN_AGENT_SYNC_CONFIG", "/not/a/key/but/the/config/path");
    let settings = case.settings(&with(
        "[rate_limit]\nmax_in_flight = 2\n[agents]\nids = [\"file-a\"]\n[stale]\nafter = \"1h\"",
    ));
    assert_eq!(settings.rate_limit.max_in_flight, 7);
    assert_eq!(
        settings.rate_limit.windows,
        [
            RateWindow { calls: 10, per: Duration::from_secs(1) },
            RateWindow { calls: 50, per: Duration::from_secs(60) }
        ]
    );
    assert_eq!(settings.agents.ids, [id("env-a"), id("env-b")]);
    assert!(settings.agents.track_all);
    assert_eq!(settings.database.url.expose_secret(), "postgres://env@db/x");
    assert_eq!(settings.http.listen, None, "an empty variable disables the endpoint");
    assert_eq!(settings.stale.after, Duration::from_secs(7200));
}

#[test]
fn database_url_falls_back_to_database_url_variable() {
    let case = Case::new().env("DATABASE_URL", "postgres://fallback@db/x");
    let settings = case.settings("");
    assert_eq!(settings.database.url.expose_secret(), "postgres://fallback@db/x");

    let settings = case.settings(MINIMAL);
    assert_eq!(settings.database.url.expose_secret(), DB_URL, "database.url wins over DATABASE_URL");

    let message = Case::new().reject("");
    assert_mentions(&message, &["`database.url`", "is not set", "DATABASE_URL"]);

    let message = Case::new().env("DATABASE_URL", "mysql://u:secretpw@db/x").reject("");
    assert_mentions(&message, &["`database.url`", "(DATABASE_URL)", "postgres://"]);
    assert!(!message.contains("secretpw"), "{message}");
}

#[test]
fn unknown_key_in_file_is_rejected() {
    let message = Case::new().reject(&with("[defender]\ntenant = \"x\""));
    assert_mentions(&message, &["`defender.tenant`", "config.toml", "`tenant_id`", "spelling"]);
}

#[test]
fn unknown_key_in_environment_is_rejected() {
    let message = Case::new().env("SCAN_AGENT_SYNC__LOG__COLOUR", "always").reject(MINIMAL);
    assert_mentions(&message, &["`log.colour`", "SCAN_AGENT_SYNC__LOG__COLOUR"]);
}

#[test]
fn unknown_section_is_rejected() {
    let message = Case::new().reject(&with("[alert]\nformat = \"json\""));
    assert_mentions(&message, &["`alert`", "alerts"]);
}

#[test]
fn client_secret_is_not_a_file_key() {
    let message = Case::new().reject(&with("[defender]\nclient_secret = \"in-the-file\""));
    assert_mentions(&message, &["`defender.client_secret`"]);
    assert!(!message.contains("in-the-file"), "{message}");
}

#[test]
fn wrong_type_is_rejected() {
    let message = Case::new().reject(&with("[rate_limit]\nmax_in_flight = \"four\""));
    assert_mentions(&message, &["`rate_limit.max_in_flight`", "four"]);

    let message = Case::new().reject(&with("[log]\nformat = \"xml\""));
    assert_mentions(&message, &["`log.format`", "`text`", "`json`"]);
}

#[test]
fn wrong_type_from_environment_names_the_variable() {
    let message = Case::new().env("SCAN_AGENT_SYNC__DEFENDER__MAX_RETRIES", "many").reject(MINIMAL);
    assert_mentions(&message, &["`defender.max_retries`", "SCAN_AGENT_SYNC__DEFENDER__MAX_RETRIES"]);
}

#[test]
fn bad_duration_is_rejected() {
    let message = Case::new().reject(&with(
        "[rate_limit]\nwindows = [ { calls = 100, per = \"1m\" }, { calls = 1500, per = \"an hour\" } ]",
    ));
    assert_mentions(&message, &["`rate_limit.windows[1].per`", "\"15m\""]);

    let message = Case::new().reject(&with("[stale]\nafter = \"1 fortnight\""));
    assert_mentions(&message, &["`stale.after`", "duration"]);
}

#[test]
fn cron_needs_six_valid_fields() {
    let message = Case::new().reject(&with("[schedule]\ncron = \"*/15 * * * *\""));
    assert_mentions(&message, &["`schedule.cron`", "found 5", "seconds first"]);

    let message = Case::new().reject(&with("[schedule]\ncron = \"0 0 0 * * * 2030\""));
    assert_mentions(&message, &["`schedule.cron`", "found 7"]);

    let message = Case::new().reject(&with("[schedule]\ncron = \"0 99 * * * *\""));
    assert_mentions(&message, &["`schedule.cron`", "not a valid schedule"]);

    let settings = Case::new().settings(&with("[schedule]\ncron = \"30 5 3 * * MON-FRI\""));
    assert_eq!(settings.schedule.cron, "30 5 3 * * MON-FRI");
}

#[test]
fn rate_windows_must_limit_something() {
    let message = Case::new().reject(&with("[rate_limit]\nwindows = []"));
    assert_mentions(&message, &["`rate_limit.windows`", "empty"]);

    let message = Case::new().reject(&with(
        "[rate_limit]\nwindows = [ { calls = 0, per = \"1m\" }, { calls = 5, per = \"0s\" } ]",
    ));
    assert_mentions(&message, &["`rate_limit.windows[0].calls`", "`rate_limit.windows[1].per`"]);

    let message = Case::new().env("SCAN_AGENT_SYNC__RATE_LIMIT__WINDOWS", "0/1m").reject(MINIMAL);
    assert_mentions(
        &message,
        &["`rate_limit.windows`", "SCAN_AGENT_SYNC__RATE_LIMIT__WINDOWS", "above zero"],
    );
}

#[test]
fn max_in_flight_zero_is_rejected() {
    let message = Case::new().reject(&with("[rate_limit]\nmax_in_flight = 0"));
    assert_mentions(&message, &["`rate_limit.max_in_flight`", "at least 1"]);
}

#[test]
fn other_zero_values_are_rejected() {
    let message = Case::new()
        .env("SCAN_AGENT_SYNC__DATABASE__MAX_CONNECTIONS", "0")
        .reject(&with("[defender]\nrequest_timeout = \"0s\"\n[stale]\nafter = \"0s\""));
    assert_mentions(&message, &["`defender.request_timeout`", "`database.max_connections`", "`stale.after`"]);
}

#[test]
fn unreadable_ids_file_names_the_path_and_the_os_error() {
    let case = Case::new();
    let missing = case.dir.path().join("no-such-agents.txt");
    let message = case.reject(&with(&format!("[agents]\nids_file = {:?}", missing.display().to_string())));
    assert_mentions(&message, &["`agents.ids_file`", &missing.display().to_string(), "No such file"]);
}

#[test]
fn ids_file_skips_comments_and_blanks_and_keeps_order() {
    let case = Case::new();
    let file =
        case.file("agents.txt", "# fleet A\n\n  first  \nsecond # the old one\nthird#not-a-comment\n\t\n");
    let settings = case.settings(&with(&format!(
        "[agents]\nids = [\"inline\"]\nids_file = {:?}",
        file.display().to_string()
    )));
    assert_eq!(settings.agents.ids, [id("inline"), id("first"), id("second"), id("third#not-a-comment")]);
    assert_eq!(settings.agents.ids_file.as_deref(), Some(file.as_path()));
}

#[test]
fn malformed_agent_id_in_file_names_file_and_line() {
    let case = Case::new();
    let file = case.file("agents.txt", "good\n# comment\nbad id\n");
    let message = case.reject(&with(&format!("[agents]\nids_file = {:?}", file.display().to_string())));
    assert_mentions(&message, &["`agents.ids_file`", &format!("{}:3", file.display()), "whitespace"]);
}

#[test]
fn malformed_inline_agent_id_names_its_index() {
    let message = Case::new().reject(&with("[agents]\nids = [\"good\", \"a\\u0007b\"]"));
    assert_mentions(&message, &["`agents.ids[1]`", "control character"]);
}

#[test]
fn duplicate_agent_ids_name_both_places() {
    let case = Case::new();
    let file = case.file("agents.txt", "x\ninline-dup\nx\n");
    let message = case.reject(&with(&format!(
        "[agents]\nids = [\"inline-dup\", \"y\", \"y\"]\nids_file = {:?}",
        file.display().to_string()
    )));
    let path = file.display();
    assert_mentions(
        &message,
        &[
            "3 problems",
            // Twice inline.
            "`agents.ids[2]`",
            "first at agents.ids[1]",
            // Inline and in the file.
            &format!("({path}:2)"),
            "first at agents.ids[0]",
            // Twice in the file.
            &format!("({path}:3)"),
            &format!("first at {path}:1"),
        ],
    );
}

#[test]
fn reload_rereads_the_ids_file() {
    let case = Case::new();
    let file = case.file("agents.txt", "a\n");
    let settings = case.settings(&with(&format!(
        "[agents]\nids = [\"inline\"]\nids_file = {:?}",
        file.display().to_string()
    )));
    std::fs::write(&file, "b\nc\n").unwrap();
    assert_eq!(settings.agents.reload().unwrap(), [id("inline"), id("b"), id("c")]);

    std::fs::write(&file, "b\ninline\n").unwrap();
    let message = settings.agents.reload().unwrap_err().to_string();
    assert_mentions(&message, &[&format!("{}:2", file.display()), "agents.ids[0]"]);
}

#[test]
fn upstream_urls_must_be_absolute_http() {
    let message = Case::new().reject(&with(
        "[defender]\napi_base_url = \"api.security.microsoft.com\"\ntoken_url = \"ftp://login/{tenant_id}\"",
    ));
    assert_mentions(&message, &["`defender.api_base_url`", "`defender.token_url`", "http"]);

    let message = Case::new().reject(&with("[alerts]\nwebhook_url = \"alertmanager:9093\""));
    assert_mentions(&message, &["`alerts.webhook_url`"]);
}

#[test]
fn upstream_urls_must_be_https_unless_loopback_or_allowed() {
    let remote_http = "[defender]\napi_base_url = \"http://defender-proxy.example:8080\"\n\
                       token_url = \"http://login.example/{tenant_id}/token\"";
    let message = Case::new().reject(&with(remote_http));
    assert_mentions(
        &message,
        &["`defender.api_base_url`", "`defender.token_url`", "unencrypted", "allow_insecure_http"],
    );

    let allowed = Case::new().settings(&with(&format!("{remote_http}\nallow_insecure_http = true")));
    assert_eq!(allowed.defender.api_base_url, "http://defender-proxy.example:8080");
    assert!(allowed.redacted().contains("allow_insecure_http = true"));

    // Alerts carry no secret: an in-cluster Alertmanager on plain http is fine.
    let webhook = Case::new()
        .settings(&with("[alerts]\nwebhook_url = \"http://alertmanager.example:9093/api/v2/alerts\""));
    assert_eq!(webhook.alerts.webhook_url.as_deref(), Some("http://alertmanager.example:9093/api/v2/alerts"));
}

#[test]
fn listen_address_must_be_ip_and_port() {
    let message = Case::new().reject(&with("[http]\nlisten = \"localhost:9464\""));
    assert_mentions(&message, &["`http.listen`", "127.0.0.1:9464"]);
}

#[test]
fn all_problems_are_reported_at_once() {
    let message = Case::new().reject(
        "[rate_limit]\nmax_in_flight = 0\n[schedule]\ncron = \"nonsense\"\n[log]\nformat = 3\n[stale]\nafter = \"x\"",
    );
    assert_mentions(
        &message,
        &["`rate_limit.max_in_flight`", "`schedule.cron`", "`log.format`", "`stale.after`", "`database.url`"],
    );
}

#[test]
fn syntax_errors_do_not_echo_the_file() {
    let message = Case::new().reject("[database]\nurl = \"postgres://u:hunter2@db/x\n");
    assert_mentions(&message, &["line 2", "config.toml"]);
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn missing_config_file_is_reported() {
    let case = Case::new();
    let error = Settings::load_with_env(&case.dir.path().join("absent.toml"), &case.env).unwrap_err();
    assert_mentions(&error.to_string(), &["absent.toml", "--config"]);
}

#[test]
fn redacted_output_hides_secrets_and_loads_again() {
    let case = Case::new().env("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", "client-hunter2");
    let ids = case.file("agents.txt", "from-file\n");
    let settings = case.settings(&with(&format!(
        "[agents]\nids = [\"inline\"]\nids_file = {:?}\n[alerts]\nwebhook_url = \"https://am:hook-hunter2@am.example/api/v2/alerts\"",
        ids.display().to_string()
    )));
    let shown = settings.redacted();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_mentions(
        &shown,
        &[
            "url = \"postgres://sync:[redacted]@db.example:5432/scan_agents\"",
            "client_secret = \"[redacted]\"",
            "# client_secret_file is not set",
            "ids = [\"inline\"]",
            "# 2 agent IDs in effect, 1 of them inline",
            "windows = [{ calls = 100, per = \"1m\" }, { calls = 1500, per = \"1h\" }]",
        ],
    );
    let debug = format!("{settings:?}");
    assert!(!debug.contains("hunter2"), "Debug must not print secrets: {debug}");

    // The output is valid configuration that means the same thing (bar the secrets).
    let without_env_secret = shown.replace("client_secret = \"[redacted]\"\n", "");
    let reloaded = Case::new().settings(&without_env_secret);
    assert_eq!(reloaded.redacted(), without_env_secret);
}

#[test]
fn client_secret_resolution_order() {
    let case = Case::new();
    let file = case.secret_file("secret", "from-file\r\n");
    std::fs::create_dir(case.dir.path().join("credentials")).unwrap();
    case.secret_file("credentials/client_secret", "from-credentials\n");
    let credentials = case.dir.path().join("credentials");
    let credentials = credentials.display().to_string();
    let file_key = format!("[defender]\nclient_secret_file = {:?}", file.display().to_string());

    let secret_of = |case: &Case, toml: &str| {
        case.settings(&with(toml)).defender.client_secret().map(|secret| secret.expose_secret().to_owned())
    };
    let everything = Case::new()
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", "from-env");
    assert_eq!(
        secret_of(&everything, &file_key).unwrap(),
        "from-file",
        "the file comes first, newline trimmed"
    );
    assert_eq!(secret_of(&everything, "").unwrap(), "from-credentials", "then the systemd credential");

    let no_credential = Case::new()
        .env("CREDENTIALS_DIRECTORY", case.dir.path().to_str().unwrap())
        .env("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", "from-env");
    assert_eq!(secret_of(&no_credential, "").unwrap(), "from-env", "a directory without it falls through");

    let message = secret_of(&Case::new(), "").unwrap_err().to_string();
    assert_mentions(
        &message,
        &["`defender.client_secret_file`", "LoadCredential", "SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET"],
    );
}

#[test]
fn secret_files_every_user_may_read_are_refused() {
    let case = Case::new();
    let file = case.file("secret", "s3cret-in-the-open\n");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let settings =
        case.settings(&with(&format!("[defender]\nclient_secret_file = {:?}", file.display().to_string())));
    let message = settings.defender.client_secret().unwrap_err().to_string();
    assert_mentions(
        &message,
        &["`defender.client_secret_file`", &file.display().to_string(), "every local user", "chmod 600"],
    );
    assert!(!message.contains("s3cret-in-the-open"), "{message}");

    std::fs::create_dir(case.dir.path().join("credentials")).unwrap();
    let credential = case.file("credentials/client_secret", "s3cret-in-the-open\n");
    std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o604)).unwrap();
    let from_systemd =
        Case::new().env("CREDENTIALS_DIRECTORY", case.dir.path().join("credentials").to_str().unwrap());
    let message = from_systemd.settings(MINIMAL).defender.client_secret().unwrap_err().to_string();
    assert_mentions(&message, &["systemd credential", "every local user", "LoadCredential"]);
}

#[test]
fn a_password_in_a_config_file_every_user_may_read_is_warned_about() {
    let case = Case::new();
    let path = case.file("config.toml", MINIMAL);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let settings = Settings::load_with_env(&path, &case.env).unwrap();
    assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
    assert_mentions(&settings.warnings[0], &[&path.display().to_string(), "~/.pgpass", "chmod 640"]);
    assert!(!settings.warnings[0].contains("db-hunter2"), "{}", settings.warnings[0]);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(Settings::load_with_env(&path, &case.env).unwrap().warnings, Vec::<String>::new());
}

#[test]
fn client_secret_is_read_only_when_asked() {
    let case = Case::new();
    let missing = case.dir.path().join("unreadable-secret");
    let settings = case
        .settings(&with(&format!("[defender]\nclient_secret_file = {:?}", missing.display().to_string())));
    let message = settings.defender.client_secret().unwrap_err().to_string();
    assert_mentions(
        &message,
        &["`defender.client_secret_file`", &missing.display().to_string(), "No such file"],
    );
}

#[test]
fn api_credentials_are_required_only_on_request() {
    let settings = Case::new().settings(MINIMAL);
    let message = settings.defender.require_api_credentials().unwrap_err().to_string();
    assert_mentions(
        &message,
        &["`defender.tenant_id`", "`defender.client_id`", "`defender.client_secret_file`"],
    );

    let settings = Case::new()
        .env("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", "s")
        .settings(&with("[defender]\ntenant_id = \"t\"\nclient_id = \"c\""));
    settings.defender.require_api_credentials().unwrap();
}

#[test]
fn example_file_loads() {
    let case = Case::new();
    let secret = case.secret_file("client_secret", "example-secret\n");
    let ids =
        case.file("agents.txt", "47df41a0c-asad-4fd6d3-bbea-a93dbc0bfcaa_4edd75b2407a5b64d704b4e53d74f15\n");
    let case = case
        .env("SCAN_AGENT_SYNC__DATABASE__URL", "postgres://sync:pw@localhost/scan_agents")
        .env("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET_FILE", secret.to_str().unwrap())
        .env("SCAN_AGENT_SYNC__AGENTS__IDS_FILE", ids.to_str().unwrap());
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scan-agent-sync.toml");
    let settings = Settings::load_with_env(&example, &case.env).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(settings.agents.ids.len(), 1);
    settings.defender.require_api_credentials().unwrap();
    assert_eq!(settings.defender.client_secret().unwrap().expose_secret(), "example-secret");
}
