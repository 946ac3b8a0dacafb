-- Many tenants in one database (issue 13; PRODUCT.md, "Tenants"): every per-tenant row
-- carries its tenant's name, and what was there before belongs to the tenant of a
-- single-tenant configuration, `default`.
--
-- ADD COLUMN with a constant default rewrites no table: PostgreSQL keeps the default in
-- the catalog as the value of every existing row, so this migration takes seconds on a
-- populated database, whatever its size (the two indexes rebuilt below apart). The
-- default stays, so a writer that does not name a tenant (an older process during a
-- rolling upgrade, a hand-written INSERT) writes the single tenant's rows, as before.
--
-- Agent IDs stay the key (Defender IDs start with the tenant's organization GUID): the
-- primary keys do not change, and the diff engine refuses an agent that one tenant's API
-- returns while it is stored under another (store::apply), so an agent's tenant is set when
-- it is first stored and never changes. The history rows copy it from the state row.

-- The current state (and with it the current version); a tenant's agents are one filter
-- on this narrow table. No index: the per-tenant statements (missing agents, stored IDs,
-- fetch order, the census of the per-day function) scan the whole table already, and an
-- index would cost an entry for every new agent.
ALTER TABLE scan_agent_state ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE scan_agent_version_history ADD COLUMN tenant text NOT NULL DEFAULT 'default';
-- On the partitioned parent: reaches every partition, DEFAULT included, and the weeks
-- created later (scan_agent_last_seen_add_week copies the parent's columns with LIKE).
ALTER TABLE scan_agent_last_seen ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE sync_runs ADD COLUMN tenant text NOT NULL DEFAULT 'default';
-- The budget is per app registration and tenant: each tenant's ledger rows are its own.
ALTER TABLE api_calls ADD COLUMN tenant text NOT NULL DEFAULT 'default';
-- fleet_episodes has had its tenant since 20261206000008. stale_episodes and alert_outbox
-- are per agent, and an agent's tenant is its state row's.

-- The budget counts one tenant's calls in each window ("the calls-th most recent call of
-- this tenant after t") and reads its 429 pause on every slot it grants: both become
-- ranges of one tenant. They replace the indexes on called_at and pause_until rather than
-- adding to them, so the ledger keeps two indexes. What else read api_calls by called_at
-- (retention's prune, `check`'s window invariant) reads the whole small table anyway.
CREATE INDEX api_calls_tenant_called_at_idx ON api_calls (tenant, called_at);
CREATE INDEX api_calls_tenant_pause_until_idx ON api_calls (tenant, pause_until) WHERE pause_until IS NOT NULL;
DROP INDEX api_calls_called_at_idx;
DROP INDEX api_calls_pause_until_idx;

-- The per-day function counts closed versions per instant, scanner version and now tenant
-- from index-only ranges of these two: with the tenant outside them each counted version
-- would visit the table. Rebuilt with the tenant rather than joined by new indexes, so the
-- diff engine still writes four history indexes per closed version. In the first the
-- tenant is a key column, not INCLUDE: INCLUDE indexes are not deduplicated, and this one
-- stays small because its keys repeat (one instant per cycle, few versions, few tenants).
DROP INDEX scan_agent_versions_from_scanner_idx;
CREATE INDEX scan_agent_versions_from_scanner_idx
    ON scan_agent_version_history (valid_from, scanner_software_version, tenant);
DROP INDEX scan_agent_versions_to_agent_idx;
CREATE INDEX scan_agent_versions_to_agent_idx
    ON scan_agent_version_history (valid_to, agent_id) INCLUDE (scanner_software_version, tenant);
-- sync_runs gets no index: the last list size is the newest of a few rows read backwards
-- on the primary key, and closing abandoned runs happens once per leadership.

-- The views: every column as before, in the same order, and `tenant` last (PRODUCT.md:
-- existing names change only by addition). CREATE OR REPLACE VIEW may append columns, so
-- the views that depend on these keep working unchanged.
CREATE OR REPLACE VIEW scan_agents AS
SELECT s.agent_id,
       s.machine_id,
       s.computer_dns_name,
       s.assigned_application_id,
       s.scanner_software_version,
       s.mde_client_version,
       s.last_seen,
       s.last_command_execution_at,
       p.raw::jsonb || coalesce(t.raw_times::jsonb, '{}') AS raw,
       s.first_observed_at,
       s.last_fetched_at,
       s.last_changed_at,
       s.missing_since,
       s.tenant
FROM scan_agent_state s
LEFT JOIN scan_agent_payloads p ON p.agent_id = s.agent_id
LEFT JOIN scan_agent_payload_times t ON t.agent_id = s.agent_id;

CREATE OR REPLACE VIEW scan_agent_versions AS
SELECT h.version_id, h.agent_id, h.machine_id, h.computer_dns_name, h.assigned_application_id,
       h.scanner_software_version, h.mde_client_version, h.valid_from, h.valid_to, h.tenant
FROM scan_agent_version_history h
UNION ALL
SELECT s.version_id, s.agent_id, s.machine_id, s.computer_dns_name, s.assigned_application_id,
       s.scanner_software_version, s.mde_client_version, s.valid_from, NULL::timestamptz, s.tenant
FROM scan_agent_state s;

CREATE OR REPLACE VIEW stale_scan_agents AS
SELECT a.agent_id,
       a.computer_dns_name,
       a.last_seen,
       now() - a.last_seen AS stale_for,
       a.missing_since,
       a.tenant
FROM scan_agents a
CROSS JOIN (SELECT value::interval AS after FROM service_settings WHERE name = 'stale_after') s
WHERE a.missing_since IS NOT NULL
   OR a.last_seen < now() - s.after;

-- Per tenant and scanner version; `percent` is the share of the tenant's agents, so a
-- single-tenant database reads what it read before and a tenant filter reads one fleet.
CREATE OR REPLACE VIEW scan_agent_version_distribution AS
SELECT scanner_software_version,
       count(*) AS agents,
       count(*) FILTER (WHERE missing_since IS NOT NULL) AS missing_agents,
       round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY tenant), 1) AS percent,
       min(last_seen) AS oldest_last_seen,
       max(last_seen) AS newest_last_seen,
       tenant
FROM scan_agents
GROUP BY tenant, scanner_software_version;

-- As in 20261128000007, with the version's tenant (its predecessor, of the same agent, has
-- the same one).
CREATE OR REPLACE VIEW scan_agent_version_changes AS
SELECT v.agent_id, c.field, c.old_value, c.new_value, v.valid_from AS changed_at, c.version_id, v.tenant
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

-- The per-day function of 20261128000007, counting per tenant: a function's result columns
-- cannot be replaced, so it and the view over it are dropped and created again. The
-- optional third argument counts one tenant only; a SQL function with a SET clause is not
-- inlined, so a tenant filter on the result would count every tenant first. Called with
-- two arguments it answers what it answered before, plus the tenant column.
DROP VIEW scan_agent_versions_daily;
DROP FUNCTION scan_agent_versions_per_day(date, date);
CREATE FUNCTION scan_agent_versions_per_day(first_day date, last_day date, of_tenant text DEFAULT NULL)
RETURNS TABLE (day date, scanner_software_version text, agents bigint, tenant text)
LANGUAGE sql STABLE
-- JIT compilation took longer than the query itself in measurements.
SET jit = off
AS $$
    WITH current_versions AS (
        -- Per tenant and scanner version, the current versions opened before first_day + 1
        -- (opened_at NULL) and those opened since, per instant.
        SELECT s.tenant, s.scanner_software_version,
               CASE WHEN s.valid_from >= (first_day + 1)::timestamptz THEN s.valid_from END AS opened_at,
               count(*) AS agents
        FROM scan_agent_state s
        WHERE of_tenant IS NULL OR s.tenant = of_tenant
        GROUP BY 1, 2, 3
    ),
    today AS (
        SELECT c.tenant, c.scanner_software_version, sum(c.agents) AS agents
        FROM current_versions c
        GROUP BY 1, 2
    ),
    -- Per day after first_day, tenant and scanner version: versions opened minus closed.
    later AS (
        SELECT m.at::date AS day, m.tenant, m.scanner_software_version, sum(m.delta) AS delta
        FROM (
            SELECT c.opened_at, c.tenant, c.scanner_software_version, c.agents
            FROM current_versions c
            WHERE c.opened_at IS NOT NULL
            UNION ALL
            SELECT h.valid_from, h.tenant, h.scanner_software_version, count(*)
            FROM scan_agent_version_history h
            WHERE h.valid_from >= (first_day + 1)::timestamptz AND (of_tenant IS NULL OR h.tenant = of_tenant)
            GROUP BY 1, 2, 3
            UNION ALL
            SELECT h.valid_to, h.tenant, h.scanner_software_version, -count(*)
            FROM scan_agent_version_history h
            WHERE h.valid_to >= (first_day + 1)::timestamptz AND (of_tenant IS NULL OR h.tenant = of_tenant)
            GROUP BY 1, 2, 3
        ) AS m (at, tenant, scanner_software_version, delta)
        GROUP BY 1, 2, 3
    ),
    grid AS (
        SELECT d::date AS day, v.tenant, v.scanner_software_version
        FROM generate_series(first_day, last_day, interval '1 day') d
        CROSS JOIN (SELECT t.tenant, t.scanner_software_version FROM today t
                    UNION
                    SELECT l.tenant, l.scanner_software_version FROM later l) v
    ),
    counted AS (
        SELECT g.day, g.tenant, g.scanner_software_version,
               (coalesce(min(t.agents), 0) - coalesce(sum(l.delta), 0))::bigint AS agents
        FROM grid g
        LEFT JOIN today t
               ON t.tenant = g.tenant
              AND t.scanner_software_version IS NOT DISTINCT FROM g.scanner_software_version
        LEFT JOIN later l
               ON l.tenant = g.tenant
              AND l.scanner_software_version IS NOT DISTINCT FROM g.scanner_software_version
              AND l.day > g.day
        GROUP BY g.day, g.tenant, g.scanner_software_version
    )
    SELECT c.day, c.scanner_software_version, c.agents, c.tenant FROM counted c WHERE c.agents > 0
    ORDER BY c.day, c.tenant, c.scanner_software_version
$$;

-- The last 30 days of scan_agent_versions_per_day, every tenant, as before.
CREATE VIEW scan_agent_versions_daily AS
SELECT * FROM scan_agent_versions_per_day(current_date - 29, current_date);
