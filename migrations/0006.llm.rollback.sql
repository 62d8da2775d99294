ALTER TABLE lessons DROP COLUMN pass_score;
DROP TABLE homework_attempts;
DROP TABLE tenant_llm_settings;
DROP TABLE llm_calls;
