//! Alerts posted to a real Alertmanager (Debian's `prometheus-alertmanager`, installed by
//! `.ci/run`): it must accept our body, list the firing alert, and take our resolve.
//! Without the binary the test fails and says what to install; it never skips.

mod support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::alerts::{DeliveryReport, deliver_pending, evaluate, webhook_client};
use scan_agent_sync::config::{AlertFormat, AlertSettings, StaleSettings};
use scan_agent_sync::store::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Where Debian's package puts the binary; `ALERTMANAGER_BIN` overrides it.
const DEFAULT_BINARY: &str = "/usr/bin/prometheus-alertmanager";

/// A minimal configuration: every alert goes to a receiver that notifies nobody.
const CONFIG: &str = "route:\n  receiver: nobody\n  group_wait: 1s\nreceivers:\n  - name: nobody\n";

/// An Alertmanager on a loopback port with its own storage, killed on drop.
struct Alertmanager {
    child: Child,
    base_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    async fn start() -> Alertmanager {
        let binary =
            PathBuf::from(std::env::var("ALERTMANAGER_BIN").unwrap_or_else(|_| DEFAULT_BINARY.into()));
        assert!(
            binary.is_file(),
            "this test needs Alertmanager at {}: install the Debian package with \
             `apt-get install -y prometheus-alertmanager` (or `bash .ci/run`), or set ALERTMANAGER_BIN",
            binary.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, CONFIG).unwrap();
        // Reserve a free port, then hand it over; the race with other processes is negligible.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=") // no gossip port: a single local instance
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut alertmanager =
            Alertmanager { child, base_url: format!("http://127.0.0.1:{port}"), _dir: dir };
        alertmanager.wait_ready().await;
        alertmanager
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("Alertmanager exited at start ({status}); see its log above");
            }
            let ready = client.get(format!("{}/-/ready", self.base_url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Alertmanager did not become ready at {} within 10 s", self.base_url);
    }

    /// Alertmanager's own view: `GET /api/v2/alerts` (active, silenced and inhibited).
    async fn alerts(&self) -> Vec<Value> {
        reqwest::get(format!("{}/api/v2/alerts", self.base_url)).await.unwrap().json().await.unwrap()
    }
}

async fn deliver(store: &Store, client: &reqwest::Client, alerts: &AlertSettings) -> DeliveryReport {
    deliver_pending(store, client, alerts, Utc::now(), &CancellationToken::new()).await.unwrap()
}

fn settings(alertmanager: &Alertmanager) -> AlertSettings {
    AlertSettings {
        webhook_url: Some(format!("{}/api/v2/alerts", alertmanager.base_url)),
        format: AlertFormat::Alertmanager,
        repeat_interval: Duration::ZERO,
        max_batch: 100,
    }
}

#[tokio::test]
async fn alertmanager_lists_the_firing_alert_then_takes_the_resolve() {
    let alertmanager = Alertmanager::start().await;
    let store = support::fresh_store().await;
    let stale = StaleSettings { after: Duration::from_secs(3600), ..StaleSettings::default() };
    let alerts = settings(&alertmanager);
    let client = webhook_client().unwrap();
    let seen = |at: chrono::DateTime<Utc>| {
        AgentRecord::from_json(json!({
            "id": "agent-am-1", "computerDnsName": "scanner-1.example.org", "lastSeen": at.to_rfc3339(),
        }))
        .unwrap()
    };

    store.apply(vec![seen(Utc::now() - TimeDelta::hours(2))], &[]).await.unwrap();
    assert_eq!(evaluate(&store, None, &stale, &alerts, Utc::now()).await.unwrap().fired, 1);
    let report = deliver(&store, &client, &alerts).await;
    assert_eq!(report.delivered, 1, "Alertmanager refused the firing alert: {report:?}");

    let listed = alertmanager.alerts().await;
    let ours: Vec<&Value> = listed.iter().filter(|a| a["labels"]["agent_id"] == "agent-am-1").collect();
    assert_eq!(ours.len(), 1, "{listed:?}");
    assert_eq!(ours[0]["labels"]["alertname"], "ScanAgentStale");
    assert_eq!(ours[0]["labels"]["computer_dns_name"], "scanner-1.example.org");
    assert_eq!(ours[0]["labels"]["severity"], "warning");
    assert_eq!(ours[0]["status"]["state"], "active", "{:?}", ours[0]);

    store.apply(vec![seen(Utc::now())], &[]).await.unwrap();
    assert_eq!(evaluate(&store, None, &stale, &alerts, Utc::now()).await.unwrap().resolved, 1);
    let report = deliver(&store, &client, &alerts).await;
    assert_eq!(report.delivered, 1, "Alertmanager refused the resolve: {report:?}");

    // Resolved alerts leave the list of current alerts; one still listed must have ended.
    let listed = alertmanager.alerts().await;
    for alert in listed.iter().filter(|a| a["labels"]["agent_id"] == "agent-am-1") {
        let ends_at: chrono::DateTime<Utc> = alert["endsAt"].as_str().unwrap().parse().unwrap();
        assert!(ends_at <= Utc::now(), "the alert is still active after the resolve: {alert}");
    }
}

/// One POST carrying many stale-agent alerts and a fleet alert: Alertmanager takes the
/// whole array and lists each alert under its own labels.
#[tokio::test]
async fn alertmanager_takes_a_batch_with_a_fleet_alert() {
    let alertmanager = Alertmanager::start().await;
    let store = support::fresh_store().await;
    let stale = StaleSettings { after: Duration::from_secs(3600), ..StaleSettings::default() };
    let alerts = settings(&alertmanager);
    let old = (Utc::now() - TimeDelta::hours(2)).to_rfc3339();
    let records = (0..30)
        .map(|i| AgentRecord::from_json(json!({"id": format!("agent-batch-{i}"), "lastSeen": old})).unwrap())
        .collect();
    store.apply(records, &[]).await.unwrap();
    assert_eq!(evaluate(&store, None, &stale, &alerts, Utc::now()).await.unwrap().fired, 30);
    store
        .fleet_vanished("default", 950, 1000, "950 of 1000 agents absent from the list", Utc::now())
        .await
        .unwrap();

    let report = deliver(&store, &webhook_client().unwrap(), &alerts).await;
    assert_eq!(report, DeliveryReport { delivered: 31, retrying: 0, rejected: 0 });

    let listed = alertmanager.alerts().await;
    let stale_listed = listed.iter().filter(|a| a["labels"]["alertname"] == "ScanAgentStale").count();
    assert_eq!(stale_listed, 30, "{listed:?}");
    let fleet: Vec<&Value> =
        listed.iter().filter(|a| a["labels"]["alertname"] == "ScanAgentFleetVanished").collect();
    assert_eq!(fleet.len(), 1, "{listed:?}");
    assert_eq!(fleet[0]["labels"]["tenant"], "default");
    assert_eq!(fleet[0]["labels"]["severity"], "critical");
    assert_eq!(fleet[0]["status"]["state"], "active", "{:?}", fleet[0]);
    let summary = fleet[0]["annotations"]["summary"].as_str().unwrap();
    assert!(summary.contains("950 of 1000") && summary.contains("--accept-mass-missing"), "{summary}");
}
