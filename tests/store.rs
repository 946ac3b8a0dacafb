//! The diff and history engine against a real PostgreSQL database.

mod support;

use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::agent_id::AgentId;
use scan_agent_sync::store::Store;
use scan_agent_sync::tenant_name::TenantName;
use serde_json::{Value, json};
use sqlx::PgPool;

fn agent(id: &str, version: &str, dns: &str, last_seen: &str) -> AgentRecord {
    AgentRecord::from_json(json!({
        "id": id,
        "machineId": format!("m-{id}"),
        "lastSeen": last_seen,
        "computerDnsName": dns,
        "AssignedApplicationId": "9E0FA0EB-0A51-4357-9C87-C21BFBE07571",
        "ScannerSoftwareVersion": version,
        "LastCommandExecutionTimestamp": "2022-05-08T12:18:41Z",
        "mdeClientVersion": "10.8295.22621.1195"
    }))
    .unwrap()
}

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

/// Row counts of the three history-bearing tables.
async fn counts(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM scan_agents), (SELECT count(*) FROM scan_agent_versions),
                (SELECT count(*) FROM scan_agent_last_seen)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The whole observable state of the agent tables, for before/after comparisons.
async fn snapshot(pool: &PgPool) -> Value {
    sqlx::query_scalar(
        "SELECT json_build_object(
           'agents', (SELECT json_agg(a ORDER BY agent_id) FROM scan_agents a),
           'versions', (SELECT json_agg(v ORDER BY version_id) FROM scan_agent_versions v),
           'seen', (SELECT json_agg(s ORDER BY agent_id, last_seen) FROM scan_agent_last_seen s))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn versions_of(pool: &PgPool, agent_id: &str) -> Vec<(Option<String>, Option<String>, bool)> {
    sqlx::query_as(
        "SELECT scanner_software_version, computer_dns_name, valid_to IS NULL
         FROM scan_agent_versions WHERE agent_id = $1 ORDER BY valid_from, version_id",
    )
    .bind(agent_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The invariants every state must satisfy, whatever happened before.
async fn assert_invariants(pool: &PgPool) {
    let broken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM scan_agents a WHERE
           (SELECT count(*) FROM scan_agent_versions v WHERE v.agent_id = a.agent_id AND v.valid_to IS NULL) <> 1
           OR NOT EXISTS (SELECT 1 FROM scan_agent_last_seen s WHERE s.agent_id = a.agent_id AND s.last_seen = a.last_seen)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(broken, 0, "agents without exactly one current version or without their lastSeen row");
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
           SELECT valid_to, lead(valid_from) OVER (PARTITION BY agent_id ORDER BY valid_from) AS next_from
           FROM scan_agent_versions) v
         WHERE v.next_from IS NOT NULL AND v.valid_to IS DISTINCT FROM v.next_from",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(gaps, 0, "versions must be contiguous, without gap or overlap");
}

#[tokio::test]
async fn new_agent_gets_state_version_and_last_seen() {
    let store = support::fresh_store().await;
    let applied =
        store.apply(vec![agent("a1", "7.1.1", "host1", "2022-05-08T12:18:41.538203Z")], &[]).await.unwrap();
    assert_eq!(applied.diff.new_count(), 1);
    assert_eq!(counts(store.pool()).await, (1, 1, 1));
    let row: (String, String, chrono::DateTime<chrono::Utc>, Value) = sqlx::query_as(
        "SELECT scanner_software_version, assigned_application_id, last_seen, raw FROM scan_agents",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(row.0, "7.1.1");
    assert_eq!(row.1, "9e0fa0eb-0a51-4357-9c87-c21bfbe07571");
    assert_eq!(row.2.to_rfc3339(), "2022-05-08T12:18:41.538203+00:00");
    assert_eq!(
        row.3["AssignedApplicationId"], "9E0FA0EB-0A51-4357-9C87-C21BFBE07571",
        "raw keeps the payload as received"
    );
    assert_invariants(store.pool()).await;
}

#[tokio::test]
async fn unchanged_refetch_writes_no_history_but_stamps_the_fetch() {
    let store = support::fresh_store().await;
    let a = agent("a1", "7.1.1", "host1", "2022-05-08T12:18:41Z");
    let first = store.apply(vec![a.clone()], &[]).await.unwrap();
    let second = store.apply(vec![a], &[]).await.unwrap();
    assert!(second.diff.is_empty());
    assert_eq!(second.diff.unchanged_count(), 1);
    assert_eq!(counts(store.pool()).await, (1, 1, 1));
    let (fetched, changed): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT last_fetched_at, last_changed_at FROM scan_agents")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(fetched, second.applied_at);
    assert_eq!(changed, first.applied_at);
}

#[tokio::test]
async fn payload_only_change_rewrites_raw_but_is_no_change() {
    let store = support::fresh_store().await;
    let a = agent("a1", "7.1.1", "host1", "2022-05-08T12:18:41Z");
    let first = store.apply(vec![a.clone()], &[]).await.unwrap();
    // A field the service does not track changes: not a change, but `raw` is the last payload.
    let mut b = a.clone();
    b.raw["scanHealth"] = json!({"status": "Degraded"});
    let second = store.apply(vec![b], &[]).await.unwrap();
    assert!(second.diff.is_empty());
    assert_eq!(counts(store.pool()).await, (1, 1, 1));
    let raw_of = || async {
        let (raw, changed): (Value, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as("SELECT raw, last_changed_at FROM scan_agents")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(changed, first.applied_at, "a payload-only change does not move last_changed_at");
        raw
    };
    assert_eq!(raw_of().await["scanHealth"]["status"], "Degraded");

    // A row whose payload hash is unknown (written before the hash was kept) gets `raw`
    // rewritten by the next fetch even though nothing else changed.
    sqlx::query("UPDATE scan_agent_payloads SET raw = '{}', raw_sha256 = NULL")
        .execute(store.pool())
        .await
        .unwrap();
    let third = store.apply(vec![a], &[]).await.unwrap();
    assert!(third.diff.is_empty());
    let raw = raw_of().await;
    assert_eq!(raw["ScannerSoftwareVersion"], "7.1.1");
    assert!(raw.get("scanHealth").is_none(), "{raw}");
    let hashed: bool = sqlx::query_scalar("SELECT raw_sha256 IS NOT NULL FROM scan_agent_payloads")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(hashed, "the rewrite stores the payload hash again");
    assert_invariants(store.pool()).await;
}

/// The fingerprint each agent's state row holds (migrations 20261128000005/6), or None.
async fn fingerprint_of(pool: &PgPool, agent_id: &str) -> Option<Vec<u8>> {
    sqlx::query_scalar("SELECT fingerprint FROM scan_agent_state WHERE agent_id = $1")
        .bind(agent_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Agents whose fingerprint matches are not read back, so the fingerprint must cover every
/// field the diff compares, and an unknown one (NULL, as in rows written before the
/// migration) must mean a full read and diff.
#[tokio::test]
async fn fingerprints_skip_only_agents_stored_exactly_as_fetched() {
    let store = support::fresh_store().await;
    let pool = store.pool();
    let a = agent("a1", "7.1.1", "host1", "2022-05-08T12:18:41Z");
    store.apply(vec![a.clone()], &[]).await.unwrap();
    let written = fingerprint_of(pool, "a1").await.expect("the insert records the fingerprint");

    // Unknown fingerprint, stored row different from the fetch (an edit behind the engine's
    // back stands in for any older state): the agent is read and the change found.
    sqlx::query("UPDATE scan_agent_state SET scanner_software_version = '6.0.0'")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE scan_agent_state SET fingerprint = NULL").execute(pool).await.unwrap();
    let fixed = store.apply(vec![a.clone()], &[]).await.unwrap();
    assert_eq!(fixed.diff.changed_count(), 1, "{}", fixed.diff);
    assert_eq!(fixed.diff.agents[0].fields[0].old.as_deref(), Some("6.0.0"));
    assert_eq!(fingerprint_of(pool, "a1").await, Some(written.clone()));

    // Unknown fingerprint, stored row identical: unchanged, and the fingerprint comes back.
    sqlx::query("UPDATE scan_agent_state SET fingerprint = NULL").execute(pool).await.unwrap();
    let same = store.apply(vec![a.clone()], &[]).await.unwrap();
    assert_eq!(same.diff.unchanged_count(), 1, "{}", same.diff);
    assert_eq!(fingerprint_of(pool, "a1").await, Some(written.clone()));

    // Only last_command_execution_at changes: detected.
    let mut command = a.clone();
    command.last_command_execution_at = Some("2022-05-09T08:00:00Z".parse().unwrap());
    let commanded = store.apply(vec![command.clone()], &[]).await.unwrap();
    assert_eq!(commanded.diff.changed_count(), 1, "{}", commanded.diff);
    assert_eq!(commanded.diff.agents[0].fields[0].field, "last_command_execution_at");
    let after_command = fingerprint_of(pool, "a1").await.unwrap();
    assert_ne!(after_command, written);
    assert_eq!(store.apply(vec![command.clone()], &[]).await.unwrap().diff.unchanged_count(), 1);

    // Only the payload changes: no change, but `raw` and the fingerprint follow it.
    let mut payload = command.clone();
    payload.raw["scanHealth"] = json!({"status": "Degraded"});
    let repaid = store.apply(vec![payload.clone()], &[]).await.unwrap();
    assert!(repaid.diff.is_empty(), "{}", repaid.diff);
    let raw: Value = sqlx::query_scalar("SELECT raw FROM scan_agents").fetch_one(pool).await.unwrap();
    assert_eq!(raw["scanHealth"]["status"], "Degraded");
    assert_ne!(fingerprint_of(pool, "a1").await.unwrap(), after_command);

    // Marking an agent missing clears its fingerprint, so its return is seen.
    store.apply(vec![], &[id("a1")]).await.unwrap();
    assert_eq!(fingerprint_of(pool, "a1").await, None);
    let back = store.apply(vec![payload], &[]).await.unwrap();
    assert!(back.diff.agents[0].returned, "{}", back.diff);
    assert_eq!(counts(pool).await, (1, 2, 1));
    assert_invariants(pool).await;
}

#[tokio::test]
async fn version_upgrade_closes_and_opens_a_version() {
    let store = support::fresh_store().await;
    store.apply(vec![agent("a1", "7.1.1", "host1", "2022-05-08T12:00:00Z")], &[]).await.unwrap();
    let applied =
        store.apply(vec![agent("a1", "7.2.0", "host1", "2022-05-08T12:00:00Z")], &[]).await.unwrap();
    let change = &applied.diff.agents[0];
    assert!(change.attributes_changed && !change.last_seen_changed);
    assert_eq!(
        versions_of(store.pool(), "a1").await,
        vec![
            (Some("7.1.1".into()), Some("host1".into()), false),
            (Some("7.2.0".into()), Some("host1".into()), true)
        ]
    );
    assert_eq!(counts(store.pool()).await, (1, 2, 1), "an unchanged lastSeen adds no row");
    assert_invariants(store.pool()).await;
}

#[tokio::test]
async fn dns_name_change_is_a_new_version() {
    let store = support::fresh_store().await;
    store.apply(vec![agent("a1", "7.1.1", "host1", "2022-05-08T12:00:00Z")], &[]).await.unwrap();
    let applied =
        store.apply(vec![agent("a1", "7.1.1", "host1.corp", "2022-05-08T12:00:00Z")], &[]).await.unwrap();
    assert_eq!(applied.diff.agents[0].fields[0].field, "computer_dns_name");
    assert_eq!(versions_of(store.pool(), "a1").await.len(), 2);
    assert_invariants(store.pool()).await;
}

#[tokio::test]
async fn last_seen_only_change_adds_a_last_seen_row_and_no_version() {
    let store = support::fresh_store().await;
    store.apply(vec![agent("a1", "7.1.1", "host1", "2022-05-08T12:00:00Z")], &[]).await.unwrap();
    store.apply(vec![agent("a1", "7.1.1", "host1", "2022-05-08T13:00:00Z")], &[]).await.unwrap();
    // Back to an earlier value: it is already recorded once.
    store.apply(vec![agent("a1", "7.1.1", "host1", "2022-05-08T12:00:00Z")], &[]).await.unwrap();
    assert_eq!(counts(store.pool()).await, (1, 1, 2));
    assert_invariants(store.pool()).await;
}

#[tokio::test]
async fn nulls_in_optional_fields_are_stored_and_compared() {
    let store = support::fresh_store().await;
    let bare = AgentRecord::from_json(json!({"id": "a1", "lastSeen": "2022-05-08T12:00:00Z",
        "machineId": null, "computerDnsName": null}))
    .unwrap();
    store.apply(vec![bare.clone()], &[]).await.unwrap();
    assert!(store.apply(vec![bare], &[]).await.unwrap().diff.is_empty(), "null equals null");
    let named = store.apply(vec![agent("a1", "7.1.1", "host1", "2022-05-08T12:00:00Z")], &[]).await.unwrap();
    let fields: Vec<&str> = named.diff.agents[0].fields.iter().map(|f| f.field).collect();
    assert!(
        fields.contains(&"computer_dns_name") && fields.contains(&"last_command_execution_at"),
        "{fields:?}"
    );
    assert_eq!(versions_of(store.pool(), "a1").await[0], (None, None, false));
    assert_invariants(store.pool()).await;
}

#[tokio::test]
async fn zero_and_seven_fraction_digits_round_trip_without_spurious_changes() {
    let store = support::fresh_store().await;
    let batch = vec![
        agent("a0", "1", "h", "2022-05-08T12:18:16Z"),
        agent("a7", "1", "h", "2022-05-08T12:18:04.8242449Z"),
    ];
    store.apply(batch.clone(), &[]).await.unwrap();
    let again = store.apply(batch, &[]).await.unwrap();
    assert!(again.diff.is_empty(), "7 digits are truncated to what PostgreSQL keeps: {}", again.diff);
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT to_char(last_seen AT TIME ZONE 'UTC', 'HH24:MI:SS.US') FROM scan_agents ORDER BY agent_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(stored, vec!["12:18:16.000000", "12:18:04.824244"]);
}

#[tokio::test]
async fn missing_then_returned() {
    let store = support::fresh_store().await;
    let a = agent("a1", "7.1.1", "host1", "2022-05-08T12:00:00Z");
    store.apply(vec![a.clone()], &[]).await.unwrap();
    let gone = store.apply(vec![], &[id("a1"), id("never")]).await.unwrap();
    assert_eq!(gone.diff.went_missing, vec![id("a1")]);
    assert_eq!(gone.diff.never_seen, vec![id("never")]);
    let again = store.apply(vec![], &[id("a1")]).await.unwrap();
    assert_eq!(again.diff.still_missing, 1);
    let since: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT missing_since FROM scan_agents").fetch_one(store.pool()).await.unwrap();
    assert_eq!(since, Some(gone.applied_at), "a second confirmation keeps the first missing_since");
    let stale: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stale_scan_agents WHERE missing_since IS NOT NULL")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(stale, 1);

    let back = store.apply(vec![a], &[]).await.unwrap();
    assert!(back.diff.agents[0].returned);
    let since: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT missing_since FROM scan_agents").fetch_one(store.pool()).await.unwrap();
    assert_eq!(since, None);
    assert_eq!(counts(store.pool()).await, (1, 1, 1), "never deleted, no history for a return");
}

#[tokio::test]
async fn reapplying_the_same_batch_changes_nothing() {
    let store = support::fresh_store().await;
    let batch: Vec<AgentRecord> =
        (0..50).map(|i| agent(&format!("a{i}"), "7.1.1", &format!("h{i}"), "2022-05-08T12:00:00Z")).collect();
    store.apply(batch.clone(), &[id("gone")]).await.unwrap();
    let before = snapshot(store.pool()).await;
    let again = store.apply(batch, &[id("gone")]).await.unwrap();
    assert!(again.diff.is_empty());
    let mut after = snapshot(store.pool()).await;
    // Only the fetch stamp may move.
    for (a, b) in after["agents"].as_array_mut().unwrap().iter_mut().zip(before["agents"].as_array().unwrap())
    {
        a["last_fetched_at"] = b["last_fetched_at"].clone();
    }
    assert_eq!(after, before);
}

#[tokio::test]
async fn plan_reports_the_diff_and_writes_nothing() {
    let store = support::fresh_store().await;
    store.apply(vec![agent("a1", "1", "h", "2022-05-08T12:00:00Z")], &[]).await.unwrap();
    let before = snapshot(store.pool()).await;
    let diff = store
        .for_tenant(TenantName::default())
        .plan(
            vec![
                agent("a1", "2", "h", "2022-05-08T12:00:00Z"),
                agent("a2", "1", "h", "2022-05-08T12:00:00Z"),
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!((diff.new_count(), diff.changed_count()), (1, 1));
    assert_eq!(snapshot(store.pool()).await, before);
}

#[tokio::test]
async fn two_concurrent_appliers_equal_applying_in_order() {
    let store = support::fresh_store().await;
    let all: Vec<AgentRecord> =
        (0..150).map(|i| agent(&format!("a{i:03}"), "1", "h", "2022-05-08T12:00:00Z")).collect();
    store.apply(all, &[]).await.unwrap();
    let batch_a: Vec<AgentRecord> =
        (0..100).map(|i| agent(&format!("a{i:03}"), "2", "h", "2022-05-08T13:00:00Z")).collect();
    let batch_b: Vec<AgentRecord> =
        (50..150).map(|i| agent(&format!("a{i:03}"), "3", "h", "2022-05-08T14:00:00Z")).collect();
    // A second pool: a separate set of connections, as a second process would have.
    let other = Store::from_pool(
        sqlx::postgres::PgPoolOptions::new()
            .connect_with(store.pool().connect_options().as_ref().clone())
            .await
            .unwrap(),
    );
    let (ra, rb) = tokio::join!(store.apply(batch_a, &[]), other.apply(batch_b, &[]));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let last = if ra.applied_at > rb.applied_at { "2" } else { "3" };
    assert_ne!(ra.applied_at, rb.applied_at);
    // Overlapping agents went through both versions, in the order the batches committed.
    let overlap = versions_of(store.pool(), "a075").await;
    assert_eq!(overlap.len(), 3);
    assert_eq!(overlap[2].0.as_deref(), Some(last));
    assert_eq!(versions_of(store.pool(), "a010").await.len(), 2);
    assert_eq!(versions_of(store.pool(), "a120").await.len(), 2);
    assert_eq!(counts(store.pool()).await, (150, 150 + 100 + 100, 150 + 100 + 100));
    assert_invariants(store.pool()).await;
}

#[tokio::test]
async fn a_transaction_killed_midway_leaves_the_previous_state() {
    let store = support::fresh_store().await;
    let v1: Vec<AgentRecord> =
        (0..20).map(|i| agent(&format!("a{i}"), "1", "h", "2022-05-08T12:00:00Z")).collect();
    store.apply(v1, &[]).await.unwrap();
    let before = snapshot(store.pool()).await;

    // Block the applier at its lastSeen insert, after it has already rewritten the agents
    // and their versions, then kill its backend.
    let mut blocker = store.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE scan_agent_last_seen IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let v2: Vec<AgentRecord> =
        (0..20).map(|i| agent(&format!("a{i}"), "2", "h2", "2022-05-08T13:00:00Z")).collect();
    let applier = tokio::spawn({
        let store = store.clone();
        async move { store.apply(v2, &[]).await }
    });
    // Polled from the pool, not the blocker: activity statistics are frozen within a transaction.
    let pid: i32 = loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO scan_agent_last_seen%'",
        )
        .fetch_optional(store.pool())
        .await
        .unwrap();
        if let Some(pid) = pid {
            break pid;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    assert!(killed);
    blocker.rollback().await.unwrap();
    let outcome = applier.await.unwrap();
    assert!(outcome.is_err(), "the killed apply must report failure");
    assert_eq!(snapshot(store.pool()).await, before);
    assert_invariants(store.pool()).await;
}
