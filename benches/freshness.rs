//! Freshness: the worst age of any agent's data under Defender's real windows, measured on a
//! compressed run of the real daemon (`daemon::run`: schedule, leadership, budget, cycles)
//! against the in-process simulator.
//!
//! Issue 6.5. Every duration of the real setting (the windows 100/1m and 1500/1h, the
//! 15-minute cron, the run length) is divided by a factor `k`, and every measured age is
//! multiplied back by it. The floor is what no client can beat: in by-id mode one call per
//! agent, so N agents take N / 1,500 hours per rotation; in list mode one cycle.
//!
//! Age of an agent's data at instant t: t minus the arrival at the API of the request that
//! fetched the data the database holds at t. The data of a fetch becomes visible when the
//! batch holding it is applied (a list page, or a chunk of by-ID answers), so each fetch's
//! data ages from its arrival until the apply of the agent's next fetch (or the end of the
//! run). Arrivals come from the simulator's request log (by-id: the ID in the path; list: the
//! page's `$skiptoken` offset into the list order), applies from the agents'
//! `last_fetched_at` stamps, sampled every 100 ms while the daemon runs.
//!
//! Run: `cargo bench --bench freshness` (release build; needs PostgreSQL as the tests do, see
//! `DATABASE_URL` in `tests/support`). An argument not starting with `--` runs only the
//! scenarios whose name contains it. Without `--bench` (`cargo test --all-targets`) a tiny,
//! heavily compressed scenario runs instead: a smoke check, not a measurement.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use percent_encoding::percent_decode_str;
use scan_agent_sync::daemon;
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::simulator::{self, EndpointKind, LoggedRequest, SimulatorOptions};
use sqlx::PgPool;

/// The real schedule: the product's default cron fires every 15 minutes.
const REAL_CYCLE: Duration = Duration::from_secs(15 * 60);

/// The simulator's default page size, which the list-mode offsets below assume.
const PAGE_SIZE: usize = 100;

/// One measured configuration, in real (uncompressed) time.
struct Scenario {
    name: &'static str,
    mode: &'static str,
    agents: usize,
    /// The compression factor; `REAL_CYCLE / k` must be whole seconds dividing a minute, so
    /// the cron expression stays a plain `*/S` seconds field.
    k: u32,
    /// How long the daemon runs, real time: in by-id mode at least two rotations after the
    /// first, so every agent's second fetch is measured in steady state.
    real_span: Duration,
}

const HOUR: Duration = Duration::from_secs(3600);

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "by-id 3000",
        mode: "by-id",
        agents: 3000,
        k: 60,
        real_span: Duration::from_secs(5 * 3600),
    },
    Scenario {
        name: "list 3000",
        mode: "list",
        agents: 3000,
        k: 60,
        real_span: Duration::from_secs(5 * 3600 / 2),
    },
];

/// Under `cargo test --all-targets`: a second-long cycle and 100 agents, for a few seconds
/// (too short for whole steady hours, so its calls per hour read NaN).
const SMOKE: Scenario = Scenario {
    name: "smoke by-id",
    mode: "by-id",
    agents: 100,
    k: 900,
    real_span: Duration::from_secs(3600 * 3 / 2),
};

/// What one scenario measured, in real time.
struct Outcome {
    worst_age: Duration,
    /// The longest time between two fetches of one agent: the worst age minus the wait for
    /// the apply at the end of the cycle.
    worst_gap: Duration,
    /// The agent with the worst age, and how often each agent was fetched at least.
    worst_agent: String,
    min_fetches: usize,
    floor: Duration,
    /// Accepted calls per real hour in steady state: over the whole hours after the first
    /// one and before the last cycle (which the end of the run cuts short). Whole hours,
    /// because the budget is spent in a burst at the start of each hour; any interval of an
    /// hour holds at most 1,500 calls for any client.
    calls_per_hour: f64,
    throttled: u64,
    cycles: usize,
}

fn main() -> anyhow::Result<()> {
    let benching = std::env::args().any(|arg| arg == "--bench");
    let filter: Option<String> = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    let scenarios: Vec<&Scenario> = if benching {
        SCENARIOS.iter().filter(|s| filter.as_ref().is_none_or(|f| s.name.contains(f.as_str()))).collect()
    } else {
        vec![&SMOKE]
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "| scenario | agents | k | real span | cycles | worst age | worst refetch gap | floor | worst / floor | min fetches per agent | calls per hour | 429s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for scenario in scenarios {
        eprintln!("running {:?} for {:?} ...", scenario.name, scenario.real_span / scenario.k);
        let outcome = runtime.block_on(run(scenario))?;
        println!(
            "| {} | {} | {} | {:.1} h | {} | {} | {} | {} | {:.3} | {} | {:.0} / 1500 ({:.1}%) | {} |",
            scenario.name,
            scenario.agents,
            scenario.k,
            scenario.real_span.as_secs_f64() / 3600.0,
            outcome.cycles,
            hms(outcome.worst_age),
            hms(outcome.worst_gap),
            hms(outcome.floor),
            outcome.worst_age.as_secs_f64() / outcome.floor.as_secs_f64(),
            outcome.min_fetches,
            outcome.calls_per_hour,
            100.0 * outcome.calls_per_hour / 1500.0,
            outcome.throttled,
        );
        eprintln!("  worst agent: {}", outcome.worst_agent);
    }
    println!("\ncommand: CARGO_TARGET_DIR=/work/main/target cargo bench --bench freshness");
    Ok(())
}

/// `1:02:03.4`, hours to tenths of seconds.
fn hms(d: Duration) -> String {
    let s = d.as_secs_f64();
    format!("{}:{:02}:{:04.1}", (s / 3600.0) as u64, (s / 60.0) as u64 % 60, s % 60.0)
}

/// Defender's real windows divided by `k`, rounded down to milliseconds so the client and
/// the simulator enforce exactly the same windows.
fn compressed_windows(k: u32) -> Vec<RateWindow> {
    RateWindow::defender_defaults()
        .into_iter()
        .map(|w| RateWindow {
            calls: w.calls,
            per: Duration::from_millis((w.per.as_millis() / k as u128) as u64),
        })
        .collect()
}

/// The daemon against a fresh simulator and database for the scenario's compressed span.
async fn run(scenario: &Scenario) -> anyhow::Result<Outcome> {
    let k = scenario.k;
    let windows = compressed_windows(k);
    let cycle_secs = (REAL_CYCLE / k).as_secs();
    anyhow::ensure!(
        REAL_CYCLE.as_millis().is_multiple_of(k as u128 * 1000) && 60u64.is_multiple_of(cycle_secs),
        "k = {k} does not give a whole-second cycle dividing a minute"
    );
    let sim = simulator::start(SimulatorOptions {
        windows: windows.clone(),
        page_size: PAGE_SIZE,
        ..SimulatorOptions::frozen(scenario.agents)
    })
    .await?;
    let order = sim.agent_ids();
    let database = support::database_url(&support::fresh_database().await);
    let ids: Vec<String> = order.iter().map(|id| format!("{id:?}")).collect();
    let settings = support::settings(&format!(
        "{}fetch_mode = \"{}\"\n[rate_limit]\nwindows = [{}]\n[schedule]\ncron = \"*/{cycle_secs} * * * * *\"\n\
         [agents]\nids = [{}]\n[database]\nurl = \"{database}\"\n[http]\nlisten = \"\"\n",
        sim.defender_config(),
        scenario.mode,
        windows
            .iter()
            .map(|w| format!("{{ calls = {}, per = \"{}ms\" }}", w.calls, w.per.as_millis()))
            .collect::<Vec<_>>()
            .join(", "),
        ids.join(", "),
    ));

    let span = scenario.real_span / k;
    let pool = PgPool::connect(&database).await?;
    let watching = tokio::spawn(watch_applies(pool.clone(), span));
    daemon::run(settings, tokio::time::sleep(span)).await?;
    let ended = Utc::now();
    let applies = watching.await??;

    let cycles: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE finished_at IS NOT NULL")
        .fetch_one(&pool)
        .await?;
    let (first_start, last_start): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(started_at), max(started_at) FROM sync_runs").fetch_one(&pool).await?;
    pool.close().await;
    let log = sim.request_log();
    let throttled = sim.stats().throttled;
    sim.shutdown().await?;

    let fetches = fetches_by_agent(&log, &order);
    let (worst_age, worst_agent) = worst_age(&fetches, &applies, ended)
        .ok_or_else(|| anyhow::anyhow!("no agent was fetched twice; run longer"))?;
    let hour = chrono::Duration::from_std(HOUR / k)?;
    let steady_from = first_start + hour;
    // Zero whole hours (and the rate NaN) when the run is shorter than two hours and a cycle.
    let steady_hours = ((last_start - steady_from).num_milliseconds() / hour.num_milliseconds()).max(0);
    let steady_to = steady_from + hour * steady_hours as i32;
    let steady_calls = log
        .iter()
        .filter(|r| matches!(r.kind, EndpointKind::ById | EndpointKind::List))
        .filter(|r| r.status.is_some_and(|s| s != 429 && s != 401))
        .filter(|r| r.at >= steady_from && r.at < steady_to)
        .count();
    let floor = match scenario.mode {
        "by-id" => HOUR * scenario.agents as u32 / 1500,
        _ => REAL_CYCLE,
    };
    Ok(Outcome {
        worst_age: worst_age * k,
        worst_gap: worst_gap(&fetches) * k,
        worst_agent,
        min_fetches: order.iter().map(|id| fetches.get(id.as_str()).map_or(0, Vec::len)).min().unwrap_or(0),
        floor,
        calls_per_hour: steady_calls as f64 / steady_hours as f64,
        throttled,
        cycles: usize::try_from(cycles)?,
    })
}

/// Every apply of every agent's data, by agent, oldest first: a cycle applies its answers in
/// chunks while it runs, and each apply stamps `last_fetched_at` with its time, so sampling
/// the stamps more often than chunks are applied sees each one.
async fn watch_applies(pool: PgPool, span: Duration) -> anyhow::Result<HashMap<String, Vec<DateTime<Utc>>>> {
    let until = tokio::time::Instant::now() + span + Duration::from_secs(2);
    let mut applies: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    while tokio::time::Instant::now() < until {
        let stamps: Vec<(String, DateTime<Utc>)> =
            match sqlx::query_as("SELECT agent_id, last_fetched_at FROM scan_agent_state")
                .fetch_all(&pool)
                .await
            {
                Ok(stamps) => stamps,
                // The daemon has not migrated the fresh database yet: no table, or a migration
                // between 0003 (which moved the column out) and 0006 (which moved it back).
                Err(error)
                    if matches!(
                        error.as_database_error().and_then(|e| e.code()).as_deref(),
                        Some("42P01" | "42703")
                    ) =>
                {
                    Vec::new()
                }
                Err(error) => return Err(error.into()),
            };
        for (agent, at) in stamps {
            let seen = applies.entry(agent).or_default();
            if seen.last() != Some(&at) {
                seen.push(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(applies)
}

/// When the API answered each agent with its data (status 200), oldest first. A by-ID call
/// names its agent in the path; a list page serves the agents at its offset in list `order`.
fn fetches_by_agent<'a>(log: &[LoggedRequest], order: &'a [String]) -> HashMap<&'a str, Vec<DateTime<Utc>>> {
    let position: HashMap<&str, usize> = order.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut fetches: HashMap<&str, Vec<DateTime<Utc>>> = HashMap::new();
    for request in log.iter().filter(|r| r.status == Some(200)) {
        let path = request.path_and_query.split('?').next().unwrap_or_default();
        let served: &[String] = match request.kind {
            EndpointKind::ById => {
                let id = percent_decode_str(path.rsplit('/').next().unwrap_or_default()).decode_utf8_lossy();
                match position.get(id.as_ref()) {
                    Some(&i) => &order[i..=i],
                    None => continue,
                }
            }
            EndpointKind::List => {
                let offset = skip_token(&request.path_and_query).min(order.len());
                &order[offset..(offset + PAGE_SIZE).min(order.len())]
            }
            _ => continue,
        };
        for id in served {
            fetches.entry(id.as_str()).or_default().push(request.at);
        }
    }
    fetches
}

/// The list offset in a page's URL: the simulator's `$skiptoken`, absent on the first page.
fn skip_token(path_and_query: &str) -> usize {
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("$skiptoken=").or_else(|| pair.strip_prefix("%24skiptoken=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The longest time between two consecutive fetches of one agent.
fn worst_gap(fetches: &HashMap<&str, Vec<DateTime<Utc>>>) -> Duration {
    let gaps = fetches.values().flat_map(|times| times.windows(2).map(|pair| pair[1] - pair[0]));
    gaps.max().and_then(|gap| gap.to_std().ok()).unwrap_or_default()
}

/// The worst age of any agent's data and whose it was, counting only data that replaced
/// earlier data (an agent's first fetch ends the cold start, it does not age anything).
/// Each fetch's data is held from its apply until the apply of the agent's next fetch (the
/// first apply of that agent after the fetch arrived); the data still held at the end has
/// aged until `ended`.
fn worst_age(
    fetches: &HashMap<&str, Vec<DateTime<Utc>>>,
    applies: &HashMap<String, Vec<DateTime<Utc>>>,
    ended: DateTime<Utc>,
) -> Option<(Duration, String)> {
    let mut worst: Option<(Duration, String)> = None;
    for (id, times) in fetches {
        if times.len() < 2 {
            continue;
        }
        let applied = applies.get(*id).map_or(&[][..], Vec::as_slice);
        let applied_at = |fetched: DateTime<Utc>| {
            let i = applied.partition_point(|&a| a < fetched);
            applied.get(i).copied().unwrap_or(ended)
        };
        let replaced = times.windows(2).map(|pair| applied_at(pair[1]) - pair[0]);
        let held_at_end = ended - times[times.len() - 1];
        for age in replaced.chain([held_at_end]) {
            let age = age.to_std().unwrap_or_default();
            if worst.as_ref().is_none_or(|(w, _)| age > *w) {
                worst = Some((age, (*id).to_owned()));
            }
        }
    }
    worst
}
