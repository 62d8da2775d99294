"""401/403/429, rate-limit headers, revocation without a stale cache."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json

import asyncpg

from app import keycache, ratelimit, tenants
from app.migrate import apply_migrations

COURSES = "/api/v1/courses"


async def _error(resp, status, code=None):
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"} and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body


async def test_missing_key_is_401(client):
    await _error(await client.get(COURSES), 401, "missing_api_key")


async def test_malformed_and_unknown_keys_are_401(client):
    await _error(await client.get(COURSES, headers={"X-API-Key": "nope"}), 401, "invalid_api_key")
    await _error(await client.get(COURSES, headers={"X-API-Key": tenants.generate_key()}), 401, "invalid_api_key")


async def test_revoked_key_is_refused_on_the_very_next_request(client, factory, db):
    tenant = await factory.tenant()
    key = await factory.key(tenant["id"])
    headers = {"X-API-Key": key["key"]}
    assert (await client.get(COURSES, headers=headers)).status == 200
    await tenants.revoke_key(db, key["id"])
    await _error(await client.get(COURSES, headers=headers), 401, "invalid_api_key")


async def test_expired_key_is_401(client, factory, db):
    tenant = await factory.tenant()
    key = await factory.key(tenant["id"], expires_at=datetime.datetime.now(datetime.timezone.utc)
                            + datetime.timedelta(seconds=60))
    headers = {"X-API-Key": key["key"]}
    assert (await client.get(COURSES, headers=headers)).status == 200
    await db.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", key["id"])
    await keycache.change_in_force()  # a change made in SQL is in force on every worker this long after its commit
    await _error(await client.get(COURSES, headers=headers), 401)


async def test_inactive_tenant_is_401_and_reactivation_restores(client, factory, db):
    tenant, headers = await factory.tenant_with_key()
    await tenants.set_tenant_active(db, tenant["id"], False)
    await _error(await client.get(COURSES, headers=headers), 401)
    await tenants.set_tenant_active(db, tenant["id"], True)
    assert (await client.get(COURSES, headers=headers)).status == 200


async def test_scopes(client, factory):
    tenant = await factory.tenant()
    check_only = {"X-API-Key": (await factory.key(tenant["id"], scopes=["check"]))["key"]}
    prep_only = {"X-API-Key": (await factory.key(tenant["id"], scopes=["prep"]))["key"]}
    await _error(await client.post(COURSES, json={"title": "t"}, headers=check_only), 403, "insufficient_scope")
    assert (await client.post(COURSES, json={"title": "t"}, headers=prep_only)).status == 201
    # Listing is open to both scopes.
    assert (await client.get(COURSES, headers=check_only)).status == 200
    assert (await client.get(COURSES, headers=prep_only)).status == 200


async def test_rate_limit_headers_and_429(client, factory):
    tenant = await factory.tenant()
    headers = {"X-API-Key": (await factory.key(tenant["id"], prep=3, check=100))["key"]}
    remaining = []
    for _ in range(3):
        resp = await client.post(COURSES, json={"title": "t"}, headers=headers)
        assert resp.status == 201
        assert resp.headers["X-RateLimit-Limit"] == "3"
        assert 0 < int(resp.headers["X-RateLimit-Reset"]) <= 60
        remaining.append(int(resp.headers["X-RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    resp = await client.post(COURSES, json={"title": "t"}, headers=headers)
    await _error(resp, 429, "rate_limited")
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    # The check scope has its own counter: listing counts as check for this key.
    resp = await client.get(COURSES, headers=headers)
    assert resp.status == 200 and resp.headers["X-RateLimit-Limit"] == "100"


async def test_rate_limit_headers_on_error_responses_too(client, auth):
    resp = await client.get("/api/v1/courses/00000000-0000-0000-0000-000000000000", headers=auth)
    assert resp.status == 404
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(resp.headers)


NO_ALLOWANCE = {"X-RateLimit-Limit": "0", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0"}


def _limit_headers(resp) -> dict:
    return {name: resp.headers.get(name) for name in NO_ALLOWANCE}


async def test_refused_requests_carry_rate_limit_headers_saying_no_allowance(client, factory, db):
    tenant = await factory.tenant()
    check_only = {"X-API-Key": (await factory.key(tenant["id"], scopes=["check"]))["key"]}
    revoked = await factory.key(tenant["id"])
    await tenants.revoke_key(db, revoked["id"])
    refused = [
        (await client.get(COURSES), 401),
        (await client.get(COURSES, headers={"X-API-Key": "nope"}), 401),
        (await client.get(COURSES, headers={"X-API-Key": tenants.generate_key()}), 401),
        (await client.get(COURSES, headers={"X-API-Key": revoked["key"]}), 401),
        (await client.post(COURSES, json={"title": "t"}, headers=check_only), 403),
    ]
    for resp, status in refused:
        await _error(resp, status)
        assert _limit_headers(resp) == NO_ALLOWANCE
    # The refused request counted against nothing: the key's check allowance is whole.
    resp = await client.get(COURSES, headers=check_only)
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == str(int(resp.headers["X-RateLimit-Limit"]) - 1)


async def test_unknown_paths_and_methods_under_the_api_need_a_key_and_count(client, factory):
    _, headers = await factory.tenant_with_key(prep=50, check=5)
    await _error(await client.get("/api/v1/nothing-here"), 401, "missing_api_key")
    await _error(await client.delete(COURSES), 401, "missing_api_key")
    resp = await client.get("/api/v1/nothing-here", headers=headers)
    await _error(resp, 404, "not_found")
    assert (resp.headers["X-RateLimit-Limit"], resp.headers["X-RateLimit-Remaining"]) == ("5", "4")
    resp = await client.delete(COURSES, headers=headers)
    await _error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"] and resp.headers["X-RateLimit-Remaining"] == "3"
    # Counted like an endpoint open to both scopes: against check, which this key has.
    assert (await client.get(COURSES, headers=headers)).headers["X-RateLimit-Remaining"] == "2"


async def test_concurrent_burst_admits_exactly_the_limit(client, factory):
    # A key's very first requests race to create its counter row: repeat with fresh keys.
    for _ in range(5):
        _, headers = await factory.tenant_with_key(prep=1000, check=17)
        statuses = await asyncio.gather(*[client.get(COURSES, headers=headers) for _ in range(60)])
        codes = [r.status for r in statuses]
        assert codes.count(200) == 17 and codes.count(429) == 43


async def test_zero_limit_admits_nothing(client, factory):
    _, headers = await factory.tenant_with_key(check=0)
    await _error(await client.get(COURSES, headers=headers), 429)


async def test_last_used_at_is_recorded(client, factory, db):
    tenant = await factory.tenant()
    key = await factory.key(tenant["id"])
    assert await db.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key["id"]) is None
    await client.get(COURSES, headers={"X-API-Key": key["key"]})
    assert await db.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key["id"]) is not None


def test_sliding_window_arithmetic():
    # Fresh window: everything left, reset at the window's end.
    assert ratelimit.remaining_requests(10, 0, 0, 0.0) == 10
    assert ratelimit.seconds_until_free(10, 0, 4, 15.0) == 45
    # Full window: the next window frees a request as soon as it starts.
    assert ratelimit.remaining_requests(10, 0, 10, 20.0) == 0
    assert ratelimit.seconds_until_free(10, 0, 10, 20.0) == 40
    # Previous window's weight decays: 10 * (1 - 30/60) + 5 = 10 -> full; frees at 10*(1-5/10)=... t=30s -> 1s.
    assert ratelimit.remaining_requests(10, 10, 5, 30.0) == 0
    assert ratelimit.seconds_until_free(10, 10, 5, 30.0) == 1
    assert ratelimit.remaining_requests(10, 10, 5, 45.0) == 3


def _plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_an_unknown_key_costs_one_index_lookup_and_writes_nothing(pg):
    """Why unknown-key floods are cheap: among 20,000 keys, the lookup for a key that
    does not exist finds nothing through the unique key_hash index, scans no table and
    neither counts nor touches anything (and the worker then remembers it as unknown)."""
    url = pg.create_database("unknown_keys")
    apply_migrations(url)
    conn = await asyncpg.connect(url)
    try:
        tenant = await tenants.create_tenant(conn, "Many keys")
        await conn.execute("""
            INSERT INTO api_keys (tenant_id, key_hash, key_prefix, scopes, rate_limit_prep, rate_limit_check)
            SELECT $1, sha256(n::text::bytea), 'cs_live_' || n, ARRAY['prep', 'check'], 60, 300
            FROM generate_series(1, 20000) AS n""", tenant["id"])
        await conn.execute("ANALYZE api_keys")
        unknown = hashlib.sha256(b"cs_live_" + b"0" * 32).digest()
        [plan] = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + keycache.LOOKUP_SQL, unknown))
        nodes = list(_plan_nodes(plan["Plan"]))
        on_keys = [n for n in nodes if n.get("Relation Name") == "api_keys" and n["Node Type"] != "ModifyTable"]
        assert on_keys and all(n["Node Type"] in ("Index Scan", "Index Only Scan") for n in on_keys), on_keys
        used = {(n["Node Type"], n.get("Index Name"), n["Actual Rows"]) for n in on_keys}
        # The lookup by hash, and the last_used_at update's probe for the (absent) key's id.
        assert used == {("Index Scan", "api_keys_key_hash_key", 0), ("Index Scan", "api_keys_pkey", 0)}, used
        assert all(n["Actual Rows"] == 0 for n in nodes if n["Node Type"] == "ModifyTable")
        assert await conn.fetchval("SELECT count(*) FROM rate_limit_counters") == 0
        assert not any(n.get("Relation Name") in ("api_keys", "tenants") and n["Node Type"] == "Seq Scan"
                       for n in nodes)
    finally:
        await conn.close()
