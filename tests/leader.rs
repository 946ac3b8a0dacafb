//! Leadership against a real PostgreSQL: one leader among instances sharing a database, a
//! takeover within seconds when the leader stops, is dropped, or loses its connection, and
//! with several tenants, leases spread evenly, taken over from a stopped instance, and
//! handed over only once the tenant's running cycle has ended.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use scan_agent_sync::leader::{LeaderState, Leadership, LeadershipSettings, wait_until_leader};
use scan_agent_sync::store::leader_lock::LEADER_LOCK;
use scan_agent_sync::tenant_name::TenantName;
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
    let a = Leadership::spawn(options.clone(), vec![TenantName::default()], fast(), cancel);
    let b = Leadership::spawn(options, vec![TenantName::default()], fast(), cancel);
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
    let leadership = Leadership::spawn(options, vec![TenantName::default()], fast(), &cancel);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(leadership.current(), LeaderState::Unknown);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(3), leadership.shutdown())
        .await
        .expect("cancelling stops the reconnect loop promptly");
}

/// Tenants t1..tn.
fn tenants(n: usize) -> Vec<TenantName> {
    (1..=n).map(|i| TenantName::parse(&format!("t{i}")).unwrap()).collect()
}

fn spawn_all(pool: &PgPool, tenants: &[TenantName], n: usize, cancel: &CancellationToken) -> Vec<Leadership> {
    let options = (*pool.connect_options()).clone();
    (0..n).map(|_| Leadership::spawn(options.clone(), tenants.to_vec(), fast(), cancel)).collect()
}

/// Waits until the instances hold `counts` tenants (in any order of instances), checking at
/// every look that no tenant is held by two of them.
async fn wait_for_spread(instances: &[&Leadership], counts: &[usize], what: &str) {
    let deadline = tokio::time::Instant::now() + TAKEOVER * 2;
    loop {
        let held: Vec<BTreeSet<TenantName>> = instances.iter().map(|i| i.leases().held()).collect();
        let mut seen = BTreeSet::new();
        for tenant in held.iter().flatten() {
            assert!(seen.insert(tenant.clone()), "{tenant} held by two instances at once: {held:?}");
        }
        let mut sizes: Vec<usize> = held.iter().map(BTreeSet::len).collect();
        sizes.sort_unstable();
        if sizes == counts {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {what} within {:?}: {held:?}", TAKEOVER * 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Distinct backends holding a tenant lease (any advisory lock but the membership's), with
/// how many each holds.
async fn lease_holders(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock'
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
         GROUP BY pid ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("reading pg_locks")
}

#[tokio::test]
async fn six_tenants_spread_over_three_instances_and_a_stopped_ones_are_taken_over() {
    let pool = support::fresh_pool().await;
    let cancel = CancellationToken::new();
    let six = tenants(6);
    let mut instances = spawn_all(&pool, &six, 3, &cancel);
    {
        let all: Vec<&Leadership> = instances.iter().collect();
        wait_for_spread(&all, &[2, 2, 2], "two tenants each").await;
    }
    assert_eq!(lease_holders(&pool).await, vec![2, 2, 2], "the leases in PostgreSQL match");
    assert!(instances.iter().all(|i| i.current() == LeaderState::Leader));

    let stopped = instances.pop().unwrap();
    stopped.shutdown().await;
    let all: Vec<&Leadership> = instances.iter().collect();
    wait_for_spread(&all, &[3, 3], "takeover of the stopped instance's tenants").await;
    assert_eq!(lease_holders(&pool).await, vec![3, 3]);
    let held: BTreeSet<TenantName> = instances.iter().flat_map(|i| i.leases().held()).collect();
    assert_eq!(held, six.into_iter().collect(), "every tenant is held");
}

#[tokio::test]
async fn a_lease_is_handed_over_only_once_its_running_cycle_has_ended() {
    let pool = support::fresh_pool().await;
    let cancel = CancellationToken::new();
    let two = tenants(2);
    let first = spawn_all(&pool, &two, 1, &cancel).pop().unwrap();
    wait_for_spread(&[&first], &[2], "both tenants held by the only instance").await;
    // Both tenants' cycles run.
    let leases = first.leases();
    let mut cycles: Vec<_> =
        two.iter().map(|t| leases.try_permit(t).expect("a permit for a held tenant")).collect();
    assert!(leases.try_permit(&two[0]).is_none(), "one cycle per tenant at a time");

    let second = spawn_all(&pool, &two, 1, &cancel).pop().unwrap();
    // The first gives one tenant up to spread them (its cycle is to stop) but keeps the lease.
    wait_for_spread(&[&first, &second], &[0, 1], "one tenant unpublished for the newcomer").await;
    let given: Vec<TenantName> =
        two.iter().filter(|t| !first.leases().held().contains(*t)).cloned().collect();
    assert!(first.leases().try_permit(&given[0]).is_none(), "no new cycle of a tenant being handed over");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(second.leases().held().is_empty(), "the newcomer waits while the tenant's cycle runs");
    assert_eq!(lease_holders(&pool).await, vec![2], "the first still holds both leases");

    // The running cycle of the handed-over tenant ends: the lease goes to the newcomer.
    let index = two.iter().position(|t| *t == given[0]).unwrap();
    drop(cycles.remove(index));
    wait_for_spread(&[&first, &second], &[1, 1], "the hand-over once the cycle ended").await;
    assert_eq!(second.leases().held(), given.into_iter().collect());
}
