-- The analyst objects that migration 0006 dropped, recreated on its layout (current version
-- in scan_agent_state, closed versions in scan_agent_version_history): same names, same
-- columns and types, same rows as 20261128000004 defined them (tests/analyst_views.rs).
-- docs/analysts.md lists the queries, the indexes they use and their timings.
--
-- Both rest on how the diff engine writes history: a change closes the agent's current
-- version and opens the next one at the same instant, and versions have a positive length
-- (store::invariants). So the version before a version is the closed version of the same
-- agent whose valid_to equals its valid_from, there is at most one, and it is always in the
-- history table (a current version is nobody's predecessor).

-- The predecessor probe of the changes view: (closing instant, agent), instant first, so the
-- probes of a period share the few leaf pages of its instants (one per sync cycle), as
-- scan_agent_versions_to_agent_idx did before 0006. Without it the fastest form found
-- (probing each closed version's successor through an index keyed by agent, so each probe
-- lands on a random leaf page) took 2.5-3 times as long as
-- before 0006 for a week of changes: 460-570 ms on the bench's million versions.
-- It replaces scan_agent_versions_to_scanner_idx, so the history keeps four indexes: the
-- INCLUDE column lets the per-day function count closed versions from this index alone.
-- For the diff engine, which writes every history index on each version it closes, this
-- is the dearest of the four: in its benchmark (100k agents upgraded in one batch) the
-- closing INSERT took 0.64 s with it and 0.38 s without (a cycle's entries share one
-- instant but arrive in random agent order), against twice the time for a week of changes
-- without it. Kept: the analyst queries are the reason the history is kept.
-- The price is paid by the per-day function: it hashes (instant, scanner version) pairs
-- read from this wider index instead of reading them in order from the deduplicated one,
-- 90-155 ms instead of 65-95 ms for 90 days on the bench (docs/analysts.md, "Measured").
--
-- Measured and not taken: driving from each closed version and probing its successor (in
-- the history, else the agent's state row) needs an index on (valid_from, agent_id) for the
-- same locality, and the state row probe, a random page, then costs most of last week's
-- changes (their successors are current versions): 20-40% slower than this view for a week,
-- 25% faster for a period a month ago.
CREATE INDEX scan_agent_versions_to_agent_idx
    ON scan_agent_version_history (valid_to, agent_id) INCLUDE (scanner_software_version);
DROP INDEX scan_agent_versions_to_scanner_idx;

-- Every change of a descriptive attribute: each version v (closed, or current from the state
-- row) paired with its predecessor p, one row per attribute that differs (a UNION ALL of
-- one-row selects: 10-20% faster than a VALUES list filtered afterwards, measured for
-- 0004). scan_agent_versions is a UNION ALL of two plain selects, so PostgreSQL flattens it
-- and this view into the calling query: a filter on changed_at, a filter on agent_id or a
-- join on agent_id reaches each of its two tables separately, as a range of
-- scan_agent_versions_from_scanner_idx or a seq scan of the narrow state table (changed_at),
-- as a probe of scan_agent_version_history_agent_idx (hash) and of the state's primary key
-- (agent_id), and each version found then probes scan_agent_versions_to_agent_idx once for
-- its predecessor, whatever the number of attributes asked for. Two details keep the
-- planner on that plan, as in 0004:
-- - LIMIT 1 keeps the predecessor a per-version probe: as a plain join the planner
--   underestimates how many pairs match and hashes the whole history instead (measured
--   again on this layout: 410-490 ms instead of 180-200 ms for last week's upgrades).
-- - The predecessor test and the attribute rows reference v.version_id (the test is true
--   anyway, a version not being its own predecessor): a unique value in each lookup keeps
--   the planner from caching the lookups (Memoize), with no hits. On the old layout it did
--   so at a third of the query's time; on this one it was not seen to, and the reference
--   stays as a guard, since that choice follows the statistics.
CREATE VIEW scan_agent_version_changes AS
SELECT v.agent_id, c.field, c.old_value, c.new_value, v.valid_from AS changed_at, c.version_id
FROM scan_agent_versions v
CROSS JOIN LATERAL (
    SELECT p.* FROM scan_agent_version_history p
    WHERE p.valid_to = v.valid_from AND p.agent_id = v.agent_id AND p.version_id <> v.version_id
    LIMIT 1
) p
CROSS JOIN LATERAL (
    SELECT 'scanner_software_version', p.scanner_software_version, v.scanner_software_version, v.version_id
    WHERE p.scanner_software_version IS DISTINCT FROM v.scanner_software_version
    UNION ALL
    SELECT 'mde_client_version', p.mde_client_version, v.mde_client_version, v.version_id
    WHERE p.mde_client_version IS DISTINCT FROM v.mde_client_version
    UNION ALL
    SELECT 'computer_dns_name', p.computer_dns_name, v.computer_dns_name, v.version_id
    WHERE p.computer_dns_name IS DISTINCT FROM v.computer_dns_name
    UNION ALL
    SELECT 'machine_id', p.machine_id, v.machine_id, v.version_id
    WHERE p.machine_id IS DISTINCT FROM v.machine_id
    UNION ALL
    SELECT 'assigned_application_id', p.assigned_application_id, v.assigned_application_id, v.version_id
    WHERE p.assigned_application_id IS DISTINCT FROM v.assigned_application_id
) AS c (field, old_value, new_value, version_id);

-- Agents per scanner version at the end of each day from first_day to last_day (days in the
-- session time zone): a version valid at the end of day D opened before D + 1 and was not
-- closed before D + 1, so the count is today's count (the current versions) minus the
-- versions opened after D plus those closed after D. Today's count and the current versions
-- opened since first_day + 1 come from one scan of the state table (narrow, one row per
-- agent: the scan is what the census costs with the current version in the state row, and
-- an index on the state's scanner version or valid_from would make every change of an agent
-- a non-HOT update for the diff engine). The closed versions opened and closed since
-- first_day + 1 are counted per instant from index-only ranges of
-- scan_agent_versions_from_scanner_idx and scan_agent_versions_to_agent_idx (few distinct
-- instants: one per sync cycle), and only the per-instant totals are turned into days.
CREATE FUNCTION scan_agent_versions_per_day(first_day date, last_day date)
RETURNS TABLE (day date, scanner_software_version text, agents bigint)
LANGUAGE sql STABLE
-- JIT compilation took longer than the query itself in measurements.
SET jit = off
AS $$
    WITH current_versions AS (
        -- Per scanner version, the current versions opened before first_day + 1 (opened_at
        -- NULL) and those opened since, per instant.
        SELECT s.scanner_software_version,
               CASE WHEN s.valid_from >= (first_day + 1)::timestamptz THEN s.valid_from END AS opened_at,
               count(*) AS agents
        FROM scan_agent_state s
        GROUP BY 1, 2
    ),
    today AS (
        SELECT c.scanner_software_version, sum(c.agents) AS agents
        FROM current_versions c
        GROUP BY 1
    ),
    -- Per day after first_day and scanner version: versions opened minus versions closed.
    later AS (
        SELECT m.at::date AS day, m.scanner_software_version, sum(m.delta) AS delta
        FROM (
            SELECT c.opened_at, c.scanner_software_version, c.agents
            FROM current_versions c
            WHERE c.opened_at IS NOT NULL
            UNION ALL
            SELECT h.valid_from, h.scanner_software_version, count(*)
            FROM scan_agent_version_history h
            WHERE h.valid_from >= (first_day + 1)::timestamptz
            GROUP BY 1, 2
            UNION ALL
            SELECT h.valid_to, h.scanner_software_version, -count(*)
            FROM scan_agent_version_history h
            WHERE h.valid_to >= (first_day + 1)::timestamptz
            GROUP BY 1, 2
        ) AS m (at, scanner_software_version, delta)
        GROUP BY 1, 2
    ),
    grid AS (
        SELECT d::date AS day, v.scanner_software_version
        FROM generate_series(first_day, last_day, interval '1 day') d
        CROSS JOIN (SELECT t.scanner_software_version FROM today t
                    UNION
                    SELECT l.scanner_software_version FROM later l) v
    ),
    counted AS (
        SELECT g.day, g.scanner_software_version,
               (coalesce(min(t.agents), 0) - coalesce(sum(l.delta), 0))::bigint AS agents
        FROM grid g
        LEFT JOIN today t
               ON t.scanner_software_version IS NOT DISTINCT FROM g.scanner_software_version
        LEFT JOIN later l
               ON l.scanner_software_version IS NOT DISTINCT FROM g.scanner_software_version
              AND l.day > g.day
        GROUP BY g.day, g.scanner_software_version
    )
    SELECT c.day, c.scanner_software_version, c.agents FROM counted c WHERE c.agents > 0
    ORDER BY c.day, c.scanner_software_version
$$;

-- The last 30 days of scan_agent_versions_per_day, for BI tools that only browse views;
-- longer periods through the function.
CREATE VIEW scan_agent_versions_daily AS
SELECT * FROM scan_agent_versions_per_day(current_date - 29, current_date);
