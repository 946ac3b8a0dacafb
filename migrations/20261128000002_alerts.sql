-- Stale-agent alerting (an outbox written in the same transaction as the episode state) and
-- the views analysts query (docs/analysts.md).

-- One row per stale episode of an agent: opened when the agent is first seen stale, closed
-- (resolved_at) when it is fresh again. Restarts and standby instances read this table, so
-- an episode already notified is never fired again.
CREATE TABLE stale_episodes (
    episode_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id         text NOT NULL REFERENCES scan_agents (agent_id),
    -- When the service noticed the agent stale (the firing time).
    started_at       timestamptz NOT NULL,
    -- When the agent became stale: last_seen + stale.after, or missing_since if earlier.
    stale_since      timestamptz NOT NULL,
    -- When the last firing notification (first or repeat) was queued.
    last_notified_at timestamptz NOT NULL,
    resolved_at      timestamptz,
    CONSTRAINT stale_episodes_resolved_after_start CHECK (resolved_at IS NULL OR resolved_at >= started_at)
);
-- At most one open episode per agent, whatever races happen between instances.
CREATE UNIQUE INDEX stale_episodes_one_open ON stale_episodes (agent_id) WHERE resolved_at IS NULL;
CREATE INDEX stale_episodes_agent_idx ON stale_episodes (agent_id, started_at);

-- Notifications to deliver. `payload` holds the facts of the event (agent, timestamps), not
-- a rendered body: the body is rendered when sent, so `alerts.format` applies to events
-- queued before a configuration change, and Alertmanager's endsAt is computed from the
-- actual send time.
CREATE TABLE alert_outbox (
    event_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    episode_id      bigint NOT NULL REFERENCES stale_episodes (episode_id),
    -- Copied from the episode: the sender keeps each agent's events in order.
    agent_id        text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('firing', 'resolved')),
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text
);
CREATE INDEX alert_outbox_due_idx ON alert_outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX alert_outbox_agent_pending_idx ON alert_outbox (agent_id, event_id) WHERE delivered_at IS NULL;
CREATE INDEX alert_outbox_episode_idx ON alert_outbox (episode_id);

-- The version that a version replaced is the one of the same agent closed at the instant it
-- opened (the diff engine closes and opens with one timestamp): (agent_id, valid_to) makes
-- that lookup an index probe. The covering indexes on valid_from and valid_to let
-- scan_agent_versions_per_day count versions opened and closed in a period from the
-- indexes alone (index-only scans), without visiting the table.
CREATE INDEX scan_agent_versions_agent_to_idx ON scan_agent_versions (agent_id, valid_to);
CREATE INDEX scan_agent_versions_valid_to_idx ON scan_agent_versions (valid_to)
    INCLUDE (valid_from, scanner_software_version) WHERE valid_to IS NOT NULL;
CREATE INDEX scan_agent_versions_from_cover_idx ON scan_agent_versions (valid_from)
    INCLUDE (scanner_software_version);

-- How many agents run each scanner version now.
CREATE VIEW scan_agent_version_distribution AS
SELECT scanner_software_version,
       count(*) AS agents,
       count(*) FILTER (WHERE missing_since IS NOT NULL) AS missing_agents,
       round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS percent,
       min(last_seen) AS oldest_last_seen,
       max(last_seen) AS newest_last_seen
FROM scan_agents
GROUP BY scanner_software_version;

-- Every change of a descriptive attribute: one row per changed attribute, with the value
-- before and after and the instant the service recorded it. A filter on agent_id or
-- changed_at becomes an index range on scan_agent_versions, and each predecessor one index
-- probe (the LATERAL ... LIMIT 1 keeps the planner from joining the whole table).
CREATE VIEW scan_agent_version_changes AS
SELECT v.agent_id,
       c.field,
       c.old_value,
       c.new_value,
       v.valid_from AS changed_at,
       v.version_id
FROM scan_agent_versions v
CROSS JOIN LATERAL (
    SELECT p.* FROM scan_agent_versions p
    WHERE p.agent_id = v.agent_id AND p.valid_to = v.valid_from
    LIMIT 1
) p
CROSS JOIN LATERAL (VALUES
    ('scanner_software_version', p.scanner_software_version, v.scanner_software_version),
    ('mde_client_version', p.mde_client_version, v.mde_client_version),
    ('computer_dns_name', p.computer_dns_name, v.computer_dns_name),
    ('machine_id', p.machine_id, v.machine_id),
    ('assigned_application_id', p.assigned_application_id, v.assigned_application_id)
) AS c (field, old_value, new_value)
WHERE c.old_value IS DISTINCT FROM c.new_value;

-- Agents per scanner version at the end of each day from first_day to last_day (days in the
-- session time zone). Rather than testing every version against every day, it counts the
-- versions valid at the end of first_day (current versions plus those closed since, both
-- index scans) and then adds the versions opened and subtracts those closed on each later
-- day (index-only ranges on valid_from and valid_to): the cost follows the fleet size plus
-- the version changes in the period, not the length of the whole history.
CREATE FUNCTION scan_agent_versions_per_day(first_day date, last_day date)
RETURNS TABLE (day date, scanner_software_version text, agents bigint)
LANGUAGE sql STABLE
-- JIT compilation took longer than the query itself in measurements.
SET jit = off
AS $$
    WITH census AS (
        SELECT c.scanner_software_version, sum(c.n) AS delta
        FROM (
            SELECT s.scanner_software_version, count(*) AS n FROM scan_agent_versions s
            WHERE s.valid_to IS NULL AND s.valid_from < (first_day + 1)::timestamptz
            GROUP BY 1
            UNION ALL
            SELECT s.scanner_software_version, count(*) FROM scan_agent_versions s
            WHERE s.valid_to >= (first_day + 1)::timestamptz AND s.valid_from < (first_day + 1)::timestamptz
            GROUP BY 1
        ) c
        GROUP BY 1
    ),
    events AS (
        SELECT s.valid_from::date AS day, s.scanner_software_version, count(*) AS delta
        FROM scan_agent_versions s
        WHERE s.valid_from >= (first_day + 1)::timestamptz AND s.valid_from < (last_day + 1)::timestamptz
        GROUP BY 1, 2
        UNION ALL
        SELECT s.valid_to::date, s.scanner_software_version, -count(*)
        FROM scan_agent_versions s
        WHERE s.valid_to >= (first_day + 1)::timestamptz AND s.valid_to < (last_day + 1)::timestamptz
        GROUP BY 1, 2
    ),
    per_day AS (
        SELECT first_day AS day, c.scanner_software_version, c.delta FROM census c
        UNION ALL
        SELECT e.day, e.scanner_software_version, sum(e.delta) FROM events e GROUP BY 1, 2
    ),
    grid AS (
        SELECT d::date AS day, v.scanner_software_version
        FROM generate_series(first_day, last_day, interval '1 day') d
        CROSS JOIN (SELECT DISTINCT p.scanner_software_version FROM per_day p) v
    ),
    running AS (
        SELECT g.day, g.scanner_software_version,
               (sum(coalesce(p.delta, 0)) OVER (PARTITION BY g.scanner_software_version ORDER BY g.day))::bigint
                   AS agents
        FROM grid g
        LEFT JOIN per_day p
               ON p.day = g.day AND p.scanner_software_version IS NOT DISTINCT FROM g.scanner_software_version
    )
    SELECT r.day, r.scanner_software_version, r.agents FROM running r WHERE r.agents > 0
    ORDER BY r.day, r.scanner_software_version
$$;

-- The last 30 days of scan_agent_versions_per_day, for BI tools that only browse views;
-- longer periods through the function.
CREATE VIEW scan_agent_versions_daily AS
SELECT * FROM scan_agent_versions_per_day(current_date - 29, current_date);
