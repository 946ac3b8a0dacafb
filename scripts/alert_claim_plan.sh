#!/usr/bin/env bash
# The plan of the sender's claim (src/store/alerts.rs, Store::claim_alerts) over an outbox of
# EVENTS undelivered events (default 100 000, one per agent, as a storm queues them), at the
# start of a drain and after HALF of them were delivered (dead index entries of the
# delivered rows included: the benchmark's drain leaves them for autovacuum too).
#
# Usage: scripts/alert_claim_plan.sh            (EVENTS=100000 HALF=50000)
# Needs: psql, and PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
# where this user may CREATE DATABASE. The database is BENCH_DB (default sas_claim_plan),
# dropped and rebuilt.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
database=${BENCH_DB:-sas_claim_plan}
events=${EVENTS:-100000}
half=${HALF:-$((events / 2))}
url=${admin_url%/*}/$database

psql -X -q -v ON_ERROR_STOP=1 "$admin_url" -c "DROP DATABASE IF EXISTS \"$database\"" \
    -c "CREATE DATABASE \"$database\""
for file in "$repo"/migrations/*.sql; do
    psql -X -q -v ON_ERROR_STOP=1 "$url" -f "$file"
done
psql -X -q -v ON_ERROR_STOP=1 -v events="$events" "$url" <<'SQL'
INSERT INTO scan_agent_state (agent_id, last_seen, first_observed_at, last_changed_at, valid_from, last_fetched_at)
SELECT 'agent-' || lpad(i::text, 7, '0'), now() - interval '2 days', now(), now(), now(), now()
FROM generate_series(1, :events) AS i;
INSERT INTO stale_episodes (agent_id, started_at, stale_since, last_notified_at)
SELECT agent_id, now(), now(), now() FROM scan_agent_state ORDER BY agent_id;
INSERT INTO alert_outbox (episode_id, agent_id, kind, payload, created_at, next_attempt_at)
SELECT episode_id, agent_id, 'firing', jsonb_build_object('agent_id', agent_id), started_at, started_at
FROM stale_episodes ORDER BY agent_id;
VACUUM ANALYZE;
SQL
claim="SELECT o.event_id, o.attempts, o.payload::text AS payload, o.fleet_episode_id IS NOT NULL AS fleet
FROM alert_outbox o
WHERE o.delivered_at IS NULL AND o.next_attempt_at <= now()
  AND NOT EXISTS (SELECT 1 FROM alert_outbox p
                  WHERE p.agent_id = o.agent_id AND p.delivered_at IS NULL AND p.event_id < o.event_id)
ORDER BY o.next_attempt_at, o.event_id
LIMIT 100
FOR UPDATE OF o SKIP LOCKED"
echo "== $events undelivered"
psql -X -q "$url" -c "BEGIN" -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $claim" -c "ROLLBACK"
psql -X -q "$url" -c "UPDATE alert_outbox SET delivered_at = now() WHERE event_id <= $half"
echo "== after $half delivered (no vacuum since)"
psql -X -q "$url" -c "BEGIN" -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $claim" -c "ROLLBACK"
