-- The analyst views of 20261128000002 answer period questions from index ranges alone
-- (issue 5: well under a second on a million history rows). Same names, same columns, same
-- rows; docs/analysts.md lists the queries, the indexes they use and their timings.
--
-- Both rewrites rest on how the diff engine writes history: a change closes the agent's
-- current version and opens the next one at the same instant. So the changes at or after an
-- instant are the versions opened since then paired with the versions closed since then —
-- two index ranges — rather than one index probe per opened version for its predecessor,
-- and the agents per version at the end of a past day are the current ones minus the
-- versions opened after that day plus the versions closed after it. (The old changes view
-- took an arbitrary one of several versions closed at the same instant; the diff engine
-- never writes more than one, and for such histories both definitions give the same rows.)

-- Instants and scanner versions as index keys (not INCLUDE columns): the keys deduplicate
-- (a sync cycle stamps all its changes with one instant, and a fleet runs few versions), so
-- these indexes stay small, and the per-instant counts come from index-only scans in key
-- order. They replace the three indexes that served the old definitions (valid_from twice,
-- valid_to covering valid_from), so the diff engine maintains as many indexes as before.
CREATE INDEX scan_agent_versions_from_scanner_idx
    ON scan_agent_versions (valid_from, scanner_software_version);
CREATE INDEX scan_agent_versions_to_scanner_idx
    ON scan_agent_versions (valid_to, scanner_software_version) WHERE valid_to IS NOT NULL;
DROP INDEX IF EXISTS scan_agent_versions_valid_from_idx;
DROP INDEX IF EXISTS scan_agent_versions_from_cover_idx;
DROP INDEX IF EXISTS scan_agent_versions_valid_to_idx;
-- The census of current versions by scanner version, from the index alone.
CREATE INDEX scan_agent_versions_current_scanner_idx
    ON scan_agent_versions (scanner_software_version) WHERE valid_to IS NULL;

-- The changes of one descriptive attribute (`attribute` is one of the `field` values of
-- scan_agent_version_changes; any other name gives no rows). Each change pairs the version
-- opened at an instant with the version of the same agent closed at that instant, grouped
-- by (instant, agent): a filter on changed_at or agent_id reaches both sides as an index
-- range. The planner inlines this function into the calling query, so `attribute` is a
-- constant there and the CASE reads one column.
CREATE FUNCTION scan_agent_attribute_changes(attribute text)
RETURNS TABLE (agent_id text, field text, old_value text, new_value text, changed_at timestamptz,
               version_id bigint)
LANGUAGE sql STABLE
AS $$
    SELECT s.agent_id, attribute,
           max(a.value) FILTER (WHERE NOT s.opened),
           max(a.value) FILTER (WHERE s.opened),
           s.at,
           max(s.version_id) FILTER (WHERE s.opened)
    -- Current versions join the closed side with a NULL instant, at which nothing opened, so
    -- HAVING drops them (a WHERE valid_to IS NOT NULL would only add a subquery scan).
    FROM (
        SELECT v.agent_id, v.valid_from, true, v.version_id, v.machine_id, v.computer_dns_name,
               v.assigned_application_id, v.scanner_software_version, v.mde_client_version
        FROM scan_agent_versions v
        UNION ALL
        SELECT p.agent_id, p.valid_to, false, p.version_id, p.machine_id, p.computer_dns_name,
               p.assigned_application_id, p.scanner_software_version, p.mde_client_version
        FROM scan_agent_versions p
    ) AS s (agent_id, at, opened, version_id, machine_id, computer_dns_name,
            assigned_application_id, scanner_software_version, mde_client_version)
    CROSS JOIN LATERAL (SELECT CASE attribute
        WHEN 'scanner_software_version' THEN s.scanner_software_version
        WHEN 'mde_client_version' THEN s.mde_client_version
        WHEN 'computer_dns_name' THEN s.computer_dns_name
        WHEN 'machine_id' THEN s.machine_id
        WHEN 'assigned_application_id' THEN s.assigned_application_id
    END) AS a (value)
    GROUP BY s.at, s.agent_id
    -- A first version (nothing closed) and a version closed without a successor are not
    -- changes. (All conditions sit in HAVING, none in an outer WHERE: a query level without
    -- a WHERE is what lets the view's branches be flattened and the unused ones dropped.)
    HAVING max(s.version_id) FILTER (WHERE s.opened) IS NOT NULL
       AND max(s.version_id) FILTER (WHERE NOT s.opened) IS NOT NULL
       AND max(a.value) FILTER (WHERE NOT s.opened) IS DISTINCT FROM max(a.value) FILTER (WHERE s.opened)
$$;

-- One branch per attribute, its name written out as a constant so that a filter on `field`
-- leaves a single branch: the planner drops the others (two different constants compared)
-- before costing them, and each branch aggregates one attribute only. Unfiltered by field,
-- the five branches each read the same index ranges.
CREATE OR REPLACE VIEW scan_agent_version_changes AS
SELECT c.agent_id, 'scanner_software_version'::text AS field, c.old_value, c.new_value, c.changed_at, c.version_id
FROM scan_agent_attribute_changes('scanner_software_version') c
UNION ALL
SELECT c.agent_id, 'mde_client_version', c.old_value, c.new_value, c.changed_at, c.version_id
FROM scan_agent_attribute_changes('mde_client_version') c
UNION ALL
SELECT c.agent_id, 'computer_dns_name', c.old_value, c.new_value, c.changed_at, c.version_id
FROM scan_agent_attribute_changes('computer_dns_name') c
UNION ALL
SELECT c.agent_id, 'machine_id', c.old_value, c.new_value, c.changed_at, c.version_id
FROM scan_agent_attribute_changes('machine_id') c
UNION ALL
SELECT c.agent_id, 'assigned_application_id', c.old_value, c.new_value, c.changed_at, c.version_id
FROM scan_agent_attribute_changes('assigned_application_id') c;

-- Agents per scanner version at the end of each day from first_day to last_day (days in the
-- session time zone): a version valid at the end of day D opened before D + 1 and was not
-- closed before D + 1, so the count is today's count (current versions) minus the versions
-- opened after D plus those closed after D. Those are counted per instant from the two
-- index-only ranges since first_day + 1 (few distinct instants: one per sync cycle), and
-- only the per-instant totals are turned into days.
CREATE OR REPLACE FUNCTION scan_agent_versions_per_day(first_day date, last_day date)
RETURNS TABLE (day date, scanner_software_version text, agents bigint)
LANGUAGE sql STABLE
-- JIT compilation took longer than the query itself in measurements.
SET jit = off
AS $$
    WITH current_versions AS (
        SELECT s.scanner_software_version, count(*) AS agents
        FROM scan_agent_versions s
        WHERE s.valid_to IS NULL
        GROUP BY 1
    ),
    -- Per day after first_day and scanner version: versions opened minus versions closed.
    later AS (
        SELECT m.at::date AS day, m.scanner_software_version, sum(m.delta) AS delta
        FROM (
            SELECT s.valid_from, s.scanner_software_version, count(*)
            FROM scan_agent_versions s
            WHERE s.valid_from >= (first_day + 1)::timestamptz
            GROUP BY 1, 2
            UNION ALL
            SELECT s.valid_to, s.scanner_software_version, -count(*)
            FROM scan_agent_versions s
            WHERE s.valid_to >= (first_day + 1)::timestamptz
            GROUP BY 1, 2
        ) AS m (at, scanner_software_version, delta)
        GROUP BY 1, 2
    ),
    grid AS (
        SELECT d::date AS day, v.scanner_software_version
        FROM generate_series(first_day, last_day, interval '1 day') d
        CROSS JOIN (SELECT c.scanner_software_version FROM current_versions c
                    UNION
                    SELECT l.scanner_software_version FROM later l) v
    ),
    counted AS (
        SELECT g.day, g.scanner_software_version,
               (coalesce(min(c.agents), 0) - coalesce(sum(l.delta), 0))::bigint AS agents
        FROM grid g
        LEFT JOIN current_versions c
               ON c.scanner_software_version IS NOT DISTINCT FROM g.scanner_software_version
        LEFT JOIN later l
               ON l.scanner_software_version IS NOT DISTINCT FROM g.scanner_software_version
              AND l.day > g.day
        GROUP BY g.day, g.scanner_software_version
    )
    SELECT c.day, c.scanner_software_version, c.agents FROM counted c WHERE c.agents > 0
    ORDER BY c.day, c.scanner_software_version
$$;
