-- Immutable history (issue 2: a fleet-wide upgrade of 100k agents applied in ≤ 3 s).
--
-- Until now a change of attributes rewrote three rows per agent: the wide state row, the
-- current version row (closing it: valid_to sat in three indexes, so every close was a
-- non-HOT update writing five index entries) and a new version row (seven index entries).
-- Measured on 100k agents that was 2.7 s of the 7.5 s a fleet-wide upgrade took.
--
-- The layout of system-versioned temporal tables (SQL:2011; MariaDB and SQL Server keep
-- history this way) replaces it: the current version lives in the state row, which carries
-- its version_id and valid_from, and `scan_agent_version_history` holds closed versions
-- only, appended once when a version ends and never updated. `scan_agent_versions` becomes a
-- view over both with the same columns, so BI tools, docs/analysts.md and the invariants of
-- `scan-agent-sync check` read what they read before. "Exactly one current version per
-- agent" now holds by construction (one state row, one current version).
--
-- More changes keep each write cheap, all measured on that 100k-agent upgrade:
-- - `raw` moves to `scan_agent_payloads`: the state row shrinks from ~900 to ~330 bytes,
--   and a payload is rewritten in place without touching any index. It is kept as `json`
--   (the text as the engine serialized it, validated) and turned into jsonb by the
--   `scan_agents` view: building jsonb took 0.22 s of every 100k payloads written and
--   stores a quarter more bytes, while readers of raw are few and read few rows.
-- - With `raw` gone, the fetch stamp and the fingerprint return to the state row (migration
--   0003 moved them out of the wide row): the engine then writes each state row once per
--   cycle, the stamp and the new fingerprint with whatever else changed, instead of
--   updating a changed agent's fetch row twice (stamp, then fingerprint) and its state row
--   once: 0.25 s less per 100k changed agents, and fewer pages dirtied.
-- - The indexes on last_seen and scanner_software_version of the state table go, so that
--   stamping or rewriting a state row is a HOT update (no index entries): each cost an index
--   entry per changed agent, and what they served (stale agents, agents per scanner
--   version) is a scan of the now narrow table, tens of milliseconds for 100k agents.
-- - Lookups by agent in the history tables use hash indexes: a B-tree keyed by agent_id
--   takes each cycle's entries at random places across the whole index (every leaf page
--   dirtied and, after a checkpoint, written whole to the WAL); a hash index stores 4-byte
--   hash codes, a fraction of the pages, and serves the equality lookups (one agent's
--   history, a join on agent_id) as well: 0.3 s less per 100k versions, and as much per
--   100k lastSeen rows.

-- The analyst objects over the versions table are recreated on the new layout by the next
-- migration (the view would otherwise follow the rename to the history table).
DROP VIEW scan_agent_versions_daily;
DROP FUNCTION scan_agent_versions_per_day(date, date);
DROP VIEW scan_agent_version_changes;

-- Version IDs keep counting from where the identity column stopped; the state row takes
-- the next one when a version opens, and the history row keeps it when it closes.
CREATE SEQUENCE scan_agent_version_id_seq;
SELECT setval('scan_agent_version_id_seq', coalesce(max(version_id), 0) + 1, false)
FROM scan_agent_versions;

-- The current version moves into the state row.
ALTER TABLE scan_agent_state
    ADD COLUMN version_id bigint DEFAULT nextval('scan_agent_version_id_seq'),
    ADD COLUMN valid_from timestamptz;
UPDATE scan_agent_state s SET version_id = v.version_id, valid_from = v.valid_from
FROM scan_agent_versions v
WHERE v.agent_id = s.agent_id AND v.valid_to IS NULL;
-- An agent without a current version (`check` reports that as one_current_version) gets
-- one that starts where its history ends, so its history stays contiguous.
UPDATE scan_agent_state s
SET valid_from = coalesce((SELECT max(v.valid_to) FROM scan_agent_versions v WHERE v.agent_id = s.agent_id),
                          s.first_observed_at)
WHERE s.valid_from IS NULL;
ALTER TABLE scan_agent_state
    ALTER COLUMN version_id SET NOT NULL,
    ALTER COLUMN valid_from SET NOT NULL;
ALTER SEQUENCE scan_agent_version_id_seq OWNED BY scan_agent_state.version_id;

-- The stamp and the fingerprint move back into the state row (see above).
ALTER TABLE scan_agent_state
    ADD COLUMN last_fetched_at timestamptz,
    ADD COLUMN fingerprint bytea;
UPDATE scan_agent_state s SET last_fetched_at = f.last_fetched_at, fingerprint = f.fingerprint
FROM scan_agent_fetches f
WHERE f.agent_id = s.agent_id;
UPDATE scan_agent_state SET last_fetched_at = last_changed_at WHERE last_fetched_at IS NULL;
ALTER TABLE scan_agent_state ALTER COLUMN last_fetched_at SET NOT NULL;

-- Closed versions only, appended by the diff engine, never updated.
ALTER TABLE scan_agent_versions RENAME TO scan_agent_version_history;
DELETE FROM scan_agent_version_history WHERE valid_to IS NULL;
ALTER TABLE scan_agent_version_history
    ALTER COLUMN version_id DROP IDENTITY,
    ALTER COLUMN valid_to SET NOT NULL;
-- Current versions are in the state table now; the predecessor probe of the changes view
-- becomes a successor probe on (agent_id, valid_from) (next migration).
DROP INDEX scan_agent_versions_one_current;
DROP INDEX scan_agent_versions_current_scanner_idx;
DROP INDEX scan_agent_versions_to_agent_idx;
DROP INDEX scan_agent_versions_agent_from_idx;
CREATE INDEX scan_agent_version_history_agent_idx ON scan_agent_version_history USING hash (agent_id);

-- One row per (agent, lastSeen) as before, but keyed lastSeen first: a cycle's new values
-- are recent, so its entries go to the right edge of the index instead of next to each
-- agent's earlier values all over it. Lookups by agent use the hash index.
ALTER TABLE scan_agent_last_seen DROP CONSTRAINT scan_agent_last_seen_pkey;
ALTER TABLE scan_agent_last_seen ADD CONSTRAINT scan_agent_last_seen_pkey PRIMARY KEY (last_seen, agent_id);
CREATE INDEX scan_agent_last_seen_agent_idx ON scan_agent_last_seen USING hash (agent_id);
-- No query the service or docs/analysts.md run filters on observed_at, and a period of
-- lastSeen values is a range of the primary key now; the index cost an entry per new value.
DROP INDEX scan_agent_last_seen_observed_idx;

-- The payload as received, one row per agent, rewritten in place (HOT: only the primary key
-- is indexed, and the fillfactor leaves room for the new version on the same page) when the
-- agent's fingerprint says it differs.
CREATE TABLE scan_agent_payloads (
    agent_id   text PRIMARY KEY,
    raw        json NOT NULL,
    raw_sha256 bytea
) WITH (fillfactor = 50);
INSERT INTO scan_agent_payloads (agent_id, raw, raw_sha256)
SELECT agent_id, raw::json, raw_sha256 FROM scan_agent_state;

-- The BI contract, unchanged: the same columns in the same order, raw now from its table.
-- The LEFT JOIN on a primary key lets PostgreSQL skip the payload table in queries that do
-- not read raw.
CREATE OR REPLACE VIEW scan_agents AS
SELECT s.agent_id,
       s.machine_id,
       s.computer_dns_name,
       s.assigned_application_id,
       s.scanner_software_version,
       s.mde_client_version,
       s.last_seen,
       s.last_command_execution_at,
       p.raw::jsonb AS raw,
       s.first_observed_at,
       s.last_fetched_at,
       s.last_changed_at,
       s.missing_since
FROM scan_agent_state s
LEFT JOIN scan_agent_payloads p ON p.agent_id = s.agent_id;

DROP TABLE scan_agent_fetches;
ALTER TABLE scan_agent_state DROP COLUMN raw, DROP COLUMN raw_sha256;
DROP INDEX scan_agents_last_seen_idx;
DROP INDEX scan_agents_scanner_version_idx;

-- scan_agent_versions as it was: every version, valid over [valid_from, valid_to), the
-- current one (valid_to NULL) from the state row.
CREATE VIEW scan_agent_versions AS
SELECT h.version_id, h.agent_id, h.machine_id, h.computer_dns_name, h.assigned_application_id,
       h.scanner_software_version, h.mde_client_version, h.valid_from, h.valid_to
FROM scan_agent_version_history h
UNION ALL
SELECT s.version_id, s.agent_id, s.machine_id, s.computer_dns_name, s.assigned_application_id,
       s.scanner_software_version, s.mde_client_version, s.valid_from, NULL::timestamptz
FROM scan_agent_state s;

-- Room on each page for every row to be rewritten twice in one transaction (a cycle that
-- changes an agent stamps it, then rewrites it), while the space of the previous versions
-- cannot be reclaimed yet, so both stay HOT updates. The rewrite also leaves the dropped
-- columns behind.
ALTER TABLE scan_agent_state SET (fillfactor = 50);
CLUSTER scan_agent_state USING scan_agents_pkey;
ALTER TABLE scan_agent_state SET WITHOUT CLUSTER;
