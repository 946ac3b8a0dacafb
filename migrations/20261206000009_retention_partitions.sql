-- Years of running (issue 15): bounded growth. PRODUCT.md, "Retention and bounded growth".
--
-- Measured at 100,000 agents in list mode, every lastSeen advancing (BENCHMARKS.md,
-- "Retention and growth"): a steady cycle adds a row per agent to scan_agent_last_seen and
-- rewrote every payload row, because lastSeen and lastCommandExecutionTimestamp inside the
-- payload change every time. The other tables grow by a few rows per cycle.
--
-- 1. scan_agent_last_seen, the one table that grows with every cycle, is partitioned by
--    week of last_seen, so the retention job drops whole weeks instead of deleting rows
--    one by one (a DELETE of 10M rows writes every one of them to the WAL and leaves the
--    space to VACUUM). Weeks: at 400 days of retention that is ~58 partitions, few enough
--    for the planner, and data is kept at most one week longer than configured.
--    The primary key (last_seen, agent_id) already includes the partition key, so the
--    engine's ON CONFLICT (agent_id, last_seen) keeps working unchanged.
--    A DEFAULT partition takes any row no weekly partition covers (an agent silent for a
--    year, seen on its first sync; a clock running ahead; the service stopped for longer
--    than the weeks created ahead), so an insert never fails for want of a partition. The
--    service creates weeks ahead and moves such rows out of the DEFAULT partition when it
--    creates the week that covers them (scan_agent_last_seen_add_week below).
--
-- Not partitioned, by measurement (BENCHMARKS.md): api_calls (the ledger) is pruned to
-- the longest rate window plus a margin, at most tens of thousands of rows, so a DELETE
-- by its called_at index stays in the milliseconds; sync_runs grows by ~100 rows a day;
-- scan_agent_version_history grows only when agents change (a fleet-wide upgrade is one
-- row per agent), and is kept forever by default; alert_outbox is small in steady state
-- (delivered rows are deleted) and its schema belongs to the alerting code.

ALTER TABLE scan_agent_last_seen RENAME TO scan_agent_last_seen_unpartitioned;
ALTER TABLE scan_agent_last_seen_unpartitioned
    RENAME CONSTRAINT scan_agent_last_seen_pkey TO scan_agent_last_seen_unpartitioned_pkey;
ALTER INDEX scan_agent_last_seen_agent_idx RENAME TO scan_agent_last_seen_unpartitioned_agent_idx;

-- Same columns, key and indexes as before (migration 0006), now per partition.
CREATE TABLE scan_agent_last_seen (
    agent_id    text NOT NULL,
    last_seen   timestamptz NOT NULL,
    observed_at timestamptz NOT NULL,
    PRIMARY KEY (last_seen, agent_id)
) PARTITION BY RANGE (last_seen);
CREATE INDEX scan_agent_last_seen_agent_idx ON scan_agent_last_seen USING hash (agent_id);
CREATE TABLE scan_agent_last_seen_default PARTITION OF scan_agent_last_seen DEFAULT;

-- Creates the partition of the week (Monday 00:00 UTC to the next) holding `at`, unless it
-- exists; true when it created it. Rows of that week in the DEFAULT partition move into it
-- first: PostgreSQL refuses a partition whose range the DEFAULT partition holds rows of.
-- Attached rather than created as a partition: ATTACH takes only a SHARE UPDATE EXCLUSIVE
-- lock on the parent (inserts continue), CREATE ... PARTITION OF an ACCESS EXCLUSIVE one.
-- The service calls it under the apply lock, so no insert races the move.
CREATE FUNCTION scan_agent_last_seen_add_week(at timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    week_start timestamptz := date_trunc('week', at, 'UTC');
    week_end   timestamptz := week_start + interval '7 days';
    name       text := 'scan_agent_last_seen_' || to_char(week_start AT TIME ZONE 'UTC', 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE scan_agent_last_seen)', name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM scan_agent_last_seen_default
                        WHERE last_seen >= %L AND last_seen < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved', week_start, week_end, name);
    EXECUTE format('ALTER TABLE scan_agent_last_seen ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   name, week_start, week_end);
    RETURN true;
END
$$;

-- A week for every week holding rows, and this week and the next four (the service keeps
-- that many ahead), then every row moves over and the count is checked.
SELECT scan_agent_last_seen_add_week(w)
FROM (SELECT DISTINCT date_trunc('week', last_seen, 'UTC') AS w FROM scan_agent_last_seen_unpartitioned
      UNION
      SELECT date_trunc('week', now(), 'UTC') + make_interval(weeks => n) FROM generate_series(0, 4) AS n) weeks
ORDER BY w;
INSERT INTO scan_agent_last_seen (agent_id, last_seen, observed_at)
SELECT agent_id, last_seen, observed_at FROM scan_agent_last_seen_unpartitioned;
DO $$
BEGIN
    IF (SELECT count(*) FROM scan_agent_last_seen) <> (SELECT count(*) FROM scan_agent_last_seen_unpartitioned) THEN
        RAISE EXCEPTION 'moving scan_agent_last_seen into partitions lost rows; nothing was changed';
    END IF;
END
$$;
DROP TABLE scan_agent_last_seen_unpartitioned;

-- What the retention job did last, per table: `check` reads it to look only inside the
-- retained horizon (an agent silent for longer than retention.last_seen keeps its state
-- row, while its last lastSeen row is gone), and prints it. One row per table, overwritten.
CREATE TABLE retention_runs (
    table_name   text PRIMARY KEY,
    -- Rows older than this may have been dropped; NULL: the table is kept forever.
    kept_from    timestamptz,
    last_run_at  timestamptz NOT NULL,
    deleted_rows bigint NOT NULL
);

-- 2. Write amplification: the payload's timestamps leave its row. `raw` in
-- scan_agent_payloads becomes the payload without its lastSeen and
-- lastCommandExecutionTimestamp members, which change every cycle; those members, as
-- received (the original strings), go to this narrow table. A steady cycle then rewrites
-- ~150-byte rows here instead of every ~600-byte payload row, and after each checkpoint
-- dirties (and writes whole to the WAL) a third of the pages. NULL raw_times: a payload
-- written before this migration, still whole in scan_agent_payloads until its next change.
CREATE TABLE scan_agent_payload_times (
    agent_id  text PRIMARY KEY,
    raw_times json NOT NULL
) WITH (fillfactor = 50);

-- The BI contract is unchanged: `raw` is the payload as received, the two parts merged
-- (jsonb has no member order, and the view returned jsonb before too). The LEFT JOINs on
-- primary keys let PostgreSQL skip both payload tables in queries that do not read raw.
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
       s.missing_since
FROM scan_agent_state s
LEFT JOIN scan_agent_payloads p ON p.agent_id = s.agent_id
LEFT JOIN scan_agent_payload_times t ON t.agent_id = s.agent_id;
