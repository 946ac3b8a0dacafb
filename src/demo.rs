//! `scan-agent-sync demo`: the whole product in one command, without a Defender tenant.
//!
//! The simulator runs in-process on a free port with a fleet that reports in, upgrades, goes
//! silent and disappears; the demo writes an ordinary configuration file pointing at it,
//! loads it through the normal loader, and runs a few accelerated sync cycles against a
//! dedicated database (`scan_agent_sync_demo`, recreated each time, never the user's own).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::config::Settings;
use crate::simulator::{self, FieldCase, SimulatorOptions};
use crate::store::database::recreate_database;
use crate::store::summary::{ScannerUpgrade, TableCounts};
use crate::store::{Store, describe};
use crate::sync::{CycleOptions, Syncer, Targets};

/// The server the demo uses when `DATABASE_URL` is unset: the local default install.
const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The demo's own database on that server.
const DEMO_DATABASE: &str = "scan_agent_sync_demo";
const CYCLES: usize = 5;
const CYCLE_INTERVAL: Duration = Duration::from_secs(2);
/// Small enough that every cycle fits the real 100-calls-a-minute window in by-id mode.
const AGENTS: usize = 16;
/// Short enough that agents the simulator silences go stale within the demo.
const STALE_AFTER: &str = "5s";

/// Runs the demo, printing what happens and the SQL to explore the result.
pub async fn run() -> anyhow::Result<()> {
    let database_url = prepare_database().await?;
    let sim = simulator::start(SimulatorOptions {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        agents: AGENTS,
        field_case: FieldCase::Mixed,
        evolve_every: CYCLE_INTERVAL,
        upgrade_share: 0.25,
        silent_share: 0.2,
        deleted_share: 0.1,
        seed: 7,
        ..SimulatorOptions::default()
    })
    .await?;
    println!("Defender API simulator: {} ({AGENTS} agents)", sim.base_url());

    let settings = demo_settings(&sim, &database_url)?;
    let store = Store::connect(&settings.database.url, settings.database.max_connections).await?;
    store.migrate().await?;
    store.set_stale_after(settings.stale.after).await?;
    // The demo's configuration has no [[tenants]]: its one tenant is the default.
    let tenant = &settings.tenants()[0];
    let syncer = Syncer::for_tenant(tenant, &settings.stale, store.clone())?;
    let targets = Targets { ids: tenant.agents.ids.clone(), track_all: false };

    for cycle in 1..=CYCLES {
        let report = syncer.run_cycle(&targets, &CycleOptions::default()).await?;
        println!(
            "cycle {cycle}/{CYCLES}: {}: {} fetched, {} new, {} changed, {} newly missing, {} API calls",
            report.status,
            report.fetched,
            report.changes.new,
            report.changes.changed,
            report.changes.went_missing,
            report.api_calls
        );
        if cycle < CYCLES {
            tokio::time::sleep(CYCLE_INTERVAL).await;
        }
    }
    summarize(&store, &sim).await?;
    println!("\nExplore it yourself: psql '{}'", redact_password(&database_url));
    print!("{EXAMPLE_SQL}");
    sim.shutdown().await
}

/// Recreates the demo database on the server of `DATABASE_URL` (or the local default).
async fn prepare_database() -> anyhow::Result<String> {
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    let options = PgConnectOptions::from_str(&server).context("DATABASE_URL is not a PostgreSQL URL")?;
    let mut admin = PgConnection::connect_with(&options).await.map_err(|error| {
        anyhow::anyhow!(
            "the demo needs a PostgreSQL server and none answered at {} ({error}). Start one \
             (Debian: `pg_ctlcluster 15 main start`; elsewhere `systemctl start postgresql`), \
             or set DATABASE_URL to a server where this user may create databases.",
            describe(&options)
        )
    })?;
    recreate_database(&mut admin, DEMO_DATABASE).await.context("recreating the demo database")?;
    let demo = options.database(DEMO_DATABASE);
    println!("Database: {} (recreated for the demo)", describe(&demo));
    Ok(url_for(&server, DEMO_DATABASE))
}

/// The same server URL with its database path replaced.
fn url_for(server: &str, database: &str) -> String {
    let (base, query) = server.split_once('?').map_or((server, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

fn redact_password(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if url[scheme + 3..at].contains(':') => {
            let user_end = scheme + 3 + url[scheme + 3..at].find(':').unwrap_or(0);
            format!("{}:[redacted]{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A configuration for the simulator, loaded through the normal loader and validation.
fn demo_settings(sim: &simulator::SimulatorHandle, database_url: &str) -> anyhow::Result<Settings> {
    let options = SimulatorOptions::default();
    let ids: Vec<String> = sim.agent_ids().iter().map(|id| format!("{id:?}")).collect();
    let toml = format!(
        "{defender}fetch_mode = \"by-id\"\nrequest_timeout = \"10s\"\n\n\
         [agents]\nids = [{ids}]\n\n[stale]\nafter = \"{STALE_AFTER}\"\n\n[http]\nlisten = \"\"\n",
        defender = sim.defender_config(),
        ids = ids.join(", "),
    );
    let path = std::env::temp_dir().join(format!("scan-agent-sync-demo-{}.toml", std::process::id()));
    std::fs::write(&path, toml)
        .with_context(|| format!("writing the demo configuration {}", path.display()))?;
    let env = HashMap::from([
        ("SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET".to_owned(), options.client_secret.clone()),
        ("SCAN_AGENT_SYNC__DATABASE__URL".to_owned(), database_url.to_owned()),
    ]);
    let loaded = Settings::load_with_env(&path, &env);
    let _ = std::fs::remove_file(&path);
    Ok(loaded?)
}

/// Prints what the cycles left in the tables.
async fn summarize(store: &Store, sim: &simulator::SimulatorHandle) -> anyhow::Result<()> {
    let TableCounts { agents, versions, last_seen, runs } = store.table_counts().await?;
    println!(
        "\nAfter {runs} cycles: {agents} agents, {versions} version rows, {last_seen} distinct lastSeen values"
    );
    let upgrades = store.scanner_upgrades().await?;
    println!("Version changes recorded: {}", upgrades.len());
    for ScannerUpgrade { agent_id, old, new } in upgrades.iter().take(8) {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "null".into());
        println!("  {agent_id}: scanner {} -> {}", show(old), show(new));
    }
    let stale = store.stale_agents(None).await?;
    println!("Stale or missing now (stale.after = {STALE_AFTER}): {}", stale.len());
    for agent in stale.iter().take(8) {
        let state = if agent.missing_since.is_some() { "missing" } else { "silent" };
        println!("  {} ({state}, last seen {:.0}s ago)", agent.agent_id, agent.stale_for_seconds);
    }
    let stats = sim.stats();
    println!(
        "Simulator: {} API requests served, {} answered 429 (the budget kept every window)",
        stats.api_requests, stats.throttled
    );
    Ok(())
}

const EXAMPLE_SQL: &str = r#"
-- Which scanner versions run where:
SELECT scanner_software_version, count(*) FROM scan_agents GROUP BY 1 ORDER BY 2 DESC;
-- Every version change, field by field, oldest first (more views: docs/analysts.md):
SELECT agent_id, field, old_value, new_value, changed_at FROM scan_agent_version_changes ORDER BY changed_at;
-- Agents stale now:
SELECT * FROM stale_scan_agents;
-- The cycles and the API calls they spent:
SELECT run_id, status, mode, agents_fetched, agents_changed, api_calls, throttled FROM sync_runs ORDER BY run_id;
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_url_keeps_the_server_and_replaces_the_database() {
        assert_eq!(url_for("postgres://u:p@h:5432/postgres", "d"), "postgres://u:p@h:5432/d");
        assert_eq!(url_for("postgres://h", "d"), "postgres://h/d");
        assert_eq!(url_for("postgres://h/x?sslmode=disable", "d"), "postgres://h/d?sslmode=disable");
        assert_eq!(redact_password("postgres://u:p@h/d"), "postgres://u:[redacted]@h/d");
        assert_eq!(redact_password("postgres://u@h/d"), "postgres://u@h/d");
    }
}
