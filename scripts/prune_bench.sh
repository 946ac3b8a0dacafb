#!/usr/bin/env bash
# Pruning ROWS expired scan_agent_last_seen rows (default 10,000,000): dropping their weekly
# partition, as the retention job does since migration 20261206000009, against the row
# DELETE an unpartitioned table needs (BENCHMARKS.md, "Retention and growth").
#
# Builds BENCH_DB (default ret_prune) with this checkout's migrations, puts ROWS rows in the
# week 500 days ago (expired under the default 400 days) and 1,000,000 in the current week,
# and a plain copy of the table as it was before the migration (same rows, primary key
# (last_seen, agent_id) and hash index on agent_id). Then, RUNS times (default 3), each on
# freshly loaded tables after VACUUM ANALYZE and a CHECKPOINT: `scan-agent-sync prune`
# (the partition drop, its row count included) and the DELETE, each with its wall time and
# the WAL it wrote. Prints one line per run.
#
# Usage: BIN=target/release/scan-agent-sync scripts/prune_bench.sh
#        ROWS=1000000 RUNS=3 scripts/prune_bench.sh
# Needs: psql, PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# where this user may CREATE DATABASE and run CHECKPOINT.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN:-$repo/target/release/scan-agent-sync}
rows=${ROWS:-10000000}
runs=${RUNS:-3}
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
database=${BENCH_DB:-ret_prune}
url=${admin_url%/*}/$database
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

psql -X -q -v ON_ERROR_STOP=1 "$admin_url" -c "DROP DATABASE IF EXISTS \"$database\"" \
    -c "CREATE DATABASE \"$database\""
cat >"$work/config.toml" <<EOF
[defender]
tenant_id = "unused"
client_id = "unused"

[database]
url = "$url"

[http]
listen = ""
EOF
"$bin" -q --config "$work/config.toml" migrate >/dev/null

sql() { psql -X -q -At -v ON_ERROR_STOP=1 "$url" "$@"; }
wal() { sql -c "SELECT pg_current_wal_lsn()"; }
wal_mb() { sql -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$1') / 1e6, 1)"; }
now_ms() { date +%s%3N; }

sql <<SQL
CREATE TABLE last_seen_unpartitioned (
    agent_id    text NOT NULL,
    last_seen   timestamptz NOT NULL,
    observed_at timestamptz NOT NULL,
    PRIMARY KEY (last_seen, agent_id)
);
CREATE INDEX last_seen_unpartitioned_agent_idx ON last_seen_unpartitioned USING hash (agent_id);
SQL

for run in $(seq 1 "$runs"); do
    # Agent IDs shaped like Defender's (40 hex digits); 100,000 agents, one row per cycle.
    sql <<SQL
TRUNCATE scan_agent_last_seen, last_seen_unpartitioned;
SELECT scan_agent_last_seen_add_week(now() - interval '500 days');
INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
SELECT md5((n % 100000)::text) || lpad((n % 100000)::text, 8, '0'),
       date_trunc('week', now() - interval '500 days', 'UTC') + make_interval(secs => n * 0.06), now()
FROM generate_series(1, $rows) AS n;
INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
SELECT md5((n % 100000)::text) || lpad((n % 100000)::text, 8, '0'), now() - make_interval(secs => n * 0.001), now()
FROM generate_series(1, 1000000) AS n;
INSERT INTO last_seen_unpartitioned SELECT * FROM scan_agent_last_seen;
VACUUM ANALYZE;
CHECKPOINT;
SQL
    start=$(wal)
    t0=$(now_ms)
    "$bin" -q --config "$work/config.toml" prune >"$work/prune.txt"
    t1=$(now_ms)
    drop_wal=$(wal_mb "$start")
    sql -c "CHECKPOINT"
    start=$(wal)
    t2=$(now_ms)
    deleted=$(sql -c "WITH gone AS (DELETE FROM last_seen_unpartitioned WHERE last_seen < now() - interval '400 days' RETURNING 1)
                      SELECT count(*) FROM gone")
    t3=$(now_ms)
    delete_wal=$(wal_mb "$start")
    dropped=$(sed -n 's/^scan_agent_last_seen *deleted \([0-9]*\) rows.*/\1/p' "$work/prune.txt")
    echo "run $run: prune (partition drop) $dropped rows in $((t1 - t0)) ms, WAL ${drop_wal} MB;" \
        "DELETE $deleted rows in $((t3 - t2)) ms, WAL ${delete_wal} MB"
done
