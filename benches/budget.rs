//! Budget utilization: how much of what the rate windows allow does one by-ID sync cycle
//! really get, and does the simulator ever have to refuse a call?
//!
//! Issue 3, "Benchmark": windows compressed so the whole run takes a couple of minutes, more
//! agent IDs than the budget covers, a cycle stopped by its deadline after a fixed span, and
//! the achieved calls compared with the most an ideal client could have sent over that span.
//! Each scenario gets its own simulator (enforcing the same windows the client is configured
//! with) and its own fresh database, so the ledger starts cold, like the ideal sender.
//!
//! Run: `cargo bench --bench budget` (release build; needs PostgreSQL as the tests do, see
//! `DATABASE_URL` in `tests/support`). An argument not starting with `--` runs only the
//! scenarios whose name contains it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use scan_agent_sync::agent_id::AgentId;
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::simulator::{self, EndpointKind, SimulatorOptions, WindowPeak};
use scan_agent_sync::store::Store;
use scan_agent_sync::sync::{CycleOptions, Syncer, Targets};
use tokio::time::Instant;

/// How long each scenario's cycle may send: long enough that the cold-start burst and the
/// final partial window are small next to it, short enough that the run stays near a minute
/// per scenario.
const SPAN: Duration = Duration::from_secs(40);

/// Under `cargo test --all-targets` (no `--bench` flag) one scenario runs this long: a smoke
/// check that the benchmark still works, not a measurement.
const SMOKE_SPAN: Duration = Duration::from_secs(5);

/// Agents in the tenant and in the configuration: well above the ~400 calls a span allows,
/// so the budget, not the agent list, ends the cycle.
const AGENTS: usize = 1000;

/// One measured configuration.
struct Scenario {
    name: &'static str,
    windows: &'static str,
    latency: Duration,
    max_in_flight: usize,
}

/// The windows (20/2s and 200/20s) with and without latency, plus a pair where the
/// long window really binds: 200/20s is implied by 20/2s (any 20 s interval splits into ten
/// 2 s ones), so on its own that pair never exercises the second window.
const SCENARIOS: &[Scenario] = &[
    Scenario { name: "no latency", windows: "20/2s,200/20s", latency: Duration::ZERO, max_in_flight: 32 },
    Scenario {
        name: "1 s latency",
        windows: "20/2s,200/20s",
        latency: Duration::from_secs(1),
        max_in_flight: 32,
    },
    Scenario {
        name: "long window binds",
        windows: "20/2s,150/20s",
        latency: Duration::ZERO,
        max_in_flight: 32,
    },
];

/// What one scenario measured.
struct Outcome {
    allowed: u64,
    achieved: u64,
    throttled: u64,
    peaks: Vec<WindowPeak>,
    /// Median and worst [`lateness`], to tell a steady per-call overhead from a stall.
    lateness: (Duration, Duration),
}

fn main() -> anyhow::Result<()> {
    let benching = std::env::args().any(|arg| arg == "--bench");
    let span = if benching { SPAN } else { SMOKE_SPAN };
    let filter: Option<String> = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with("--"))
        .or_else(|| (!benching).then(|| SCENARIOS[0].name.to_owned()));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    for scenario in SCENARIOS.iter().filter(|s| filter.as_ref().is_none_or(|f| s.name.contains(f.as_str()))) {
        eprintln!("running {:?} for {:?} ...", scenario.name, span);
        rows.push((scenario, runtime.block_on(run(scenario, span))?));
    }
    println!(
        "| scenario | windows | in flight | span | allowed max | achieved | share | 429s | peak per window | lateness median / max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (scenario, outcome) in rows {
        let peaks: Vec<String> =
            outcome.peaks.iter().map(|p| format!("{} in {}", p.max_accepted, p.window.label())).collect();
        println!(
            "| {} | {} | {} | {} s | {} | {} | {:.1}% | {} | {} | {} / {} ms |",
            scenario.name,
            scenario.windows,
            scenario.max_in_flight,
            span.as_secs(),
            outcome.allowed,
            outcome.achieved,
            100.0 * outcome.achieved as f64 / outcome.allowed as f64,
            outcome.throttled,
            peaks.join(", "),
            outcome.lateness.0.as_millis(),
            outcome.lateness.1.as_millis(),
        );
    }
    println!("\ncommand: CARGO_TARGET_DIR=/work/main/target cargo bench --bench budget");
    Ok(())
}

/// One cycle against a fresh simulator and database, cut off after `span`.
async fn run(scenario: &Scenario, span: Duration) -> anyhow::Result<Outcome> {
    let windows = parse_windows(scenario.windows)?;
    let sim = simulator::start(SimulatorOptions {
        listen: "127.0.0.1:0".parse()?,
        agents: AGENTS,
        windows: windows.clone(),
        latency: scenario.latency,
        evolve_every: Duration::ZERO,
        ..SimulatorOptions::default()
    })
    .await?;
    let database = support::database_url(&support::fresh_database().await);
    let settings = support::settings(&format!(
        "{}fetch_mode = \"by-id\"\nmax_retries = 1\nrequest_timeout = \"10s\"\n\
         [rate_limit]\nwindows = [{}]\nmax_in_flight = {}\n[database]\nurl = \"{database}\"\n",
        sim.defender_config(),
        windows
            .iter()
            .map(|w| format!("{{ calls = {}, per = \"{}ms\" }}", w.calls, w.per.as_millis()))
            .collect::<Vec<_>>()
            .join(", "),
        scenario.max_in_flight,
    ));
    let store = Store::connect(&settings.database.url, settings.database.max_connections).await?;
    store.migrate().await?;
    let syncer = Syncer::for_tenant(&settings.tenants()[0], &settings.stale, store)?;
    let ids = sim.agent_ids().iter().map(|id| AgentId::from_api(id)).collect::<Result<Vec<_>, _>>()?;
    let targets = Targets { ids, track_all: false };

    let started_at = Utc::now();
    let options = CycleOptions { deadline: Some(Instant::now() + span), ..CycleOptions::default() };
    let report = syncer.run_cycle(&targets, &options).await?;
    let ends_at = started_at + span;
    eprintln!(
        "  cycle: {} fetched, {} deferred, {} failed, {} API calls, {:.1} s",
        report.fetched,
        report.deferred,
        report.failures.len(),
        report.api_calls,
        report.elapsed.as_secs_f64()
    );

    let arrivals = accepted_between(&sim.request_log(), started_at, ends_at);
    let stats = sim.stats();
    sim.shutdown().await?;
    Ok(Outcome {
        allowed: ideal_calls(&windows, span),
        achieved: arrivals.len() as u64,
        lateness: lateness(&windows, &arrivals),
        throttled: stats.throttled,
        peaks: stats.window_peaks,
    })
}

/// Arrival times, from `from`, of the API calls the simulator accepted (counted against its
/// windows) in `[from, to)`, the same half-open span the ideal sender is measured over.
fn accepted_between(
    log: &[simulator::LoggedRequest],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<Duration> {
    let mut arrivals: Vec<Duration> = log
        .iter()
        .filter(|r| matches!(r.kind, EndpointKind::ById | EndpointKind::List))
        .filter(|r| r.status.is_some_and(|s| s != 429 && s != 401))
        .filter(|r| r.at >= from && r.at < to)
        .filter_map(|r| (r.at - from).to_std().ok())
        .collect();
    arrivals.sort();
    arrivals
}

/// How long after the earliest instant the windows allowed it, given the calls before it,
/// each call arrived (median, max). A shortfall is the sum of these along each chain of
/// calls a window links (a call frees its slot one `per` after it arrives), so a small
/// median with a large max points at stalls (CPU, disk) rather than at the budget's own
/// per-call cost (the guard, the ledger's round trips and commit).
fn lateness(windows: &[RateWindow], arrivals: &[Duration]) -> (Duration, Duration) {
    let mut late: Vec<Duration> = arrivals
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, &at)| {
            let earliest = windows
                .iter()
                .filter_map(|w| i.checked_sub(w.calls as usize).map(|j| arrivals[j] + w.per))
                .fold(arrivals[i - 1], Duration::max);
            at.saturating_sub(earliest)
        })
        .collect();
    late.sort();
    (late.get(late.len() / 2).copied().unwrap_or_default(), late.last().copied().unwrap_or_default())
}

/// The most calls any client could send in `[0, span)` from a cold start under `windows`,
/// with the simulator's semantics (a call at `t` stops counting at `t + per`).
///
/// It plays an ideal greedy sender: each call goes at the earliest instant every window has
/// room, i.e. the later of the previous call and, per window, the `calls`-th most recent call
/// plus `per`. Sending earlier never hurts later calls under sliding windows (each window's
/// constraint only moves with the times already sent, and earlier times free it sooner), so
/// greedy is optimal and its count is the exact maximum, whichever window binds when.
fn ideal_calls(windows: &[RateWindow], span: Duration) -> u64 {
    let mut sent: Vec<Duration> = Vec::new();
    loop {
        let mut next = sent.last().copied().unwrap_or(Duration::ZERO);
        for window in windows {
            let calls = window.calls as usize;
            if sent.len() >= calls {
                next = next.max(sent[sent.len() - calls] + window.per);
            }
        }
        if next >= span {
            return sent.len() as u64;
        }
        sent.push(next);
    }
}

/// `20/2s,200/20s` as rate windows.
fn parse_windows(text: &str) -> anyhow::Result<Vec<RateWindow>> {
    text.split(',').map(|w| RateWindow::parse_compact(w).map_err(anyhow::Error::msg)).collect()
}
