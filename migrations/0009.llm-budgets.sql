-- depends: 0008.auth-change-notifications
-- Monthly LLM spend limits (USD, calendar months in UTC) per tenant and per key, and
-- what stands against them (app/llm/budgets.py): per month the settled spend and the
-- reservations of calls still running. A call with a budget over it first reserves its
-- worst case (llm_reserve: checked and taken under the spend rows' locks, so concurrent
-- calls cannot pass a budget together); its llm_calls row settles it (llm_settle, in
-- the same transaction as the row): the reservation goes, the real cost stays. A
-- reservation whose call's worker died expires (llm_release_expired); live workers
-- extend theirs while the call runs.
ALTER TABLE tenants ADD COLUMN monthly_budget_usd numeric(14, 2) CHECK (monthly_budget_usd >= 0);
ALTER TABLE api_keys ADD COLUMN monthly_budget_usd numeric(14, 2) CHECK (monthly_budget_usd >= 0);

CREATE TABLE tenant_spend (
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    period_start  date NOT NULL,
    spent_usd     numeric(14, 8) NOT NULL DEFAULT 0,
    reserved_usd  numeric(14, 8) NOT NULL DEFAULT 0 CHECK (reserved_usd >= 0),
    calls         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, period_start)
);

CREATE TABLE key_spend (
    key_id        uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    period_start  date NOT NULL,
    spent_usd     numeric(14, 8) NOT NULL DEFAULT 0,
    reserved_usd  numeric(14, 8) NOT NULL DEFAULT 0 CHECK (reserved_usd >= 0),
    calls         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period_start)
);

CREATE TABLE llm_reservations (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    tenant_held   boolean NOT NULL,  -- the amount is held in tenant_spend (the tenant has a budget)
    key_id        uuid REFERENCES api_keys (id) ON DELETE CASCADE,  -- held in this key account's key_spend
    period_start  date NOT NULL,
    amount_usd    numeric(14, 8) NOT NULL CHECK (amount_usd >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX llm_reservations_expiry_idx ON llm_reservations (expires_at);

CREATE FUNCTION llm_period_start() RETURNS date LANGUAGE sql STABLE AS $$
    SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date
$$;

-- The key whose key_spend rows a key's calls count in: its own.
CREATE FUNCTION llm_key_account(p_key uuid) RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT p_key
$$;

-- Reserve amount for one call of the key's tenant, if it fits the tenant's budget and the
-- key's (each: null = none; a budget that is none holds nothing). Returns the reservation's
-- id (null when refused), which budget refused it ('tenant' or 'key'; null when it fits)
-- and what remains of the tightest budget after it. Locks the tenant's spend row, then the
-- key's. Committed without waiting for the disk: a reservation lost in a database crash
-- takes its amount with it, and its call's settlement then finds nothing to release.
CREATE FUNCTION llm_reserve(p_tenant uuid, p_key uuid, p_amount numeric, p_ttl_s double precision,
                            OUT reservation uuid, OUT refused_by text, OUT remaining_usd numeric)
LANGUAGE plpgsql AS $$
DECLARE
    period date := llm_period_start();
    t_budget numeric;
    k_budget numeric;
    account uuid;
    t_left numeric;  -- before this call
    k_left numeric;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT t.monthly_budget_usd, k.monthly_budget_usd INTO t_budget, k_budget
        FROM tenants t LEFT JOIN api_keys k ON k.id = p_key WHERE t.id = p_tenant;
    IF t_budget IS NOT NULL THEN
        UPDATE tenant_spend SET reserved_usd = reserved_usd + p_amount
            WHERE tenant_id = p_tenant AND period_start = period
            RETURNING t_budget - spent_usd - reserved_usd + p_amount INTO t_left;
        IF NOT FOUND THEN
            INSERT INTO tenant_spend AS s (tenant_id, period_start, reserved_usd) VALUES (p_tenant, period, p_amount)
                ON CONFLICT (tenant_id, period_start) DO UPDATE SET reserved_usd = s.reserved_usd + EXCLUDED.reserved_usd
                RETURNING t_budget - s.spent_usd - s.reserved_usd + p_amount INTO t_left;
        END IF;
    END IF;
    IF k_budget IS NOT NULL THEN
        account := llm_key_account(p_key);
        UPDATE key_spend SET reserved_usd = reserved_usd + p_amount
            WHERE key_id = account AND period_start = period
            RETURNING k_budget - spent_usd - reserved_usd + p_amount INTO k_left;
        IF NOT FOUND THEN
            INSERT INTO key_spend AS s (key_id, period_start, reserved_usd) VALUES (account, period, p_amount)
                ON CONFLICT (key_id, period_start) DO UPDATE SET reserved_usd = s.reserved_usd + EXCLUDED.reserved_usd
                RETURNING k_budget - s.spent_usd - s.reserved_usd + p_amount INTO k_left;
        END IF;
    END IF;
    IF t_left IS NOT NULL AND p_amount > t_left THEN
        refused_by := 'tenant';
    ELSIF k_left IS NOT NULL AND p_amount > k_left THEN
        refused_by := 'key';
    END IF;
    IF refused_by IS NOT NULL THEN  -- take back what was added above (the rows stay locked)
        IF t_budget IS NOT NULL THEN
            UPDATE tenant_spend SET reserved_usd = reserved_usd - p_amount
                WHERE tenant_id = p_tenant AND period_start = period;
        END IF;
        IF account IS NOT NULL THEN
            UPDATE key_spend SET reserved_usd = reserved_usd - p_amount WHERE key_id = account AND period_start = period;
        END IF;
        remaining_usd := greatest(least(t_left, k_left), 0);
        RETURN;
    END IF;
    INSERT INTO llm_reservations (tenant_id, tenant_held, key_id, period_start, amount_usd, expires_at)
        VALUES (p_tenant, t_budget IS NOT NULL, account, period, p_amount, now() + make_interval(secs => p_ttl_s))
        RETURNING id INTO reservation;
    remaining_usd := greatest(least(t_left, k_left) - p_amount, 0);
END;
$$;

-- Give a reservation's amount back (if it is still there: it may have expired); the
-- reservation as it was, or null.
CREATE FUNCTION llm_release(p_reservation uuid) RETURNS llm_reservations LANGUAGE plpgsql AS $$
DECLARE
    r llm_reservations;
BEGIN
    DELETE FROM llm_reservations WHERE id = p_reservation RETURNING * INTO r;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF r.tenant_held THEN
        UPDATE tenant_spend SET reserved_usd = greatest(reserved_usd - r.amount_usd, 0)
            WHERE tenant_id = r.tenant_id AND period_start = r.period_start;
    END IF;
    IF r.key_id IS NOT NULL THEN
        UPDATE key_spend SET reserved_usd = greatest(reserved_usd - r.amount_usd, 0)
            WHERE key_id = r.key_id AND period_start = r.period_start;
    END IF;
    RETURN r;
END;
$$;

-- Count one recorded call's cost in this month's spend, and release its reservation
-- (first: every function takes a reservation's row before the spend rows, tenant's
-- before key's, so that none waits for another in a circle).
CREATE FUNCTION llm_settle(p_tenant uuid, p_key uuid, p_cost numeric, p_reservation uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    period date := llm_period_start();
    account uuid := llm_key_account(p_key);
BEGIN
    IF p_reservation IS NOT NULL THEN
        PERFORM llm_release(p_reservation);
    END IF;
    UPDATE tenant_spend SET spent_usd = spent_usd + p_cost, calls = calls + 1
        WHERE tenant_id = p_tenant AND period_start = period;
    IF NOT FOUND THEN
        INSERT INTO tenant_spend AS s (tenant_id, period_start, spent_usd, calls) VALUES (p_tenant, period, p_cost, 1)
            ON CONFLICT (tenant_id, period_start)
            DO UPDATE SET spent_usd = s.spent_usd + EXCLUDED.spent_usd, calls = s.calls + 1;
    END IF;
    IF account IS NOT NULL THEN
        UPDATE key_spend SET spent_usd = spent_usd + p_cost, calls = calls + 1
            WHERE key_id = account AND period_start = period;
        IF NOT FOUND THEN
            INSERT INTO key_spend AS s (key_id, period_start, spent_usd, calls) VALUES (account, period, p_cost, 1)
                ON CONFLICT (key_id, period_start)
                DO UPDATE SET spent_usd = s.spent_usd + EXCLUDED.spent_usd, calls = s.calls + 1;
        END IF;
    END IF;
END;
$$;

-- Keep the reservations of calls still running from expiring.
CREATE FUNCTION llm_extend(p_reservations uuid[], p_ttl_s double precision) RETURNS void LANGUAGE sql AS $$
    UPDATE llm_reservations SET expires_at = now() + make_interval(secs => p_ttl_s) WHERE id = ANY (p_reservations)
$$;

-- Release the reservations nobody extended in time (their worker died mid-call); what
-- was released, for the log.
CREATE FUNCTION llm_release_expired()
RETURNS TABLE (reservation uuid, tenant_id uuid, key_id uuid, amount_usd numeric, created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    r llm_reservations;
BEGIN
    FOR r IN SELECT * FROM llm_reservations l WHERE l.expires_at < now() FOR UPDATE SKIP LOCKED LOOP
        PERFORM llm_release(r.id);
        reservation := r.id; tenant_id := r.tenant_id; key_id := r.key_id; amount_usd := r.amount_usd;
        created_at := r.created_at;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- This month's spend so far (the calls recorded before the counters existed).
INSERT INTO tenant_spend (tenant_id, period_start, spent_usd, calls)
    SELECT tenant_id, llm_period_start(), sum(cost_usd), count(*) FROM llm_calls
    WHERE created_at >= llm_period_start()::timestamp AT TIME ZONE 'UTC' GROUP BY tenant_id;
INSERT INTO key_spend (key_id, period_start, spent_usd, calls)
    SELECT key_id, llm_period_start(), sum(cost_usd), count(*) FROM llm_calls
    WHERE key_id IS NOT NULL AND created_at >= llm_period_start()::timestamp AT TIME ZONE 'UTC' GROUP BY key_id;

-- Keep a budget change from being missed by a worker's key cache: whether a key's calls
-- need a reservation is cached with the key (app/keycache.py).
DROP TRIGGER api_keys_notify_auth_change ON api_keys;
CREATE TRIGGER api_keys_notify_auth_change
    AFTER INSERT OR DELETE OR UPDATE OF key_hash, key_prefix, tenant_id, scopes, rate_limit_prep,
        rate_limit_check, is_active, expires_at, monthly_budget_usd
    ON api_keys FOR EACH ROW EXECUTE FUNCTION notify_api_key_change();
DROP TRIGGER tenants_notify_auth_change ON tenants;
CREATE TRIGGER tenants_notify_auth_change
    AFTER DELETE OR UPDATE OF is_active, monthly_budget_usd ON tenants FOR EACH ROW EXECUTE FUNCTION notify_tenant_change();
