ALTER TABLE rate_limit_counters ALTER COLUMN allowed DROP DEFAULT, DROP COLUMN last_grant, DROP COLUMN lent;
DROP TRIGGER tenant_llm_settings_notify_auth_change ON tenant_llm_settings;
DROP FUNCTION notify_tenant_llm_change();
DROP TRIGGER tenants_notify_auth_change ON tenants;
DROP FUNCTION notify_tenant_change();
DROP TRIGGER api_keys_notify_auth_change ON api_keys;
DROP FUNCTION notify_api_key_change();
