#!/usr/bin/env bash
# The .deb under a real systemd: boots a Debian container whose PID 1 is systemd
# (systemd-nspawn --boot), installs the package with apt, and checks what the package and
# the unit promise (README "Install"). The container shares the host's network, so the
# service reaches PostgreSQL on 127.0.0.1:5432 and a simulator this script starts on the
# host; everything stays on loopback.
#
#   scripts/systemd_test.sh PACKAGE.deb SCAN_AGENT_SYNC_BINARY
#
# Prints one line per check, then "systemd: N passed, N failed"; exit 1 when any failed. A
# container that cannot boot is a failure, never a skip; on any failure the nspawn log and
# the container's journal are printed. Needs root, systemd-container and debootstrap. The
# container's root (debootstrap minbase, ~40 s) is built once per machine under
# $SCAN_AGENT_SYNC_CI_CACHE (default /var/cache/scan-agent-sync-ci) and rebuilt when
# missing; --volatile=overlay keeps it untouched, so runs can share it.
set -euo pipefail

if (($# != 2)); then
    echo "usage: $0 PACKAGE.deb SCAN_AGENT_SYNC_BINARY" >&2
    exit 2
fi
deb=$(realpath "$1")
binary=$(realpath "$2")

PG_URL=postgres://postgres@127.0.0.1:5432
UNIT=scan-agent-sync.service
# Short, so that "survives well past WatchdogSec" takes seconds, not minutes.
WATCHDOG_SEC=3
cache=${SCAN_AGENT_SYNC_CI_CACHE:-/var/cache/scan-agent-sync-ci}
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$cache/root-$suite
# The container's packages: systemd as PID 1, and the package's dependencies, so that apt
# installs it without fetching anything (the container reaches nothing beyond loopback). A
# root built with another list is rebuilt.
root_packages=systemd,systemd-sysv,dbus,procps,ca-certificates

work=$(mktemp -d /tmp/scan-agent-sync-systemd.XXXXXX)
chmod 755 "$work" # apt inside the container reads the package as its _apt user
cp "$deb" "$work/package.deb"
chmod 644 "$work/package.deb"

passed=0
failed=0
nspawn_pid=
ct_pid=
sim_pid=
db=

# check DESCRIPTION COMMAND...: one counted check.
check() {
    local what=$1
    shift
    if "$@"; then
        echo "ok: $what"
        passed=$((passed + 1))
    else
        echo "FAILED: $what"
        failed=$((failed + 1))
        return 1
    fi
}

# eventually SECONDS COMMAND...: COMMAND succeeds within SECONDS.
eventually() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# A command inside the container, with its environment rather than this script's.
ct() {
    nsenter --target "$ct_pid" --all -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

# ct_write PATH MODE: standard input becomes PATH inside the container.
ct_write() {
    ct sh -c 'cat > "$1" && chmod "$2" "$1"' sh "$1" "$2"
}

show() {
    ct systemctl show --property "$1" --value "$UNIT"
}

# The unit's journal, messages only.
journal() {
    ct journalctl --unit $UNIT --no-pager --output=cat
}

sql() {
    psql "$PG_URL/$db" --no-psqlrc --tuples-only --no-align --quiet --command "$1"
}

free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 12000))
        [[ -z $(ss --listening --tcp --numeric --no-header "sport = :$port") ]] && echo "$port" && return
    done
}

build_root() {
    mkdir -p "$cache"
    # One build at a time; a run that waited finds the root built.
    exec 9>"$cache/lock"
    flock 9
    if [[ $(cat "$root/.complete" 2>/dev/null) != "$root_packages" ]]; then
        echo "building the container root $root (debootstrap, once per machine)"
        rm -rf "$root" "$root.new"
        if ! debootstrap --variant=minbase --include="$root_packages" \
            "$suite" "$root.new" "$mirror" >"$cache/debootstrap.log" 2>&1; then
            tail -n 40 "$cache/debootstrap.log"
            echo "debootstrap failed; full log: $cache/debootstrap.log"
            exec 9>&-
            return 1
        fi
        echo "$root_packages" >"$root.new/.complete"
        mv "$root.new" "$root"
    fi
    exec 9>&-
}

boot() {
    # --register=no --keep-unit: no machined here (PID 1 is not systemd); the console goes
    # to the log, read-only.
    systemd-nspawn --boot --register=no --keep-unit --volatile=overlay --console=read-only \
        --directory="$root" --machine="sas-ci-$$" --bind-ro="$work:/ci" \
        >"$work/nspawn.log" 2>&1 </dev/null &
    nspawn_pid=$!
    local deadline=$((SECONDS + 60))
    until ct_pid=$(pgrep --parent "$nspawn_pid" --newest) && [[ $(cat "/proc/$ct_pid/comm" 2>/dev/null) == systemd ]]; do
        if ! kill -0 "$nspawn_pid" 2>/dev/null || ((SECONDS >= deadline)); then
            ct_pid=
            return 1
        fi
        sleep 0.2
    done
    # systemctl answers once PID 1 listens on its socket; "degraded" also means booted (the
    # failed units are printed with the journal).
    local state=
    until [[ $state == running || $state == degraded ]]; do
        ((SECONDS < deadline)) || { echo "the container's systemd is ${state:-not answering}"; return 1; }
        state=$(timeout 30 nsenter --target "$ct_pid" --all systemctl is-system-running --wait 2>/dev/null || true)
        [[ $state == running || $state == degraded ]] || sleep 0.5
    done
}

cleanup() {
    local status=$?
    if ((failed > 0 || status != 0)); then
        echo "---- systemd-nspawn log ----"
        tail -n 200 "$work/nspawn.log" 2>/dev/null || true
        if [[ -n $ct_pid ]]; then
            echo "---- container journal ----"
            ct journalctl --boot --no-pager --output=short-monotonic 2>&1 | tail -n 300 || true
            echo "---- failed units ----"
            ct systemctl --failed --no-pager 2>&1 || true
        fi
        [[ -e $work/simulator.log ]] && echo "---- simulator log ----" && tail -n 30 "$work/simulator.log"
    fi
    if [[ -n $nspawn_pid ]]; then
        # SIGTERM asks the container's systemd to power off.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        timeout 30 tail --pid="$nspawn_pid" -f /dev/null || kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    if [[ -n $sim_pid ]]; then
        kill "$sim_pid" 2>/dev/null || true
    fi
    if [[ -n $db ]]; then
        psql "$PG_URL/postgres" --no-psqlrc --quiet --command "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
            >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# ---- the container, the simulator, the database ----

check "the container root exists ($root)" build_root
if ! check "the container boots with systemd as PID 1 (systemd-nspawn --boot)" boot; then
    echo "systemd: $passed passed, $failed failed"
    exit 1
fi

secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
"$binary" --log-format json simulate --listen 127.0.0.1:0 --agents 5 --evolve-every 0s \
    --tenant-id ci-tenant --client-id ci-client --client-secret "$secret" >"$work/simulator.log" 2>&1 &
sim_pid=$!
simulator_field() {
    grep -o "\"$1\":\"[^\"]*\"" "$work/simulator.log" | head -n 1 | cut -d '"' -f 4
}
eventually 20 grep -q "simulator listening" "$work/simulator.log"
base_url=$(simulator_field api_base_url)
token_url=$(simulator_field token_url)
token=$(curl -fsS --data grant_type=client_credentials --data client_id=ci-client \
    --data-urlencode "client_secret=$secret" --data-urlencode "scope=$base_url/.default" "$token_url" |
    grep -o '"access_token":"[^"]*"' | cut -d '"' -f 4)
mapfile -t agent_ids < <(curl -fsS -H "Authorization: Bearer $token" "$base_url/api/DeviceAuthenticatedScanAgents" |
    grep -o '"id":"[^"]*"' | cut -d '"' -f 4)
if ((${#agent_ids[@]} < 2)); then
    echo "the simulator listed ${#agent_ids[@]} agents; expected 5"
    exit 1
fi

db=sas_systemd_$$_$RANDOM
psql "$PG_URL/postgres" --no-psqlrc --quiet --command "CREATE DATABASE $db"
http_port=$(free_port)

# ---- install ----

install_package() {
    ct env DEBIAN_FRONTEND=noninteractive apt-get install --yes --quiet "$@" /ci/package.deb \
        >>"$work/apt.log" 2>&1 </dev/null || { tail -n 30 "$work/apt.log"; return 1; }
}
check "apt install ./scan-agent-sync_*.deb" install_package

installed_files() {
    ct test -x /usr/bin/scan-agent-sync &&
        ct grep -qx 'ExecStart=/usr/bin/scan-agent-sync run' /lib/systemd/system/$UNIT &&
        [[ $(ct dpkg-query --showformat '${Conffiles}' --show scan-agent-sync) == *" /etc/scan-agent-sync/config.toml "* ]] &&
        [[ $(ct dpkg-query --showformat '${Depends}' --show scan-agent-sync) == *ca-certificates* ]] &&
        ct test -s /usr/share/doc/scan-agent-sync/README.md &&
        ct test -s /usr/share/doc/scan-agent-sync/analysts.md &&
        ct test -s /usr/share/doc/scan-agent-sync/copyright
}
check "installed: /usr/bin binary, unit in /lib/systemd/system, config.toml a conffile, docs, copyright, Depends: ca-certificates" installed_files

not_started() {
    [[ $(ct systemctl is-enabled $UNIT || true) == disabled && $(show ActiveState) == inactive ]]
}
check "installing neither enables nor starts the unconfigured service" not_started

# ---- configure ----

# The secret as root's 0600 file, handed over by LoadCredential alone: client_secret_file is
# unset, and no environment variable carries it.
printf '%s\n' "$secret" | ct_write /etc/scan-agent-sync/client_secret 600
printf '%s\n' "${agent_ids[0]}" | ct_write /etc/scan-agent-sync/agents.txt 644
ct mkdir -p /etc/systemd/system/$UNIT.d
printf '[Service]\nWatchdogSec=%ss\n' "$WATCHDOG_SEC" | ct_write /etc/systemd/system/$UNIT.d/ci.conf 644
ct systemctl daemon-reload

config() { # $1: extra TOML appended, to break or edit it
    cat <<EOF
[defender]
api_base_url = "$base_url"
token_url = "$token_url"
scope = "$base_url/.default"
tenant_id = "ci-tenant"
client_id = "ci-client"
fetch_mode = "by-id"

[agents]
ids_file = "/etc/scan-agent-sync/agents.txt"

[schedule]
cron = "*/2 * * * * *"

[database]
url = "$PG_URL/$db"

[http]
listen = "127.0.0.1:$http_port"

[log]
format = "text"
$1
EOF
}

# ---- a configuration error ----

config_error() {
    config $'\n[stale]\nafter = "soon"' | ct_write /etc/scan-agent-sync/config.toml 644
    if ct systemctl start $UNIT 2>/dev/null; then
        echo "start succeeded with stale.after = \"soon\""
        return 1
    fi
    # failed, not activating: RestartPreventExitStatus=78 spares a restart loop.
    [[ $(show ExecMainStatus) == 78 && $(show ActiveState) == failed ]] ||
        { echo "ExecMainStatus=$(show ExecMainStatus) ActiveState=$(show ActiveState)"; return 1; }
    [[ $(journal) == *stale.after* ]] || { echo "the journal does not name stale.after"; return 1; }
}
check "a config error: start fails, ExecMainStatus=78, no restart loop, the journal names the key" config_error
ct systemctl reset-failed $UNIT || true

# ---- start ----

config "" | ct_write /etc/scan-agent-sync/config.toml 644

started() {
    ct systemctl start $UNIT || return 1
    # Type=notify: start returned only after READY=1, which the daemon sends once its
    # migrations are applied, so they are there the moment start returns.
    [[ $(show ActiveState) == active && $(show SubState) == running ]] ||
        { echo "ActiveState=$(show ActiveState) SubState=$(show SubState)"; return 1; }
    [[ $(sql "SELECT count(*) > 0 FROM _sqlx_migrations WHERE success") == t ]] ||
        { echo "start returned before the migrations were applied"; return 1; }
}
check "systemctl start returns after readiness (migrations applied, unit active)" started
main_pid=$(show MainPID)

dynamic_user() {
    local uid
    uid=$(ct ps -o uid= -p "$main_pid" | tr -d ' ')
    [[ $(show DynamicUser) == yes ]] && ((uid >= 61184 && uid <= 65519)) ||
        { echo "MainPID $main_pid runs as uid $uid"; return 1; }
}
check "the service runs under a dynamic user (uid in 61184-65519)" dynamic_user

readyz() {
    curl --fail --silent "http://127.0.0.1:$http_port/readyz" >/dev/null
}
check "/readyz answers 200" eventually 30 readyz

synced() {
    [[ $(sql "SELECT count(*) FROM scan_agents WHERE agent_id = '$1'") == 1 &&
        $(sql "SELECT count(*) > 0 FROM sync_runs WHERE status = 'ok'") == t ]]
}
check "a sync cycle ran: the configured agent is in scan_agents, a run is 'ok'" eventually 30 synced "${agent_ids[0]}"

credential_only() {
    local environ
    # MainPID is a PID of the container's namespace, so /proc is read inside it.
    environ=$(ct sh -c 'tr "\0" "\n" < "/proc/$1/environ"' sh "$main_pid")
    grep -q '^CREDENTIALS_DIRECTORY=' <<<"$environ" &&
        ! grep -q 'CLIENT_SECRET' <<<"$environ" &&
        ! ct grep -q client_secret_file /etc/scan-agent-sync/config.toml &&
        [[ $(ct stat -c '%a %U' /etc/scan-agent-sync/client_secret) == "600 root" ]]
}
# The token the sync above used needed the secret; the simulator accepts this run's only.
check "the secret arrived through LoadCredential only (no file key, no variable; root's 0600 file)" credential_only

# ---- reload ----

reloaded() {
    printf '%s\n' "${agent_ids[0]}" "${agent_ids[1]}" | ct_write /etc/scan-agent-sync/agents.txt 644
    ct systemctl reload $UNIT || return 1
    [[ $(show MainPID) == "$main_pid" ]] || { echo "MainPID changed on reload"; return 1; }
    eventually 30 synced "${agent_ids[1]}" || { echo "the added agent was not fetched"; return 1; }
    [[ $(journal) == *"agent list reloaded"* ]]
}
check "systemctl reload re-reads the ID file: the added agent gets fetched, MainPID unchanged" reloaded

# ---- watchdog ----

watchdog_fed() {
    [[ $(show WatchdogUSec) == "${WATCHDOG_SEC}s" ]] || { echo "WatchdogUSec=$(show WatchdogUSec)"; return 1; }
    local first last
    first=$(show WatchdogTimestampMonotonic)
    sleep $((4 * WATCHDOG_SEC))
    last=$(show WatchdogTimestampMonotonic)
    # A fresh timestamp means a WATCHDOG=1 arrived; the same PID and no restart, that none was missed.
    ((last > first)) && [[ $(show MainPID) == "$main_pid" && $(show NRestarts) == 0 && $(show ActiveState) == active ]] ||
        { echo "watchdog $first -> $last, MainPID $(show MainPID), NRestarts $(show NRestarts)"; return 1; }
}
check "the watchdog is fed: active with the same PID after 4 x WatchdogSec=${WATCHDOG_SEC}s" watchdog_fed

# ---- journal ----

journal_text() {
    local lines
    lines=$(journal)
    # The daemon's own lines are there, and none starts with a timestamp of its own.
    grep -q 'INFO scan_agent_sync::daemon' <<<"$lines" &&
        ! grep -E '^ *[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:' <<<"$lines"
}
check "journalctl -u shows text lines without a second timestamp" journal_text

# ---- stop ----

stopped() {
    ct systemctl stop $UNIT || return 1
    [[ $(show Result) == success && $(show ExecMainStatus) == 0 ]] ||
        { echo "Result=$(show Result) ExecMainStatus=$(show ExecMainStatus)"; return 1; }
    [[ $(sql "SELECT count(*) FROM sync_runs WHERE status = 'running'") == 0 &&
        $(sql "SELECT count(*) FROM sync_runs") -gt 0 ]] || { echo "no runs, or one left 'running'"; return 1; }
}
check "systemctl stop exits 0 and leaves no run 'running'" stopped

# ---- upgrade ----

upgraded() {
    ct systemctl start $UNIT || return 1
    local before
    before=$(show MainPID)
    config $'\n# edited by the operator\n[stale]\nafter = "12h"' | ct_write /etc/scan-agent-sync/config.toml 644
    install_package --reinstall || return 1
    ct grep -q '^# edited by the operator$' /etc/scan-agent-sync/config.toml ||
        { echo "the edited config.toml was replaced"; return 1; }
    [[ $(show ActiveState) == active && $(show MainPID) != "$before" ]] ||
        { echo "not restarted: ActiveState=$(show ActiveState) MainPID $before -> $(show MainPID)"; return 1; }
}
check "upgrade over itself: the edited config.toml survives, the running service is restarted" upgraded

# ---- purge ----

purged() {
    ct env DEBIAN_FRONTEND=noninteractive apt-get purge --yes --quiet scan-agent-sync >>"$work/apt.log" 2>&1 </dev/null ||
        { tail -n 30 "$work/apt.log"; return 1; }
    [[ $(show ActiveState) == inactive ]] && ! ct test -e /etc/scan-agent-sync && ! ct test -e /usr/bin/scan-agent-sync
}
check "purge stops the service and removes /etc/scan-agent-sync" purged

echo "systemd: $passed passed, $failed failed"
((failed == 0))
