//! Leadership against a real PostgreSQL: one leader among instances sharing a database,
//! and a takeover within seconds when the leader stops, is dropped, or loses its connection.

mod support;

use std::time::Duration;

use scan_agent_sync::leader::{LeaderState, Leadership, LeadershipSettings, wait_until_leader};
use scan_agent_sync::store::leader_lock::LEADER_LOCK;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Fast polling so takeovers happen in well under a second.
fn fast() -> LeadershipSettings {
    LeadershipSettings {
        poll_interval: Duration::from_millis(200),
        query_timeout: Duration::from_secs(2),
        max_backoff: Duration::from_secs(1),
    }
}

/// How long a takeover may take here: several poll intervals plus slack for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(5);

async fn wait_for_state(
    state: &mut watch::Receiver<LeaderState>,
    what: &str,
    accept: impl FnMut(&LeaderState) -> bool,
) {
    tokio::time::timeout(TAKEOVER, state.wait_for(accept))
        .await
        .unwrap_or_else(|_| panic!("no {what} within {TAKEOVER:?}"))
        .expect("the leadership task stopped");
}

/// Two instances on one database, once both have settled: (leader, standby).
async fn start_pair(pool: &PgPool, cancel: &CancellationToken) -> (Leadership, Leadership) {
    let options = (*pool.connect_options()).clone();
    let a = Leadership::spawn(options.clone(), fast(), cancel);
    let b = Leadership::spawn(options, fast(), cancel);
    for instance in [&a, &b] {
        wait_for_state(&mut instance.subscribe(), "known state", |s| *s != LeaderState::Unknown).await;
    }
    // Several more polls: a second leader would show up here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    match (a.current(), b.current()) {
        (LeaderState::Leader, LeaderState::Standby) => (a, b),
        (LeaderState::Standby, LeaderState::Leader) => (b, a),
        other => panic!("expected exactly one leader and one standby, got {other:?}"),
    }
}

/// The backend holding the leadership lock in this test's database.
async fn lock_holder(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid::bigint = $1 >> 32 AND objid::bigint = $1 & 4294967295",
    )
    .bind(LEADER_LOCK)
    .fetch_optional(pool)
    .await
    .expect("reading pg_locks")
}

#[tokio::test]
async fn one_leader_and_the_standby_takes_over_after_a_clean_shutdown() {
    let pool = support::fresh_pool().await;
    let cancel = CancellationToken::new();
    let (leader, standby) = start_pair(&pool, &cancel).await;
    assert!(lock_holder(&pool).await.is_some(), "the leader holds the lock in PostgreSQL");

    let mut standby_state = standby.subscribe();
    leader.shutdown().await;
    tokio::time::timeout(TAKEOVER, wait_until_leader(&mut standby_state))
        .await
        .expect("the standby did not take over after the leader shut down")
        .expect("the standby's leadership task stopped");

    cancel.cancel();
    standby.shutdown().await;
    assert_eq!(lock_holder(&pool).await, None, "shutdown releases the lock");
}

#[tokio::test]
async fn dropping_the_leader_hands_over() {
    let pool = support::fresh_pool().await;
    let cancel = CancellationToken::new();
    let (leader, standby) = start_pair(&pool, &cancel).await;
    let mut standby_state = standby.subscribe();
    drop(leader);
    wait_for_state(&mut standby_state, "takeover after the leader was dropped", |s| {
        *s == LeaderState::Leader
    })
    .await;
}

#[tokio::test]
async fn a_leader_whose_backend_is_killed_stands_down_and_leadership_recovers() {
    let pool = support::fresh_pool().await;
    let cancel = CancellationToken::new();
    let (leader, standby) = start_pair(&pool, &cancel).await;
    let pid = lock_holder(&pool).await.expect("the leader holds the lock");

    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .expect("terminating the leader's backend");
    assert!(terminated);

    wait_for_state(&mut leader.subscribe(), "stand-down by the old leader", |s| *s != LeaderState::Leader)
        .await;
    let deadline = tokio::time::Instant::now() + TAKEOVER;
    while ![leader.current(), standby.current()].contains(&LeaderState::Leader) {
        assert!(tokio::time::Instant::now() < deadline, "nobody leads {TAKEOVER:?} after the kill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lock_holder(&pool).await.is_some_and(|holder| holder != pid));
}

#[tokio::test]
async fn leadership_is_unknown_while_the_database_is_unreachable() {
    let options = sqlx::postgres::PgConnectOptions::new().host("127.0.0.1").port(1).username("postgres");
    let cancel = CancellationToken::new();
    let leadership = Leadership::spawn(options, fast(), &cancel);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(leadership.current(), LeaderState::Unknown);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(3), leadership.shutdown())
        .await
        .expect("cancelling stops the reconnect loop promptly");
}
