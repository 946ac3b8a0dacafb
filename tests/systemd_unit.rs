//! The shipped unit passes `systemd-analyze verify` and rates 2.0 or lower ("OK") in
//! `systemd-analyze security`. These fail, never skip, when the tool is missing: CI
//! installs it (`apt-get install -y systemd`), and a skipped check would hide a regression.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = "scan-agent-sync.service";
const INSTALLED_BINARY: &str = "/usr/bin/scan-agent-sync";
const MAX_EXPOSURE: f64 = 2.0;

/// The unit copied into a temporary directory with `ExecStart` pointing at the binary this
/// test run built: `verify` insists the executable exists, and this one is the real thing.
fn unit_under_test(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(UNIT))
        .expect("reading systemd/scan-agent-sync.service");
    assert!(shipped.contains(&format!("ExecStart={INSTALLED_BINARY} run")), "ExecStart changed");
    let path = dir.join(UNIT);
    std::fs::write(&path, shipped.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_scan-agent-sync")))
        .expect("writing the unit copy");
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Output {
    Command::new("systemd-analyze").args(args).arg(unit).output().unwrap_or_else(|e| {
        panic!(
            "cannot run systemd-analyze ({e}); it is needed to check the unit file. \
             Install it with `apt-get install -y systemd` (Debian/Ubuntu; `.ci/run` does this)."
        )
    })
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let output = systemd_analyze(&["verify"], &unit_under_test(dir.path()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stderr.trim().is_empty() && stdout.trim().is_empty(),
        "systemd-analyze verify is not clean ({}):\n{stdout}{stderr}",
        output.status
    );
}

#[test]
fn the_unit_rates_ok_in_systemd_analyze_security() {
    let dir = tempfile::tempdir().unwrap();
    let output = systemd_analyze(&["security", "--offline=true"], &unit_under_test(dir.path()));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "systemd-analyze security failed:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let score: f64 = report
        .lines()
        .find_map(|line| {
            line.split_once(&format!("Overall exposure level for {UNIT}: "))?
                .1
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    assert!(score <= MAX_EXPOSURE, "exposure {score} is above {MAX_EXPOSURE}:\n{report}");
}
