-- depends: 0009.llm-budgets
-- Key rotation with an overlap (`key rotate`): the new key counts its requests in the
-- rate-limit counters of the key it replaces, and its LLM spend in that key's account
-- (key_spend), so that both keys of an overlap share one limit and one key budget.
-- counts_as: the first key of the line (null: the key itself); rotated_from: the key
-- this one replaced, for the operator.
ALTER TABLE api_keys
    ADD COLUMN counts_as uuid REFERENCES api_keys (id) ON DELETE CASCADE,
    ADD COLUMN rotated_from uuid REFERENCES api_keys (id) ON DELETE SET NULL;

CREATE OR REPLACE FUNCTION llm_key_account(p_key uuid) RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT COALESCE((SELECT counts_as FROM api_keys WHERE id = p_key), p_key)
$$;
