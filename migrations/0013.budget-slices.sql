-- depends: 0012.budget-alerts
-- Budget slices (app/llm/budgets.py): a worker may reserve more than a call needs -- a
-- slice of the budget -- and admit its next calls from the slice in hand, with no round
-- trip. llm_reserve grants a slice (p_slice_share of the tightest budget) only while at
-- least p_slice_floor of each budget would stay free beside it, so near the end of a
-- budget every call reserves exactly its own worst case again. A call's llm_calls row
-- charges its cost to the slice (it moves from reserved to spent); the worker releases
-- what is left of a slice it no longer uses. A slice is a reservation like any other: it
-- expires unless its worker extends it. (The four-argument llm_reserve of migration 0009
-- stays, for the workers of the release before, until they have stopped.)
CREATE FUNCTION llm_reserve(p_tenant uuid, p_key uuid, p_amount numeric, p_ttl_s double precision,
                            p_slice_share numeric, p_slice_floor numeric,
                            OUT reservation uuid, OUT refused_by text, OUT remaining_usd numeric,
                            OUT granted_usd numeric)
LANGUAGE plpgsql AS $$
DECLARE
    period date := llm_period_start();
    t_budget numeric;
    k_budget numeric;
    account uuid;
    t_left numeric;  -- before this call
    k_left numeric;
    extra numeric := 0;
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
    -- A slice: more than this call needs, while plenty stays free beside it.
    IF p_slice_share > 0 THEN
        extra := p_slice_share * least(t_budget, k_budget) - p_amount;
        IF extra > 0 AND (t_budget IS NULL OR t_left - p_amount - extra >= p_slice_floor * t_budget)
                     AND (k_budget IS NULL OR k_left - p_amount - extra >= p_slice_floor * k_budget) THEN
            IF t_budget IS NOT NULL THEN
                UPDATE tenant_spend SET reserved_usd = reserved_usd + extra
                    WHERE tenant_id = p_tenant AND period_start = period;
            END IF;
            IF account IS NOT NULL THEN
                UPDATE key_spend SET reserved_usd = reserved_usd + extra WHERE key_id = account AND period_start = period;
            END IF;
        ELSE
            extra := 0;
        END IF;
    END IF;
    granted_usd := p_amount + extra;
    INSERT INTO llm_reservations (tenant_id, tenant_held, key_id, period_start, amount_usd, expires_at)
        VALUES (p_tenant, t_budget IS NOT NULL, account, period, granted_usd, now() + make_interval(secs => p_ttl_s))
        RETURNING id INTO reservation;
    remaining_usd := greatest(least(t_left, k_left) - granted_usd, 0);
END;
$$;

-- Charge a settled call's cost to the slice it ran on: the amount moves from the slice
-- (and the spend rows' reserved) to spent. Nothing to move if the slice is gone (released
-- or expired): the cost is counted as spent all the same.
CREATE FUNCTION llm_charge(p_reservation uuid, p_cost numeric) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r llm_reservations;
    moved numeric;
BEGIN
    SELECT * INTO r FROM llm_reservations WHERE id = p_reservation FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    moved := least(r.amount_usd, p_cost);
    UPDATE llm_reservations SET amount_usd = amount_usd - moved WHERE id = p_reservation;
    IF r.tenant_held THEN
        UPDATE tenant_spend SET reserved_usd = greatest(reserved_usd - moved, 0)
            WHERE tenant_id = r.tenant_id AND period_start = r.period_start;
    END IF;
    IF r.key_id IS NOT NULL THEN
        UPDATE key_spend SET reserved_usd = greatest(reserved_usd - moved, 0)
            WHERE key_id = r.key_id AND period_start = r.period_start;
    END IF;
END;
$$;
