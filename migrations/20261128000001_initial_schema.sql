-- The BI contract of PRODUCT.md ("Tables"), plus the constraints that keep history honest.

-- Current state: one row per tracked agent.
-- fillfactor leaves room on each page so the per-cycle `last_fetched_at` stamp is a HOT
-- update (no index writes) for the common case of an unchanged agent; for the same reason
-- last_fetched_at carries no index (ordering 100k rows by it takes milliseconds anyway).
CREATE TABLE scan_agents (
    agent_id                  text PRIMARY KEY,
    machine_id                text,
    computer_dns_name         text,
    assigned_application_id   text,
    scanner_software_version  text,
    mde_client_version        text,
    last_seen                 timestamptz NOT NULL,
    last_command_execution_at timestamptz,
    raw                       jsonb NOT NULL,
    first_observed_at         timestamptz NOT NULL,
    last_fetched_at           timestamptz NOT NULL,
    last_changed_at           timestamptz NOT NULL,
    missing_since             timestamptz
) WITH (fillfactor = 70);

CREATE INDEX scan_agents_last_seen_idx ON scan_agents (last_seen);
CREATE INDEX scan_agents_scanner_version_idx ON scan_agents (scanner_software_version);
CREATE INDEX scan_agents_missing_idx ON scan_agents (missing_since) WHERE missing_since IS NOT NULL;

-- History of descriptive attributes: one row per version, valid over [valid_from, valid_to).
CREATE TABLE scan_agent_versions (
    version_id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id                  text NOT NULL REFERENCES scan_agents (agent_id),
    machine_id                text,
    computer_dns_name         text,
    assigned_application_id   text,
    scanner_software_version  text,
    mde_client_version        text,
    valid_from                timestamptz NOT NULL,
    valid_to                  timestamptz,
    CONSTRAINT scan_agent_versions_valid_range CHECK (valid_to IS NULL OR valid_to >= valid_from)
);

-- Exactly one current version per agent: at most one by this index, at least one by the
-- diff engine, which opens a version in the same transaction that creates the agent.
CREATE UNIQUE INDEX scan_agent_versions_one_current ON scan_agent_versions (agent_id) WHERE valid_to IS NULL;
CREATE INDEX scan_agent_versions_agent_from_idx ON scan_agent_versions (agent_id, valid_from);
CREATE INDEX scan_agent_versions_valid_from_idx ON scan_agent_versions (valid_from);
CREATE INDEX scan_agent_versions_scanner_version_idx ON scan_agent_versions (scanner_software_version, valid_from);

-- Every distinct lastSeen value observed, once.
CREATE TABLE scan_agent_last_seen (
    agent_id    text NOT NULL REFERENCES scan_agents (agent_id),
    last_seen   timestamptz NOT NULL,
    observed_at timestamptz NOT NULL,
    PRIMARY KEY (agent_id, last_seen)
);
CREATE INDEX scan_agent_last_seen_observed_idx ON scan_agent_last_seen (observed_at);

CREATE TABLE sync_runs (
    run_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    status           text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'ok', 'partial', 'failed', 'interrupted')),
    mode             text NOT NULL,
    agents_requested integer NOT NULL DEFAULT 0,
    agents_fetched   integer NOT NULL DEFAULT 0,
    agents_new       integer NOT NULL DEFAULT 0,
    agents_changed   integer NOT NULL DEFAULT 0,
    agents_missing   integer NOT NULL DEFAULT 0,
    api_calls        integer NOT NULL DEFAULT 0,
    throttled        integer NOT NULL DEFAULT 0,
    list_pages       integer,
    error            text
);
CREATE INDEX sync_runs_started_at_idx ON sync_runs (started_at);

-- The rate-budget ledger. A row is written before its request is sent (status NULL until
-- the answer arrives), so every process sharing this database sees every call.
-- pause_until is set from a 429's Retry-After: no process sends before it passes.
CREATE TABLE api_calls (
    call_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    called_at   timestamptz NOT NULL,
    endpoint    text NOT NULL,
    status      smallint,
    pause_until timestamptz
);
CREATE INDEX api_calls_called_at_idx ON api_calls (called_at);
CREATE INDEX api_calls_pause_until_idx ON api_calls (pause_until) WHERE pause_until IS NOT NULL;

-- Settings the database-side logic needs (stale threshold for the view), written by the
-- service at start so the view agrees with the configuration.
CREATE TABLE service_settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO service_settings (name, value) VALUES ('stale_after', '24 hours');

-- Agents stale now: not seen for longer than stale.after, or missing.
CREATE VIEW stale_scan_agents AS
SELECT a.agent_id,
       a.computer_dns_name,
       a.last_seen,
       now() - a.last_seen AS stale_for,
       a.missing_since
FROM scan_agents a
CROSS JOIN (SELECT value::interval AS after FROM service_settings WHERE name = 'stale_after') s
WHERE a.missing_since IS NOT NULL
   OR a.last_seen < now() - s.after;
