//! `[[tenants]]` (PRODUCT.md, "Tenants"): parsing, the shared defaults and each entry's
//! overrides, where each tenant's secret comes from, and every conflict between entries,
//! which must name both places. A module of the `config` test binary, for its `Case`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use scan_agent_sync::config::{Cloud, ConfigError, FetchMode, Settings};
use scan_agent_sync::rate_window::RateWindow;
use secrecy::ExposeSecret;

use super::{Case, assert_mentions, support, with};

/// Two tenants sharing the app registration of `[defender]`.
const TWO: &str = r#"
[defender]
client_id = "shared-app"

[[tenants]]
name = "contoso"
tenant_id = "11111111-1111-1111-1111-111111111111"
ids = ["contoso-a", "contoso-b"]

[[tenants]]
name = "fabrikam"
tenant_id = "22222222-2222-2222-2222-222222222222"
track_all = true
"#;

impl Case {
    /// Loads `toml` below a database section.
    fn load_tenants(&self, toml: &str) -> Result<Settings, ConfigError> {
        self.load(&with(toml))
    }

    fn tenants(&self, toml: &str) -> Settings {
        self.settings(&with(toml))
    }

    fn reject_tenants(&self, toml: &str) -> String {
        match self.load_tenants(toml) {
            Ok(settings) => panic!("should be rejected, loaded {:?}", settings.tenants()),
            Err(error) => error.to_string(),
        }
    }

    /// Writes a secret file, creating its directory.
    fn secret_in(&self, name: &str, contents: &str) -> PathBuf {
        if let Some(parent) = self.dir.path().join(name).parent() {
            std::fs::create_dir_all(parent).expect("create the directory");
        }
        self.secret_file(name, contents)
    }
}

#[test]
fn without_tenants_the_shared_sections_are_the_tenant_default() {
    let settings = Case::new().tenants("[defender]\ntenant_id = \"t\"\n[agents]\nids = [\"a\"]\n");
    let [tenant] = settings.tenants() else { panic!("one tenant: {:?}", settings.tenants()) };
    assert_eq!(&*tenant.name, "default");
    assert_eq!(tenant.defender.tenant_id, "t");
    assert_eq!(tenant.agents.ids.len(), 1);
}

#[test]
fn tenants_take_the_shared_defaults_and_their_own_overrides() {
    let settings = Case::new().tenants(
        r#"
[defender]
client_id = "shared-app"
cloud = "gcc"
fetch_mode = "by-id"
request_timeout = "10s"

[rate_limit]
windows = [ { calls = 50, per = "1m" } ]
max_in_flight = 2

[agents]
track_all = true

[[tenants]]
name = "contoso"
tenant_id = "11111111-1111-1111-1111-111111111111"
ids = ["contoso-a"]
track_all = false
client_id = "own-app"
cloud = "dod"
fetch_mode = "list"
token_url = "http://127.0.0.1:9/{tenant_id}/token"
windows = [ { calls = 10, per = "1s" }, { calls = 200, per = "1h" } ]
max_in_flight = 8

[[tenants]]
name = "fabrikam"
tenant_id = "22222222-2222-2222-2222-222222222222"
"#,
    );
    let [contoso, fabrikam] = settings.tenants() else { panic!("two tenants: {:?}", settings.tenants()) };
    assert_eq!((&*contoso.name, &*fabrikam.name), ("contoso", "fabrikam"));

    let own = &contoso.defender;
    assert_eq!(own.client_id, "own-app");
    assert_eq!(own.cloud, Cloud::Dod);
    assert_eq!(own.api_base_url, "https://api-gov.securitycenter.microsoft.us", "its cloud picks its hosts");
    assert_eq!(own.token_url, "http://127.0.0.1:9/11111111-1111-1111-1111-111111111111/token");
    assert_eq!(own.fetch_mode, FetchMode::List);
    assert_eq!(own.request_timeout, Duration::from_secs(10), "not overridable, shared");
    assert_eq!(
        contoso.rate_limit.windows,
        [
            RateWindow { calls: 10, per: Duration::from_secs(1) },
            RateWindow { calls: 200, per: Duration::from_secs(3600) }
        ]
    );
    assert_eq!(contoso.rate_limit.max_in_flight, 8);
    assert!(!contoso.agents.track_all);
    assert_eq!(contoso.agents.ids.len(), 1);

    let shared = &fabrikam.defender;
    assert_eq!(shared.client_id, "shared-app");
    assert_eq!(shared.cloud, Cloud::Gcc);
    assert_eq!(shared.api_base_url, "https://api-gcc.securitycenter.microsoft.us");
    assert_eq!(
        shared.token_url,
        "https://login.microsoftonline.com/22222222-2222-2222-2222-222222222222/oauth2/v2.0/token"
    );
    assert_eq!(shared.fetch_mode, FetchMode::ById);
    assert_eq!(fabrikam.rate_limit.windows, [RateWindow { calls: 50, per: Duration::from_secs(60) }]);
    assert_eq!(fabrikam.rate_limit.max_in_flight, 2);
    assert!(fabrikam.agents.track_all, "[agents] track_all is the default of entries without their own");
    assert!(fabrikam.agents.ids.is_empty());

    // The ledger keeps rows for the longest window of any tenant.
    assert_eq!(settings.all_windows().last().unwrap().per, Duration::from_secs(3600));
}

#[test]
fn a_tenants_secret_is_its_file_then_its_credential_then_the_shared_one() {
    let case = Case::new();
    let own = case.secret_in("own", "own-file\n");
    let shared = case.secret_in("shared", "shared-file\n");
    let credentials = case.dir.path().join("credentials");
    case.secret_in("credentials/client_secret_contoso", "own-credential\n");
    case.secret_in("credentials/client_secret", "shared-credential\n");
    let config = |own_file: bool, shared_file: bool| {
        let mut toml = String::from("[defender]\nclient_id = \"app\"\n");
        if shared_file {
            toml += &format!("client_secret_file = {:?}\n", shared.display().to_string());
        }
        toml += "[[tenants]]\nname = \"contoso\"\ntenant_id = \"t1\"\n";
        if own_file {
            toml += &format!("client_secret_file = {:?}\n", own.display().to_string());
        }
        toml
    };
    let secret_of = |case: &Case, toml: &str| {
        let settings = case.tenants(toml);
        settings.tenants()[0].defender.client_secret().map(|secret| secret.expose_secret().to_owned())
    };
    let everything = Case::new()
        .env("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap())
        .env("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", "from-env");
    assert_eq!(secret_of(&everything, &config(true, true)).unwrap(), "own-file");
    assert_eq!(secret_of(&everything, &config(false, true)).unwrap(), "own-credential");

    std::fs::remove_file(credentials.join("client_secret_contoso")).unwrap();
    assert_eq!(secret_of(&everything, &config(false, true)).unwrap(), "shared-file");
    assert_eq!(secret_of(&everything, &config(false, false)).unwrap(), "shared-credential");
    std::fs::remove_file(credentials.join("client_secret")).unwrap();
    assert_eq!(secret_of(&everything, &config(false, false)).unwrap(), "from-env");

    let message = secret_of(&Case::new(), &config(false, false)).unwrap_err().to_string();
    assert_mentions(
        &message,
        &[
            "`tenants[0].client_secret_file`",
            "client_secret_contoso",
            "defender.client_secret_file",
            "SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET",
        ],
    );
    let settings = Case::new().tenants(&config(false, false));
    let message = settings.tenants()[0].defender.require_api_credentials().unwrap_err().to_string();
    assert_mentions(&message, &["`tenants[0].client_secret_file`"]);
}

#[test]
fn duplicate_names_name_both_entries() {
    let message = Case::new().reject_tenants(
        "[[tenants]]\nname = \"a\"\ntenant_id = \"t1\"\n[[tenants]]\nname = \"b\"\ntenant_id = \"t2\"\n\
         [[tenants]]\nname = \"a\"\ntenant_id = \"t3\"\n",
    );
    assert_mentions(&message, &["`tenants[2].name`", "tenants[0].name", "\"a\""]);
}

#[test]
fn one_tenant_id_with_one_client_id_twice_names_both_entries() {
    let message = Case::new().reject_tenants(
        "[defender]\nclient_id = \"app\"\n[[tenants]]\nname = \"a\"\ntenant_id = \"ABC\"\n\
         [[tenants]]\nname = \"b\"\ntenant_id = \"abc\"\n",
    );
    assert_mentions(&message, &["`tenants[1].tenant_id`", "tenants[0].tenant_id", "\"app\""]);

    // Another app registration consented in the same tenant has its own budget.
    let settings = Case::new().tenants(
        "[defender]\nclient_id = \"app\"\n[[tenants]]\nname = \"a\"\ntenant_id = \"abc\"\n\
         [[tenants]]\nname = \"b\"\ntenant_id = \"abc\"\nclient_id = \"other-app\"\n",
    );
    assert_eq!(settings.tenants().len(), 2);
}

#[test]
fn an_agent_configured_for_two_tenants_names_both_places() {
    let case = Case::new();
    let file = case.secret_in("b.txt", "# fabrikam\nb-1\nshared-id\n");
    let message = case.reject_tenants(&format!(
        "[[tenants]]\nname = \"a\"\ntenant_id = \"t1\"\nids = [\"a-1\", \"shared-id\"]\n\
         [[tenants]]\nname = \"b\"\ntenant_id = \"t2\"\nids_file = {:?}\n",
        file.display().to_string()
    ));
    assert_mentions(
        &message,
        &["`tenants[1].ids_file`", &format!("{}:3", file.display()), "tenants[0].ids[1]", "shared-id"],
    );

    let message = case.reject_tenants(
        "[[tenants]]\nname = \"a\"\ntenant_id = \"t1\"\nids = [\"x\"]\n\
         [[tenants]]\nname = \"b\"\ntenant_id = \"t2\"\nids = [\"y\", \"x\"]\n",
    );
    assert_mentions(&message, &["`tenants[1].ids[1]`", "tenants[0].ids[0]"]);
}

#[test]
fn shared_tenant_id_or_agent_ids_next_to_tenants_are_errors() {
    let entry = "[[tenants]]\nname = \"a\"\ntenant_id = \"t1\"\n";
    let message = Case::new().reject_tenants(&format!("[defender]\ntenant_id = \"t0\"\n{entry}"));
    assert_mentions(
        &message,
        &["`defender.tenant_id`", "[[tenants]] (tenants[0])", "tenant_id of its [[tenants]]"],
    );

    let message = Case::new().reject_tenants(&format!("[agents]\nids = [\"x\"]\n{entry}"));
    assert_mentions(&message, &["`agents.ids`", "[[tenants]] (tenants[0])", "track_all"]);
    let case = Case::new();
    let file = case.secret_in("ids.txt", "x\n");
    let message =
        case.reject_tenants(&format!("[agents]\nids_file = {:?}\n{entry}", file.display().to_string()));
    assert_mentions(&message, &["`agents.ids_file`"]);
}

#[test]
fn entries_are_checked_like_the_shared_sections() {
    let message = Case::new().reject_tenants(
        "[[tenants]]\ntenant_id = \"t1\"\n\
         [[tenants]]\nname = \"Contoso EU\"\ntenant_id = \"t2\"\n\
         [[tenants]]\nname = \"c\"\n\
         [[tenants]]\nname = \"d\"\ntenant_id = \"a/b\"\nwindows = [ { calls = 0, per = \"1m\" } ]\nmax_in_flight = 0\n\
         [[tenants]]\nname = \"e\"\ntenant_id = \"t5\"\nfetch_mode = \"bulk\"\n\
         [[tenants]]\nname = \"f\"\ntenant_id = \"t6\"\nids = [\"ok\", \"bad id\"]\ncolour = \"red\"\n",
    );
    assert_mentions(
        &message,
        &[
            "`tenants[0].name`",
            "is required; fix: name the tenant with 1 to 63 of a-z",
            "`tenants[1].name`",
            "\"Contoso EU\" contains 'C'",
            "`tenants[2].tenant_id`",
            "`tenants[3].tenant_id`",
            "\"a/b\" is neither",
            "`tenants[3].windows[0].calls`",
            "`tenants[3].max_in_flight`",
            "`tenants[4].fetch_mode`",
            "`tenants[5].colour`",
        ],
    );
}

#[test]
fn an_inherited_mistake_is_reported_once_at_its_shared_key() {
    let message = Case::new().reject_tenants(
        "[defender]\napi_base_url = \"ftp://x\"\n[[tenants]]\nname = \"a\"\ntenant_id = \"t1\"\n\
         [[tenants]]\nname = \"b\"\ntenant_id = \"t2\"\n",
    );
    assert_eq!(message.matches("api_base_url").count(), 1, "{message}");
    assert_mentions(&message, &["`defender.api_base_url`"]);
}

#[test]
fn environment_variables_override_an_entry_by_its_name() {
    let case = Case::new()
        .env("SCAN_AGENT_SYNC__TENANTS__FABRIKAM__CLIENT_ID", "env-app")
        .env("SCAN_AGENT_SYNC__TENANTS__FABRIKAM__MAX_IN_FLIGHT", "7")
        .env("SCAN_AGENT_SYNC__TENANTS__CONTOSO__WINDOWS", "5/1s")
        .env("SCAN_AGENT_SYNC__DEFENDER__CLOUD", "gcc");
    let settings = case.tenants(TWO);
    let [contoso, fabrikam] = settings.tenants() else { panic!("two tenants") };
    assert_eq!(fabrikam.defender.client_id, "env-app");
    assert_eq!(fabrikam.rate_limit.max_in_flight, 7);
    assert_eq!(contoso.defender.client_id, "shared-app");
    assert_eq!(contoso.rate_limit.windows, [RateWindow { calls: 5, per: Duration::from_secs(1) }]);
    assert_eq!(contoso.defender.cloud, Cloud::Gcc, "shared keys are overridden as before");

    let message = Case::new().env("SCAN_AGENT_SYNC__TENANTS__NORTHWIND__CLIENT_ID", "x").reject_tenants(TWO);
    assert_mentions(&message, &["SCAN_AGENT_SYNC__TENANTS__NORTHWIND__CLIENT_ID", "contoso, fabrikam"]);

    let message =
        Case::new().env("SCAN_AGENT_SYNC__TENANTS__CONTOSO__MAX_IN_FLIGHT", "0").reject_tenants(TWO);
    assert_mentions(
        &message,
        &["`tenants[0].max_in_flight` (SCAN_AGENT_SYNC__TENANTS__CONTOSO__MAX_IN_FLIGHT)"],
    );
}

#[test]
fn redacted_output_shows_every_tenant_and_loads_again() {
    let case = Case::new();
    let secret = case.secret_in("contoso_secret", "contoso-hunter2\n");
    let toml = TWO.replace(
        "ids = [\"contoso-a\", \"contoso-b\"]",
        &format!(
            "ids = [\"contoso-a\", \"contoso-b\"]\nclient_secret_file = {:?}",
            secret.display().to_string()
        ),
    );
    let settings = case.tenants(&toml);
    let shown = settings.redacted();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_mentions(
        &shown,
        &[
            "[[tenants]]\nname = \"contoso\"",
            &format!("client_secret_file = {:?}", secret.display().to_string()),
            "[[tenants]]\nname = \"fabrikam\"",
            "token_url = \"https://login.microsoftonline.com/22222222-2222-2222-2222-222222222222/oauth2/v2.0/token\"",
            "# secret: the systemd credential client_secret_fabrikam if passed, else the shared secret",
            "# 2 agent IDs in effect, 2 of them inline",
        ],
    );
    let reloaded = Case::new().settings(&shown);
    assert_eq!(reloaded.redacted(), shown);
}

/// The binary exits 78 before anything starts, listing every conflict with both places.
#[test]
fn check_config_exits_78_naming_both_places_of_every_conflict() {
    let case = Case::new();
    let path = case.secret_in(
        "config.toml",
        &format!(
            "{}[defender]\ntenant_id = \"t0\"\nclient_id = \"app\"\n\
             [[tenants]]\nname = \"a\"\ntenant_id = \"t1\"\nids = [\"x\"]\n\
             [[tenants]]\nname = \"a\"\ntenant_id = \"t1\"\nids = [\"x\"]\n",
            with("")
        ),
    );
    let output = support::output(
        support::binary().args(["--config", path.to_str().unwrap(), "check-config"]).stdin(Stdio::null()),
    );
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_mentions(
        &stderr,
        &[
            "`defender.tenant_id`",
            "`tenants[1].name`",
            "tenants[0].name",
            "`tenants[1].tenant_id`",
            "tenants[0].tenant_id",
            "`tenants[1].ids[0]`",
            "tenants[0].ids[0]",
        ],
    );
    assert!(output.stdout.is_empty(), "nothing starts: {:?}", String::from_utf8_lossy(&output.stdout));
}
