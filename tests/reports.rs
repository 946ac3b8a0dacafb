//! The `stale` and `history` report backends and the analyst views, on real PostgreSQL.

mod support;

use chrono::NaiveDate;
use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::report::{history_report, stale_report};
use scan_agent_sync::tenant_name::{TenantName, TenantSelection};
use serde_json::json;

fn record(id: &str, version: &str, last_seen: &str) -> AgentRecord {
    AgentRecord::from_json(json!({
        "id": id, "computerDnsName": format!("{id}.example.org"),
        "scannerSoftwareVersion": version, "lastSeen": last_seen,
    }))
    .unwrap()
}

#[tokio::test]
async fn history_lists_versions_and_last_seen_values_and_unknown_agents_are_none() {
    let store = support::fresh_store().await;
    store.apply(vec![record("a1", "7.1", "2026-01-01T00:00:00Z")], &[]).await.unwrap();
    store.apply(vec![record("a1", "7.2", "2026-01-02T00:00:00Z")], &[]).await.unwrap();

    assert!(history_report(&store, "nobody").await.unwrap().is_none());
    let history = history_report(&store, "a1").await.unwrap().unwrap();
    let versions: Vec<(Option<&str>, bool)> = history
        .versions
        .iter()
        .map(|v| (v.scanner_software_version.as_deref(), v.valid_to.is_none()))
        .collect();
    assert_eq!(versions, [(Some("7.1"), false), (Some("7.2"), true)]);
    assert_eq!(history.recent_last_seen.len(), 2);
    assert!(history.recent_last_seen[0].last_seen > history.recent_last_seen[1].last_seen, "newest first");

    let text = history.to_string();
    assert!(text.contains("a1.example.org") && text.contains("current") && text.contains("7.1"), "{text}");
    let json = serde_json::to_value(&history).unwrap();
    assert_eq!(json["agent"]["agent_id"], "a1");
    assert_eq!(json["versions"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn stale_report_shows_stale_agents_as_table_and_json() {
    let store = support::fresh_store().await;
    let every = TenantSelection::all();
    assert_eq!(stale_report(&store, &every).await.unwrap().to_string(), "No stale agents.\n");
    store.apply(vec![record("old", "7.1", "2020-01-01T00:00:00Z")], &[]).await.unwrap();
    let report = stale_report(&store, &every).await.unwrap();
    let text = report.to_string();
    assert!(text.starts_with("TENANT") && text.contains("old.example.org") && text.contains('d'), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json[0]["agent_id"], "old");
    assert_eq!(json[0]["tenant"], "default");
}

/// `stale --tenant`: each tenant's stale agents apart, or all of them.
#[tokio::test]
async fn the_stale_report_selects_tenants() {
    let store = support::fresh_store().await;
    for (tenant, agent) in [("contoso", "c-old"), ("fabrikam", "f-old")] {
        let tenant = TenantName::parse(tenant).unwrap();
        store
            .for_tenant(tenant)
            .apply(vec![record(agent, "7.1", "2020-01-01T00:00:00Z")], &[])
            .await
            .unwrap();
    }
    let listed = |selection: TenantSelection| {
        let store = store.clone();
        async move {
            let report = stale_report(&store, &selection).await.unwrap();
            report.agents.iter().map(|a| format!("{}/{}", a.tenant, a.agent_id)).collect::<Vec<_>>()
        }
    };
    let contoso = TenantSelection::only(vec![TenantName::parse("contoso").unwrap()]);
    assert_eq!(listed(contoso).await, ["contoso/c-old"]);
    assert_eq!(listed(TenantSelection::all()).await, ["contoso/c-old", "fabrikam/f-old"]);
}

#[tokio::test]
async fn analyst_views_show_changes_and_daily_counts() {
    let store = support::fresh_store().await;
    store
        .apply(
            vec![record("a1", "7.1", "2026-01-01T00:00:00Z"), record("a2", "7.1", "2026-01-01T00:00:00Z")],
            &[],
        )
        .await
        .unwrap();
    store.apply(vec![record("a1", "7.2", "2026-01-02T00:00:00Z")], &[]).await.unwrap();

    let changes: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT agent_id, field, old_value, new_value FROM scan_agent_version_changes ORDER BY changed_at",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        changes,
        [("a1".into(), "scanner_software_version".into(), Some("7.1".into()), Some("7.2".into()))]
    );

    let distribution: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT scanner_software_version, agents FROM scan_agent_version_distribution ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(distribution, [(Some("7.1".into()), 1), (Some("7.2".into()), 1)]);

    // Versions were stamped today (the database clock): yesterday shows nothing, today both.
    let daily: Vec<(NaiveDate, Option<String>, i64)> = sqlx::query_as(
        "SELECT day, scanner_software_version, agents
         FROM scan_agent_versions_per_day(current_date - 1, current_date)",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let today: NaiveDate = sqlx::query_scalar("SELECT current_date").fetch_one(store.pool()).await.unwrap();
    assert_eq!(daily, [(today, Some("7.1".into()), 1), (today, Some("7.2".into()), 1)]);
}
