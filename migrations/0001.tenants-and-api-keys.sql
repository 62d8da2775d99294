-- Tenants and their API keys. Only the SHA-256 of a key is stored.
CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_hash          bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    key_prefix        text NOT NULL,
    label             text NOT NULL DEFAULT '',
    scopes            text[] NOT NULL
                      CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['prep', 'check']),
    rate_limit_prep   integer NOT NULL CHECK (rate_limit_prep >= 0),
    rate_limit_check  integer NOT NULL CHECK (rate_limit_check >= 0),
    is_active         boolean NOT NULL DEFAULT true,
    expires_at        timestamptz,
    last_used_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);
