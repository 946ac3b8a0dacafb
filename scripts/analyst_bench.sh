#!/usr/bin/env bash
# Timings of the analyst queries (docs/analysts.md, issue 5) on about a million history rows.
#
# Builds a database with the migrations in MIGRATIONS_DIR (default: this checkout's), fills
# it with a synthetic fleet, runs `VACUUM ANALYZE`, then runs every query of
# docs/analysts.md RUNS times under `EXPLAIN (ANALYZE)` and prints, per query, the rows it
# returned, its execution times (min–max) and the top of its last plan. Full plans go to
# OUT_DIR.
#
# The fleet, deliberately churning far more than a real one: 50 000 agents, 20 versions each
# (1 000 000 `scan_agent_versions` rows, one change every 10 days, the last one spread over
# the hourly sync cycles of the past 7 days), 20 lastSeen values each (1 000 000 `scan_agent_last_seen` rows).
# Every change is a new `mde_client_version`; the scanner version goes NULL (a quarter of the
# agents) or 7.7 -> 7.8 -> 7.9, and 90% of the agents went 7.9 -> 8.0 in the last week
# (45 000 scanner changes); the DNS name changes once. 5% of the agents were last seen two
# days ago. The layout is that of migration 0006: the 950 000 closed versions are rows of
# `scan_agent_version_history`, inserted in valid_to order as the diff engine appends them
# when a version closes, and each agent's current version is in its `scan_agent_state` row.
#
# Tenants (migration 20261206000010, issue 13): the agents are spread over TENANTS tenants
# (default 5, named tenant-1 ... tenant-N) in blocks of ten, round-robin (agent i belongs
# to tenant-(i / 10 mod N + 1)): every tenant gets its share of each kind of agent above
# (they are chosen by i mod 4, 10 and 20), and its rows are interleaved with the others'
# as concurrent cycles write them. Every query is timed twice: over the whole database,
# and for one tenant (a `tenant = '...'` filter on the views, or the third argument of
# scan_agent_versions_per_day; for a query about one agent, that agent's tenant). The
# summary gives both medians, their ratio and the indexes each plan uses (for the per-day
# function, which is not inlined, read with auto_explain), then the size of the two
# history indexes that migration rebuilt with `tenant`, next to the same indexes without
# it (built for the comparison and dropped again). With MIGRATIONS_DIR before 0010 (no
# `tenant` column) the fleet has no tenants and only the first timings run.
#
# Usage: scripts/analyst_bench.sh                      (RUNS=5, keeps the database)
#        AGENTS=2500 scripts/analyst_bench.sh          (a 50 000-row history instead)
#        MIGRATIONS_DIR=/tmp/other-migrations scripts/analyst_bench.sh   (other definitions,
#            on the layout of 0006; for the layout before it, the script as of commit 1bf86dd)
#        REUSE=1 scripts/analyst_bench.sh              (time again without rebuilding)
#        TENANTS=1 scripts/analyst_bench.sh            (one tenant: the filter selects everything)
# Needs: psql, and PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# where this user may CREATE DATABASE (and LOAD its contrib module auto_explain, as a
# superuser may, for the plans inside the per-day function; without it they are left out). The database is BENCH_DB (default sas_analyst_bench),
# dropped and rebuilt unless REUSE=1.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
database=${BENCH_DB:-sas_analyst_bench}
migrations=${MIGRATIONS_DIR:-$repo/migrations}
runs=${RUNS:-5}
agents=${AGENTS:-50000}
tenants=${TENANTS:-5}
out=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$out"
url=${admin_url%/*}/$database

if ((runs < 3)); then
    echo "RUNS must be at least 3 (min–max of a single run says nothing)" >&2
    exit 64
fi
if ((tenants < 1)); then
    echo "TENANTS must be at least 1" >&2
    exit 64
fi

build() {
    psql -X -q -v ON_ERROR_STOP=1 "$admin_url" -c "DROP DATABASE IF EXISTS \"$database\"" \
        -c "CREATE DATABASE \"$database\""
    for file in "$migrations"/*.sql; do
        psql -X -q -v ON_ERROR_STOP=1 "$url" -f "$file"
    done
    psql -X -q -v ON_ERROR_STOP=1 -v agents="$agents" -v tenants="$tenants" "$url" <<'SQL'
-- Since migration 20261206000010 every row names its tenant: the inserts below name it too
-- (tcol: the column, then its value from fleet f, versions, scan_agents a); before that
-- migration they leave it out.
SELECT EXISTS (SELECT FROM information_schema.columns
               WHERE table_name = 'scan_agent_state' AND column_name = 'tenant') AS has_tenant \gset
\if :has_tenant
\set tcol ', tenant'
\set tval_f ', f.tenant'
\set tval_v ', tenant'
\set tval_a ', a.tenant'
\else
\set tcol ''
\set tval_f ''
\set tval_v ''
\set tval_a ''
\endif

CREATE TEMP TABLE fleet AS
SELECT i,
       'agent-' || lpad(i::text, 5, '0') AS agent_id,
       'tenant-' || (i / 10 % :tenants + 1) AS tenant,
       -- When the agent's last version opened: one of the hourly sync cycles of the past 7
       -- days (a cycle stamps all its changes with one instant, as the diff engine does).
       date_trunc('hour', now()) - make_interval(hours => (i * 7919) % 168) AS last_change
FROM generate_series(0, :agents - 1) AS i;

-- Every version of every agent, numbered in the order they opened (the diff engine takes
-- the next version_id when it opens a version).
CREATE TEMP TABLE versions AS
SELECT row_number() OVER (ORDER BY valid_from, agent_id) AS version_id, v.*
FROM (
    SELECT f.agent_id, f.tenant, 'machine-' || f.i AS machine_id,
           'host-' || f.i || CASE WHEN k >= 10 THEN '-b' ELSE '' END || '.example.org' AS computer_dns_name,
           'app-1' AS assigned_application_id,
           CASE WHEN k <= 4 THEN CASE WHEN f.i % 4 = 0 THEN NULL ELSE '7.7' END
                WHEN k <= 11 THEN '7.8'
                WHEN k <= 18 OR f.i % 10 = 0 THEN '7.9'
                ELSE '8.0' END AS scanner_software_version,
           '10.' || k AS mde_client_version,
           f.last_change - make_interval(days => 10 * (19 - k)) AS valid_from,
           CASE WHEN k < 19 THEN f.last_change - make_interval(days => 10 * (18 - k)) END AS valid_to
    FROM fleet f CROSS JOIN generate_series(0, 19) AS k
) v;

-- The layout of migration 0006: the current version in the state row (scan_agents is a view
-- over the state and the payload), closed versions in the history table,
-- appended when they closed, so in valid_to order.
INSERT INTO scan_agent_state (agent_id, machine_id, computer_dns_name, assigned_application_id,
    scanner_software_version, mde_client_version, last_seen, first_observed_at,
    last_changed_at, version_id, valid_from, last_fetched_at :tcol)
SELECT f.agent_id, v.machine_id, v.computer_dns_name, v.assigned_application_id,
       v.scanner_software_version, v.mde_client_version,
       CASE WHEN f.i % 20 = 0 THEN now() - interval '2 days' ELSE now() - make_interval(secs => f.i % 3600) END,
       f.last_change - interval '190 days', f.last_change, v.version_id, v.valid_from, now() :tval_f
FROM fleet f JOIN versions v ON v.agent_id = f.agent_id AND v.valid_to IS NULL
ORDER BY f.agent_id;
INSERT INTO scan_agent_payloads (agent_id, raw) SELECT agent_id, '{}'::json FROM fleet;

INSERT INTO scan_agent_version_history (version_id, agent_id, machine_id, computer_dns_name,
    assigned_application_id, scanner_software_version, mde_client_version, valid_from, valid_to :tcol)
SELECT version_id, agent_id, machine_id, computer_dns_name, assigned_application_id,
       scanner_software_version, mde_client_version, valid_from, valid_to :tval_v
FROM versions WHERE valid_to IS NOT NULL
ORDER BY valid_to, version_id;
SELECT setval('scan_agent_version_id_seq', max(version_id) + 1, false) AS next_version_id FROM versions \gset

INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at :tcol)
SELECT a.agent_id, a.last_seen - make_interval(hours => 12 * j), a.last_seen - make_interval(hours => 12 * j) + interval '1 minute' :tval_a
FROM scan_agents a CROSS JOIN generate_series(0, 19) AS j
ORDER BY 3;

-- Since migration 20261206000009 scan_agent_last_seen is partitioned by week: the weeks a
-- service keeping the default 400 days has, from 400 days ago to 4 weeks ahead (~63), the
-- rows moved out of the DEFAULT partition into theirs, as the service does.
DO $$
BEGIN
    IF to_regprocedure('scan_agent_last_seen_add_week(timestamptz)') IS NOT NULL THEN
        PERFORM scan_agent_last_seen_add_week(w)
        FROM generate_series(now() - interval '400 days', now() + interval '4 weeks', interval '1 week') AS w;
    END IF;
END
$$;
SQL
    psql -X -q -v ON_ERROR_STOP=1 "$url" -c "VACUUM ANALYZE"
}

if [[ ${REUSE:-0} != 1 ]]; then
    echo "building $database from $migrations ..."
    build
fi

has_tenant=$(psql -X -q -A -t -v ON_ERROR_STOP=1 "$url" -c "SELECT EXISTS (SELECT FROM information_schema.columns
    WHERE table_name = 'scan_agent_state' AND column_name = 'tenant')")
if [[ $has_tenant == t ]]; then
    tenants=$(psql -X -q -A -t -v ON_ERROR_STOP=1 "$url" -c "SELECT count(DISTINCT tenant) FROM scan_agent_state")
fi
# The tenants of the filtered queries: tenant-1 for the fleet-wide ones, and the tenant of the
# agent (agent-01234) or the DNS name (host-5-b, agent 5) a query is about.
any_tenant=tenant-1
agent_tenant=tenant-$((1234 / 10 % tenants + 1))
host_tenant=tenant-$((5 / 10 % tenants + 1))

# name|query|the same for one tenant, one per line: the ready-to-run queries of
# docs/analysts.md. In the third field @T@ is tenant-1, @A@ the tenant of agent-01234 and
# @H@ that of host-5-b.
queries=$(cat <<'EOF'
version distribution|SELECT * FROM scan_agent_version_distribution ORDER BY agents DESC|SELECT * FROM scan_agent_version_distribution WHERE tenant = '@T@' ORDER BY agents DESC
agents on version 7.9|SELECT agent_id, computer_dns_name, last_seen FROM scan_agents WHERE scanner_software_version = '7.9' ORDER BY computer_dns_name|SELECT agent_id, computer_dns_name, last_seen FROM scan_agents WHERE scanner_software_version = '7.9' AND tenant = '@T@' ORDER BY computer_dns_name
since when, one version|SELECT agent_id, computer_dns_name, valid_from AS since FROM scan_agent_versions WHERE valid_to IS NULL AND scanner_software_version = '7.9' ORDER BY since|SELECT agent_id, computer_dns_name, valid_from AS since FROM scan_agent_versions WHERE valid_to IS NULL AND scanner_software_version = '7.9' AND tenant = '@T@' ORDER BY since
current scanner version since, one agent|SELECT a.agent_id, a.scanner_software_version, coalesce((SELECT max(changed_at) FROM scan_agent_version_changes c WHERE c.agent_id = a.agent_id AND c.field = 'scanner_software_version'), a.first_observed_at) AS since FROM scan_agents a WHERE a.agent_id = 'agent-01234'|SELECT a.agent_id, a.scanner_software_version, coalesce((SELECT max(changed_at) FROM scan_agent_version_changes c WHERE c.agent_id = a.agent_id AND c.field = 'scanner_software_version' AND c.tenant = '@A@'), a.first_observed_at) AS since FROM scan_agents a WHERE a.agent_id = 'agent-01234' AND a.tenant = '@A@'
not seen for a day|SELECT agent_id, computer_dns_name, last_seen, missing_since FROM scan_agents WHERE last_seen < now() - interval '1 day' ORDER BY last_seen|SELECT agent_id, computer_dns_name, last_seen, missing_since FROM scan_agents WHERE last_seen < now() - interval '1 day' AND tenant = '@T@' ORDER BY last_seen
stale_scan_agents|SELECT * FROM stale_scan_agents ORDER BY stale_for DESC|SELECT * FROM stale_scan_agents WHERE tenant = '@T@' ORDER BY stale_for DESC
one agent: versions|SELECT valid_from, valid_to, scanner_software_version, mde_client_version, computer_dns_name FROM scan_agent_versions WHERE agent_id = 'agent-01234' ORDER BY valid_from|SELECT valid_from, valid_to, scanner_software_version, mde_client_version, computer_dns_name FROM scan_agent_versions WHERE agent_id = 'agent-01234' AND tenant = '@A@' ORDER BY valid_from
one agent: changes|SELECT field, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE agent_id = 'agent-01234' ORDER BY changed_at|SELECT field, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE agent_id = 'agent-01234' AND tenant = '@A@' ORDER BY changed_at
one agent: last 20 lastSeen|SELECT last_seen, observed_at FROM scan_agent_last_seen WHERE agent_id = 'agent-01234' ORDER BY last_seen DESC LIMIT 20|SELECT last_seen, observed_at FROM scan_agent_last_seen WHERE agent_id = 'agent-01234' AND tenant = '@A@' ORDER BY last_seen DESC LIMIT 20
upgraded last week|SELECT agent_id, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE field = 'scanner_software_version' AND changed_at >= now() - interval '7 days' ORDER BY changed_at|SELECT agent_id, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE field = 'scanner_software_version' AND changed_at >= now() - interval '7 days' AND tenant = '@T@' ORDER BY changed_at
every change last week, all fields|SELECT agent_id, field, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE changed_at >= now() - interval '7 days' ORDER BY changed_at|SELECT agent_id, field, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE changed_at >= now() - interval '7 days' AND tenant = '@T@' ORDER BY changed_at
scan_agent_versions_daily (30 days)|SELECT * FROM scan_agent_versions_daily|SELECT * FROM scan_agent_versions_daily WHERE tenant = '@T@'
per_day, 30 days, tenant argument|SELECT * FROM scan_agent_versions_per_day(current_date - 29, current_date)|SELECT * FROM scan_agent_versions_per_day(current_date - 29, current_date, '@T@')
scan_agent_versions_per_day, 90 days|SELECT * FROM scan_agent_versions_per_day(current_date - 89, current_date)|SELECT * FROM scan_agent_versions_per_day(current_date - 89, current_date, '@T@')
per_day, 90 days ending 90 days ago|SELECT * FROM scan_agent_versions_per_day(current_date - 179, current_date - 90)|SELECT * FROM scan_agent_versions_per_day(current_date - 179, current_date - 90, '@T@')
changes joined per agent, LATERAL|SELECT a.agent_id, c.field, c.old_value, c.new_value, c.changed_at FROM scan_agents a CROSS JOIN LATERAL (SELECT * FROM scan_agent_version_changes c WHERE c.agent_id = a.agent_id OFFSET 0) c WHERE a.computer_dns_name = 'host-5-b.example.org'|SELECT a.agent_id, c.field, c.old_value, c.new_value, c.changed_at FROM scan_agents a CROSS JOIN LATERAL (SELECT * FROM scan_agent_version_changes c WHERE c.agent_id = a.agent_id OFFSET 0) c WHERE a.computer_dns_name = 'host-5-b.example.org' AND a.tenant = '@H@'
changes joined per agent, plain JOIN|SELECT a.agent_id, c.field, c.old_value, c.new_value, c.changed_at FROM scan_agents a JOIN scan_agent_version_changes c ON c.agent_id = a.agent_id WHERE a.computer_dns_name = 'host-5-b.example.org'|SELECT a.agent_id, c.field, c.old_value, c.new_value, c.changed_at FROM scan_agents a JOIN scan_agent_version_changes c ON c.agent_id = a.agent_id WHERE a.computer_dns_name = 'host-5-b.example.org' AND a.tenant = '@H@'
changes joined USING, one agent|SELECT a.computer_dns_name, c.field, c.old_value, c.new_value, c.changed_at FROM scan_agent_version_changes c JOIN scan_agents a USING (agent_id) WHERE a.agent_id = 'agent-01234'|SELECT a.computer_dns_name, c.field, c.old_value, c.new_value, c.changed_at FROM scan_agent_version_changes c JOIN scan_agents a USING (agent_id) WHERE a.agent_id = 'agent-01234' AND a.tenant = '@A@'
one field, 10 days a month ago|SELECT agent_id, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE field = 'mde_client_version' AND changed_at >= now() - interval '40 days' AND changed_at < now() - interval '30 days' ORDER BY changed_at|SELECT agent_id, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE field = 'mde_client_version' AND changed_at >= now() - interval '40 days' AND changed_at < now() - interval '30 days' AND tenant = '@T@' ORDER BY changed_at
EOF
)

# Runs `EXPLAIN (ANALYZE, BUFFERS)` of query $2 RUNS times into $out/$1.txt (headed by the
# query) and prints: rows of the last run, median ms, min–max ms, the indexes the plan uses.
time_query() {
    local file=$1 query=$2 times=() rows range median indexes
    for ((r = 0; r < runs; r++)); do
        psql -X -q -A -t -v ON_ERROR_STOP=1 "$url" -c "EXPLAIN (ANALYZE, BUFFERS) $query" >"$out/$file.plan"
        times+=("$(sed -n 's/.*Execution Time: \([0-9.]*\) ms.*/\1/p' "$out/$file.plan")")
    done
    rows=$(sed -n '1s/.*actual time=[0-9.]*\.\.[0-9.]* rows=\([0-9]*\).*/\1/p' "$out/$file.plan")
    range=$(printf '%s\n' "${times[@]}" | sort -g | sed -n '1p;$p' | paste -sd'|' | sed 's/|/–/')
    median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    # A function that is not inlined (scan_agent_versions_per_day, and the view over it)
    # shows as a Function Scan: its own statements' plans come from auto_explain, once more.
    if grep -q 'Function Scan on scan_agent_versions_per_day' "$out/$file.plan"; then
        psql -X -q -A -t -v ON_ERROR_STOP=1 "$url" -c "LOAD 'auto_explain'" \
            -c "SET auto_explain.log_min_duration = 0" -c "SET auto_explain.log_nested_statements = on" \
            -c "SET auto_explain.log_level = notice" -c "SELECT count(*) FROM ($query) AS q" \
            >/dev/null 2>"$out/$file.nested" || echo "(auto_explain failed: no nested plans)" >>"$out/$file.nested"
        cat "$out/$file.nested" >>"$out/$file.plan" && rm "$out/$file.nested"
    fi
    # Index names, a partition's index counted once for all partitions (_YYYYMMDD_ -> _*_).
    indexes=$(grep -o 'Index[A-Za-z ]* \(using\|on\) [a-z0-9_]*' "$out/$file.plan" | sed 's/.* //; s/_[0-9]\{8\}_/_*_/' |
        sort -u | paste -sd, - || true)
    printf '%s\n%s\n' "-- $query" "top: $(sed -n '1s/  (cost.*//p' "$out/$file.plan")" | cat - "$out/$file.plan" >"$out/$file.txt"
    rm "$out/$file.plan"
    printf '%s|%s|%s|%s\n' "${rows:-?}" "$median" "$range" "${indexes:--}"
}

echo "plans in $out; $runs runs each; $tenants tenant(s)"
summary=$out/summary.txt
: >"$summary"
n=0
while IFS='|' read -r name query filtered; do
    n=$((n + 1))
    all=$(time_query "$n" "$query")
    one=""
    if [[ $has_tenant == t ]]; then
        filtered=${filtered//@T@/$any_tenant}
        filtered=${filtered//@A@/$agent_tenant}
        filtered=${filtered//@H@/$host_tenant}
        one=$(time_query "$n-tenant" "$filtered")
    fi
    printf '%s|%s|%s\n' "$name" "$all" "$one" >>"$summary"
    IFS='|' read -r rows median range indexes <<<"$all"
    printf '%-40s %8s rows  median %9s ms (%s)  %s\n' "$name" "$rows" "$median" "$range" "$indexes"
    if [[ -n $one ]]; then
        IFS='|' read -r rows median range indexes <<<"$one"
        printf '%-40s %8s rows  median %9s ms (%s)  %s\n' "  one tenant" "$rows" "$median" "$range" "$indexes"
    fi
done <<<"$queries"

if [[ $has_tenant != t ]]; then
    exit 0
fi

echo
echo "| query | rows, all / one tenant | median ms, all tenants | median ms, one tenant | one / all | indexes used, all | indexes used, one tenant |"
echo "|---|---|---|---|---|---|---|"
while IFS='|' read -r name rows median _ indexes trows tmedian _ tindexes; do
    ratio=$(awk -v a="$median" -v b="$tmedian" 'BEGIN { printf "%.2f", (a > 0) ? b / a : 0 }')
    echo "| $name | $rows / $trows | $median | $tmedian | $ratio | ${indexes//,/, } | ${tindexes//,/, } |"
done <"$summary"

# The two history indexes migration 20261206000010 rebuilt with the tenant, next to the
# definitions they replaced (0006/0007), built here for the comparison and dropped again.
echo
psql -X -q -v ON_ERROR_STOP=1 "$url" <<'SQL'
CREATE INDEX bench_from_scanner_without_tenant
    ON scan_agent_version_history (valid_from, scanner_software_version);
CREATE INDEX bench_to_agent_without_tenant
    ON scan_agent_version_history (valid_to, agent_id) INCLUDE (scanner_software_version);
\pset footer off
SELECT i.name AS "index", pg_size_pretty(pg_relation_size(i.name)) AS "with tenant",
       pg_size_pretty(pg_relation_size(i.without)) AS "without (before 0010)",
       round(100.0 * (pg_relation_size(i.name) - pg_relation_size(i.without)) / pg_relation_size(i.without), 1)
           AS "growth %",
       pg_size_pretty(pg_relation_size('scan_agent_version_history')) AS "table (heap)",
       (SELECT count(*) FROM scan_agent_version_history) AS "history rows"
FROM (VALUES ('scan_agent_versions_from_scanner_idx'::regclass, 'bench_from_scanner_without_tenant'::regclass),
             ('scan_agent_versions_to_agent_idx', 'bench_to_agent_without_tenant')) AS i (name, without);
DROP INDEX bench_from_scanner_without_tenant;
DROP INDEX bench_to_agent_without_tenant;
SQL
