CREATE OR REPLACE FUNCTION llm_key_account(p_key uuid) RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT p_key
$$;
ALTER TABLE api_keys DROP COLUMN rotated_from, DROP COLUMN counts_as;
