-- A steady list cycle (every agent reports in) wrote three rows per agent: its state row,
-- its time members in scan_agent_payload_times, and its new lastSeen value. And to learn
-- whether only the time members changed, it probed scan_agent_payloads for each agent whose
-- fingerprint differed. Measured on a 100k-agent cycle that was a third of PostgreSQL's
-- work (BENCHMARKS.md, "Big fleets"): the upsert of the time members a sixth, the probe as
-- much again.
--
-- Both move into the state row, which such a cycle rewrites anyway (HOT: no index holds
-- either column): the time members as received (`raw_times`, NULL for a payload stored
-- whole before migration 20261206000009), and the hash of the rest of the payload
-- (`payload_sha256`, equal to scan_agent_payloads.raw_sha256 after every batch), so the
-- engine sees from the state row alone that the stored payload is the fetched one.
ALTER TABLE scan_agent_state
    ADD COLUMN raw_times json,
    ADD COLUMN payload_sha256 bytea;

UPDATE scan_agent_state s
SET raw_times = t.raw_times, payload_sha256 = p.raw_sha256
FROM scan_agent_payloads p
LEFT JOIN scan_agent_payload_times t ON t.agent_id = p.agent_id
WHERE p.agent_id = s.agent_id;

-- The BI contract, unchanged: the same columns in the same order.
CREATE OR REPLACE VIEW scan_agents AS
SELECT s.agent_id,
       s.machine_id,
       s.computer_dns_name,
       s.assigned_application_id,
       s.scanner_software_version,
       s.mde_client_version,
       s.last_seen,
       s.last_command_execution_at,
       p.raw::jsonb || coalesce(s.raw_times::jsonb, '{}') AS raw,
       s.first_observed_at,
       s.last_fetched_at,
       s.last_changed_at,
       s.missing_since,
       s.tenant
FROM scan_agent_state s
LEFT JOIN scan_agent_payloads p ON p.agent_id = s.agent_id;

DROP TABLE scan_agent_payload_times;
