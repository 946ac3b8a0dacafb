//! Tenants in one database (issue 13, PRODUCT.md "Tenants"): the migration that carries a
//! single-tenant database over as tenant `default`, and two tenants' stores side by side.

mod support;

use std::time::Duration;

use scan_agent_sync::agent::AgentRecord;
use scan_agent_sync::agent_id::AgentId;
use scan_agent_sync::alerts::evaluate;
use scan_agent_sync::config::{AlertSettings, StaleSettings};
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::store::ledger::Slot;
use scan_agent_sync::store::missing::{Absence, Tracked};
use scan_agent_sync::store::tenant::TenantStore;
use scan_agent_sync::store::{MIGRATOR, Store};
use scan_agent_sync::tenant_name::TenantName;
use serde_json::{Value, json};
use sqlx::PgPool;

fn agent(id: &str, version: &str, last_seen: &str) -> AgentRecord {
    AgentRecord::from_json(json!({
        "id": id,
        "machineId": format!("m-{id}"),
        "lastSeen": last_seen,
        "computerDnsName": format!("{id}.example"),
        "ScannerSoftwareVersion": version,
    }))
    .unwrap()
}

fn id(s: &str) -> AgentId {
    AgentId::parse(s).unwrap()
}

fn minute(calls: u32) -> Vec<RateWindow> {
    vec![RateWindow { calls, per: Duration::from_secs(60) }]
}

/// The tenant of each row of `sql`'s `(key, tenant)` rows, sorted by key.
async fn tenants_of(pool: &PgPool, sql: &'static str) -> Vec<(String, String)> {
    sqlx::query_as(sql).fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn assert_invariants_hold(store: &Store) {
    let findings = store.check_invariants(&minute(100)).await.unwrap();
    assert!(findings.iter().all(|f| f.holds()), "{findings:?}");
}

/// Two tenants' stores on one fresh database.
async fn two_tenants() -> (PgPool, TenantStore, TenantStore) {
    let pool = support::fresh_pool().await;
    (pool.clone(), tenant(&pool, "contoso"), tenant(&pool, "fabrikam"))
}

/// [`two_tenants`] with contoso's agents c1 and c2 and fabrikam's f1 stored.
async fn two_stocked_tenants() -> (PgPool, TenantStore, TenantStore) {
    let (pool, contoso, fabrikam) = two_tenants().await;
    contoso
        .apply(vec![agent("c1", "1", "2026-01-01T00:00:00Z"), agent("c2", "1", "2026-01-01T00:00:00Z")], &[])
        .await
        .unwrap();
    fabrikam.apply(vec![agent("f1", "1", "2026-01-01T00:00:00Z")], &[]).await.unwrap();
    (pool, contoso, fabrikam)
}

fn tenant(pool: &PgPool, name: &str) -> TenantStore {
    Store::from_pool(pool.clone()).for_tenant(TenantName::parse(name).unwrap())
}

#[tokio::test]
async fn the_migration_keeps_every_row_of_a_single_tenant_database_as_default() {
    let pool = support::pool_before_migration("tenants").await;
    // What the engine wrote before: a1 upgraded once (a closed version, two lastSeen values),
    // a2 never changed, a run, and ledger rows.
    sqlx::raw_sql(
        "INSERT INTO scan_agent_state (agent_id, scanner_software_version, last_seen, first_observed_at,
                                       last_changed_at, valid_from, last_fetched_at)
         VALUES ('a1', '2', '2026-01-02', '2026-01-01', '2026-01-02', '2026-01-02', '2026-01-02'),
                ('a2', '1', '2026-01-01', '2026-01-01', '2026-01-01', '2026-01-01', '2026-01-02');
         INSERT INTO scan_agent_version_history (version_id, agent_id, scanner_software_version, valid_from, valid_to)
         VALUES (nextval('scan_agent_version_id_seq'), 'a1', '1', '2026-01-01', '2026-01-02');
         INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
         VALUES ('a1', '2026-01-01', '2026-01-01'), ('a1', '2026-01-02', '2026-01-02'),
                ('a2', '2026-01-01', '2026-01-01');
         INSERT INTO scan_agent_payloads (agent_id, raw) VALUES ('a1', '{\"id\": \"a1\"}'), ('a2', '{\"id\": \"a2\"}');
         INSERT INTO sync_runs (mode, status, list_pages) VALUES ('list', 'ok', 3), ('list', 'running', NULL);
         INSERT INTO api_calls (called_at, endpoint, status)
         SELECT now() - make_interval(secs => n), 'list', 200 FROM generate_series(1, 5) AS n;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let columns = |view: &'static str| {
        let pool = pool.clone();
        async move {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT attname::text FROM pg_attribute
                 WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            )
            .bind(view)
            .fetch_all(&pool)
            .await
            .unwrap();
            names
        }
    };
    const VIEWS: [&str; 6] = [
        "scan_agents",
        "scan_agent_versions",
        "stale_scan_agents",
        "scan_agent_version_distribution",
        "scan_agent_version_changes",
        "scan_agent_versions_daily",
    ];
    let mut before = Vec::new();
    for view in VIEWS {
        before.push(columns(view).await);
    }
    let rows_before: Value = sqlx::query_scalar(
        "SELECT json_build_object(
           'agents', (SELECT json_agg(a ORDER BY agent_id) FROM scan_agents a),
           'versions', (SELECT json_agg(v ORDER BY version_id) FROM scan_agent_versions v),
           'changes', (SELECT json_agg(c ORDER BY version_id, field) FROM scan_agent_version_changes c))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    MIGRATOR.run(&pool).await.unwrap();

    // Existing names change only by addition: every column where it was, `tenant` last.
    for (view, mut expected) in VIEWS.into_iter().zip(before) {
        expected.push("tenant".to_owned());
        assert_eq!(columns(view).await, expected, "{view}");
    }
    // Every row is the default tenant's, in the tables and the views.
    for table in [
        "scan_agent_state",
        "scan_agent_version_history",
        "scan_agent_last_seen",
        "sync_runs",
        "api_calls",
        "scan_agents",
        "scan_agent_versions",
        "scan_agent_version_changes",
        "scan_agent_version_distribution",
    ] {
        let other: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE tenant IS DISTINCT FROM 'default') FROM {table}"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(other, 0, "{table}");
    }
    // The same rows as before, each with the tenant added.
    let rows_after: Value = sqlx::query_scalar(
        "SELECT json_build_object(
           'agents', (SELECT json_agg(to_jsonb(a) - 'tenant' ORDER BY agent_id) FROM scan_agents a),
           'versions', (SELECT json_agg(to_jsonb(v) - 'tenant' ORDER BY version_id) FROM scan_agent_versions v),
           'changes', (SELECT json_agg(to_jsonb(c) - 'tenant' ORDER BY version_id, field)
                       FROM scan_agent_version_changes c))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows_after, rows_before);
    let per_day: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT scanner_software_version, agents, tenant
         FROM scan_agent_versions_per_day(date '2026-01-01', date '2026-01-01')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_day, vec![("1".into(), 2, "default".into())]);

    let store = Store::from_pool(pool.clone());
    assert_invariants_hold(&store).await;
    // The single tenant goes on where it was: its ledger, its runs, its agents.
    let default = store.for_tenant(TenantName::default());
    assert_eq!(default.remaining(&minute(100)).await.unwrap(), vec![95]);
    assert_eq!(default.last_list_pages().await.unwrap(), Some(3));
    assert_eq!(default.stored_ids().await.unwrap(), vec![id("a1"), id("a2")]);
    assert_eq!(default.close_abandoned_runs().await.unwrap(), 1);
    let applied = store.apply(vec![agent("a2", "2", "2026-01-03T00:00:00Z")], &[]).await.unwrap();
    assert!(applied.refused.is_empty());
    assert_eq!(applied.diff.changed_count(), 1);
    assert_invariants_hold(&store).await;
}

#[tokio::test]
async fn each_tenants_rows_carry_its_name() {
    let (pool, contoso, fabrikam) = two_stocked_tenants().await;
    // c1 upgrades: the closed version and the new lastSeen value are contoso's.
    contoso.apply(vec![agent("c1", "2", "2026-01-02T00:00:00Z")], &[]).await.unwrap();
    let run = fabrikam.start_run("list", 1).await.unwrap();

    let expected = |rows: &[(&str, &str)]| -> Vec<(String, String)> {
        rows.iter().map(|(a, t)| ((*a).to_owned(), (*t).to_owned())).collect()
    };
    assert_eq!(
        tenants_of(&pool, "SELECT agent_id, tenant FROM scan_agents ORDER BY 1").await,
        expected(&[("c1", "contoso"), ("c2", "contoso"), ("f1", "fabrikam")])
    );
    assert_eq!(
        tenants_of(&pool, "SELECT agent_id, tenant FROM scan_agent_version_history ORDER BY 1").await,
        expected(&[("c1", "contoso")])
    );
    assert_eq!(
        tenants_of(
            &pool,
            "SELECT agent_id || ' ' || last_seen::date, tenant FROM scan_agent_last_seen ORDER BY 1"
        )
        .await,
        expected(&[
            ("c1 2026-01-01", "contoso"),
            ("c1 2026-01-02", "contoso"),
            ("c2 2026-01-01", "contoso"),
            ("f1 2026-01-01", "fabrikam")
        ])
    );
    assert_eq!(
        tenants_of(&pool, "SELECT run_id::text, tenant FROM sync_runs").await,
        vec![(run.to_string(), "fabrikam".to_owned())]
    );
    let changes: Vec<(String, String, String)> =
        sqlx::query_as("SELECT agent_id, field, tenant FROM scan_agent_version_changes ORDER BY 1, 2")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(changes, vec![("c1".into(), "scanner_software_version".into(), "contoso".into())]);
    // Versions are valid from when the service recorded them: today.
    let per_day = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let rows: Vec<(String, i64, String)> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            rows
        }
    };
    let contoso_today =
        vec![("1".to_owned(), 1, "contoso".to_owned()), ("2".to_owned(), 1, "contoso".to_owned())];
    assert_eq!(
        per_day(
            "SELECT scanner_software_version, agents, tenant
             FROM scan_agent_versions_per_day(current_date, current_date, 'contoso')"
        )
        .await,
        contoso_today
    );
    let mut everyone = contoso_today;
    everyone.push(("1".to_owned(), 1, "fabrikam".to_owned()));
    assert_eq!(
        per_day("SELECT scanner_software_version, agents, tenant FROM scan_agent_versions_daily").await,
        everyone
    );

    // Each tenant's own agents, runs and fetch order.
    assert_eq!(contoso.stored_ids().await.unwrap(), vec![id("c1"), id("c2")]);
    assert_eq!(fabrikam.stored_ids().await.unwrap(), vec![id("f1")]);
    assert_eq!(contoso.close_abandoned_runs().await.unwrap(), 0, "fabrikam's run is not contoso's");
    assert_eq!(fabrikam.close_abandoned_runs().await.unwrap(), 1);
    // To fabrikam, contoso's c1 is an agent it never fetched: first.
    assert_eq!(fabrikam.fetch_order(&[id("f1"), id("c1")]).await.unwrap(), vec![id("c1"), id("f1")]);
    assert_invariants_hold(&Store::from_pool(pool)).await;
}

#[tokio::test]
async fn a_complete_list_of_one_tenant_marks_nothing_of_another() {
    let (pool, contoso, fabrikam) = two_stocked_tenants().await;

    // Contoso lists only c1: c2 is missing, fabrikam's f1 is none of contoso's business.
    let since = contoso.clock().await.unwrap();
    contoso.apply_page(vec![agent("c1", "1", "2026-01-01T00:00:00Z")], since).await.unwrap();
    let now = contoso.clock().await.unwrap();
    let absence = contoso.count_unlisted(Tracked::All, since, now, &[]).await.unwrap();
    assert_eq!(absence, Absence { known: 2, vanishing: 1, unlisted: 1, still_missing: 0, never_seen: 0 });
    // Configured IDs: f1 configured for contoso too (a config error elsewhere) is never seen
    // by contoso, not marked.
    let ids = [id("c1"), id("c2"), id("f1")];
    let absence = contoso.count_unlisted(Tracked::Ids(&ids), since, now, &[]).await.unwrap();
    assert_eq!(absence, Absence { known: 2, vanishing: 1, unlisted: 1, still_missing: 0, never_seen: 1 });
    assert_eq!(contoso.mark_unlisted(Tracked::Ids(&ids), since, &[]).await.unwrap(), 1);
    let missing: Vec<String> =
        sqlx::query_scalar("SELECT agent_id FROM scan_agents WHERE missing_since IS NOT NULL ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(missing, vec!["c2".to_owned()]);

    // A by-ID batch of fabrikam naming contoso's agent as not found marks nothing either.
    let applied = fabrikam.apply(vec![], &[id("c1")]).await.unwrap();
    assert!(applied.diff.went_missing.is_empty(), "{:?}", applied.diff);
    let plan = fabrikam.plan(vec![], &[id("c1"), id("f1")]).await.unwrap();
    assert_eq!(plan.went_missing, vec![id("f1")]);
    assert_invariants_hold(&Store::from_pool(pool)).await;
}

#[tokio::test]
async fn an_agent_of_one_tenant_returned_by_another_is_refused_and_left_alone() {
    let (pool, contoso, fabrikam) = two_tenants().await;
    contoso.apply(vec![agent("c1", "1", "2026-01-01T00:00:00Z")], &[]).await.unwrap();
    let row = |pool: PgPool| async move {
        let row: Value = sqlx::query_scalar(
            "SELECT json_build_object(
               'agent', (SELECT to_jsonb(a) FROM scan_agents a WHERE agent_id = 'c1'),
               'versions', (SELECT json_agg(v ORDER BY version_id) FROM scan_agent_versions v),
               'seen', (SELECT json_agg(s ORDER BY last_seen) FROM scan_agent_last_seen s))",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        row
    };
    let before = row(pool.clone()).await;

    // Fabrikam's API returns c1, changed, next to its own f1: f1 is stored, c1 refused.
    let since = fabrikam.clock().await.unwrap();
    let applied = fabrikam
        .apply_page(
            vec![agent("c1", "2", "2026-01-05T00:00:00Z"), agent("f1", "1", "2026-01-01T00:00:00Z")],
            since,
        )
        .await
        .unwrap();
    assert_eq!(applied.refused.len(), 1);
    assert_eq!(
        (applied.refused[0].agent_id.as_str(), applied.refused[0].stored_under.as_str()),
        ("c1", "contoso")
    );
    assert_eq!((applied.diff.new_count(), applied.diff.changed_count()), (1, 0));
    assert_eq!(applied.diff.agents.len(), 1, "the refused agent is not in the diff");
    // Unchanged too (fingerprint path) and by ID: refused each time.
    let applied = fabrikam.apply(vec![agent("c1", "1", "2026-01-01T00:00:00Z")], &[]).await.unwrap();
    assert_eq!(applied.refused.len(), 1);
    assert!(applied.diff.agents.is_empty());

    let after = row(pool.clone()).await;
    let without_f1 = |mut v: Value| {
        for list in ["versions", "seen"] {
            v[list].as_array_mut().unwrap().retain(|r| r["agent_id"] != "f1");
        }
        v
    };
    assert_eq!(without_f1(after), before, "contoso's c1 is untouched");
    assert_eq!(
        tenants_of(&pool, "SELECT agent_id, tenant FROM scan_agents ORDER BY 1").await,
        vec![("c1".to_owned(), "contoso".to_owned()), ("f1".to_owned(), "fabrikam".to_owned())]
    );
    assert_invariants_hold(&Store::from_pool(pool)).await;
}

#[tokio::test]
async fn one_tenants_calls_do_not_use_another_tenants_window() {
    let (pool, contoso, fabrikam) = two_tenants().await;
    let windows = minute(2);
    for _ in 0..2 {
        assert!(matches!(contoso.take_slot(&windows, "list").await.unwrap(), Slot::Granted(_)));
    }
    assert!(matches!(contoso.take_slot(&windows, "list").await.unwrap(), Slot::Wait(_)));
    assert_eq!(contoso.remaining(&windows).await.unwrap(), vec![0]);
    assert_eq!(fabrikam.remaining(&windows).await.unwrap(), vec![2]);
    assert!(matches!(fabrikam.take_slot(&windows, "list").await.unwrap(), Slot::Granted(_)));
    assert_eq!(fabrikam.remaining(&windows).await.unwrap(), vec![1]);

    // A 429 pause of fabrikam holds fabrikam only.
    let Slot::Granted(grant) = fabrikam.take_slot(&windows, "list").await.unwrap() else {
        panic!("fabrikam's second call has room");
    };
    fabrikam.finish_call(grant.call_id, grant.lag, Some(429), Some(Duration::from_secs(600))).await.unwrap();
    let other = tenant(&pool, "northwind");
    assert!(matches!(other.take_slot(&windows, "list").await.unwrap(), Slot::Granted(_)));
    match fabrikam.take_slot(&minute(100), "list").await.unwrap() {
        Slot::Wait(wait) => assert!(wait > Duration::from_secs(500), "{wait:?}"),
        granted => panic!("fabrikam is paused: {granted:?}"),
    }
}

#[tokio::test]
async fn staleness_is_evaluated_for_the_tenants_named_only() {
    let (pool, contoso, fabrikam) = two_stocked_tenants().await;
    let store = Store::from_pool(pool.clone());
    let (stale, alerts) = (StaleSettings::default(), AlertSettings::default());
    // Every agent was last seen in January: stale by any setting.
    let now = chrono::Utc::now();
    let held = [contoso.tenant().clone()];
    let evaluated = evaluate(&store, Some(&held), &stale, &alerts, now).await.unwrap();
    assert_eq!((evaluated.fired, evaluated.tracked, evaluated.stale_now), (2, 2, 2), "contoso's agents only");
    let episodes: Vec<String> =
        sqlx::query_scalar("SELECT agent_id FROM stale_episodes ORDER BY 1").fetch_all(&pool).await.unwrap();
    assert_eq!(episodes, ["c1", "c2"], "nothing of fabrikam, which another process may hold");

    // The process holding fabrikam evaluates it; contoso's episodes stay as they are.
    let held = [fabrikam.tenant().clone()];
    let evaluated = evaluate(&store, Some(&held), &stale, &alerts, now).await.unwrap();
    assert_eq!((evaluated.fired, evaluated.resolved, evaluated.tracked), (1, 0, 1));
    let everyone = evaluate(&store, None, &stale, &alerts, now).await.unwrap();
    assert_eq!((everyone.fired, everyone.resolved, everyone.tracked), (0, 0, 3), "each fired once");
}
