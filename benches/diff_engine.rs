//! Wall-time benchmark of the diff and history engine (`Store::apply`) against a naive
//! one-statement-per-agent baseline, on a real PostgreSQL database.
//!
//! Run: `cargo bench --bench diff_engine [-- --sizes 1000,10000 --naive-sizes 1000 --reps 3]`.
//! It creates its own database next to `DATABASE_URL` (default: the local server), drops it
//! at the end, and prints a markdown table for `BENCHMARKS.md`.
//!
//! Every repetition starts from a freshly established precondition (truncate, load the base
//! fleet through the engine, `VACUUM ANALYZE`), all outside the timed region, so runs do not
//! inherit each other's dead tuples and the planner sees the statistics a daemon would
//! have once autovacuum has run. Payloads are built before the clock starts, so only the
//! apply itself (transaction, lock, reads, diff, writes, commit) is measured.

mod scratch;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, TimeZone, Utc};
use scan_agent_sync::agent::{AgentRecord, Attributes};
use scan_agent_sync::store::{APPLY_LOCK, Store};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// The binary's allocator (src/main.rs), so the engine is measured as it runs in the service.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One tenant: every agent ID starts with the same organization GUID, as in a real fleet.
const ORG_GUID: &str = "47df41a0-c0a5-4fd6-93bb-a93dbc0bfcaa";

/// The situations a sync cycle meets, from first import to a fleet-wide upgrade; `Steady`
/// is the everyday cycle of a live fleet: every agent reported in since the last cycle
/// (a new lastSeen), and 1% of them upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    AllNew,
    NoneChanged,
    TenthChanged,
    AllChanged,
    Steady,
}

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::AllNew,
        Workload::NoneChanged,
        Workload::TenthChanged,
        Workload::AllChanged,
        Workload::Steady,
    ];

    fn label(self) -> &'static str {
        match self {
            Workload::AllNew => "all new",
            Workload::NoneChanged => "none changed",
            Workload::TenthChanged => "10% changed",
            Workload::AllChanged => "all changed",
            Workload::Steady => "steady (all seen, 1% upgraded)",
        }
    }

    /// The payload generations agent `i` reports in this workload's timed batch, of its
    /// lastSeen and of its version; the stored base fleet is generation 0 of both.
    fn generation(self, i: usize) -> Generation {
        let both = |g| Generation { seen: g, version: g };
        match self {
            Workload::AllNew | Workload::NoneChanged => both(0),
            Workload::TenthChanged => both(u32::from(i.is_multiple_of(10))),
            Workload::AllChanged => both(1),
            Workload::Steady => Generation { seen: 1, version: u32::from(i.is_multiple_of(100)) },
        }
    }

    /// Row counts (agents, versions, lastSeen rows) after the timed batch: checks that the
    /// baseline does exactly the engine's work, so the comparison is fair.
    fn expected_counts(self, n: usize) -> (i64, i64, i64) {
        let n = n as i64;
        let (upgraded, seen) = match self {
            Workload::AllNew | Workload::NoneChanged => (0, 0),
            Workload::TenthChanged => ((n + 9) / 10, (n + 9) / 10),
            Workload::AllChanged => (n, n),
            Workload::Steady => ((n + 99) / 100, n),
        };
        (n, n + upgraded, n + seen)
    }
}

/// Which payload an agent reports: a later `seen` means a later lastSeen, a later `version`
/// a new scanner version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Generation {
    seen: u32,
    version: u32,
}

/// Command-line options after cargo's own `--bench` flag.
struct Options {
    sizes: Vec<usize>,
    naive_sizes: Vec<usize>,
    reps: usize,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without
        // it, and then a small smoke run checks the workloads still work, in seconds.
        let benching = std::env::args().any(|arg| arg == "--bench");
        let mut options = if benching {
            Options { sizes: vec![1_000, 10_000, 100_000], naive_sizes: vec![1_000, 10_000], reps: 3 }
        } else {
            Options { sizes: vec![200], naive_sizes: vec![200], reps: 1 }
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                // cargo passes it to every harness = false bench.
                "--bench" => {}
                "--sizes" => options.sizes = parse_list(&value()?)?,
                "--naive-sizes" => options.naive_sizes = parse_list(&value()?)?,
                "--reps" => options.reps = value()?.parse().context("--reps takes a positive integer")?,
                other => bail!(
                    "unknown argument {other:?}; usage: cargo bench --bench diff_engine -- \
                     [--sizes 1000,10000,100000] [--naive-sizes 1000,10000] [--reps 3]"
                ),
            }
        }
        if options.reps == 0 {
            bail!("--reps must be at least 1");
        }
        Ok(options)
    }
}

fn parse_list(text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|s| s.trim().parse().with_context(|| format!("{s:?} in {text:?} is not a batch size")))
        .collect()
}

/// A deterministic 64-bit mix (SplitMix64), so every run benchmarks the same fleet.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The 40-hex machine ID Defender gives a device.
fn machine_hex(i: usize) -> String {
    let i = i as u64;
    let hex = format!("{:016x}{:016x}{:016x}", mix(3 * i), mix(3 * i + 1), mix(3 * i + 2));
    hex[..40].to_owned()
}

/// An API timestamp with the 7 fractional digits Defender sends.
fn api_timestamp(at: DateTime<Utc>, seed: u64) -> String {
    format!("{}.{:07}Z", at.format("%Y-%m-%dT%H:%M:%S"), seed % 10_000_000)
}

/// One agent as the API returns it, documented fields in the documented mixed case, plus a
/// field the service does not know (kept in `raw`).
fn payload(i: usize, generation: Generation) -> Value {
    let machine = machine_hex(i);
    let base = Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap();
    let spread = chrono::Duration::seconds((i % 86_400) as i64);
    let last_seen = base + spread + chrono::Duration::hours(i64::from(generation.seen) * 6);
    let command = base + spread - chrono::Duration::hours(1);
    let app = mix(i as u64 ^ 0xA5A5);
    json!({
        "id": format!("{ORG_GUID}_{machine}"),
        "machineId": machine,
        "lastSeen": api_timestamp(last_seen, mix(i as u64 ^ (u64::from(generation.seen) << 32))),
        "computerDnsName": format!("wks-{i:06}.corp.contoso.com"),
        "AssignedApplicationId": format!(
            "{:08X}-{:04X}-4{:03X}-8{:03X}-{:012X}",
            app >> 32, (app >> 16) & 0xFFFF, app & 0xFFF, (app >> 12) & 0xFFF, mix(app) & 0xFFFF_FFFF_FFFF
        ),
        "ScannerSoftwareVersion": format!("7.{}.{}", 1 + generation.version, i % 3),
        "LastCommandExecutionTimestamp": api_timestamp(command, mix(i as u64)),
        "mdeClientVersion": "10.8295.22621.1195",
        "scanHealth": {"status": "Healthy", "lastErrorCode": null, "networksScanned": i % 7},
    })
}

/// The batch a workload applies, parsed as the sync cycle would parse it.
fn batch(n: usize, generation: impl Fn(usize) -> Generation) -> Vec<AgentRecord> {
    (0..n)
        .map(|i| AgentRecord::from_json(payload(i, generation(i))).expect("generated payloads are valid"))
        .collect()
}

/// Which implementation a measurement ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    SetBased,
    Naive,
}

/// Brings the tables into the state the workload expects, then vacuums, all untimed.
async fn establish(store: &Store, workload: Workload, n: usize) -> anyhow::Result<()> {
    let pool = store.pool();
    sqlx::raw_sql(
        "TRUNCATE scan_agent_last_seen, scan_agent_version_history, scan_agent_payloads,
                  scan_agent_state
         RESTART IDENTITY CASCADE",
    )
    .execute(pool)
    .await
    .context("truncating the agent tables")?;
    if workload != Workload::AllNew {
        store
            .apply(batch(n, |i| Workload::NoneChanged.generation(i)), &[])
            .await
            .context("loading the base fleet")?;
    }
    sqlx::raw_sql(
        "VACUUM ANALYZE scan_agent_state, scan_agent_payloads, scan_agent_version_history,
                        scan_agent_last_seen",
    )
    .execute(pool)
    .await
    .context("vacuuming after the load")?;
    // A daemon's cycles are minutes apart, longer than checkpoint_timeout's default, so a
    // batch meets clean shared buffers and writes each page it touches to the WAL whole
    // first: the checkpoint gives every repetition that state rather than a random one.
    sqlx::raw_sql("CHECKPOINT").execute(pool).await.context("checkpointing after the load")?;
    Ok(())
}

async fn counts(pool: &PgPool) -> anyhow::Result<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM scan_agents), (SELECT count(*) FROM scan_agent_versions),
                (SELECT count(*) FROM scan_agent_last_seen)",
    )
    .fetch_one(pool)
    .await
    .context("counting rows")
}

/// Runs one workload `reps` times with one engine and returns the sorted wall times.
async fn measure(
    store: &Store,
    engine: Engine,
    workload: Workload,
    n: usize,
    reps: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        establish(store, workload, n).await?;
        let fetched = batch(n, |i| workload.generation(i));
        let started = Instant::now();
        match engine {
            Engine::SetBased => {
                store.apply(fetched, &[]).await.context("applying the batch")?;
            }
            Engine::Naive => naive_apply(store.pool(), &fetched).await.context("naive apply")?,
        }
        times.push(started.elapsed());
        let got = counts(store.pool()).await?;
        let want = workload.expected_counts(n);
        if got != want {
            bail!("{engine:?} {} at {n}: rows {got:?}, expected {want:?}", workload.label());
        }
    }
    times.sort();
    Ok(times)
}

/// What the baseline reads back for one agent.
#[derive(sqlx::FromRow)]
struct NaiveRow {
    machine_id: Option<String>,
    computer_dns_name: Option<String>,
    assigned_application_id: Option<String>,
    scanner_software_version: Option<String>,
    mde_client_version: Option<String>,
    last_seen: DateTime<Utc>,
    last_command_execution_at: Option<DateTime<Utc>>,
    missing_since: Option<DateTime<Utc>>,
    raw_sha256: Option<Vec<u8>>,
}

/// The comparator: the same writes as `Store::apply` (same transaction, lock, timestamp,
/// tables, and the same skipping of unchanged rows: only the fetch stamp, and `raw` only
/// when the payload hash differs), but one prepared statement and one round trip per step
/// per agent, which is how the engine would look without arrays and `UNNEST`.
async fn naive_apply(pool: &PgPool, fetched: &[AgentRecord]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(APPLY_LOCK).execute(&mut *tx).await?;
    let at: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut *tx).await?;
    for record in fetched {
        let id = record.id.as_str();
        let a = &record.attributes;
        let raw = record.raw.to_string();
        let raw_sha256 = Sha256::digest(raw.as_bytes()).to_vec();
        let stored: Option<NaiveRow> = sqlx::query_as(
            "SELECT s.machine_id, s.computer_dns_name, s.assigned_application_id,
                    s.scanner_software_version, s.mde_client_version, s.last_seen,
                    s.last_command_execution_at, s.missing_since, p.raw_sha256
             FROM scan_agent_state s JOIN scan_agent_payloads p USING (agent_id)
             WHERE s.agent_id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let last_seen_changed = match &stored {
            None => {
                sqlx::query(
                    "INSERT INTO scan_agent_state (agent_id, machine_id, computer_dns_name,
                         assigned_application_id, scanner_software_version, mde_client_version,
                         last_seen, last_command_execution_at, first_observed_at, last_changed_at,
                         valid_from, last_fetched_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9, $9)",
                )
                .bind(id)
                .bind(&a.machine_id)
                .bind(&a.computer_dns_name)
                .bind(&a.assigned_application_id)
                .bind(&a.scanner_software_version)
                .bind(&a.mde_client_version)
                .bind(record.last_seen)
                .bind(record.last_command_execution_at)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO scan_agent_payloads (agent_id, raw, raw_sha256) VALUES ($1, $2::json, $3)",
                )
                .bind(id)
                .bind(&raw)
                .bind(&raw_sha256)
                .execute(&mut *tx)
                .await?;
                true
            }
            Some(old) => {
                let old_attributes = Attributes {
                    machine_id: old.machine_id.clone(),
                    computer_dns_name: old.computer_dns_name.clone(),
                    assigned_application_id: old.assigned_application_id.clone(),
                    scanner_software_version: old.scanner_software_version.clone(),
                    mde_client_version: old.mde_client_version.clone(),
                };
                let attributes_changed = old_attributes != *a;
                let last_seen_changed = old.last_seen != record.last_seen;
                let changed = attributes_changed
                    || last_seen_changed
                    || old.last_command_execution_at != record.last_command_execution_at
                    || old.missing_since.is_some();
                if attributes_changed {
                    sqlx::query(
                        "INSERT INTO scan_agent_version_history (version_id, agent_id, machine_id,
                             computer_dns_name, assigned_application_id, scanner_software_version,
                             mde_client_version, valid_from, valid_to)
                         SELECT version_id, agent_id, machine_id, computer_dns_name,
                                assigned_application_id, scanner_software_version,
                                mde_client_version, valid_from, $2
                         FROM scan_agent_state WHERE agent_id = $1",
                    )
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
                if changed {
                    sqlx::query(
                        "UPDATE scan_agent_state SET machine_id = $2, computer_dns_name = $3,
                             assigned_application_id = $4, scanner_software_version = $5,
                             mde_client_version = $6, last_seen = $7, last_command_execution_at = $8,
                             last_changed_at = $9, missing_since = NULL,
                             version_id = CASE WHEN $10 THEN nextval('scan_agent_version_id_seq')
                                               ELSE version_id END,
                             valid_from = CASE WHEN $10 THEN $9 ELSE valid_from END
                         WHERE agent_id = $1",
                    )
                    .bind(id)
                    .bind(&a.machine_id)
                    .bind(&a.computer_dns_name)
                    .bind(&a.assigned_application_id)
                    .bind(&a.scanner_software_version)
                    .bind(&a.mde_client_version)
                    .bind(record.last_seen)
                    .bind(record.last_command_execution_at)
                    .bind(at)
                    .bind(attributes_changed)
                    .execute(&mut *tx)
                    .await?;
                }
                if old.raw_sha256.as_ref() != Some(&raw_sha256) {
                    sqlx::query(
                        "UPDATE scan_agent_payloads SET raw = $2::json, raw_sha256 = $3 WHERE agent_id = $1",
                    )
                    .bind(id)
                    .bind(&raw)
                    .bind(&raw_sha256)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query("UPDATE scan_agent_state SET last_fetched_at = $2, fingerprint = NULL WHERE agent_id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                last_seen_changed
            }
        };
        if last_seen_changed {
            sqlx::query(
                "INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at) VALUES ($1, $2, $3)
                 ON CONFLICT (agent_id, last_seen) DO NOTHING",
            )
            .bind(id)
            .bind(record.last_seen)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}

/// Best and median of a sorted sample, in milliseconds.
fn best_median(times: &[Duration]) -> (f64, f64) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(times[0]), ms(times[times.len() / 2]))
}

/// The process's peak resident set; the server's memory is in its own processes.
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "VmHWM: unavailable (no /proc/self/status)".to_owned())
}

/// The table rows; the database is passed in so the caller can always drop it.
async fn run(store: &Store, options: &Options) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    for &n in &options.sizes {
        for workload in Workload::ALL {
            eprintln!("{n} agents, {}: engine...", workload.label());
            let (best, median) =
                best_median(&measure(store, Engine::SetBased, workload, n, options.reps).await?);
            let naive = if options.naive_sizes.contains(&n) {
                eprintln!("{n} agents, {}: naive...", workload.label());
                Some(best_median(&measure(store, Engine::Naive, workload, n, options.reps).await?))
            } else {
                None
            };
            let (naive_ms, speedup) = match naive {
                Some((nb, nm)) => (format!("{nb:.0} / {nm:.0}"), format!("{:.1}×", nm / median)),
                None => ("not run".to_owned(), "–".to_owned()),
            };
            rows.push(format!(
                "| {n} | {} | {best:.1} / {median:.1} | {naive_ms} | {speedup} | {:.0} |",
                workload.label(),
                n as f64 / (median / 1e3),
            ));
        }
    }
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse()?;
    let rows =
        scratch::with_database("sas_bench", 2, async |pool| run(&Store::from_pool(pool), &options).await)
            .await?;

    println!("\nBest / median of {} runs, wall time of one apply (one transaction).\n", options.reps);
    println!(
        "| agents | workload | engine ms (best / median) | naive ms (best / median) | speedup (median) | agents/s (engine, median) |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    println!("\nPeak memory of the benchmark process: {} (PostgreSQL's backends not included)", peak_rss());
    Ok(())
}
