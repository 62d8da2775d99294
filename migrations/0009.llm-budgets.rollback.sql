DROP TRIGGER tenants_notify_auth_change ON tenants;
CREATE TRIGGER tenants_notify_auth_change
    AFTER DELETE OR UPDATE OF is_active ON tenants FOR EACH ROW EXECUTE FUNCTION notify_tenant_change();
DROP TRIGGER api_keys_notify_auth_change ON api_keys;
CREATE TRIGGER api_keys_notify_auth_change
    AFTER INSERT OR DELETE OR UPDATE OF key_hash, key_prefix, tenant_id, scopes, rate_limit_prep,
        rate_limit_check, is_active, expires_at
    ON api_keys FOR EACH ROW EXECUTE FUNCTION notify_api_key_change();
DROP FUNCTION llm_release_expired();
DROP FUNCTION llm_extend(uuid[], double precision);
DROP FUNCTION llm_settle(uuid, uuid, numeric, uuid);
DROP FUNCTION llm_release(uuid);
DROP FUNCTION llm_reserve(uuid, uuid, numeric, double precision);
DROP FUNCTION llm_key_account(uuid);
DROP FUNCTION llm_period_start();
DROP TABLE llm_reservations;
DROP TABLE key_spend;
DROP TABLE tenant_spend;
ALTER TABLE api_keys DROP COLUMN monthly_budget_usd;
ALTER TABLE tenants DROP COLUMN monthly_budget_usd;
