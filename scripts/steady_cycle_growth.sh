#!/usr/bin/env bash
# WAL and table growth per steady sync cycle (issue 15, BENCHMARKS.md "Retention and growth").
#
# Starts the bundled simulator as its own process (AGENTS agents, pages of 10,000, every
# live agent reporting in every EVOLVE), imports the fleet with one `sync` in list mode
# (track_all), then runs CYCLES steady cycles with `sync`, each one EVOLVE after the last so
# every live agent's lastSeen (and lastCommandExecutionTimestamp) has moved. Per cycle it
# prints the WAL written (pg_current_wal_lsn() before/after) and the growth of each table
# (pg_total_relation_size: heap, indexes, TOAST; for scan_agent_last_seen all partitions).
#
# CHECKPOINT=1 (default) runs CHECKPOINT before each cycle: with the default
# checkpoint_timeout (5 min) a 15-minute schedule meets a checkpoint between any two cycles,
# so every page a cycle touches is written whole to the WAL once (full_page_writes). That
# is the steady state of the default schedule; CHECKPOINT=0 shows the WAL without it.
#
# Usage: BIN=target/release/scan-agent-sync scripts/steady_cycle_growth.sh
#        AGENTS=10000 CYCLES=3 scripts/steady_cycle_growth.sh
# Needs: psql, PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# where this user may CREATE DATABASE and run CHECKPOINT. The database is BENCH_DB (default
# ret_growth), dropped and rebuilt.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN:-$repo/target/release/scan-agent-sync}
agents=${AGENTS:-100000}
cycles=${CYCLES:-5}
evolve=${EVOLVE:-20}
checkpoint=${CHECKPOINT:-1}
port=${PORT:-18943}
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
database=${BENCH_DB:-ret_growth}
url=${admin_url%/*}/$database
work=$(mktemp -d)

psql -X -q -v ON_ERROR_STOP=1 "$admin_url" -c "DROP DATABASE IF EXISTS \"$database\"" \
    -c "CREATE DATABASE \"$database\""

"$bin" -q simulate --listen "127.0.0.1:$port" --agents "$agents" --page-size 10000 \
    --evolve-every "${evolve}s" --window 1000/1m --window 10000/1h >"$work/simulator.log" 2>&1 &
simulator=$!
trap 'kill "$simulator" 2>/dev/null || true; rm -rf "$work"' EXIT

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
url = "$url"

[http]
listen = ""
EOF
export SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET=sim-secret
sleep 2

tables="scan_agent_state scan_agent_payloads scan_agent_payload_times scan_agent_last_seen
        scan_agent_version_history sync_runs api_calls"
sizes() {
    local query="SELECT string_agg(coalesce((SELECT sum(pg_total_relation_size(r.relid))
                           FROM pg_partition_tree(to_regclass(t)) r), 0)::text, ' ' ORDER BY o)
                 FROM unnest(string_to_array('$(echo $tables)', ' ')) WITH ORDINALITY AS u(t, o)"
    psql -X -At "$url" -c "$query"
}

"$bin" -q --config "$work/config.toml" sync >/dev/null || (($? == 2))
echo "imported $agents agents"
printf '%-6s %10s' cycle wal_MB
for t in $tables; do printf ' %s' "$t"; done
echo
for cycle in $(seq 1 "$cycles"); do
    sleep "$evolve"
    psql -X -q "$url" -c "VACUUM" >/dev/null
    ((checkpoint)) && psql -X -q "$url" -c "CHECKPOINT"
    read -r -a before <<<"$(sizes)"
    start=$(psql -X -At "$url" -c "SELECT pg_current_wal_lsn()")
    "$bin" -q --config "$work/config.toml" sync >/dev/null || (($? == 2))
    wal=$(psql -X -At "$url" -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$start') / 1e6, 1)")
    read -r -a after <<<"$(sizes)"
    printf '%-6s %10s' "$cycle" "$wal"
    for i in "${!after[@]}"; do
        printf ' %s' "$(awk -v a="${after[$i]}" -v b="${before[$i]}" 'BEGIN { printf "%+.1fMB", (a - b) / 1e6 }')"
    done
    echo
done
psql -X -At "$url" -c "SELECT 'rows: last_seen ' || (SELECT count(*) FROM scan_agent_last_seen)
                              || ', state ' || (SELECT count(*) FROM scan_agent_state)"
