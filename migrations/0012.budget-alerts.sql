-- depends: 0011.idempotency-keys
-- Telegram messages to the operator about tenants' LLM budgets (app/llm/budget_alerts.py):
-- one row per tenant, month, budget and threshold, written once -- 80: the month's settled
-- spend passed 80 % of the budget (llm_settle sees the crossing); 100: it reached the
-- budget, or the budget refused a call (llm_budget_refused). Workers send the rows not
-- sent yet, leasing each while they try.
CREATE TABLE budget_alerts (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    period_start     date NOT NULL,
    budget_usd       numeric(14, 2) NOT NULL,
    threshold_pct    smallint NOT NULL CHECK (threshold_pct IN (80, 100)),
    spent_usd        numeric(14, 8) NOT NULL,   -- when it was written
    refused_usd      numeric(14, 8),            -- the worst case of the call refused (100 only)
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    PRIMARY KEY (tenant_id, period_start, budget_usd, threshold_pct)
);
CREATE INDEX budget_alerts_pending_idx ON budget_alerts (next_attempt_at) WHERE sent_at IS NULL;

CREATE OR REPLACE FUNCTION llm_settle(p_tenant uuid, p_key uuid, p_cost numeric, p_reservation uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    period date := llm_period_start();
    account uuid := llm_key_account(p_key);
    spent numeric;  -- the tenant's, with this call
    budget numeric;
BEGIN
    IF p_reservation IS NOT NULL THEN
        PERFORM llm_release(p_reservation);
    END IF;
    UPDATE tenant_spend SET spent_usd = spent_usd + p_cost, calls = calls + 1
        WHERE tenant_id = p_tenant AND period_start = period RETURNING spent_usd INTO spent;
    IF NOT FOUND THEN
        INSERT INTO tenant_spend AS s (tenant_id, period_start, spent_usd, calls) VALUES (p_tenant, period, p_cost, 1)
            ON CONFLICT (tenant_id, period_start)
            DO UPDATE SET spent_usd = s.spent_usd + EXCLUDED.spent_usd, calls = s.calls + 1
            RETURNING s.spent_usd INTO spent;
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
    IF p_cost > 0 THEN  -- did this call take the month's spend past a threshold of the budget?
        SELECT monthly_budget_usd INTO budget FROM tenants WHERE id = p_tenant;
        IF budget > 0 THEN
            INSERT INTO budget_alerts (tenant_id, period_start, budget_usd, threshold_pct, spent_usd)
                SELECT p_tenant, period, budget, pct, spent FROM unnest(ARRAY[80, 100]) AS pct
                WHERE spent - p_cost < budget * pct / 100 AND spent >= budget * pct / 100
                ON CONFLICT DO NOTHING;
        END IF;
    END IF;
END;
$$;

-- The tenant's budget refused a call whose worst case was p_needed: the budget is reached
-- (said once a month per budget, with what stood against it then).
CREATE FUNCTION llm_budget_refused(p_tenant uuid, p_needed numeric) RETURNS void LANGUAGE sql AS $$
    INSERT INTO budget_alerts (tenant_id, period_start, budget_usd, threshold_pct, spent_usd, refused_usd)
        SELECT t.id, llm_period_start(), t.monthly_budget_usd, 100, COALESCE(s.spent_usd, 0), p_needed
        FROM tenants t LEFT JOIN tenant_spend s ON s.tenant_id = t.id AND s.period_start = llm_period_start()
        WHERE t.id = p_tenant AND t.monthly_budget_usd IS NOT NULL
    ON CONFLICT DO NOTHING
$$;
