//! The binary as operators run it: flags, output, exit codes, and what it does to a real
//! PostgreSQL database.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sqlx::Connection;

/// Exit code for an invalid configuration (EX_CONFIG).
const EX_CONFIG: i32 = 78;

/// Passwords and secrets the tests configure; none may ever be printed.
const DB_PASSWORD: &str = "db-hunter2";
const CLIENT_SECRET: &str = "api-s3cret-value";

/// What a run of the binary produced.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts that neither stream contains any configured secret.
    #[track_caller]
    fn assert_no_secrets(&self) {
        for secret in [DB_PASSWORD, CLIENT_SECRET] {
            assert!(
                !self.stdout.contains(secret) && !self.stderr.contains(secret),
                "{secret:?} was printed:\n{}\n{}",
                self.stdout,
                self.stderr
            );
        }
    }
}

/// The binary with none of the caller's overrides, no stdin, and `envs` set.
fn run(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let output =
        support::output(support::binary().args(args).envs(envs.iter().copied()).stdin(Stdio::null()));
    Run {
        code: output.status.code().expect("the binary exits rather than being killed"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// Runs `command` with `--config path`.
fn run_with(config: &Path, command: &str, envs: &[(&str, &str)]) -> Run {
    run(&["--config", config.to_str().expect("UTF-8 temp path"), command], envs)
}

/// A config file holding `toml` in a fresh temporary directory (kept alive by the caller).
fn config_file(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).expect("write the config file");
    (dir, path)
}

/// A complete configuration with a database password in the URL.
fn valid_config() -> String {
    format!(
        "[defender]\ntenant_id = \"11111111-2222-3333-4444-555555555555\"\nclient_id = \"sync-app\"\n\n\
         [database]\nurl = \"postgres://sync:{DB_PASSWORD}@db.example:5432/scan_agents\"\n"
    )
}

#[test]
fn help_lists_every_subcommand() {
    let help = run(&["--help"], &[]);
    assert_eq!(help.code, 0, "{}", help.stderr);
    for command in ["run", "sync", "migrate", "check-config", "stale", "history", "check", "simulate", "demo"]
    {
        assert!(
            help.stdout.lines().any(|line| line.trim_start().starts_with(&format!("{command} "))),
            "{command} missing from:\n{}",
            help.stdout
        );
    }
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let (_dir, path) = config_file(&valid_config());
    let out = run_with(&path, "check-config", &[("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", CLIENT_SECRET)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for expected in [
        "client_id = \"sync-app\"",
        "client_secret = \"[redacted]\"",
        "url = \"postgres://sync:[redacted]@db.example:5432/scan_agents\"",
        "# configuration: OK",
        "# API credentials: OK",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} missing from:\n{}", out.stdout);
    }
    out.assert_no_secrets();
}

#[test]
fn check_config_without_a_client_secret_exits_78_naming_the_ways_to_set_one() {
    let (_dir, path) = config_file(&valid_config());
    let out = run_with(&path, "check-config", &[]);
    assert_eq!(out.code, EX_CONFIG, "{}", out.stderr);
    assert!(out.stderr.contains("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET"), "{}", out.stderr);
    assert!(!out.stdout.contains("API credentials: OK"), "{}", out.stdout);
}

#[test]
fn invalid_config_exits_78_naming_the_key_before_anything_starts() {
    let (_dir, path) = config_file(&format!("{}\n[stale]\nafter = \"1x\"\n", valid_config()));
    for command in ["check-config", "migrate"] {
        let out = run_with(&path, command, &[]);
        assert_eq!(out.code, EX_CONFIG, "{command}: {}", out.stderr);
        assert!(out.stderr.contains("`stale.after`"), "{command}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{command} printed {:?}", out.stdout);
        out.assert_no_secrets();
    }
}

#[test]
fn missing_config_file_exits_78_naming_the_path_and_how_to_choose_another() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("absent.toml");
    let missing = missing.to_str().expect("UTF-8 temp path");
    let by_flag = run(&["--config", missing, "migrate"], &[]);
    let by_env = run(&["migrate"], &[("SCAN_AGENT_SYNC_CONFIG", missing)]);
    for out in [by_flag, by_env] {
        assert_eq!(out.code, EX_CONFIG, "{}", out.stderr);
        assert!(out.stderr.contains(missing) && out.stderr.contains("--config"), "{}", out.stderr);
    }
}

#[tokio::test]
async fn migrate_creates_the_tables_then_reports_up_to_date() {
    let url = support::database_url(&support::fresh_database().await);
    let (_dir, path) = config_file("");
    let env = [("SCAN_AGENT_SYNC__DATABASE__URL", url.as_str())];

    let first = run_with(&path, "migrate", &env);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.contains("applied migration"), "{}", first.stdout);

    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect to the migrated database");
    let relations: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("list the tables");
    for expected in [
        "api_calls",
        "scan_agent_last_seen",
        "scan_agent_versions",
        "scan_agents",
        "stale_scan_agents",
        "sync_runs",
    ] {
        assert!(relations.iter().any(|name| name == expected), "{expected} missing from {relations:?}");
    }

    let second = run_with(&path, "migrate", &env);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stdout.contains("up to date"), "{}", second.stdout);
    assert!(!second.stdout.contains("applied migration"), "{}", second.stdout);
}

#[test]
fn migrate_against_an_unreachable_database_names_the_host_and_the_fix_but_not_the_password() {
    let (_dir, path) = config_file("");
    let url = format!("postgres://sync:{DB_PASSWORD}@127.0.0.1:1/scan_agents");
    let out = run_with(&path, "migrate", &[("SCAN_AGENT_SYNC__DATABASE__URL", &url)]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("127.0.0.1:1/scan_agents"), "{}", out.stderr);
    assert!(out.stderr.contains("pg_ctlcluster"), "{}", out.stderr);
    out.assert_no_secrets();
}

/// Two `[[tenants]]` entries sharing the app registration, with an unreachable database: the
/// tenant flags are checked before anything connects.
fn two_tenants_config() -> String {
    format!(
        "[defender]\nclient_id = \"sync-app\"\n\n\
         [database]\nurl = \"postgres://sync:{DB_PASSWORD}@127.0.0.1:9/scan_agents\"\n\n\
         [[tenants]]\nname = \"contoso\"\ntenant_id = \"t1\"\nids = [\"a\"]\n\n\
         [[tenants]]\nname = \"fabrikam\"\ntenant_id = \"t2\"\ntrack_all = true\n"
    )
}

#[test]
fn an_unknown_tenant_flag_exits_78_listing_the_configured_tenants() {
    let (_dir, path) = config_file(&two_tenants_config());
    let config = path.to_str().expect("UTF-8 temp path");
    for command in ["sync", "stale"] {
        let out = run(
            &["--config", config, command, "--tenant", "contoso", "--tenant", "northwind"],
            &[("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", CLIENT_SECRET)],
        );
        assert_eq!(out.code, EX_CONFIG, "{command}: {}", out.stderr);
        for expected in ["--tenant", "\"northwind\" is not a configured tenant", "contoso, fabrikam"] {
            assert!(out.stderr.contains(expected), "{command}: {expected:?} missing from {}", out.stderr);
        }
        out.assert_no_secrets();
    }
}

#[test]
fn check_config_names_every_tenant() {
    let (_dir, path) = config_file(&two_tenants_config());
    let out = run_with(&path, "check-config", &[("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", CLIENT_SECRET)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for expected in [
        "[[tenants]]\nname = \"contoso\"",
        "[[tenants]]\nname = \"fabrikam\"",
        "# API credentials: OK for tenant contoso",
        "# API credentials: OK for tenant fabrikam",
    ] {
        assert!(out.stdout.contains(expected), "{expected:?} missing from:\n{}", out.stdout);
    }
    out.assert_no_secrets();
}

/// `sync --tenant` syncs the named tenant only, through its own token of the partner-model
/// simulator; without the flag, every tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_tenant_syncs_only_the_named_tenants() {
    use scan_agent_sync::simulator::{self, SimulatorOptions};

    let sim = simulator::start(SimulatorOptions { tenants: 2, ..SimulatorOptions::frozen(4) }).await.unwrap();
    let tenants = sim.tenants();
    let url = support::database_url(&support::fresh_database().await);
    let (_dir, path) = config_file(&format!(
        "{}\n[database]\nurl = \"{url}\"\n\n\
         [[tenants]]\nname = \"first\"\ntenant_id = \"{}\"\ntrack_all = true\n\n\
         [[tenants]]\nname = \"second\"\ntenant_id = \"{}\"\ntrack_all = true\n",
        sim.partner_defender_config(),
        tenants[0].tenant_id(),
        tenants[1].tenant_id(),
    ));
    let config = path.to_str().expect("UTF-8 temp path").to_owned();
    let env = [("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET", "sim-secret")];
    let stored = || async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        let ids: Vec<String> = sqlx::query_scalar("SELECT agent_id FROM scan_agents ORDER BY 1")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        ids
    };
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };

    let sync = |extra: &'static [&'static str]| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> =
                ["--config", config.as_str(), "sync"].into_iter().chain(extra.iter().copied()).collect();
            run(&args, &env)
        })
    };
    let out = sync(&["--tenant", "second"]).await.unwrap();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(stored().await, sorted(tenants[1].agent_ids()), "only the second tenant's fleet");
    assert_eq!(tenants[0].stats().api_requests, 0, "the first tenant was not called");

    let out = sync(&[]).await.unwrap();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let both = sorted(tenants.iter().flat_map(|tenant| tenant.agent_ids()).collect());
    assert_eq!(stored().await, both);
    sim.shutdown().await.unwrap();
}
