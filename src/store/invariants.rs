//! The promises the tables keep whatever happened to the processes writing them (crashes,
//! restarts, several instances), as queries: `scan-agent-sync check` runs them, and the
//! crash test runs that command after killing the daemon many times.
//!
//! Each query returns one `subject` per violation (an agent ID, or the start of an
//! overfull rate interval), so the report can count them and name a few.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::{QueryContext, Store, StoreError, interval};
use crate::rate_window::RateWindow;

/// How many violating subjects a finding names: enough to start looking, short enough for
/// one line.
pub const EXAMPLES: usize = 5;

/// The outcome of one invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// A stable name for scripts, e.g. `contiguous_versions`.
    pub name: String,
    /// What must hold, in words.
    pub rule: String,
    /// How many subjects break it; 0 when it holds.
    pub violations: i64,
    /// Up to [`EXAMPLES`] of them, smallest first.
    pub examples: Vec<String>,
}

impl Finding {
    /// True when nothing breaks the invariant.
    pub fn holds(&self) -> bool {
        self.violations == 0
    }
}

/// The history invariants: name, rule, and a query yielding one `subject` per violation.
/// "Exactly one current version per agent, holding the agent's attributes" needs no query
/// since migration 20261128000006: the current version is the agent's state row.
const HISTORY: [(&str, &str, &str); 4] = [
    (
        "contiguous_versions",
        "each agent's versions, by valid_from, end where the next begins (no gap, no overlap) \
         and only the last is open",
        "SELECT DISTINCT agent_id AS subject
         FROM (SELECT agent_id, valid_from, valid_to,
                      lead(valid_from) OVER (PARTITION BY agent_id ORDER BY valid_from, version_id)
                          AS next_from
               FROM scan_agent_versions) v
         WHERE (next_from IS NULL AND valid_to IS NOT NULL)
            OR (next_from IS NOT NULL
                AND (valid_to IS DISTINCT FROM next_from OR valid_from >= next_from))",
    ),
    (
        // Retention drops lastSeen rows older than its horizon, agents never: an agent
        // silent for longer keeps its state row, and its last lastSeen row may be gone.
        "last_seen_kept",
        "scan_agent_last_seen holds each (agent, last_seen) once, and every agent's current \
         last_seen among them unless retention has passed it (retention_runs.kept_from)",
        "SELECT agent_id AS subject FROM scan_agent_last_seen
         GROUP BY agent_id, last_seen HAVING count(*) > 1
         UNION
         SELECT a.agent_id FROM scan_agent_state a
         WHERE a.last_seen >= coalesce((SELECT r.kept_from FROM retention_runs r
                                        WHERE r.table_name = 'scan_agent_last_seen'), '-infinity')
           AND NOT EXISTS (SELECT 1 FROM scan_agent_last_seen s
                           WHERE s.agent_id = a.agent_id AND s.last_seen = a.last_seen)",
    ),
    (
        // No foreign keys hold this: the diff engine writes both sides in one transaction,
        // and checking it per inserted row cost more than the rest of a batch.
        "history_has_agents",
        "every agent in scan_agent_versions and scan_agent_last_seen is in scan_agents",
        "SELECT v.agent_id AS subject FROM scan_agent_version_history v
         WHERE NOT EXISTS (SELECT 1 FROM scan_agent_state a WHERE a.agent_id = v.agent_id)
         UNION
         SELECT s.agent_id FROM scan_agent_last_seen s
         WHERE NOT EXISTS (SELECT 1 FROM scan_agent_state a WHERE a.agent_id = s.agent_id)",
    ),
    (
        // An agent is stored under one tenant and never moved (the diff engine refuses an
        // agent another tenant returns), so its history carries its state row's tenant.
        "history_of_one_tenant",
        "every row of scan_agent_versions and scan_agent_last_seen has its agent's tenant",
        "SELECT v.agent_id AS subject FROM scan_agent_version_history v
         JOIN scan_agent_state a ON a.agent_id = v.agent_id
         WHERE a.tenant <> v.tenant
         UNION
         SELECT s.agent_id FROM scan_agent_last_seen s
         JOIN scan_agent_state a ON a.agent_id = s.agent_id
         WHERE a.tenant <> s.tenant",
    ),
];

/// The ledger invariant for one window: a call whose `calls`-th successor in the ledger
/// came less than `per` after it opens an interval of length `per` holding `calls + 1`
/// calls. Intervals are half-open, `[t, t + per)`, as the API counts them. Every ledger row
/// counts, answered or not: a call whose answer never came may still have arrived. Each
/// tenant's calls are counted apart: the API's limits are per app registration and tenant.
const LEDGER: &str = "SELECT called_at AS subject_at
     FROM (SELECT called_at,
                  lead(called_at, $1::int) OVER (PARTITION BY tenant ORDER BY called_at, call_id) AS nth_after
           FROM api_calls) c
     WHERE nth_after - called_at < $2::interval";

impl Store {
    /// Runs every invariant: the history ones, then one per configured rate window.
    pub async fn check_invariants(&self, windows: &[RateWindow]) -> Result<Vec<Finding>, StoreError> {
        let mut findings = Vec::with_capacity(HISTORY.len() + windows.len());
        for (name, rule, subjects) in HISTORY {
            let (violations, examples): (i64, Vec<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT count(*), coalesce((array_agg(subject ORDER BY subject))[1:{EXAMPLES}], '{{}}')
                 FROM ({subjects}) violations"
            )))
            .fetch_one(&self.pool)
            .await
            .during("checking a history invariant")?;
            findings.push(Finding { name: name.to_owned(), rule: rule.to_owned(), violations, examples });
        }
        for window in windows {
            let (violations, examples): (i64, Vec<DateTime<Utc>>) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT count(*), coalesce((array_agg(subject_at ORDER BY subject_at))[1:{EXAMPLES}], '{{}}')
                 FROM ({LEDGER}) violations"
            )))
                .bind(i32::try_from(window.calls).unwrap_or(i32::MAX))
                .bind(interval(window.per))
                .fetch_one(&self.pool)
                .await
                .during("checking the call ledger against a rate window")?;
            findings.push(Finding {
                name: format!("rate_window_{}", window.label()),
                rule: format!(
                    "api_calls holds at most {} calls of one tenant in any interval of {}",
                    window.calls,
                    humantime::format_duration(window.per)
                ),
                violations,
                examples: examples
                    .into_iter()
                    .map(|at| format!("interval from {}", at.to_rfc3339_opts(SecondsFormat::Micros, true)))
                    .collect(),
            });
        }
        Ok(findings)
    }
}
