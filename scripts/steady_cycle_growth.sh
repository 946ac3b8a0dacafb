#!/usr/bin/env bash
# WAL and table growth per steady sync cycle (issue 15, BENCHMARKS.md "Retention and growth").
#
# Starts the bundled simulator as its own process (AGENTS agents, pages of 10,000, every
# live agent reporting in every EVOLVE seconds, none upgrading or vanishing), imports the
# fleet with one `sync` in list mode (track_all), then runs CYCLES steady cycles with
# `sync`, each one EVOLVE after the last so every live agent's lastSeen (and
# lastCommandExecutionTimestamp) has moved. Per cycle it prints the WAL the cycle wrote to
# this database, per table (indexes and TOAST counted with their table, partitions with
# their parent), and the growth of each table (pg_total_relation_size).
#
# The server's WAL is shared with whatever else runs on it, so pg_current_wal_lsn() before
# and after a cycle counts other databases too: the script reads the cycle's WAL back with
# pg_waldump and counts the records (full-page images included) whose first block belongs
# to this database. Records without a block (commits) are left out: a few bytes each.
#
# CHECKPOINT=1 (default) runs CHECKPOINT before each cycle: with the default
# checkpoint_timeout (5 min) a 15-minute schedule meets a checkpoint between any two cycles,
# so every page a cycle touches is written whole to the WAL once (full_page_writes). That
# is the steady state of the default schedule; CHECKPOINT=0 shows the WAL without it.
#
# Usage: BIN=target/release/scan-agent-sync scripts/steady_cycle_growth.sh
#        AGENTS=10000 CYCLES=3 scripts/steady_cycle_growth.sh
#        WAL_COMPRESSION=lz4 scripts/steady_cycle_growth.sh
#        PREFILL=100 scripts/steady_cycle_growth.sh   (this week's partition already holding
#            100 lastSeen values per agent, as a day into the week at 15 minutes: its
#            indexes are then large, and a cycle's entries land on pages all over them)
# Needs: psql and pg_waldump (WALDUMP, default /usr/lib/postgresql/15/bin/pg_waldump) on the
# database server's host with read access to its pg_wal; PostgreSQL at DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres) where this user may CREATE DATABASE and run
# CHECKPOINT. The database is BENCH_DB (default ret_growth), dropped and rebuilt.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN:-$repo/target/release/scan-agent-sync}
agents=${AGENTS:-100000}
cycles=${CYCLES:-5}
evolve=${EVOLVE:-20}
checkpoint=${CHECKPOINT:-1}
prefill=${PREFILL:-0}
port=${PORT:-18943}
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
database=${BENCH_DB:-ret_growth}
url=${admin_url%/*}/$database
work=$(mktemp -d)
waldump=${WALDUMP:-/usr/lib/postgresql/15/bin/pg_waldump}
waldir=$(psql -X -At "$admin_url" -c "SHOW data_directory")/pg_wal

psql -X -q -v ON_ERROR_STOP=1 "$admin_url" -c "DROP DATABASE IF EXISTS \"$database\"" \
    -c "CREATE DATABASE \"$database\""

"$bin" -q simulate --listen "127.0.0.1:$port" --agents "$agents" --page-size 10000 \
    --evolve-every "${evolve}s" --upgrade-share 0 --deleted-share 0 \
    --window 1000/1m --window 10000/1h >"$work/simulator.log" 2>&1 &
simulator=$!
# WAL_COMPRESSION=lz4 (or pglz, zstd): the service's sessions compress full-page images,
# as the server setting wal_compression does for everyone.
db_options=${WAL_COMPRESSION:+?options=-c%20wal_compression%3D$WAL_COMPRESSION}
slot=${database}_wal
trap 'kill "$simulator" 2>/dev/null || true; rm -rf "$work"
      psql -X -q "$admin_url" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                                  WHERE slot_name = '"'"'$slot'"'"'" >/dev/null' EXIT

cat >"$work/config.toml" <<EOF
[defender]
api_base_url = "http://127.0.0.1:$port"
token_url = "http://127.0.0.1:$port/sim-tenant/oauth2/v2.0/token"
scope = "http://127.0.0.1:$port/.default"
tenant_id = "sim-tenant"
client_id = "sim-client"
fetch_mode = "list"

[rate_limit]
windows = [ { calls = 1000, per = "1m" }, { calls = 10000, per = "1h" } ]

[agents]
track_all = true

[database]
url = "$url$db_options"

[http]
listen = ""
EOF
export SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET=sim-secret
sleep 2

tables="scan_agent_state scan_agent_payloads scan_agent_last_seen
        scan_agent_version_history sync_runs api_calls"
sizes() {
    # A partitioned table's size is its partitions'; pg_partition_tree has no rows for a
    # plain table.
    local query="SELECT string_agg(coalesce((SELECT sum(pg_total_relation_size(r.relid))
                                             FROM pg_partition_tree(to_regclass(t)) r),
                                            pg_total_relation_size(to_regclass(t)), 0)::text, ' ' ORDER BY o)
                 FROM unnest(string_to_array('$(echo $tables)', ' ')) WITH ORDINALITY AS u(t, o)"
    psql -X -At "$url" -c "$query"
}

"$bin" -q --config "$work/config.toml" sync >/dev/null || (($? == 2))
echo "imported $agents agents"
if ((prefill > 0)); then
    # As far into the week as a running service would be: PREFILL earlier lastSeen values
    # per agent in the current week's partition, before the imported ones.
    psql -X -q -v ON_ERROR_STOP=1 "$url" -c "
        INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
        SELECT s.agent_id, w.start + (s.last_seen - w.start) * n / ($prefill + 1), now()
        FROM scan_agent_state s, generate_series(1, $prefill) AS n,
             (SELECT date_trunc('week', now(), 'UTC') AS start) w
        WHERE s.last_seen > w.start" -c "VACUUM ANALYZE scan_agent_last_seen"
    echo "prefilled $prefill lastSeen rows per agent in this week's partition"
fi
dboid=$(psql -X -At "$url" -c "SELECT oid FROM pg_database WHERE datname = current_database()")

# WAL bytes of this database between two LSNs, per table: "table bytes" lines.
wal_by_table() {
    # pg_waldump stops with an error at the end of the flushed WAL, after printing every
    # record before it; a missing segment is a real failure.
    { "$waldump" -p "$waldir" -s "$1" -e "$2" 2>"$work/waldump.err" || true; } |
        awk -v db="$dboid" '
            match($0, /len \(rec\/tot\): *[0-9]+\/ *[0-9]+/) {
                split(substr($0, RSTART, RLENGTH), parts, "/"); bytes = parts[3] + 0
                if (match($0, "rel [0-9]+/" db "/[0-9]+")) {
                    split(substr($0, RSTART, RLENGTH), rel, "/"); sum[rel[3]] += bytes
                }
            }
            END { for (node in sum) print node, sum[node] }' >"$work/wal.txt"
    if grep -q "could not find\|could not open" "$work/waldump.err"; then
        cat "$work/waldump.err" >&2
        exit 1
    fi
    psql -X -q -At -F ' ' "$url" <<SQL
CREATE TEMP TABLE wal (node oid, bytes bigint);
\copy wal FROM '$work/wal.txt' WITH (DELIMITER ' ')
SELECT coalesce(t.relname, '(dropped or other)'), sum(w.bytes)
FROM wal w
LEFT JOIN pg_class c ON c.relfilenode = w.node
LEFT JOIN pg_index i ON i.indexrelid = c.oid
LEFT JOIN pg_class toast_of ON toast_of.reltoastrelid = c.oid
LEFT JOIN pg_class t ON t.oid = coalesce(pg_partition_root(coalesce(i.indrelid, toast_of.oid, c.oid)),
                                         coalesce(i.indrelid, toast_of.oid, c.oid))
GROUP BY 1 ORDER BY 2 DESC;
SQL
}

for cycle in $(seq 1 "$cycles"); do
    sleep "$evolve"
    psql -X -q "$url" -c "VACUUM" >/dev/null
    ((checkpoint)) && psql -X -q "$url" -c "CHECKPOINT"
    read -r -a before <<<"$(sizes)"
    # A slot keeps the cycle's WAL segments until pg_waldump has read them, whatever
    # checkpoints other work on the server triggers meanwhile.
    start=$(psql -X -At "$url" -c "SELECT lsn FROM pg_create_physical_replication_slot('$slot', true) s(n, lsn)")
    "$bin" -q --config "$work/config.toml" sync >/dev/null || (($? == 2))
    end=$(psql -X -At "$url" -c "SELECT pg_current_wal_flush_lsn()")
    read -r -a after <<<"$(sizes)"
    echo "cycle $cycle: WAL of this database by table (MB):"
    wal_by_table "$start" "$end" | awk '{ total += $2; printf "  %-28s %8.1f\n", $1, $2 / 1e6 }
                                        END { printf "  %-28s %8.1f\n", "total", total / 1e6 }'
    psql -X -q "$url" -c "SELECT pg_drop_replication_slot('$slot')" >/dev/null
    echo "cycle $cycle: growth by table (MB):"
    for i in "${!after[@]}"; do
        awk -v t="$(echo $tables | cut -d' ' -f$((i + 1)))" -v a="${after[$i]}" -v b="${before[$i]}" \
            'BEGIN { printf "  %-28s %+8.1f\n", t, (a - b) / 1e6 }'
    done
done
psql -X -At "$url" -c "SELECT 'rows: last_seen ' || (SELECT count(*) FROM scan_agent_last_seen)
                              || ', state ' || (SELECT count(*) FROM scan_agent_state)"
