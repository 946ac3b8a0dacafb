//! The analyst views and functions (docs/analysts.md) row by row on a hand-made history: four
//! agents whose versions change at known instants over a week, with a NULL scanner version,
//! a change exactly at midnight, one just before it, two attributes changing at once and an
//! agent that appears late. Each view and its filtered forms (which the planner turns into
//! index ranges) must return exactly the expected rows, and day boundaries follow the
//! session time zone.

mod support;

use chrono::{DateTime, Days, NaiveDate, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Postgres};

/// Minutes after midnight (UTC) of day 0 of the hand-made history.
type Minute = i64;

fn minutes(days: i64, hours: i64, mins: i64) -> Minute {
    (days * 24 + hours) * 60 + mins
}

/// One hand-made version of an agent, valid over [from, to).
struct Version {
    agent: &'static str,
    from: Minute,
    to: Option<Minute>,
    scanner: Option<&'static str>,
    mde: &'static str,
    dns: &'static str,
}

/// The history, in the order the rows are inserted (and their version_id order).
fn history() -> Vec<Version> {
    let v = |agent, from, to, scanner, mde, dns| Version { agent, from, to, scanner, mde, dns };
    vec![
        v("a1", minutes(0, 10, 0), Some(minutes(2, 12, 0)), Some("7.1"), "m1", "a1.example.org"),
        // Scanner and MDE client change at once: two change rows, one instant.
        v("a1", minutes(2, 12, 0), Some(minutes(5, 8, 0)), Some("7.2"), "m2", "a1.example.org"),
        // Only the DNS name changes: no scanner change row.
        v("a1", minutes(5, 8, 0), None, Some("7.2"), "m2", "a1-new.example.org"),
        // No scanner version reported, then one, 30 minutes before midnight.
        v("a2", minutes(0, 9, 0), Some(minutes(3, 23, 30)), None, "m1", "a2.example.org"),
        v("a2", minutes(3, 23, 30), None, Some("7.2"), "m1", "a2.example.org"),
        // A scanner version, then none, exactly at midnight.
        v("a3", minutes(1, 6, 0), Some(minutes(4, 0, 0)), Some("7.1"), "m1", "a3.example.org"),
        v("a3", minutes(4, 0, 0), None, None, "m1", "a3.example.org"),
        // A late agent: a first version is not a change.
        v("a4", minutes(6, 15, 0), None, Some("7.1"), "m1", "a4.example.org"),
    ]
}

/// A connection with the session in UTC, day 0 (ten days ago) and the version_id of each
/// row of `history()`, written in the layout of migration 0006: each closed version a row of
/// scan_agent_version_history, each agent's current version in its scan_agent_state row
/// (with its payload row, so scan_agents shows it). Written directly rather than
/// through `Store::apply`, so these tests pin the views down whatever the diff engine does.
async fn hand_made_history() -> (PoolConnection<Postgres>, NaiveDate, Vec<i64>) {
    let store = support::fresh_store().await;
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("SET TIME ZONE 'UTC'").execute(&mut *conn).await.unwrap();
    let day0: NaiveDate = sqlx::query_scalar("SELECT current_date - 10").fetch_one(&mut *conn).await.unwrap();
    // When each agent was last seen (scan_agent_version_distribution): 2026-01-01 at 01:00
    // for a1 to 04:00 for a4.
    let last_seen = |agent: &str| {
        let hour = &agent[1..];
        DateTime::parse_from_rfc3339(&format!("2026-01-01T0{hour}:00:00Z")).unwrap().to_utc()
    };
    let mut ids = Vec::new();
    for v in history() {
        // Version IDs come from the sequence the diff engine takes them from, in the order
        // the versions opened.
        let id: i64 = sqlx::query_scalar("SELECT nextval('scan_agent_version_id_seq')")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        match v.to {
            Some(to) => {
                sqlx::query(
                    "INSERT INTO scan_agent_version_history (version_id, agent_id, machine_id,
                         computer_dns_name, assigned_application_id, scanner_software_version,
                         mde_client_version, valid_from, valid_to)
                     VALUES ($1, $2, 'machine-' || $2, $3, 'app-1', $4, $5,
                             $6::date + make_interval(mins => $7), $6::date + make_interval(mins => $8))",
                )
                .bind(id)
                .bind(v.agent)
                .bind(v.dns)
                .bind(v.scanner)
                .bind(v.mde)
                .bind(day0)
                .bind(v.from as i32)
                .bind(to as i32)
                .execute(&mut *conn)
                .await
                .unwrap();
            }
            None => {
                sqlx::query(
                    "WITH state AS (
                         INSERT INTO scan_agent_state (agent_id, machine_id, computer_dns_name,
                             assigned_application_id, scanner_software_version, mde_client_version,
                             last_seen, first_observed_at, last_changed_at, version_id, valid_from,
                             last_fetched_at)
                         SELECT $2, 'machine-' || $2, $3, 'app-1', $4, $5, $6,
                                coalesce((SELECT min(h.valid_from) FROM scan_agent_version_history h
                                          WHERE h.agent_id = $2), opened), opened, $1, opened, now()
                         FROM (SELECT $7::date + make_interval(mins => $8) AS opened) o
                         RETURNING agent_id
                     )
                     INSERT INTO scan_agent_payloads (agent_id, raw)
                     SELECT agent_id, json_build_object('id', agent_id) FROM state",
                )
                .bind(id)
                .bind(v.agent)
                .bind(v.dns)
                .bind(v.scanner)
                .bind(v.mde)
                .bind(last_seen(v.agent))
                .bind(day0)
                .bind(v.from as i32)
                .execute(&mut *conn)
                .await
                .unwrap();
            }
        }
        ids.push(id);
    }
    (conn, day0, ids)
}

fn at(day0: NaiveDate, minute: Minute) -> DateTime<Utc> {
    day0.and_hms_opt(0, 0, 0).unwrap().and_utc() + chrono::Duration::minutes(minute)
}

fn day(day0: NaiveDate, offset: u64) -> NaiveDate {
    day0.checked_add_days(Days::new(offset)).unwrap()
}

type Change = (String, String, Option<String>, Option<String>, DateTime<Utc>, i64);

/// scan_agent_version_changes `c` under `rest`: a WHERE clause, or joins then a WHERE clause
/// (which may use $1, day 0 as a date).
async fn changes(conn: &mut PoolConnection<Postgres>, day0: NaiveDate, rest: &str) -> Vec<Change> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT c.agent_id, c.field, c.old_value, c.new_value, c.changed_at, c.version_id
         FROM scan_agent_version_changes c {rest} ORDER BY c.changed_at, c.field"
    )))
    .bind(day0)
    .fetch_all(&mut **conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn version_changes_pair_each_version_with_its_predecessor_per_attribute() {
    let (mut conn, day0, ids) = hand_made_history().await;
    let change =
        |agent: &str, field: &str, old: Option<&str>, new: Option<&str>, minute, id: i64| -> Change {
            (agent.into(), field.into(), old.map(Into::into), new.map(Into::into), at(day0, minute), id)
        };
    let all = vec![
        change("a1", "mde_client_version", Some("m1"), Some("m2"), minutes(2, 12, 0), ids[1]),
        change("a1", "scanner_software_version", Some("7.1"), Some("7.2"), minutes(2, 12, 0), ids[1]),
        change("a2", "scanner_software_version", None, Some("7.2"), minutes(3, 23, 30), ids[4]),
        change("a3", "scanner_software_version", Some("7.1"), None, minutes(4, 0, 0), ids[6]),
        change(
            "a1",
            "computer_dns_name",
            Some("a1.example.org"),
            Some("a1-new.example.org"),
            minutes(5, 8, 0),
            ids[2],
        ),
    ];
    let pick = |rows: &[usize]| rows.iter().map(|&i| all[i].clone()).collect::<Vec<_>>();

    assert_eq!(changes(&mut conn, day0, "WHERE $1::date IS NOT NULL").await, all);
    assert_eq!(changes(&mut conn, day0, "WHERE agent_id = 'a1'").await, pick(&[0, 1, 4]));
    assert_eq!(changes(&mut conn, day0, "WHERE changed_at >= $1::date + 4").await, pick(&[3, 4]));
    assert_eq!(
        changes(&mut conn, day0, "WHERE field = 'scanner_software_version' AND changed_at >= $1::date + 3")
            .await,
        pick(&[2, 3])
    );
    assert_eq!(
        changes(&mut conn, day0, "WHERE field = 'scanner_software_version' AND changed_at < $1::date + 3")
            .await,
        pick(&[1])
    );
    assert_eq!(changes(&mut conn, day0, "WHERE field = 'machine_id'").await, []);
    // Joined as BI tools join it (the view must stay joinable by agent_id, docs/analysts.md).
    // scan_agents holds the current version, so a1 under its new DNS name.
    assert_eq!(
        changes(
            &mut conn,
            day0,
            "JOIN scan_agents a USING (agent_id) WHERE a.computer_dns_name = 'a1-new.example.org'"
        )
        .await,
        pick(&[0, 1, 4])
    );
    assert_eq!(
        changes(
            &mut conn,
            day0,
            "JOIN scan_agents a ON a.agent_id = c.agent_id WHERE c.changed_at >= $1::date + 3"
        )
        .await,
        pick(&[2, 3, 4])
    );
}

type DayCount = (NaiveDate, Option<String>, i64);

/// Agents per scanner version at the end of day 0 + offset, in UTC, by the history above.
fn expected_day(day0: NaiveDate, offset: u64) -> Vec<DayCount> {
    let counts: &[(Option<&str>, i64)] = match offset {
        0 => &[(Some("7.1"), 1), (None, 1)],
        1 => &[(Some("7.1"), 2), (None, 1)],
        2 => &[(Some("7.1"), 1), (Some("7.2"), 1), (None, 1)],
        3 => &[(Some("7.1"), 1), (Some("7.2"), 2)],
        4 | 5 => &[(Some("7.2"), 2), (None, 1)],
        _ => &[(Some("7.1"), 1), (Some("7.2"), 2), (None, 1)],
    };
    counts.iter().map(|(v, n)| (day(day0, offset), v.map(Into::into), *n)).collect()
}

async fn per_day(conn: &mut PoolConnection<Postgres>, sql: &'static str, day0: NaiveDate) -> Vec<DayCount> {
    sqlx::query_as(sql).bind(day0).fetch_all(&mut **conn).await.unwrap()
}

#[tokio::test]
async fn versions_per_day_count_the_versions_valid_at_the_end_of_each_day() {
    let (mut conn, day0, _) = hand_made_history().await;

    // The day before the first version has no rows; then day by day.
    let expected: Vec<DayCount> = (0..=7).flat_map(|offset| expected_day(day0, offset)).collect();
    let rows =
        per_day(&mut conn, "SELECT * FROM scan_agent_versions_per_day($1::date - 1, $1::date + 7)", day0)
            .await;
    assert_eq!(rows, expected);

    // A period starting after the history began: the census at its first day is right.
    let expected: Vec<DayCount> = (3..=4).flat_map(|offset| expected_day(day0, offset)).collect();
    let rows =
        per_day(&mut conn, "SELECT * FROM scan_agent_versions_per_day($1::date + 3, $1::date + 4)", day0)
            .await;
    assert_eq!(rows, expected);

    // The daily view: the last 30 days, day 0 being ten days ago, so 11 days with agents.
    let expected: Vec<DayCount> = (0..=10).flat_map(|offset| expected_day(day0, offset)).collect();
    let rows =
        per_day(&mut conn, "SELECT * FROM scan_agent_versions_daily WHERE $1::date IS NOT NULL", day0).await;
    assert_eq!(rows, expected);

    // Days of the session time zone: in India (UTC+05:30) day 3 ends at 18:30 UTC, before a2
    // got 7.2 (23:30 UTC) and before a3 lost its version (midnight UTC).
    sqlx::query("SET TIME ZONE 'Asia/Kolkata'").execute(&mut *conn).await.unwrap();
    let rows =
        per_day(&mut conn, "SELECT * FROM scan_agent_versions_per_day($1::date + 3, $1::date + 4)", day0)
            .await;
    let mut expected = vec![
        (day(day0, 3), Some("7.1".into()), 1),
        (day(day0, 3), Some("7.2".into()), 1),
        (day(day0, 3), None, 1),
    ];
    expected.extend(expected_day(day0, 4));
    assert_eq!(rows, expected);
}

/// A row of scan_agent_version_distribution: version, agents, missing agents, percent (as
/// text), oldest and newest last_seen.
type Share = (Option<String>, i64, i64, String, DateTime<Utc>, DateTime<Utc>);

#[tokio::test]
async fn version_distribution_counts_current_agents_per_scanner_version() {
    let (mut conn, _, _) = hand_made_history().await;
    let rows: Vec<Share> = sqlx::query_as(
        "SELECT scanner_software_version, agents, missing_agents, percent::text, oldest_last_seen, newest_last_seen
         FROM scan_agent_version_distribution ORDER BY scanner_software_version",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let seen = |hour| DateTime::parse_from_rfc3339(&format!("2026-01-01T{hour}:00:00Z")).unwrap().to_utc();
    assert_eq!(
        rows,
        [
            (Some("7.1".into()), 1, 0, "25.0".into(), seen("04"), seen("04")),
            (Some("7.2".into()), 2, 0, "50.0".into(), seen("01"), seen("02")),
            (None, 1, 0, "25.0".into(), seen("03"), seen("03")),
        ]
    );
}
