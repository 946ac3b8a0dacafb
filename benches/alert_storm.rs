//! Alert storms at fleet scale (issue 12), on a real PostgreSQL database:
//!
//! - `delivery`: an outbox of `--events` firing events (queued by the real staleness
//!   evaluation of as many stale agents) drained by `deliver_pending` into a local HTTP
//!   receiver that parses every body and counts the alerts (or into `--webhook URL`, e.g. a
//!   real Alertmanager). Each repetition marks the events undelivered again and drains them.
//! - `staleness`: `Store::record_staleness` (episodes and census) on fleets of `--sizes`
//!   agents: steady state (nothing changes), the storm (`--storm` agents turn stale at once)
//!   and its resolve.
//!
//! Run: `cargo bench --bench alert_storm -- delivery [--events 100000] [--batch 100] [--reps 5]`
//! or `cargo bench --bench alert_storm -- staleness [--sizes 100000,1000000] [--storm 100000] [--reps 5]`.
//! It creates its own database next to `DATABASE_URL` (default: the local server) and drops
//! it at the end. sqlx's slow-statement warnings (default threshold 1 s) are printed as they
//! happen. Without `--bench` (as `cargo test --all-targets` runs it) both run tiny, as a
//! smoke test.

mod scratch;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use chrono::Utc;
use scan_agent_sync::alerts::{deliver_pending, webhook_client};
use scan_agent_sync::config::{AlertFormat, AlertSettings};
use scan_agent_sync::store::Store;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The binary's allocator (src/main.rs), so the code is measured as it runs in the service.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
struct Options {
    scenario: Scenario,
    events: usize,
    batch: u32,
    webhook: Option<String>,
    sizes: Vec<usize>,
    storm: usize,
    reps: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Delivery,
    Staleness,
    Both,
}

impl Options {
    fn parse() -> anyhow::Result<Options> {
        let benching = std::env::args().any(|arg| arg == "--bench");
        let mut options = if benching {
            Options {
                scenario: Scenario::Both,
                events: 100_000,
                batch: 100,
                webhook: None,
                sizes: vec![100_000, 1_000_000],
                storm: 100_000,
                reps: 5,
            }
        } else {
            Options {
                scenario: Scenario::Both,
                events: 300,
                batch: 100,
                webhook: None,
                sizes: vec![500],
                storm: 100,
                reps: 1,
            }
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--bench" => {}
                "delivery" => options.scenario = Scenario::Delivery,
                "staleness" => options.scenario = Scenario::Staleness,
                "--events" => options.events = value()?.parse().context("--events takes a count")?,
                "--batch" => options.batch = value()?.parse().context("--batch takes a count")?,
                "--webhook" => options.webhook = Some(value()?),
                "--sizes" => {
                    options.sizes = value()?
                        .split(',')
                        .map(|n| n.trim().parse().with_context(|| format!("bad size {n:?}")))
                        .collect::<anyhow::Result<_>>()?
                }
                "--storm" => options.storm = value()?.parse().context("--storm takes a count")?,
                "--reps" => options.reps = value()?.parse().context("--reps takes a count")?,
                other => bail!(
                    "unknown argument {other:?}; usage: cargo bench --bench alert_storm -- \
                     [delivery|staleness] [--events N] [--batch N] [--webhook URL] \
                     [--sizes N,N] [--storm N] [--reps N]"
                ),
            }
        }
        ensure!(options.reps > 0 && options.batch > 0, "--reps and --batch must be at least 1");
        Ok(options)
    }
}

/// `n` agents, all seen `age` ago, as the engine stores them (state row and payload).
async fn fill_agents(store: &Store, n: usize, age: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO scan_agent_state (agent_id, machine_id, computer_dns_name, scanner_software_version,
                                       mde_client_version, last_seen, first_observed_at, last_changed_at,
                                       valid_from, last_fetched_at)
         SELECT 'agent-' || lpad(i::text, 7, '0'), 'machine-' || i, 'host-' || i || '.example.org',
                '7.9', '10.8', now() - $2::interval, now() - interval '90 days',
                now() - interval '90 days', now() - interval '90 days', now()
         FROM generate_series(1, $1) AS i",
    )
    .bind(i64::try_from(n)?)
    .bind(age)
    .execute(store.pool())
    .await
    .context("filling scan_agent_state")?;
    sqlx::query(
        "INSERT INTO scan_agent_payloads (agent_id, raw) SELECT agent_id, '{}'::json FROM scan_agent_state",
    )
    .execute(store.pool())
    .await
    .context("filling scan_agent_payloads")?;
    vacuum(store).await
}

async fn vacuum(store: &Store) -> anyhow::Result<()> {
    sqlx::raw_sql("VACUUM ANALYZE").execute(store.pool()).await.context("VACUUM ANALYZE")?;
    Ok(())
}

async fn evaluate(store: &Store) -> anyhow::Result<(Duration, u64, u64)> {
    let started = Instant::now();
    let evaluation = store.record_staleness(Utc::now(), STALE_AFTER, Duration::ZERO, None).await?;
    Ok((started.elapsed(), evaluation.fired, evaluation.resolved))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// A receiver that parses every body as Alertmanager's array and counts the alerts.
async fn local_receiver() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let received = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/api/v2/alerts",
            post(
                |State(count): State<Arc<AtomicUsize>>, body: axum::Json<Vec<serde_json::Value>>| async move {
                    count.fetch_add(body.len(), Ordering::Relaxed);
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/api/v2/alerts", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, received))
}

async fn delivery(store: &Store, options: &Options) -> anyhow::Result<()> {
    let n = options.events;
    fill_agents(store, n, "2 days").await?;
    let (queued, fired, _) = evaluate(store).await?;
    ensure!(fired == n as u64, "expected {n} events queued, got {fired}");
    eprintln!("queued {n} events in {} ms (one evaluation)", ms(queued));
    vacuum(store).await?;
    let (url, received) = match &options.webhook {
        Some(url) => (url.clone(), Arc::new(AtomicUsize::new(0))),
        None => local_receiver().await?,
    };
    let settings = AlertSettings {
        webhook_url: Some(url.clone()),
        format: AlertFormat::Alertmanager,
        repeat_interval: Duration::ZERO,
        max_batch: options.batch,
    };
    let client = webhook_client()?;
    let mut walls = Vec::new();
    for rep in 0..options.reps {
        if rep > 0 {
            sqlx::query("UPDATE alert_outbox SET delivered_at = NULL").execute(store.pool()).await?;
            vacuum(store).await?;
        }
        received.store(0, Ordering::Relaxed);
        let started = Instant::now();
        let report =
            deliver_pending(store, &client, &settings, Utc::now(), &CancellationToken::new()).await?;
        let wall = started.elapsed();
        ensure!(report.delivered == n, "delivered {} of {n}: {report:?}", report.delivered);
        if options.webhook.is_none() {
            ensure!(received.load(Ordering::Relaxed) == n, "the receiver counted {received:?} alerts");
        }
        eprintln!("rep {}: {n} events in {} ms", rep + 1, ms(wall));
        walls.push(wall);
    }
    let wall = median(walls);
    println!(
        "\n| events | max_batch | receiver | drain wall (median of {}) | events/s |\n|---:|---:|---|---:|---:|",
        options.reps
    );
    let receiver = if options.webhook.is_some() { url.as_str() } else { "local axum, parses and counts" };
    println!(
        "| {n} | {} | {receiver} | {:.2} s | {:.0} |",
        options.batch,
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    Ok(())
}

async fn staleness(store: &Store, options: &Options) -> anyhow::Result<()> {
    println!(
        "\n| agents | steady ms (median of {reps}) | storm: {storm} turn stale, ms (median; first) | its resolve, ms (median; first) |\n|---:|---:|---:|---:|",
        reps = options.reps,
        storm = options.storm
    );
    for &n in &options.sizes {
        sqlx::raw_sql("TRUNCATE alert_outbox, stale_episodes, scan_agent_state, scan_agent_payloads")
            .execute(store.pool())
            .await?;
        fill_agents(store, n, "1 hour").await?;
        evaluate(store).await?; // the first evaluation after a fill sets hint bits
        let mut steady = Vec::new();
        for _ in 0..options.reps {
            let (wall, fired, resolved) = evaluate(store).await?;
            ensure!((fired, resolved) == (0, 0), "steady state changed something: {fired} {resolved}");
            steady.push(wall);
        }
        let (mut storms, mut resolves) = (Vec::new(), Vec::new());
        let storm = options.storm.min(n);
        for _ in 0..options.reps {
            let age = |age: &'static str| {
                sqlx::query(
                    "UPDATE scan_agent_state SET last_seen = now() - $2::interval WHERE agent_id <= $1",
                )
                .bind(format!("agent-{storm:07}"))
                .bind(age)
            };
            age("2 days").execute(store.pool()).await?;
            let (wall, fired, _) = evaluate(store).await?;
            ensure!(fired == storm as u64, "storm fired {fired}");
            storms.push(wall);
            age("1 hour").execute(store.pool()).await?;
            let (wall, _, resolved) = evaluate(store).await?;
            ensure!(resolved == storm as u64, "storm resolved {resolved}");
            resolves.push(wall);
        }
        // The first storm meets an empty episode table, as the first storm of a new
        // installation does; the planner has no statistics for it yet.
        let (first_storm, first_resolve) = (storms[0], resolves[0]);
        println!(
            "| {n} | {} | {}; {} | {}; {} |",
            ms(median(steady)),
            ms(median(storms)),
            ms(first_storm),
            ms(median(resolves)),
            ms(first_resolve)
        );
    }
    Ok(())
}

/// Prints sqlx's slow-statement warnings as one short line each: the statement's first
/// words and how long it took.
struct SlowStatements;

impl<S: tracing::Subscriber> Layer<S> for SlowStatements {
    fn on_event(&self, event: &tracing::Event<'_>, _: LayerContext<'_, S>) {
        #[derive(Default)]
        struct Fields(String, String);
        impl Visit for Fields {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "summary" {
                    self.0 = value.to_owned();
                }
            }
            fn record_f64(&mut self, field: &Field, value: f64) {
                if field.name() == "elapsed_secs" {
                    self.1 = format!("{value:.2} s");
                }
            }
            fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        eprintln!("sqlx slow-statement warning ({}): {}", fields.1, fields.0);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::registry().with(SlowStatements.with_filter(EnvFilter::new("sqlx=warn"))).init();
    let options = Options::parse()?;
    scratch::with_database("sas_alert_bench", 4, async |pool| {
        let store = Store::from_pool(pool.clone());
        if options.scenario != Scenario::Staleness {
            delivery(&store, &options).await?;
            sqlx::raw_sql("TRUNCATE alert_outbox, stale_episodes, scan_agent_state, scan_agent_payloads")
                .execute(&pool)
                .await?;
        }
        if options.scenario != Scenario::Delivery {
            staleness(&store, &options).await?;
        }
        anyhow::Ok(())
    })
    .await
}
