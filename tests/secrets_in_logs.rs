//! No secret (client secret, access token, database password) in anything the product logs or
//! prints: checked on a deliberately troubled, maximally verbose run here, and over what every
//! other test kept (`support::keep_log`) by the scan `.ci/run` starts after the whole suite.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use scan_agent_sync::simulator::{self, Faults, SimulatorOptions};

/// The client secret of the troubled run; the simulator accepts only it.
const CLIENT_SECRET: &str = "cl13nt-s3cret-of-the-scan";
/// A database password: trust authentication never asks for it, so the run still connects.
const DB_PASSWORD: &str = "db-pa55word-of-the-scan";

/// Every secret the suite configures anywhere, so the suite-wide scan knows what to look for:
/// the simulator's default client secret, the passwords and secrets of tests/cli.rs and
/// tests/config.rs, wiremock's token in tests/defender.rs, the wrong secret of
/// tests/tenant_isolation.rs, and this file's own.
const SUITE_SECRETS: [&str; 7] = [
    "sim-secret",
    "db-hunter2",
    "api-s3cret-value",
    "eyJ-access-token-never-shown",
    "not-the-secret-of-contoso",
    CLIENT_SECRET,
    DB_PASSWORD,
];

/// The simulator issues access tokens as `sim.` and 64 hex digits.
const TOKEN_PREFIX: &str = "sim.";
const TOKEN_HEX_DIGITS: usize = 64;

/// The test binaries that must have kept output before the suite-wide scan means anything:
/// the CLI, the daemon, the Defender client, alerting, the faults matrix and the crash loop.
const EXPECTED_SOURCES: [&str; 6] = ["cli", "daemon", "defender", "alerts", "faults", "crash_consistency"];

/// Where `text` holds a secret: each secret or simulator token found, by name.
fn secrets_in(text: &str) -> Vec<String> {
    let mut found: Vec<String> =
        SUITE_SECRETS.iter().filter(|secret| text.contains(**secret)).map(|s| format!("{s:?}")).collect();
    let tokens = text.match_indices(TOKEN_PREFIX).filter(|(at, _)| {
        let digits = &text.as_bytes()[at + TOKEN_PREFIX.len()..];
        digits.len() >= TOKEN_HEX_DIGITS && digits[..TOKEN_HEX_DIGITS].iter().all(u8::is_ascii_hexdigit)
    });
    found.extend(tokens.map(|(at, _)| format!("an access token at byte {at}")));
    found
}

#[test]
fn the_token_pattern_finds_tokens_and_nothing_else() {
    let token = format!("Bearer {TOKEN_PREFIX}{}", "0123456789abcdef".repeat(4));
    assert_eq!(secrets_in(&token), ["an access token at byte 7"]);
    assert!(secrets_in("sim.example.com and sim.12ab").is_empty());
    assert_eq!(secrets_in("url=postgres://u:db-hunter2@h"), ["\"db-hunter2\""]);
}

/// Runs the binary with `args` against `config`, returning everything it printed.
fn run(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut command = support::binary();
    command.arg("--config").arg(config).args(args).stdin(Stdio::null());
    let output = support::output(&mut command);
    let printed = String::from_utf8_lossy(&[&output.stdout[..], &output.stderr[..]].concat()).into_owned();
    (output.status.code(), printed)
}

/// A sync that meets resets, 5xx, malformed JSON, HTML pages, token endpoint failures and a
/// rejected secret, logged at trace level
/// in both formats, prints no secret: not in requests, retries, errors or the dry-run diff.
#[tokio::test(flavor = "multi_thread")]
async fn a_troubled_run_at_trace_level_prints_no_secret() {
    let sim = simulator::start(SimulatorOptions {
        client_secret: CLIENT_SECRET.to_owned(),
        ..SimulatorOptions::frozen(12)
    })
    .await
    .expect("starting the simulator");
    sim.set_faults(Faults {
        error_rate: 0.2,
        malformed_rate: 0.1,
        reset_rate: 0.1,
        wrong_content_type_rate: 0.05,
        token_error_rate: 0.2,
        ..Faults::default()
    });
    let database = support::fresh_database().await;
    let url =
        support::database_url(&database).replacen("://postgres@", &format!("://postgres:{DB_PASSWORD}@"), 1);
    assert!(url.contains(DB_PASSWORD), "the password must be in the URL the binary uses: {url}");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).expect("writing the secret file");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let config = |secret_file: &Path| {
        let path = dir.path().join("config.toml");
        let toml = format!(
            "{defender}client_secret_file = {secret:?}\nfetch_mode = \"by-id\"\nmax_retries = 1\n\n\
             [agents]\nids = {ids:?}\n\n[database]\nurl = \"{url}\"\n",
            defender = sim.defender_config(),
            secret = secret_file.to_str().expect("a UTF-8 path"),
            ids = [sim.agent_ids(), vec!["not-an-agent".to_owned()]].concat(),
        );
        std::fs::write(&path, toml).expect("writing the config file");
        path
    };
    let good = config(&secret_file);

    let mut printed = Vec::new();
    for args in [
        &["migrate"][..],
        &["-vvvv", "check-config", "--connect"],
        &["-vvvv", "--log-format", "json", "sync"],
        &["-vvvv", "sync", "--dry-run"],
        &["-vvvv", "stale", "--json"],
    ] {
        let (code, output) = run(&good, args);
        assert!(code.is_some(), "{args:?} was killed:\n{output}");
        printed.push((args.join(" "), output));
    }
    let requests = sim.request_log().len();
    assert!(requests > 12, "the runs should have called the API, the simulator saw {requests} requests");

    // A secret the token endpoint rejects: the error path quotes the answer, never the secret.
    std::fs::write(&secret_file, "wr0ng-but-still-s3cret-value\n").expect("rewriting the secret file");
    let (code, output) = run(&good, &["-vvvv", "check-config", "--connect"]);
    assert_eq!(code, Some(1), "a rejected secret fails the check:\n{output}");
    assert!(output.contains("client secret is wrong"), "the error should say what to fix:\n{output}");
    assert!(!output.contains("wr0ng-but-still-s3cret-value"), "the rejected secret was printed:\n{output}");
    printed.push(("check-config --connect with a rejected secret".to_owned(), output));

    for (what, output) in &printed {
        let found = secrets_in(output);
        assert!(found.is_empty(), "`{what}` printed {found:?}:\n{output}");
    }
}

/// Scans what every other test kept. `.ci/run` runs it after the whole suite, so it is ignored
/// in a plain `cargo test` (where it would race the tests whose output it scans).
#[test]
#[ignore = "run by .ci/run after the whole suite: it scans what the other tests kept"]
fn the_whole_suite_logged_no_secret() {
    let dir = support::kept_logs_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|error| {
        panic!("no kept logs in {} ({error}); run the whole suite first (bash .ci/run)", dir.display())
    });
    let mut sources = BTreeSet::new();
    let mut files = 0;
    for entry in entries {
        let path = entry.expect("listing the kept logs").path();
        let text = std::fs::read(&path).expect("reading a kept log");
        let found = secrets_in(&String::from_utf8_lossy(&text));
        assert!(found.is_empty(), "{} holds {found:?}", path.display());
        let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
        // Named `<test binary>-<cargo hash>-<pid>-<n>-<label>.log`.
        sources.insert(name.split('-').next().unwrap_or_default().to_owned());
        files += 1;
    }
    for expected in EXPECTED_SOURCES {
        assert!(
            sources.contains(expected),
            "no kept output from tests/{expected}.rs among {sources:?} ({files} files in {}); \
             run the whole suite first (bash .ci/run)",
            dir.display()
        );
    }
    println!("scanned {files} kept logs from {} test binaries: no secret", sources.len());
}
