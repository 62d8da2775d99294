-- (slices still held expire: nobody extends them)
DROP FUNCTION llm_charge(uuid, numeric);
DROP FUNCTION llm_reserve(uuid, uuid, numeric, double precision, numeric, numeric);
