-- depends: 0007.restore-drills
-- Every change that can alter what a worker caches about a key (app/keycache.py) sends a
-- NOTIFY on the channel course_supporter_auth, in the changing transaction: it reaches
-- the workers' listeners only if, and when, that transaction commits. The triggers fire
-- for any writer (the admin CLI, the API, an operator's psql), never for last_used_at.
-- Payloads: 'key:<sha256 of the key, hex>' and 'tenant:<tenant id>'.
CREATE FUNCTION notify_api_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('course_supporter_auth', 'key:' || encode(OLD.key_hash, 'hex'));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('course_supporter_auth', 'key:' || encode(NEW.key_hash, 'hex'));
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_notify_auth_change
    AFTER INSERT OR DELETE OR UPDATE OF key_hash, key_prefix, tenant_id, scopes, rate_limit_prep,
        rate_limit_check, is_active, expires_at
    ON api_keys FOR EACH ROW EXECUTE FUNCTION notify_api_key_change();

CREATE FUNCTION notify_tenant_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('course_supporter_auth', 'tenant:' || OLD.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenants_notify_auth_change
    AFTER DELETE OR UPDATE OF is_active ON tenants FOR EACH ROW EXECUTE FUNCTION notify_tenant_change();

CREATE FUNCTION notify_tenant_llm_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('course_supporter_auth', 'tenant:' || OLD.tenant_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('course_supporter_auth', 'tenant:' || NEW.tenant_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenant_llm_settings_notify_auth_change
    AFTER INSERT OR UPDATE OR DELETE ON tenant_llm_settings FOR EACH ROW EXECUTE FUNCTION notify_tenant_llm_change();

-- Rate-limit quota is leased to workers in slices (app/ratelimit.py): a window's count
-- includes slices not used yet; last_grant is the size of the slice a lease just took;
-- lent counts the current window's slices whose use has not been settled yet. The row
-- no longer records a last decision: the column `allowed` stays while the previous
-- release's workers may still write it (expand, then contract in a later release).
ALTER TABLE rate_limit_counters ALTER COLUMN allowed SET DEFAULT true,
    ADD COLUMN last_grant integer NOT NULL DEFAULT 0,
    ADD COLUMN lent integer NOT NULL DEFAULT 0;
