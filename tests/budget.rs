//! The rate budget over the real PostgreSQL ledger.

mod support;

use std::time::Duration;

use scan_agent_sync::budget::{Budget, BudgetError};
use scan_agent_sync::rate_window::RateWindow;
use scan_agent_sync::store::Store;
use scan_agent_sync::store::ledger::Slot;
use scan_agent_sync::tenant_name::TenantName;
use sqlx::PgPool;
use tokio::time::Instant;

fn window(calls: u32, millis: u64) -> RateWindow {
    RateWindow { calls, per: Duration::from_millis(millis) }
}

/// The most ledger rows in any interval of length `per` (by the recorded times).
async fn max_in_any_interval(pool: &PgPool, per: Duration) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(n), 0) FROM (
           SELECT count(*) OVER (ORDER BY called_at RANGE BETWEEN CURRENT ROW AND $1::interval FOLLOWING) AS n
           FROM api_calls) c",
    )
    .bind(per - Duration::from_micros(1))
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_full_window_says_how_long_to_wait() {
    let store = support::fresh_store().await;
    let windows = [window(5, 1000)];
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert!(matches!(store.take_slot(&windows, "by-id").await.unwrap(), Slot::Granted(_)));
    }
    match store.take_slot(&windows, "by-id").await.unwrap() {
        // The first call was granted after `started`, so it leaves the window no sooner than
        // a second after it, however slowly a loaded machine granted the five.
        Slot::Wait(wait) => {
            let least = Duration::from_millis(1000).saturating_sub(started.elapsed());
            assert!(wait >= least && wait <= Duration::from_millis(1015), "{wait:?}, at least {least:?}")
        }
        granted => panic!("the sixth call in a 5/1s window must wait, got {granted:?}"),
    }
    assert_eq!(store.remaining(&windows).await.unwrap(), vec![0]);
}

#[tokio::test]
async fn every_window_applies_and_the_ledger_survives_a_restart() {
    let pool = support::fresh_pool().await;
    let windows = [window(100, 1000), window(8, 60_000)];
    let first = Budget::new(Store::from_pool(pool.clone()).for_tenant(TenantName::default()), &windows, 4);
    for _ in 0..5 {
        first.acquire("list", None).await.unwrap().finish(Some(200), None).await.unwrap();
    }
    drop(first);
    // A new process: it must see the five calls already made.
    let restarted =
        Budget::new(Store::from_pool(pool.clone()).for_tenant(TenantName::default()), &windows, 4);
    assert_eq!(restarted.remaining().await.unwrap(), vec![95, 3]);
    let deadline = Some(Instant::now() + Duration::from_millis(500));
    for _ in 0..3 {
        restarted.acquire("list", deadline).await.unwrap();
    }
    let refused = restarted.acquire("list", deadline).await;
    assert!(matches!(refused, Err(BudgetError::Exhausted)), "{refused:?}");
}

#[tokio::test]
async fn two_processes_sharing_the_database_never_exceed_a_window() {
    let pool = support::fresh_pool().await;
    let other_pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let windows = [window(10, 1000)];
    let a = Budget::new(Store::from_pool(pool.clone()).for_tenant(TenantName::default()), &windows, 4);
    let b = Budget::new(Store::from_pool(other_pool).for_tenant(TenantName::default()), &windows, 4);
    let take = |budget: Budget| async move {
        for _ in 0..15 {
            budget.acquire("by-id", None).await.unwrap().finish(Some(200), None).await.unwrap();
        }
    };
    let started = Instant::now();
    tokio::join!(take(a), take(b));
    // 30 calls under 10/s: the first 10 at once, then 10 more per second.
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(max_in_any_interval(&pool, Duration::from_secs(1)).await, 10);
}

#[tokio::test]
async fn a_429_pauses_every_request_for_its_retry_after() {
    let pool = support::fresh_pool().await;
    let budget = Budget::new(
        Store::from_pool(pool.clone()).for_tenant(TenantName::default()),
        &[window(100, 60_000)],
        4,
    );
    let permit = budget.acquire("by-id", None).await.unwrap();
    permit.finish(Some(429), Some(Duration::from_millis(700))).await.unwrap();
    // Another process sees the pause too.
    let other = Store::from_pool(pool);
    match other.take_slot(budget.windows(), "by-id").await.unwrap() {
        Slot::Wait(wait) => assert!(wait > Duration::from_millis(500), "{wait:?}"),
        granted => panic!("a 429 pause must hold every process, got {granted:?}"),
    }
    let started = Instant::now();
    budget.acquire("by-id", None).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
}
