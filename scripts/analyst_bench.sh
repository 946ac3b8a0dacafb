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
# Usage: scripts/analyst_bench.sh                      (RUNS=5, keeps the database)
#        AGENTS=2500 scripts/analyst_bench.sh          (a 50 000-row history instead)
#        MIGRATIONS_DIR=/tmp/other-migrations scripts/analyst_bench.sh   (other definitions,
#            on the layout of 0006; for the layout before it, the script as of commit 1bf86dd)
#        REUSE=1 scripts/analyst_bench.sh              (time again without rebuilding)
# Needs: psql, and PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# where this user may CREATE DATABASE. The database is BENCH_DB (default sas_analyst_bench),
# dropped and rebuilt unless REUSE=1.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
database=${BENCH_DB:-sas_analyst_bench}
migrations=${MIGRATIONS_DIR:-$repo/migrations}
runs=${RUNS:-5}
agents=${AGENTS:-50000}
out=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$out"
url=${admin_url%/*}/$database

if ((runs < 3)); then
    echo "RUNS must be at least 3 (min–max of a single run says nothing)" >&2
    exit 64
fi

build() {
    psql -X -q -v ON_ERROR_STOP=1 "$admin_url" -c "DROP DATABASE IF EXISTS \"$database\"" \
        -c "CREATE DATABASE \"$database\""
    for file in "$migrations"/*.sql; do
        psql -X -q -v ON_ERROR_STOP=1 "$url" -f "$file"
    done
    psql -X -q -v ON_ERROR_STOP=1 -v agents="$agents" "$url" <<'SQL'
CREATE TEMP TABLE fleet AS
SELECT i,
       'agent-' || lpad(i::text, 5, '0') AS agent_id,
       -- When the agent's last version opened: one of the hourly sync cycles of the past 7
       -- days (a cycle stamps all its changes with one instant, as the diff engine does).
       date_trunc('hour', now()) - make_interval(hours => (i * 7919) % 168) AS last_change
FROM generate_series(0, :agents - 1) AS i;

-- Every version of every agent, numbered in the order they opened (the diff engine takes
-- the next version_id when it opens a version).
CREATE TEMP TABLE versions AS
SELECT row_number() OVER (ORDER BY valid_from, agent_id) AS version_id, v.*
FROM (
    SELECT f.agent_id, 'machine-' || f.i AS machine_id,
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
    last_changed_at, version_id, valid_from, last_fetched_at)
SELECT f.agent_id, v.machine_id, v.computer_dns_name, v.assigned_application_id,
       v.scanner_software_version, v.mde_client_version,
       CASE WHEN f.i % 20 = 0 THEN now() - interval '2 days' ELSE now() - make_interval(secs => f.i % 3600) END,
       f.last_change - interval '190 days', f.last_change, v.version_id, v.valid_from, now()
FROM fleet f JOIN versions v ON v.agent_id = f.agent_id AND v.valid_to IS NULL
ORDER BY f.agent_id;
INSERT INTO scan_agent_payloads (agent_id, raw) SELECT agent_id, '{}'::json FROM fleet;

INSERT INTO scan_agent_version_history (version_id, agent_id, machine_id, computer_dns_name,
    assigned_application_id, scanner_software_version, mde_client_version, valid_from, valid_to)
SELECT version_id, agent_id, machine_id, computer_dns_name, assigned_application_id,
       scanner_software_version, mde_client_version, valid_from, valid_to
FROM versions WHERE valid_to IS NOT NULL
ORDER BY valid_to, version_id;
SELECT setval('scan_agent_version_id_seq', max(version_id) + 1, false) AS next_version_id FROM versions \gset

INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
SELECT a.agent_id, a.last_seen - make_interval(hours => 12 * j), a.last_seen - make_interval(hours => 12 * j) + interval '1 minute'
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

# name|query, one per line: the ready-to-run queries of docs/analysts.md.
queries=$(cat <<'EOF'
version distribution|SELECT * FROM scan_agent_version_distribution ORDER BY agents DESC
agents on version 7.9|SELECT agent_id, computer_dns_name, last_seen FROM scan_agents WHERE scanner_software_version = '7.9' ORDER BY computer_dns_name
since when, one version|SELECT agent_id, computer_dns_name, valid_from AS since FROM scan_agent_versions WHERE valid_to IS NULL AND scanner_software_version = '7.9' ORDER BY since
current scanner version since, one agent|SELECT a.agent_id, a.scanner_software_version, coalesce((SELECT max(changed_at) FROM scan_agent_version_changes c WHERE c.agent_id = a.agent_id AND c.field = 'scanner_software_version'), a.first_observed_at) AS since FROM scan_agents a WHERE a.agent_id = 'agent-01234'
not seen for a day|SELECT agent_id, computer_dns_name, last_seen, missing_since FROM scan_agents WHERE last_seen < now() - interval '1 day' ORDER BY last_seen
stale_scan_agents|SELECT * FROM stale_scan_agents ORDER BY stale_for DESC
one agent: versions|SELECT valid_from, valid_to, scanner_software_version, mde_client_version, computer_dns_name FROM scan_agent_versions WHERE agent_id = 'agent-01234' ORDER BY valid_from
one agent: changes|SELECT field, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE agent_id = 'agent-01234' ORDER BY changed_at
one agent: last 20 lastSeen|SELECT last_seen, observed_at FROM scan_agent_last_seen WHERE agent_id = 'agent-01234' ORDER BY last_seen DESC LIMIT 20
upgraded last week|SELECT agent_id, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE field = 'scanner_software_version' AND changed_at >= now() - interval '7 days' ORDER BY changed_at
every change last week, all fields|SELECT agent_id, field, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE changed_at >= now() - interval '7 days' ORDER BY changed_at
scan_agent_versions_daily (30 days)|SELECT * FROM scan_agent_versions_daily
scan_agent_versions_per_day, 90 days|SELECT * FROM scan_agent_versions_per_day(current_date - 89, current_date)
per_day, 90 days ending 90 days ago|SELECT * FROM scan_agent_versions_per_day(current_date - 179, current_date - 90)
changes joined per agent, LATERAL|SELECT a.agent_id, c.field, c.old_value, c.new_value, c.changed_at FROM scan_agents a CROSS JOIN LATERAL (SELECT * FROM scan_agent_version_changes c WHERE c.agent_id = a.agent_id OFFSET 0) c WHERE a.computer_dns_name = 'host-5-b.example.org'
changes joined per agent, plain JOIN|SELECT a.agent_id, c.field, c.old_value, c.new_value, c.changed_at FROM scan_agents a JOIN scan_agent_version_changes c ON c.agent_id = a.agent_id WHERE a.computer_dns_name = 'host-5-b.example.org'
changes joined USING, one agent|SELECT a.computer_dns_name, c.field, c.old_value, c.new_value, c.changed_at FROM scan_agent_version_changes c JOIN scan_agents a USING (agent_id) WHERE a.agent_id = 'agent-01234'
one field, 10 days a month ago|SELECT agent_id, old_value, new_value, changed_at FROM scan_agent_version_changes WHERE field = 'mde_client_version' AND changed_at >= now() - interval '40 days' AND changed_at < now() - interval '30 days' ORDER BY changed_at
EOF
)

echo "plans in $out; $runs runs each"
printf '%-40s %8s  %-20s %s\n' query rows "ms (min–max)" plan
n=0
while IFS='|' read -r name query; do
    n=$((n + 1))
    times=()
    for ((r = 0; r < runs; r++)); do
        psql -X -q -A -t -v ON_ERROR_STOP=1 "$url" -c "EXPLAIN (ANALYZE, BUFFERS) $query" >"$out/$n.plan"
        times+=("$(sed -n 's/.*Execution Time: \([0-9.]*\) ms.*/\1/p' "$out/$n.plan")")
    done
    rows=$(sed -n '1s/.*actual time=[0-9.]*\.\.[0-9.]* rows=\([0-9]*\).*/\1/p' "$out/$n.plan")
    range=$(printf '%s\n' "${times[@]}" | sort -g | sed -n '1p;$p' | paste -sd'|' | sed 's/|/–/')
    top=$(sed -n '1s/  (cost.*//p' "$out/$n.plan")
    printf '%-40s %8s  %-20s %s\n' "$name" "$rows" "$range" "$top"
    printf '%s\n%s\n' "-- $name" "$query" | cat - "$out/$n.plan" >"$out/$n.txt" && rm "$out/$n.plan"
done <<<"$queries"
