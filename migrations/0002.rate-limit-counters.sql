-- depends: 0001.tenants-and-api-keys
-- Sliding-window counters, one row per key and scope, shared by every worker.
-- UNLOGGED: no WAL per request; after a crash the counters start empty, which
-- only ever forgets past requests (a restart of the app keeps them).
CREATE UNLOGGED TABLE rate_limit_counters (
    key_id        uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    scope         text NOT NULL CHECK (scope IN ('prep', 'check')),
    window_start  timestamptz NOT NULL,
    curr_count    integer NOT NULL,
    prev_count    integer NOT NULL,
    allowed       boolean NOT NULL,
    PRIMARY KEY (key_id, scope)
) WITH (fillfactor = 50);
