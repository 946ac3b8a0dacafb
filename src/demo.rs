//! `scan-agent-sync demo`: the whole product in one command, without a Defender tenant.
//!
//! The simulator runs in-process on a free port and serves two tenants, as Defender's
//! partner model does (one app registration, a token and a budget per tenant), each with a
//! fleet that reports in, upgrades, goes silent and disappears. The demo writes an ordinary
//! configuration file with two `[[tenants]]` pointing at it, loads it through the normal
//! loader, and runs a few accelerated sync cycles of both tenants at once against a
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
/// Agents per tenant: small enough that every by-ID cycle fits the real 100-calls-a-minute
/// window (each tenant has its own).
const AGENTS: usize = 16;
/// Short enough that agents the simulator silences go stale within the demo.
const STALE_AFTER: &str = "5s";
/// The `[[tenants]]` entries, in the simulator's tenant order, and whether each tracks every
/// agent the list returns (one call a page) rather than its agents by ID (one call each):
/// the demo shows both ways of choosing agents.
const TENANTS: [(&str, bool); 2] = [("contoso", false), ("fabrikam", true)];

/// Runs the demo, printing what happens and the SQL to explore the result.
pub async fn run() -> anyhow::Result<()> {
    let database_url = prepare_database().await?;
    let sim = simulator::start(simulator_options()).await?;
    println!("Defender API simulator: {} ({} tenants of {AGENTS} agents)", sim.base_url(), TENANTS.len());

    let settings = demo_settings(&sim, &database_url)?;
    let store = Store::connect(&settings.database.url, settings.database.max_connections).await?;
    store.migrate().await?;
    store.set_stale_after(settings.stale.after).await?;
    let mut tenants = Vec::new();
    for tenant in settings.tenants() {
        let targets = Targets { ids: tenant.agents.ids.clone(), track_all: tenant.agents.track_all };
        let tracks = match targets.track_all {
            true => "every agent the list returns".to_owned(),
            false => format!("{} agents by ID", targets.ids.len()),
        };
        println!("Tenant {} (tenant ID {}): {tracks}", tenant.name, tenant.defender.tenant_id);
        tenants.push((
            tenant.name.clone(),
            Syncer::for_tenant(tenant, &settings.stale, store.clone())?,
            targets,
        ));
    }

    for cycle in 1..=CYCLES {
        // One task per tenant, as the daemon runs them: the tenants' cycles overlap.
        let running: Vec<_> = tenants
            .iter()
            .map(|(name, syncer, targets)| {
                let (syncer, targets) = (syncer.clone(), targets.clone());
                (
                    name,
                    tokio::spawn(async move { syncer.run_cycle(&targets, &CycleOptions::default()).await }),
                )
            })
            .collect();
        for (name, task) in running {
            let report = task.await.context("a demo sync cycle panicked")??;
            println!(
                "cycle {cycle}/{CYCLES} {name}: {}: {} fetched, {} new, {} changed, {} newly missing, {} API calls",
                report.status,
                report.fetched,
                report.changes.new,
                report.changes.changed,
                report.changes.went_missing,
                report.api_calls
            );
        }
        if cycle < CYCLES {
            tokio::time::sleep(CYCLE_INTERVAL).await;
        }
    }
    summarize(&store, &sim).await?;
    println!("\nExplore it yourself: psql '{}'", redact_password(&database_url));
    print!("{EXAMPLE_SQL}");
    sim.shutdown().await
}

/// Two tenants whose fleets change every cycle: agents report in, upgrade, go silent and
/// disappear, on a free loopback port.
fn simulator_options() -> SimulatorOptions {
    SimulatorOptions {
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        agents: AGENTS,
        tenants: TENANTS.len(),
        field_case: FieldCase::Mixed,
        evolve_every: CYCLE_INTERVAL,
        upgrade_share: 0.25,
        silent_share: 0.2,
        deleted_share: 0.1,
        seed: 7,
        ..SimulatorOptions::default()
    }
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

/// A configuration for the simulator, loaded through the normal loader and validation: the
/// shared `[defender]` of the partner model and one `[[tenants]]` entry per simulated tenant.
fn demo_settings(sim: &simulator::SimulatorHandle, database_url: &str) -> anyhow::Result<Settings> {
    let options = SimulatorOptions::default();
    let mut toml = format!(
        "{defender}request_timeout = \"10s\"\n\n[stale]\nafter = \"{STALE_AFTER}\"\n\n[http]\nlisten = \"\"\n",
        defender = sim.partner_defender_config(),
    );
    for ((name, track_all), tenant) in TENANTS.iter().zip(sim.tenants()) {
        let agents = match track_all {
            true => "fetch_mode = \"list\"\ntrack_all = true".to_owned(),
            false => {
                let ids: Vec<String> = tenant.agent_ids().iter().map(|id| format!("{id:?}")).collect();
                format!("fetch_mode = \"by-id\"\nids = [{}]", ids.join(", "))
            }
        };
        toml +=
            &format!("\n[[tenants]]\nname = \"{name}\"\ntenant_id = \"{}\"\n{agents}\n", tenant.tenant_id());
    }
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

/// Prints what the cycles left in the tables, tenant by tenant.
async fn summarize(store: &Store, sim: &simulator::SimulatorHandle) -> anyhow::Result<()> {
    let upgrades = store.scanner_upgrades().await?;
    println!("\nAfter {CYCLES} cycles (stale.after = {STALE_AFTER}):");
    for TableCounts { tenant, agents, versions, last_seen, runs, silent, missing } in
        store.table_counts().await?
    {
        println!(
            "{tenant}: {runs} runs, {agents} agents ({silent} silent, {missing} missing), {versions} version rows, \
             {last_seen} distinct lastSeen values"
        );
        let theirs: Vec<&ScannerUpgrade> =
            upgrades.iter().filter(|upgrade| upgrade.tenant == tenant).collect();
        println!("  version changes recorded: {}", theirs.len());
        for ScannerUpgrade { agent_id, old, new, .. } in theirs.into_iter().take(4) {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "null".into());
            println!("    {agent_id}: scanner {} -> {}", show(old), show(new));
        }
    }
    let stale = store.stale_agents(None).await?;
    println!("Stale or missing now (stale.after = {STALE_AFTER}): {}", stale.len());
    for agent in stale.iter().take(8) {
        let state = if agent.missing_since.is_some() { "missing" } else { "silent" };
        println!(
            "  {} {} ({state}, last seen {:.0}s ago)",
            agent.tenant, agent.agent_id, agent.stale_for_seconds
        );
    }
    for ((name, _), tenant) in TENANTS.iter().zip(sim.tenants()) {
        let stats = tenant.stats();
        println!(
            "Simulator, {name} ({}): {} API requests served, {} answered 429",
            tenant.tenant_id(),
            stats.api_requests,
            stats.throttled
        );
    }
    Ok(())
}

const EXAMPLE_SQL: &str = r#"
-- Each tenant's agents, and how many of them are gone from its API:
SELECT tenant, count(*) AS agents, count(missing_since) AS missing FROM scan_agents GROUP BY tenant ORDER BY tenant;
-- Which scanner versions run where, per tenant (percent of the tenant's agents):
SELECT tenant, scanner_software_version, agents, percent FROM scan_agent_version_distribution ORDER BY tenant, agents DESC;
-- One tenant's version changes, field by field, oldest first (more views: docs/analysts.md):
SELECT agent_id, field, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE tenant = 'contoso' ORDER BY changed_at;
-- Agents stale now, per tenant:
SELECT tenant, agent_id, stale_for, missing_since FROM stale_scan_agents ORDER BY tenant, last_seen;
-- Each tenant's cycles and the API calls they spent (each tenant has its own budget):
SELECT tenant, run_id, status, mode, agents_fetched, agents_changed, api_calls, throttled FROM sync_runs ORDER BY tenant, run_id;
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

    /// The written configuration passes the normal loader's validation, with each simulated
    /// tenant under its name and its own way of choosing agents.
    #[tokio::test]
    async fn demo_configuration_has_both_tenants() {
        let sim = simulator::start(simulator_options()).await.unwrap();
        let settings = demo_settings(&sim, "postgres://demo@127.0.0.1/demo").unwrap();
        let tenants = settings.tenants();
        let names: Vec<&str> = tenants.iter().map(|tenant| &*tenant.name).collect();
        assert_eq!(names, ["contoso", "fabrikam"]);
        assert_eq!(tenants[0].agents.ids.len(), AGENTS);
        assert!(!tenants[0].agents.track_all && tenants[1].agents.track_all);
        assert!(tenants[1].agents.ids.is_empty());
        let sim_tenants = sim.tenants();
        assert_eq!(tenants[0].defender.tenant_id, sim_tenants[0].tenant_id());
        assert_eq!(tenants[1].defender.tenant_id, sim_tenants[1].tenant_id());
        assert!(tenants[1].defender.token_url.contains(sim_tenants[1].tenant_id()));
        sim.shutdown().await.unwrap();
    }
}
