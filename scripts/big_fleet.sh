#!/usr/bin/env bash
# Steady list cycles at fleet scale (issue 12, "Measure"): memory, time, WAL and database
# growth per cycle, and the memory of an idle `run` after a cycle.
#
# The bundled simulator runs as its own process (so its memory is not counted) with N agents
# in pages of 10,000, an evolving fleet (every live agent reports in each 5 s period, 1% of
# them upgrade), and a window wide enough that the budget never binds: this measures the
# cycle, not the rate limit. Each `sync` (list mode, track_all) runs under /usr/bin/time
# after one evolution period has passed, so every cycle sees every lastSeen advance. The
# first cycle stores the fleet; the steady figures are the medians of the cycles after it.
# Then `run` starts on the same database, performs its first cycle at start, and its
# resident memory is read a few seconds after that cycle is recorded.
#
# `sync` and `run` get the allocator settings of the unit (its `Environment=MIMALLOC_...`
# line), so the figures are the service's; ALLOCATOR_ENV overrides them ("" for none).
#
# Usage: AGENTS=100000 CYCLES=4 scripts/big_fleet.sh   (defaults shown)
#        BINARY=/path/to/scan-agent-sync scripts/big_fleet.sh   (a build to compare, e.g. of
#        another commit, instead of this checkout's)
# Needs: cargo, curl, python3, psql, /usr/bin/time, and PostgreSQL at DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres) where this user may CREATE DATABASE.
# Honours CARGO_TARGET_DIR for where the release binary is built.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
agents=${AGENTS:-100000}
cycles=${CYCLES:-4}
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

# shellcheck source=scripts/fixture.sh
source "$repo/scripts/fixture.sh"
build_binary
if [[ -n ${BINARY:-} ]]; then binary=$BINARY; fi
start_simulator --agents "$agents" --page-size 10000 --evolve-every 5s --upgrade-share 0.01 \
    --window 100000/1m
create_database sas_fleet
sql() { psql "$database_url" -qAtc "$1"; }

http_port=$(free_port)
cat >"$work/config.toml" <<TOML
[defender]
$sim_defender
fetch_mode = "list"

[rate_limit]
windows = [ { calls = 100000, per = "1m" } ]

[agents]
track_all = true

[schedule]
cron = "0 0 0 1 1 *"

[database]
url = "$database_url"

[http]
listen = "127.0.0.1:$http_port"
agent_series = "none"
TOML
export SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET=sim-secret
"$binary" migrate --config "$work/config.toml" >/dev/null

echo "| cycle | status | wall | peak RSS | WAL written | database growth |"
echo "|---|---|---|---|---|---|"
results=$work/results.txt
for ((cycle = 1; cycle <= cycles; cycle++)); do
    sleep 5.5 # one evolution period: every live agent reports in
    sql "CHECKPOINT" >/dev/null
    read -r wal0 size0 <<<"$(sql "SELECT pg_current_wal_lsn() - '0/0', pg_database_size(current_database())" | tr '|' ' ')"
    # shellcheck disable=SC2086 # one word per setting
    env $allocator_env /usr/bin/time -f "%e %M" -o "$work/time.txt" \
        "$binary" sync --config "$work/config.toml" >"$work/sync-$cycle.txt" 2>"$work/sync-$cycle.log" || true
    read -r wal1 size1 <<<"$(sql "SELECT pg_current_wal_lsn() - '0/0', pg_database_size(current_database())" | tr '|' ' ')"
    read -r wall rss_kib <"$work/time.txt"
    status=$(sql "SELECT status FROM sync_runs ORDER BY run_id DESC LIMIT 1")
    echo "$cycle $status $wall $rss_kib $((wal1 - wal0)) $((size1 - size0))" >>"$results"
    python3 - "$cycle" "$status" "$wall" "$rss_kib" "$((wal1 - wal0))" "$((size1 - size0))" <<'PY'
import sys
cycle, status, wall, rss, wal, growth = sys.argv[1:]
print(f"| {cycle} | {status} | {float(wall):.2f} s | {int(rss) / 1024:.1f} MiB | {int(wal) / 1e6:.1f} MB | {int(growth) / 1e6:.1f} MB |")
PY
done

# shellcheck disable=SC2086
env $allocator_env "$binary" run --config "$work/config.toml" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
runs_before=$(sql "SELECT count(*) FROM sync_runs")
for _ in $(seq 1200); do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "the daemon exited; log in $work/daemon.log" >&2
        exit 1
    fi
    done_runs=$(sql "SELECT count(*) FROM sync_runs WHERE finished_at IS NOT NULL")
    ((done_runs > runs_before)) && break
    sleep 0.1
done
sleep 5
idle_rss=$(status_kib "$daemon_pid" VmRSS)
idle_hwm=$(status_kib "$daemon_pid" VmHWM)
# Its cycle was followed by a staleness evaluation of the whole fleet (issue 12, item 6).
slow_statements=$(grep -c "slow statement" "$work/daemon.log" || true)
echo "- slow-statement warnings in the run's log (cycle and staleness evaluation): $slow_statements"

python3 - "$results" "$idle_rss" "$idle_hwm" "$agents" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
steady = rows[1:] or rows
median = lambda i: statistics.median(float(r[i]) for r in steady)
print()
print(f"agents: {int(sys.argv[4])}; steady cycles: {len(steady)} (medians below)")
print(f"- wall of a steady cycle: {median(2):.2f} s")
print(f"- peak RSS of sync: {median(3) / 1024:.1f} MiB (max of all cycles {max(int(r[3]) for r in rows) / 1024:.1f} MiB)")
print(f"- WAL per steady cycle: {median(4) / 1e6:.1f} MB")
print(f"- database growth per steady cycle: {median(5) / 1e6:.1f} MB")
print(f"- idle run after its cycle: VmRSS {int(sys.argv[2]) / 1024:.1f} MiB (its peak, VmHWM, {int(sys.argv[3]) / 1024:.1f} MiB)")
PY
echo
echo "command: AGENTS=$agents CYCLES=$cycles scripts/big_fleet.sh (allocator: ${allocator_env:-defaults})"
