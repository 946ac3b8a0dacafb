# Shared by the measurement scripts that run the product against the bundled simulator as
# its own process and a fresh database: source it, then call the functions below. The EXIT
# trap stops what they started and drops the database, however the script ends.
#
# Reads: repo, admin_url (a server where this user may CREATE DATABASE), CARGO_TARGET_DIR,
# ALLOCATOR_ENV.
# Sets: work (a temporary directory, kept on failure), binary, sim (the simulator's URL),
# sim_defender (its [defender] keys), sim_pid, database, database_url, allocator_env;
# daemon_pid is stopped too when a script sets it.

# The allocator settings the unit runs the service with (its `Environment=MIMALLOC_...`
# line), for the processes whose memory a script measures; ALLOCATOR_ENV overrides them
# ("" for none).
allocator_env=${ALLOCATOR_ENV-$(sed -n 's/^Environment=\(MIMALLOC_.*\)/\1/p' "$repo/systemd/scan-agent-sync.service")}

work=$(mktemp -d)
database=""
sim_pid=""
daemon_pid=""

fixture_cleanup() {
    local status=$?
    for pid in "$daemon_pid" "$sim_pid"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ -n $database ]]; then
        psql "$admin_url" -qAtc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null || true
    fi
    if ((status != 0)); then
        echo "failed; logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
}
trap fixture_cleanup EXIT

# CPU time (utime + stime) of process $1 in clock ticks: fields 14 and 15 of
# /proc/PID/stat, counted after the command name, which is in parentheses.
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    read -r -a fields <<<"$stat"
    echo $((fields[11] + fields[12]))
}

# The value in KiB of line $2 (VmRSS, VmHWM...) of process $1's /proc/PID/status.
status_kib() {
    awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"
}

# A port nobody listens on now; the kernel picks it.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Builds the release binary and copies it into $work: a shared CARGO_TARGET_DIR may get
# another checkout's build meanwhile.
build_binary() {
    echo "building the release binary ..." >&2
    (cd "$repo" && cargo build --release --quiet --bin scan-agent-sync)
    cp "${CARGO_TARGET_DIR:-$repo/target}/release/scan-agent-sync" "$work/scan-agent-sync"
    binary=$work/scan-agent-sync
}

# Starts `scan-agent-sync simulate` with the given flags on a free port and waits until it
# answers (any HTTP answer, a 404 for `/`, means it listens).
start_simulator() {
    local port
    port=$(free_port)
    sim=http://127.0.0.1:$port
    "$binary" simulate --listen "127.0.0.1:$port" "$@" >"$work/simulator.log" 2>&1 &
    sim_pid=$!
    # The [defender] keys that point the product at it, for the scripts' config files.
    sim_defender="api_base_url = \"$sim\"
token_url = \"$sim/sim-tenant/oauth2/v2.0/token\"
scope = \"$sim/.default\"
tenant_id = \"sim-tenant\"
client_id = \"sim-client\""
    for _ in $(seq 300); do
        if curl -s -o /dev/null "$sim/"; then return; fi
        sleep 0.1
    done
    echo "the simulator did not answer; its log is $work/simulator.log" >&2
    exit 1
}

# Creates an empty database named with PREFIX and sets database_url to it.
create_database() {
    database=$1_$(date +%s)_$$
    psql "$admin_url" -qAtc "CREATE DATABASE \"$database\"" >/dev/null
    database_url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' \
        "$admin_url" "$database")
}
