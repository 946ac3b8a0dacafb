//! `scan-agent-sync check`: whether the tables keep the promises of PRODUCT.md ("Diff and
//! history", "Budget"), one line per invariant.

use std::fmt;

use chrono::SecondsFormat;
use serde::Serialize;

use crate::rate_window::RateWindow;
use crate::store::invariants::Finding;
use crate::store::retention::LastPrune;
use crate::store::{Store, StoreError};

/// Every invariant's outcome. `--json` prints the bare array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// The retention job's last run per table, printed after the invariants (the JSON stays
    /// the bare array of findings scripts read).
    #[serde(skip)]
    pub last_prunes: Vec<LastPrune>,
}

impl CheckReport {
    /// True when every invariant holds (the command exits 0, else 1).
    pub fn all_hold(&self) -> bool {
        self.findings.iter().all(Finding::holds)
    }
}

/// Runs every invariant against the database, the ledger ones for `windows` (the
/// configured `rate_limit.windows`).
pub async fn check_report(store: &Store, windows: &[RateWindow]) -> Result<CheckReport, StoreError> {
    Ok(CheckReport {
        findings: store.check_invariants(windows).await?,
        last_prunes: store.last_prunes().await?,
    })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            if finding.holds() {
                writeln!(f, "ok        {}: {}", finding.name, finding.rule)?;
            } else {
                writeln!(
                    f,
                    "VIOLATED  {}: {} ({} violation(s), e.g. {})",
                    finding.name,
                    finding.rule,
                    finding.violations,
                    finding.examples.join(", ")
                )?;
            }
        }
        let broken = self.findings.iter().filter(|finding| !finding.holds()).count();
        match broken {
            0 => writeln!(f, "all {} invariants hold", self.findings.len())?,
            n => writeln!(f, "{n} of {} invariants violated", self.findings.len())?,
        }
        for prune in &self.last_prunes {
            let kept = match prune.kept_from {
                Some(from) => format!("kept from {}", from.to_rfc3339_opts(SecondsFormat::Secs, true)),
                None => "kept forever".to_owned(),
            };
            writeln!(
                f,
                "retention {}: {kept}; last run {} deleted {} rows",
                prune.table_name,
                prune.last_run_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                prune.deleted_rows
            )?;
        }
        Ok(())
    }
}
