#!/usr/bin/env bash
# Footprint of an idle `scan-agent-sync run` tracking 1,000 agents (issue 4, "Benchmark").
#
# Starts the bundled simulator as its own process, a fresh database, and the daemon with a
# cron that fires only at the next new year, so after the first cycle (run at start) the
# daemon is idle the way it is between real cycles: leadership, alert timers, the HTTP
# endpoints and the scheduler still run. Once that cycle is recorded, it samples the
# daemon's resident memory (VmRSS) every second and its CPU time (utime + stime) over the
# span. Everything it starts is stopped and dropped on exit, however it exits.
#
# The daemon runs with the unit's allocator settings (fixture.sh, allocator_env).
#
# Usage: scripts/idle_footprint.sh            (IDLE_SECONDS=60 by default, at least 60)
# Needs: cargo, curl, python3, psql, and PostgreSQL at DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres) where this user may CREATE DATABASE.
# Honours CARGO_TARGET_DIR for where the release binary is built.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
idle_seconds=${IDLE_SECONDS:-60}
agents=1000
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

if ((idle_seconds < 60)); then
    echo "IDLE_SECONDS must be at least 60 (the issue's measurement span)" >&2
    exit 64
fi

# shellcheck source=scripts/fixture.sh
source "$repo/scripts/fixture.sh"
build_binary
# A frozen fleet (no evolution) and the real service's default windows.
start_simulator --agents "$agents" --evolve-every 0s

# The tracked IDs, as an operator would get them: a token, then every page of the list.
# These ten calls count against the simulator's 100/1m window, not the daemon's ledger;
# the daemon's own cycle needs ten more, well inside it.
python3 - "$sim" >"$work/agents.txt" <<'PY'
import json, sys, urllib.parse, urllib.request

base = sys.argv[1]
form = urllib.parse.urlencode({
    "grant_type": "client_credentials", "client_id": "sim-client",
    "client_secret": "sim-secret", "scope": base + "/.default",
}).encode()
with urllib.request.urlopen(base + "/sim-tenant/oauth2/v2.0/token", form) as answer:
    token = json.load(answer)["access_token"]
url = base + "/api/DeviceAuthenticatedScanAgents"
while url:
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(request) as answer:
        page = json.load(answer)
    for agent in page["value"]:
        print(agent["id"])
    url = page.get("@odata.nextLink")
PY
tracked=$(wc -l <"$work/agents.txt")
if ((tracked != agents)); then
    echo "the simulator listed $tracked agents, expected $agents" >&2
    exit 1
fi

create_database sas_idle

http_port=$(free_port)
cat >"$work/config.toml" <<TOML
[defender]
$sim_defender
# One list of ten pages instead of 1,000 by-ID calls: the default windows allow 100/min.
fetch_mode = "list"

[agents]
ids_file = "$work/agents.txt"

[schedule]
# Seconds first: midnight on January 1st. The first cycle runs at start; no other
# falls inside the measurement.
cron = "0 0 0 1 1 *"

[database]
url = "$database_url"

[http]
listen = "127.0.0.1:$http_port"
TOML

# shellcheck disable=SC2086 # one word per setting
env SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET=sim-secret $allocator_env \
    "$binary" run --config "$work/config.toml" >"$work/daemon.log" 2>&1 &
daemon_pid=$!

# The first cycle is done when its run is recorded as finished.
finished=""
for _ in $(seq 600); do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "the daemon exited; its log:" >&2
        cat "$work/daemon.log" >&2
        exit 1
    fi
    finished=$(psql "$database_url" -qAtc \
        "SELECT status || ' ' || agents_fetched FROM sync_runs WHERE finished_at IS NOT NULL LIMIT 1" \
        2>/dev/null || true)
    [[ -n $finished ]] && break
    sleep 0.1
done
if [[ -z $finished ]]; then
    echo "no finished sync run after 60 s; daemon log in $work/daemon.log" >&2
    exit 1
fi
read -r run_status run_fetched <<<"$finished"
echo "first cycle: $run_status, $run_fetched agents fetched; sampling for ${idle_seconds}s ..." >&2

ticks_per_second=$(getconf CLK_TCK)
start_ticks=$(cpu_ticks "$daemon_pid")
start_ns=$(date +%s%N)
rss_start=$(status_kib "$daemon_pid" VmRSS)
rss_max=$rss_start
for ((i = 0; i < idle_seconds; i++)); do
    sleep 1
    rss=$(status_kib "$daemon_pid" VmRSS)
    if ((rss > rss_max)); then rss_max=$rss; fi
done
end_ticks=$(cpu_ticks "$daemon_pid")
end_ns=$(date +%s%N)
rss_final=$(status_kib "$daemon_pid" VmRSS)
runs=$(psql "$database_url" -qAtc "SELECT count(*) FROM sync_runs")

python3 - "$rss_start" "$rss_max" "$rss_final" "$start_ticks" "$end_ticks" "$ticks_per_second" \
    "$start_ns" "$end_ns" "$agents" "$runs" <<'PY'
import sys

rss_start, rss_max, rss_final, t0, t1, hz, ns0, ns1, agents, runs = map(int, sys.argv[1:])
wall = (ns1 - ns0) / 1e9
cpu = (t1 - t0) / hz
mib = lambda kib: kib / 1024
# The target is 25 MB (decimal), 23.8 MiB.
within = lambda kib: "met" if kib * 1024 <= 25e6 else "MISSED"
share = 100 * cpu / wall
print(f"| measure | value | target | verdict |")
print(f"|---|---|---|---|")
print(f"| agents tracked | {agents} | | |")
print(f"| idle span | {wall:.1f} s ({runs} sync run(s) in total) | ≥ 60 s | |")
print(f"| RSS at start of span | {mib(rss_start):.1f} MiB | | |")
print(f"| RSS max | {mib(rss_max):.1f} MiB | ≤ 25 MB | {within(rss_max)} |")
print(f"| RSS final | {mib(rss_final):.1f} MiB | ≤ 25 MB | {within(rss_final)} |")
print(f"| CPU (utime+stime / wall) | {cpu:.2f} s / {wall:.1f} s = {share:.3f}% of one core | < 0.5% | {'met' if share < 0.5 else 'MISSED'} |")
PY
echo
echo "command: CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target} scripts/idle_footprint.sh (IDLE_SECONDS=$idle_seconds; allocator: ${allocator_env:-defaults})"
