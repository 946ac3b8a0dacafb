-- When each configured ID last answered 404, so a by-ID cycle counts a 404 as a fetch when
-- it orders the IDs (least recently fetched first, PRODUCT.md "Fetch modes"). Without it an
-- ID that answered 404 before it was ever stored has no stamp and a stored agent marked
-- missing keeps the stamp of its last 200: both went first in every cycle, and once a
-- tenant had met as many vanished IDs as one cycle's budget they took all of it. Now they
-- take their turn like the others: still asked once per rotation, so an agent that comes
-- back is found and un-marked.
--
-- Not `scan_agent_state.last_fetched_at`: BI reads it in `scan_agents` as when the agent's
-- data was last fetched, and a list cycle reads it as "listed since the cycle began"; and an
-- ID never stored has no state row. A cycle orders by the later of the two stamps.
--
-- Written in the transaction that records the 404s (the missing marks). A cycle starts by
-- deleting the rows of IDs no longer configured and of agents fetched since their 404 (a
-- later `last_fetched_at`: the agent is stored again), so the table holds about the
-- configured IDs whose last answer was a 404: small, and read by primary key.
CREATE TABLE scan_agent_not_found (
    tenant       text NOT NULL,
    agent_id     text NOT NULL,
    -- The database time of the batch that recorded the 404, as `last_fetched_at` is of a fetch.
    not_found_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, agent_id)
);
