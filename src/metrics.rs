//! The service's own health, as Prometheus metrics on `/metrics`.
//!
//! One explicit [`Registry`] per [`Metrics`] value (never a global), so every test gets an
//! isolated set and the daemon hands one clone to each task that records something.
//! The series names are the product interface (PRODUCT.md, "Metrics"): change none.
//!
//! Which agents get a per-agent series is `http.agent_series`; [`refresh_agent_series`]
//! applies it after each staleness evaluation.
//!
//! prometheus-client writes the OpenMetrics text format and appends `_total` to counters
//! itself, so counters are registered without it; the exposed names are the documented ones.

mod agent_series;

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use self::agent_series::refresh_agent_series;

/// The content type of [`Metrics::encode`]'s output, for the HTTP response.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A float gauge: timestamps need sub-second precision and durations are fractional.
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    endpoint: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabel {
    tenant: String,
    window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    tenant: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Every series the service exposes. Cheap to clone: all clones record into one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    api_requests: Family<RequestLabels, Counter>,
    api_throttled: Family<TenantLabel, Counter>,
    budget_remaining: Family<WindowLabel, Gauge>,
    sync_runs: Family<StatusLabel, Counter>,
    last_success: Family<TenantLabel, FloatGauge>,
    agents: Family<StateLabel, Gauge>,
    agent_last_seen: Arc<AgentLastSeen>,
    sync_duration: Family<TenantLabel, Histogram>,
    skipped_ticks: Counter,
    leader: Gauge,
    tenants_held: Gauge,
    retention_deleted: Family<TableLabel, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every series registered and its HELP text.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let api_requests = Family::default();
        registry.register(
            "scan_agent_sync_api_requests",
            "Defender API requests made, by tenant, endpoint and HTTP status code (or error kind)",
            api_requests.clone(),
        );
        let api_throttled = Family::default();
        registry.register(
            "scan_agent_sync_api_throttled",
            "Defender API answers of 429 Too Many Requests, by tenant",
            api_throttled.clone(),
        );
        let budget_remaining = Family::default();
        registry.register(
            "scan_agent_sync_rate_budget_remaining",
            "API calls still allowed now in each configured sliding rate window",
            budget_remaining.clone(),
        );
        let sync_runs = Family::default();
        registry.register(
            "scan_agent_sync_sync_runs",
            "Finished sync cycles, by tenant and final status (ok, partial, failed, interrupted)",
            sync_runs.clone(),
        );
        let last_success = Family::default();
        registry.register(
            "scan_agent_sync_last_success_timestamp_seconds",
            "Unix time at which the tenant's last successful sync cycle finished",
            last_success.clone(),
        );
        let agents = Family::default();
        registry.register(
            "scan_agent_sync_agents",
            "Agents by state: tracked (all configured), stale (lastSeen too old), missing (unknown to the API)",
            agents.clone(),
        );
        let agent_last_seen = Arc::new(AgentLastSeen::default());
        registry.register_collector(Box::new(agent_last_seen.clone()));
        // Cycles range from a second (a few IDs) to many minutes (a tight budget): 0.5 s to ~17 min.
        let sync_duration: Family<TenantLabel, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.5, 2.0, 12)));
        registry.register(
            "scan_agent_sync_sync_duration_seconds",
            "Wall-clock duration of sync cycles, by tenant",
            sync_duration.clone(),
        );
        let skipped_ticks = Counter::default();
        registry.register(
            "scan_agent_sync_skipped_ticks",
            "Scheduled ticks skipped because the previous sync cycle was still running",
            skipped_ticks.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "scan_agent_sync_leader",
            "1 when this instance holds at least one tenant and runs its sync cycles, 0 on standby",
            leader.clone(),
        );
        let tenants_held = Gauge::default();
        registry.register(
            "scan_agent_sync_tenants_held",
            "Tenants whose lease this process holds and syncs now",
            tenants_held.clone(),
        );
        let retention_deleted = Family::default();
        registry.register(
            "scan_agent_sync_retention_deleted_rows",
            "Rows the retention job deleted (dropped partitions included), by table",
            retention_deleted.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                api_requests,
                api_throttled,
                budget_remaining,
                sync_runs,
                last_success,
                agents,
                agent_last_seen,
                sync_duration,
                skipped_ticks,
                leader,
                tenants_held,
                retention_deleted,
            }),
        }
    }

    /// Counts `count` API requests of `tenant`; `code` is the HTTP status, or `none` when no
    /// answer came.
    pub fn record_api_requests(&self, tenant: &str, endpoint: &str, code: &str, count: u64) {
        let labels =
            RequestLabels { tenant: tenant.to_owned(), endpoint: endpoint.to_owned(), code: code.to_owned() };
        self.inner.api_requests.get_or_create(&labels).inc_by(count);
    }

    /// Counts `count` 429 answers to `tenant`'s requests.
    pub fn record_throttled(&self, tenant: &str, count: u64) {
        self.inner.api_throttled.get_or_create(&TenantLabel { tenant: tenant.to_owned() }).inc_by(count);
    }

    /// Sets the calls left in one of `tenant`'s windows, labelled as
    /// [`crate::rate_window::RateWindow::label`] does.
    pub fn set_budget_remaining(&self, tenant: &str, window_label: &str, remaining: u32) {
        let labels = WindowLabel { tenant: tenant.to_owned(), window: window_label.to_owned() };
        self.inner.budget_remaining.get_or_create(&labels).set(i64::from(remaining));
    }

    /// Records a finished cycle of `tenant`; `succeeded_at` moves its last-success timestamp
    /// when given.
    pub fn record_run(
        &self,
        tenant: &str,
        status: &str,
        duration: Duration,
        succeeded_at: Option<DateTime<Utc>>,
    ) {
        let run = StatusLabel { tenant: tenant.to_owned(), status: status.to_owned() };
        self.inner.sync_runs.get_or_create(&run).inc();
        let tenant = TenantLabel { tenant: tenant.to_owned() };
        self.inner.sync_duration.get_or_create(&tenant).observe(duration.as_secs_f64());
        if let Some(at) = succeeded_at {
            self.inner.last_success.get_or_create(&tenant).set(unix_seconds(at));
        }
    }

    /// Sets the agent counts by state.
    pub fn set_agent_counts(&self, tracked: u64, stale: u64, missing: u64) {
        for (state, count) in [("tracked", tracked), ("stale", stale), ("missing", missing)] {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            self.inner.agents.get_or_create(&StateLabel { state }).set(count);
        }
    }

    /// Replaces the whole per-agent lastSeen set at once, so agents no longer tracked vanish
    /// and a scrape never sees half of an update.
    pub fn set_agent_last_seen(&self, agents: &[(String, DateTime<Utc>)]) {
        let snapshot = agents.iter().map(|(id, seen)| (id.clone(), unix_seconds(*seen))).collect();
        *self.inner.agent_last_seen.0.write().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// Counts a scheduled tick that found a cycle still running.
    pub fn record_skipped_tick(&self) {
        self.inner.skipped_ticks.inc();
    }

    /// Marks whether this instance currently holds leadership.
    pub fn set_leader(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }

    /// Sets how many tenants this process syncs now.
    pub fn set_tenants_held(&self, tenants: usize) {
        self.inner.tenants_held.set(i64::try_from(tenants).unwrap_or(i64::MAX));
    }

    /// Counts rows the retention job deleted from `table` (zero still creates the series).
    pub fn record_retention_deleted(&self, table: &str, rows: u64) {
        self.inner.retention_deleted.get_or_create(&TableLabel { table: table.to_owned() }).inc_by(rows);
    }

    /// The exposition in the OpenMetrics text format ([`CONTENT_TYPE`]), `# EOF` included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing metrics into a String cannot fail");
        out
    }
}

/// `scan_agent_sync_agent_last_seen_timestamp_seconds{agent_id}`, kept as one snapshot that
/// is swapped whole: a `Family` could only be cleared and refilled, which a scrape may
/// observe half-done.
#[derive(Debug, Default)]
struct AgentLastSeen(RwLock<Vec<(String, f64)>>);

impl Collector for AgentLastSeen {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let agents = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let mut family = encoder.encode_descriptor(
            "scan_agent_sync_agent_last_seen_timestamp_seconds",
            "Unix time of each tracked agent's lastSeen as reported by Defender.",
            None,
            MetricType::Gauge,
        )?;
        for (agent_id, seen) in agents.iter() {
            let labels = [("agent_id", agent_id.as_str())];
            family.encode_family(&labels)?.encode_gauge(seen)?;
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch, with milliseconds, as Prometheus timestamps are written.
fn unix_seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}
