DROP FUNCTION llm_budget_refused(uuid, numeric);
DROP TABLE budget_alerts;
-- llm_settle as migration 0009 made it
CREATE OR REPLACE FUNCTION llm_settle(p_tenant uuid, p_key uuid, p_cost numeric, p_reservation uuid) RETURNS void
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
