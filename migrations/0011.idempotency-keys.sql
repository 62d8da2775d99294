-- depends: 0010.key-rotation
-- Idempotency-Key (app/idempotency.py): per tenant and key, the fingerprint of the
-- request that claimed it and, once it succeeded, its answer; kept 24 hours. A claim
-- with no answer yet holds the key until claimed_until (its worker may have died).
CREATE TABLE idempotency_keys (
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key            text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint    bytea NOT NULL,
    status         smallint,
    headers        jsonb,
    body           bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    claimed_until  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
