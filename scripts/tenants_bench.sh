#!/usr/bin/env bash
# 50 tenants × 2,000 agents in one `scan-agent-sync run` (issue 13, "Measure"): how much of
# each tenant's rate budget the daemon uses when demand exceeds it, the 429s it gets, and
# the process's peak memory and CPU.
#
# The bundled simulator runs as its own process (its CPU and memory are not counted) with
# TENANTS tenants of AGENTS agents each (Defender's partner model: one app registration, a
# token per tenant, per tenant its own fleet, its own rate windows and its own 429s). The
# agent IDs are listed the way an operator would get them (a token, then the list; one call
# per tenant), then the simulator is restarted with the same flags (the same seed serves
# the same fleets) so that the listing calls, which the daemon's ledger does not know, are
# not in its windows. One `run` (the release build, with the unit's allocator settings,
# fixture.sh) then syncs every tenant in by-ID mode (one call per agent) on a cron of every
# minute: each tenant wants 2,000 calls a cycle and its windows allow 100, so demand
# exceeds the budget all the time and the daemon's own scheduling and budget decide what
# is used.
#
# Windows: WINDOWS (default "100/1m"), written both into `rate_limit.windows` and the
# simulator's `--window`s, so both sides enforce the same limits. The real Defender windows
# are 100/1m and 1500/1h: with both, a tenant spends its hour in the first 15 minutes and
# then waits 45, so a 10-minute run would measure the minute window only and a CPU figure
# from it would be that of a burst. The default keeps the minute window alone: it binds
# throughout the run, it is the one whose sliding count is hard to fill without a 429, and
# it makes the daemon work at 4 × the real hourly rate (6,000 calls per tenant-hour), so the
# CPU per hour is a pessimistic figure; the summary also gives CPU per 1,000 calls for the
# real 1,500 per tenant-hour. WINDOWS="100/1m 1500/1h" DURATION=3600 measures a real hour.
#
# Budget use, per tenant: its calls recorded in the ledger (`api_calls`, the time each
# request left) in [its first call, + DURATION), against what the windows allow in that span
# from a cold start (the greedy sender, each call at the earliest instant every window has
# room: under sliding windows that count is the maximum). DURATION must be a multiple of the
# longest window, so that span holds whole windows. With one window, "pace" is the sustained
# rate: calls * per / (time the calls took, from the first to the last whole window's
# worth), as a share of calls / per; it sees a late start of each burst that the count in
# whole windows does not. 429s: ledger rows with status 429, and the simulator's own log.
# Peak RSS: VmHWM of the daemon (and the largest VmRSS sampled every second: the kernel
# updates VmHWM lazily, so a peak given back in between can escape it). CPU: its utime +
# stime (/proc/PID/stat) over DURATION from half the shortest window after every tenant's
# first call (the steady state, between two bursts of calls at both ends), per hour and per
# 1,000 calls made in that span, and over its whole life (start, first bursts).
#
# The simulator's fleets are its defaults (each period of 1 min agents report in and 10%
# upgrade; 10% fall silent, 5% vanish within 3 min and answer 404 from then on: a 404 is a
# call spent like any other). SIM_FLAGS adds flags, e.g. SIM_FLAGS="--deleted-share 0".
#
# Usage: scripts/tenants_bench.sh                  (TENANTS=50 AGENTS=2000 DURATION=600)
#        DURATION=1200 scripts/tenants_bench.sh
#        WINDOWS="100/1m 1500/1h" DURATION=3600 scripts/tenants_bench.sh   (Defender's windows)
#        CRON="*/10 * * * * *" scripts/tenants_bench.sh  (a cycle every 10 s)
#        MAX_IN_FLIGHT=4 DB_CONNECTIONS=4 AGENT_SERIES=all (defaults: those of the product;
#            AGENT_SERIES is http.agent_series, one metric series per agent with "all")
# Needs: cargo, curl, python3, psql, and PostgreSQL at DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres) where this user may CREATE DATABASE.
# Honours CARGO_TARGET_DIR for where the release binary is built; ALLOCATOR_ENV (fixture.sh).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tenants=${TENANTS:-50}
agents=${AGENTS:-2000}
duration=${DURATION:-600}
read -r -a windows <<<"${WINDOWS:-100/1m}"
cron=${CRON:-0 * * * * *}
max_in_flight=${MAX_IN_FLIGHT:-4}
db_connections=${DB_CONNECTIONS:-4}
agent_series=${AGENT_SERIES:-all}
read -r -a extra_sim_flags <<<"${SIM_FLAGS:-}"
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

# The windows as seconds ("CALLS SECONDS" per line), checked: the same parser serves the
# budget computation at the end.
window_seconds() {
    python3 - "$@" <<'PY'
import re, sys
units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
for text in sys.argv[1:]:
    match = re.fullmatch(r"(\d+)/(\d+)(ms|s|m|h|d)", text)
    if not match:
        sys.exit(f"window {text!r} is not CALLS/DURATION such as 100/1m")
    print(match[1], int(match[2]) * units[match[3]])
PY
}
window_list=$(window_seconds "${windows[@]}")
longest=$(awk '$2 > max { max = $2 } END { print max }' <<<"$window_list")
if ! awk -v d="$duration" -v l="$longest" 'BEGIN { exit !(d > 0 && d % l == 0) }'; then
    echo "DURATION ($duration s) must be a positive multiple of the longest window ($longest s)" >&2
    exit 64
fi

# shellcheck source=scripts/fixture.sh
source "$repo/scripts/fixture.sh"
build_binary
sim_flags=(--tenants "$tenants" --agents "$agents" --page-size "$agents")
for window in "${windows[@]}"; do sim_flags+=(--window "$window"); done
sim_flags+=("${extra_sim_flags[@]}")
start_simulator "${sim_flags[@]}"

# Each tenant's IDs, from its list (one page: --page-size is the fleet), into ids-N.txt.
# The simulator's tenants are sim-tenant, sim-tenant-2, sim-tenant-3, ...
python3 - "$sim" "$tenants" "$work" <<'PY'
import json, sys, urllib.parse, urllib.request

base, tenants, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for n in range(1, tenants + 1):
    tenant_id = "sim-tenant" if n == 1 else f"sim-tenant-{n}"
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials", "client_id": "sim-client",
        "client_secret": "sim-secret", "scope": base + "/.default",
    }).encode()
    with urllib.request.urlopen(f"{base}/{tenant_id}/oauth2/v2.0/token", form) as answer:
        token = json.load(answer)["access_token"]
    url, ids = base + "/api/DeviceAuthenticatedScanAgents", []
    while url:
        request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(request) as answer:
            page = json.load(answer)
        ids += [agent["id"] for agent in page["value"]]
        url = page.get("@odata.nextLink")
    with open(f"{work}/ids-{n}.txt", "w") as out:
        out.write("".join(i + "\n" for i in ids))
PY
listed=$(cat "$work"/ids-*.txt | wc -l)
if ((listed != tenants * agents)); then
    echo "the simulator listed $listed agents, expected $((tenants * agents))" >&2
    exit 1
fi
# A fresh simulator with empty windows, serving the same fleets.
kill -TERM "$sim_pid"
wait "$sim_pid" || true
mv "$work/simulator.log" "$work/simulator-listing.log"
start_simulator "${sim_flags[@]}"
# It says each tenant's first agent when it starts: the first listed, if the fleets are the same.
first_agents=$(sed -n 's/.*Defender API simulator listening.* first_agent="\([^"]*\)".*/\1/p' "$work/simulator.log")
for ((n = 1; n <= tenants; n++)); do
    if [[ $(sed -n "${n}p" <<<"$first_agents") != "$(head -n 1 "$work/ids-$n.txt")" ]]; then
        echo "the restarted simulator serves other agents to tenant $n than it listed" >&2
        exit 1
    fi
done

create_database sas_tenants
sql() { psql "$database_url" -qAtc "$1"; }

toml_windows=$(awk '{ printf "%s{ calls = %s, per = \"%ss\" }", (NR > 1 ? ", " : ""), $1, $2 }' <<<"$window_list")
http_port=$(free_port)
cat >"$work/config.toml" <<TOML
[defender]
api_base_url = "$sim"
token_url = "$sim/{tenant_id}/oauth2/v2.0/token"
scope = "$sim/.default"
client_id = "sim-client"
fetch_mode = "by-id"

[rate_limit]
windows = [ $toml_windows ]
max_in_flight = $max_in_flight

[schedule]
cron = "$cron"

[database]
url = "$database_url"
max_connections = $db_connections

[http]
listen = "127.0.0.1:$http_port"
agent_series = "$agent_series"
TOML
for ((n = 1; n <= tenants; n++)); do
    tenant_id="sim-tenant"
    ((n > 1)) && tenant_id="sim-tenant-$n"
    printf '\n[[tenants]]\nname = "t%02d"\ntenant_id = "%s"\nids_file = "%s"\n' \
        "$n" "$tenant_id" "$work/ids-$n.txt" >>"$work/config.toml"
done
export SCAN_AGENT_SYNC__DEFENDER__CLIENT_SECRET=sim-secret
"$binary" migrate --config "$work/config.toml" >/dev/null

alive() {
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "the daemon exited; its log is $work/daemon.log" >&2
        exit 1
    fi
}

start_ns=$(date +%s%N)
# shellcheck disable=SC2086 # one word per setting
env $allocator_env "$binary" run --config "$work/config.toml" >"$work/daemon.log" 2>&1 &
daemon_pid=$!

# The steady state starts once every tenant has made its first call.
started=0
for _ in $(seq 1200); do
    alive
    started=$(sql "SELECT count(DISTINCT tenant) FROM api_calls" 2>/dev/null || echo 0)
    ((started >= tenants)) && break
    sleep 0.1
done
if ((started < tenants)); then
    echo "only $started of $tenants tenants made a call within 120 s; log in $work/daemon.log" >&2
    exit 1
fi
# The CPU is counted over DURATION (whole windows) from half the shortest window after the
# last tenant's first call: between two bursts of calls, so both ends of the span fall at
# the same phase of the tenants' bursts. Every tenant's span (its first call + DURATION) is
# over by its end; a second more lets the last answers be recorded.
shortest=$(awk 'NR == 1 || $2 < min { min = $2 } END { print min }' <<<"$window_list")
settle_ms=$(sql "SELECT greatest(0, round(1000 * extract(epoch FROM max(first) + make_interval(secs => $shortest / 2.0)
                                                     - clock_timestamp())))
                 FROM (SELECT min(called_at) AS first FROM api_calls GROUP BY tenant) AS f")
echo "all $tenants tenants started; the measured span starts in $((settle_ms / 1000)) s" >&2
settle_until_ns=$(($(date +%s%N) + settle_ms * 1000000))
while (($(date +%s%N) < settle_until_ns)); do
    alive
    sleep 1
done
steady_ticks=$(cpu_ticks "$daemon_pid")
steady_ns=$(date +%s%N)
steady_at=$(sql "SELECT extract(epoch FROM clock_timestamp())")
echo "measuring for $duration s ..." >&2
end_wait_ns=$((steady_ns + duration * 1000000000))
rss_max=0
while :; do
    alive
    rss=$(status_kib "$daemon_pid" VmRSS)
    ((rss > rss_max)) && rss_max=$rss
    left_ms=$(((end_wait_ns - $(date +%s%N)) / 1000000))
    ((left_ms <= 0)) && break
    ((left_ms > 1000)) && left_ms=1000
    sleep "$(printf '%d.%03d' $((left_ms / 1000)) $((left_ms % 1000)))"
done
end_ticks=$(cpu_ticks "$daemon_pid")
end_ns=$(date +%s%N)
end_at=$(sql "SELECT extract(epoch FROM clock_timestamp())")
hwm=$(status_kib "$daemon_pid" VmHWM)
rss_end=$(status_kib "$daemon_pid" VmRSS)
sleep 1
skipped=$(curl -s "http://127.0.0.1:$http_port/metrics" | awk '/^scan_agent_sync_skipped_ticks_total/ { s += $2 } END { print s + 0 }')
kill -TERM "$daemon_pid"
stop_ns=$(date +%s%N)
wait "$daemon_pid" || echo "the daemon exited with status $? on SIGTERM" >&2
stopped_ns=$(date +%s%N)
daemon_pid=""

# Per tenant: the ledger's call times in its span, its 429s and unanswered calls.
sql "SELECT c.tenant, extract(epoch FROM c.called_at - f.first),
            coalesce(c.status, 0), extract(epoch FROM c.called_at)
     FROM api_calls c JOIN (SELECT tenant, min(called_at) AS first FROM api_calls GROUP BY tenant) f
          USING (tenant)
     ORDER BY c.tenant, c.called_at" >"$work/calls.txt"
sql "SELECT status || ' ' || count(*) || ' ' || sum(agents_fetched) || ' ' || sum(throttled)
     FROM sync_runs GROUP BY status ORDER BY status" >"$work/runs.txt"
sim_throttled=$(grep -c 'simulator request .*path=/api/.* status=429' "$work/simulator.log" || true)
sim_requests=$(grep -c 'simulator request .*path=/api/' "$work/simulator.log" || true)

python3 - "$work/calls.txt" "$work/runs.txt" "$duration" "$tenants" "$agents" "$sim_throttled" \
    "$sim_requests" "$skipped" "$(getconf CLK_TCK)" "$steady_ticks" "$end_ticks" "$steady_ns" "$end_ns" \
    "$start_ns" "$hwm" "$rss_max" "$rss_end" "$stop_ns" "$stopped_ns" \
    "$window_list" "$steady_at" "$end_at" <<'PY'
import statistics, sys
from collections import defaultdict

(calls_file, runs_file, duration, tenants, agents, sim_throttled, sim_requests, skipped, hz,
 steady_ticks, end_ticks, steady_ns, end_ns, start_ns, hwm, rss_max, rss_end,
 stop_ns, stopped_ns, window_list, steady_at, end_at) = sys.argv[1:]
duration, tenants, agents, hz = float(duration), int(tenants), int(agents), int(hz)
windows = [(int(c), float(p)) for c, p in (line.split() for line in window_list.splitlines())]

def allowed(span):
    """Calls a greedy sender gets in [0, span) from a cold start: each call at the earliest
    instant at which every window holds fewer than `calls` calls in (t - per, t]."""
    times, t = [], 0.0
    while True:
        for calls, per in windows:
            if len(times) >= calls:
                t = max(t, times[-calls] + per)
        if t >= span:
            return len(times)
        times.append(t)

calls = defaultdict(list)
statuses = defaultdict(lambda: defaultdict(int))
in_cpu_span = 0
for line in open(calls_file):
    tenant, offset, status, at = line.strip().split("|")
    offset = float(offset)
    in_cpu_span += float(steady_at) <= float(at) < float(end_at)
    statuses[tenant][int(status)] += 1
    if offset < duration:
        calls[tenant].append(offset)
limit = allowed(duration)
shortest_calls, shortest_per = min(windows, key=lambda w: w[1])
use, pace = {}, {}
for tenant, times in calls.items():
    use[tenant] = 100 * len(times) / limit
    # Whole windows' worth of calls after the first, and the time they took.
    k = (len(times) - 1) // shortest_calls
    if len(windows) == 1 and k > 0:
        pace[tenant] = 100 * k * shortest_per / (times[k * shortest_calls] - times[0])
if len(use) != tenants:
    sys.exit(f"calls of {len(use)} tenants in the ledger, expected {tenants}")
throttled = sum(s.get(429, 0) for s in statuses.values())
unanswered = sum(s.get(0, 0) for s in statuses.values())
total = sum(sum(s.values()) for s in statuses.values())
others = defaultdict(int)
for s in statuses.values():
    for code, n in s.items():
        others[code] += n

ticks = int(end_ticks) - int(steady_ticks)
steady_wall = (int(end_ns) - int(steady_ns)) / 1e9
cpu = ticks / hz
mib = lambda kib: int(kib) / 1024
low = sorted(use.items(), key=lambda kv: kv[1])
per_1000 = 1000 * cpu / in_cpu_span if in_cpu_span else float("nan")
real_rate = 1500 * tenants  # Defender's 1500/1h per tenant, the binding limit over hours

print()
print("| measure | value | target | verdict |")
print("|---|---|---|---|")
print(f"| tenants × agents (by ID) | {tenants} × {agents} | | |")
print(f"| windows (config and simulator) | {', '.join(f'{c}/{p:g}s' for c, p in windows)} | | |")
print(f"| measured span per tenant | {duration:g} s from its first call; allowed {limit} calls | | |")
print(f"| budget use, min over tenants | {low[0][1]:.1f}% ({low[0][0]}: {len(calls[low[0][0]])} of {limit}) | ≥ 97% | {'met' if low[0][1] >= 97 else 'MISSED'} |")
print(f"| budget use, median / max | {statistics.median(use.values()):.1f}% / {low[-1][1]:.1f}% | | |")
print(f"| tenants below 97% | {sum(1 for u in use.values() if u < 97)} | 0 | |")
if pace:
    print(f"| pace (sustained rate / {shortest_calls} per {shortest_per:g} s), min / median | {min(pace.values()):.1f}% / {statistics.median(pace.values()):.1f}% | | |")
print(f"| 429s: ledger / simulator log | {throttled} / {sim_throttled} | 0 | {'met' if throttled == 0 and int(sim_throttled) == 0 else 'MISSED'} |")
print(f"| API calls, whole run: ledger / simulator | {total} / {sim_requests} (statuses {dict(sorted(others.items()))}; 0 = no answer) | | |")
print(f"| scheduled ticks skipped | {skipped} | | |")
print(f"| peak RSS (VmHWM; max of the 1 s samples of VmRSS) | {mib(hwm):.1f} MiB; {mib(rss_max):.1f} MiB | | |")
print(f"| RSS at the end | {mib(rss_end):.1f} MiB | | |")
print(f"| CPU, steady ({steady_wall:.0f} s, {in_cpu_span} calls) | {cpu:.1f} s = {100 * cpu / steady_wall:.2f}% of one core = {3600 * cpu / steady_wall:.0f} s per hour | | |")
life_wall = (int(end_ns) - int(start_ns)) / 1e9
life_cpu = int(end_ticks) / hz
print(f"| CPU, whole life ({life_wall:.0f} s) | {life_cpu:.1f} s = {100 * life_cpu / life_wall:.2f}% of one core | | |")
print(f"| calls per hour at this rate | {3600 * in_cpu_span / steady_wall:.0f} (all tenants; Defender's 1500/1h allows {real_rate}) | | |")
print(f"| CPU per 1,000 calls | {per_1000:.2f} s; at {real_rate} calls per hour (linear): {per_1000 * real_rate / 1000:.0f} s per hour | | |")
print(f"| SIGTERM to exit | {(int(stopped_ns) - int(stop_ns)) / 1e9:.1f} s | | |")
print()
print("lowest budget use: " + ", ".join(f"{t} {u:.1f}%" for t, u in low[:5]))
print("sync runs (status count fetched throttled): " + "; ".join(l.strip() for l in open(runs_file)))
PY
echo
echo "command: TENANTS=$tenants AGENTS=$agents DURATION=$duration WINDOWS=\"${windows[*]}\" CRON=\"$cron\" \
SIM_FLAGS=\"${extra_sim_flags[*]}\" scripts/tenants_bench.sh (MAX_IN_FLIGHT=$max_in_flight DB_CONNECTIONS=$db_connections \
AGENT_SERIES=$agent_series; allocator: ${allocator_env:-defaults})"
