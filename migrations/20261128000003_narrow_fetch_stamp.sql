-- The diff engine's hot path (issue 2): every sync cycle stamps every fetched agent, and
-- most agents are unchanged. On the wide current-state row (raw payload inline) that stamp
-- rewrote ~900-byte tuples, mostly as non-HOT updates (three indexes each), and took over a
-- second per 100k agents on its own. So the stamp moves to a narrow table, and
-- `scan_agents` becomes a view with exactly the BI contract's columns (PRODUCT.md
-- "Tables"), so readers, BI users and the views of migrations 0001/0002 see no difference.

-- The wide table keeps its data, indexes (names unchanged: docs/analysts.md cites them)
-- and the foreign key of stale_episodes; the views created on `scan_agents` in 0001 and
-- 0002 follow the rename, and use none of the columns that move.
ALTER TABLE scan_agents RENAME TO scan_agent_state;

-- One short row per agent, rewritten in place (HOT: no index holds the stamp, and the
-- fillfactor leaves room on the page) on every fetch. No foreign key: the engine, the only
-- writer, inserts it in the transaction that inserts the agent, and agents are never
-- deleted; a per-row check would cost more than the stamp itself.
CREATE TABLE scan_agent_fetches (
    agent_id        text PRIMARY KEY,
    last_fetched_at timestamptz NOT NULL
) WITH (fillfactor = 50);
INSERT INTO scan_agent_fetches (agent_id, last_fetched_at)
SELECT agent_id, last_fetched_at FROM scan_agent_state;
ALTER TABLE scan_agent_state DROP COLUMN last_fetched_at;

-- SHA-256 of the payload text as the engine serialized it, so an unchanged agent's `raw` is
-- compared without reading the jsonb back, and rewritten only when the payload differs.
-- NULL (rows written before this migration) means unknown: the next fetch rewrites `raw`.
ALTER TABLE scan_agent_state ADD COLUMN raw_sha256 bytea;

-- Each history row belongs to an agent the same transaction has just inserted or read
-- under the apply lock, and agents are never deleted, so the per-row foreign-key checks
-- (≈ 10 µs each, plus a row lock written on the parent: about 2 s of a 100k-agent upgrade)
-- protected nothing the engine does not already guarantee.
ALTER TABLE scan_agent_versions DROP CONSTRAINT scan_agent_versions_agent_id_fkey;
ALTER TABLE scan_agent_last_seen DROP CONSTRAINT scan_agent_last_seen_agent_id_fkey;

-- Same key as scan_agent_versions_from_cover_idx (valid_from INCLUDE
-- scanner_software_version), which serves every range on valid_from this one did.
DROP INDEX scan_agent_versions_valid_from_idx;

-- The BI contract, column for column and in the original order. LEFT JOIN on the fetch
-- table's primary key lets PostgreSQL drop the join from queries that do not read
-- last_fetched_at (counts, stale_scan_agents, the distribution view); every agent has its
-- fetch row, so the join never yields NULL.
CREATE VIEW scan_agents AS
SELECT s.agent_id,
       s.machine_id,
       s.computer_dns_name,
       s.assigned_application_id,
       s.scanner_software_version,
       s.mde_client_version,
       s.last_seen,
       s.last_command_execution_at,
       s.raw,
       s.first_observed_at,
       f.last_fetched_at,
       s.last_changed_at,
       s.missing_since
FROM scan_agent_state s
LEFT JOIN scan_agent_fetches f ON f.agent_id = s.agent_id;
