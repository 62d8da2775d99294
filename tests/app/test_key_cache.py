"""The worker's key cache and leased rate-limit quota (app/keycache.py, app/ratelimit.py):
no database round trip for a known key with quota in hand, changes pushed by NOTIFY,
no trust without a proven listener, bounded memory, never more than the limit."""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import time
import uuid

import asyncpg
import pytest

from app import keycache, ratelimit
from app.auth import auth_key
from app.tenants import hash_key
from tests.support.keys import UNLIMITED
from tests.support.metrics import samples

COURSES = "/api/v1/courses"


async def _counter(client, name: str, **labels) -> float:
    resp = await client.get("/metrics")
    return samples(await resp.text()).get((name, tuple(sorted(labels.items()))), 0.0)


async def _until(predicate, timeout: float = 5.0) -> None:
    """Until ``predicate()`` (a bool, or an awaitable of one) is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _record(**overrides) -> keycache.KeyRecord:
    fields = dict(key_id=uuid.uuid4(), tenant_id=uuid.uuid4(), key_prefix="cs_live_0000", key_hash=os.urandom(32),
                  scopes=frozenset({"prep", "check"}), active=True, expires_at=None,
                  limits={"prep": 60, "check": 300}, tenant_llm=None)
    return keycache.KeyRecord(**{**fields, **overrides})


async def _listening(client) -> None:
    """The in-process app's listener is up and its heartbeat proven."""
    cache = client.server.app[auth_key].cache
    await _until(cache.trusted)


async def test_a_known_key_costs_one_lookup_and_its_requests_few_leases(client, factory):
    """200 requests on one key: the key is looked up once, and its quota leased in slices
    (a database statement per slice, not per request)."""
    _, headers = await factory.tenant_with_key(prep=UNLIMITED, check=UNLIMITED)
    await _listening(client)
    lookups = await _counter(client, "course_supporter_key_lookups_total", reason="miss")
    leases = await _counter(client, "course_supporter_rate_limit_leases_total", granted="yes")
    for _ in range(200):
        assert (await client.get(COURSES, headers=headers)).status == 200
    assert await _counter(client, "course_supporter_key_lookups_total", reason="miss") - lookups == 1
    leased = await _counter(client, "course_supporter_rate_limit_leases_total", granted="yes") - leases
    assert 1 <= leased <= 20, leased


async def test_a_repeated_unknown_key_reaches_the_database_once(client):
    await _listening(client)
    unknown = {"X-API-Key": "cs_live_" + uuid.uuid4().hex}
    lookups = await _counter(client, "course_supporter_key_lookups_total", reason="miss")
    for _ in range(20):
        assert (await client.get(COURSES, headers=unknown)).status == 401
    assert await _counter(client, "course_supporter_key_lookups_total", reason="miss") - lookups == 1


def test_the_cache_is_bounded_however_many_keys_come():
    cache = keycache.KeyCache(known_max=100, unknown_max=50)
    for _ in range(1000):
        cache.store(os.urandom(32), None, cache.generation)
        record = _record()
        cache.store(record.key_hash, record, cache.generation)
    assert len(cache) == 150


def test_a_lookup_that_raced_a_change_is_not_stored():
    """A lookup reads, a change's notification arrives, then the lookup's answer comes
    back: it serves its own request but is not kept."""
    cache = keycache.KeyCache()
    record = _record()
    generation = cache.generation
    cache.notified("key:" + record.key_hash.hex())
    cache.store(record.key_hash, record, generation)
    assert cache.get(record.key_hash) is keycache.MISS
    cache.store(record.key_hash, record, cache.generation)
    assert cache.get(record.key_hash) == record


def test_notifications_drop_the_entries_they_name():
    cache = keycache.KeyCache()
    one, other, unknown = _record(), _record(), os.urandom(32)
    same_tenant = _record(tenant_id=one.tenant_id)
    for record in (one, other, same_tenant):
        cache.store(record.key_hash, record, cache.generation)
    cache.store(unknown, None, cache.generation)
    cache.notified(f"tenant:{one.tenant_id}")
    assert cache.get(one.key_hash) is keycache.MISS and cache.get(same_tenant.key_hash) is keycache.MISS
    assert cache.get(other.key_hash) == other
    cache.notified("key:" + unknown.hex())  # a key issued with this hash: no longer unknown
    assert cache.get(unknown) is keycache.MISS


def test_trust_lasts_only_trust_s_after_the_last_heartbeat_sent():
    cache = keycache.KeyCache()
    assert not cache.trusted()  # no listener yet
    cache.listening = True
    cache.heartbeat(time.monotonic())
    assert cache.trusted()
    cache.distrust()
    cache.listening = True
    cache.heartbeat(time.monotonic() - keycache.TRUST_S)  # a heartbeat sent too long ago proves nothing now
    assert not cache.trusted()


def test_expiry_is_checked_on_every_request_from_the_cached_time():
    record = _record(expires_at=time.time() + 1)
    assert record.usable(time.time())
    assert not record.usable(time.time() + 1)
    assert not _record(active=False).usable(time.time())


async def test_a_limit_changed_in_sql_reaches_the_worker_by_notification(client, factory, db):
    """No wait on the writer's side here: the trigger's NOTIFY alone takes the old limit away."""
    tenant = await factory.tenant()
    key = await factory.key(tenant["id"], check=100)
    headers = {"X-API-Key": key["key"]}
    await _listening(client)
    assert (await client.get(COURSES, headers=headers)).headers["X-RateLimit-Limit"] == "100"
    await db.execute("UPDATE api_keys SET rate_limit_check = 2 WHERE id = $1", key["id"])

    async def limited() -> bool:
        return (await client.get(COURSES, headers=headers)).headers["X-RateLimit-Limit"] == "2"
    started = time.monotonic()
    await _until(limited, timeout=keycache.TRUST_S)
    print(f"\nthe new limit applied {1000 * (time.monotonic() - started):.1f} ms after the commit")


async def test_tenant_llm_settings_changed_in_sql_reach_the_worker(client, factory, db):
    tenant, headers = await factory.tenant_with_key()
    await _listening(client)
    cache = client.server.app[auth_key].cache
    digest = hash_key(headers["X-API-Key"])

    async def cached() -> bool:
        # A lookup that a notification overtakes (the key's own creation, another test's
        # change) serves its request but is not kept: ask again until one is.
        assert (await client.get(COURSES, headers=headers)).status == 200
        return cache.get(digest) is not keycache.MISS
    await _until(cached, timeout=keycache.TRUST_S * 4)
    # (Not a key any APP_ENCRYPTION_KEY opens: the row goes again, or a key rotation elsewhere would refuse it.)
    await db.execute("""INSERT INTO tenant_llm_settings (tenant_id, base_url, model, api_key_encrypted, api_key_prefix)
                        VALUES ($1, 'https://llm.example', NULL, '\\x00', 'sk-')""", tenant["id"])
    try:
        await _until(lambda: cache.get(digest) is keycache.MISS, timeout=keycache.TRUST_S)
    finally:
        await db.execute("DELETE FROM tenant_llm_settings WHERE tenant_id = $1", tenant["id"])


async def test_without_its_listener_a_worker_asks_the_database_every_time(client, factory, db):
    """The listener's connection is cut: until it is back and resynced, every request is
    looked up (so a change made meanwhile applies at once); then the cache serves again."""
    cache = client.server.app[auth_key].cache
    tenant = await factory.tenant()
    key = await factory.key(tenant["id"], check=UNLIMITED)
    headers = {"X-API-Key": key["key"]}
    await _listening(client)
    assert (await client.get(COURSES, headers=headers)).status == 200
    cut = await db.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE application_name = $1", keycache.LISTENER_APPLICATION_NAME)
    assert cut >= 1
    await _until(lambda: not cache.trusted(), timeout=1)
    untrusted = await _counter(client, "course_supporter_key_lookups_total", reason="untrusted")
    # Nobody listens (the listener waits RECONNECT_DELAY_S before it reconnects): the
    # change's notification reaches no one, and the lookup sees the change all the same.
    await db.execute("UPDATE api_keys SET is_active = false WHERE id = $1", key["id"])
    assert (await client.get(COURSES, headers=headers)).status == 401
    assert await _counter(client, "course_supporter_key_lookups_total", reason="untrusted") > untrusted
    await db.execute("UPDATE api_keys SET is_active = true WHERE id = $1", key["id"])
    await _until(cache.trusted, timeout=5)
    assert (await client.get(COURSES, headers=headers)).status == 200
    misses = await _counter(client, "course_supporter_key_lookups_total", reason="miss")
    for _ in range(5):
        assert (await client.get(COURSES, headers=headers)).status == 200
    assert await _counter(client, "course_supporter_key_lookups_total", reason="miss") == misses


# -- the limiter across simulated workers, with a short window ---------------------------

@pytest.fixture
async def pool(database_url):
    async with asyncpg.create_pool(database_url, min_size=1, max_size=8) as pool:
        yield pool


async def test_limiters_of_many_workers_never_admit_more_than_the_limit_in_any_window(pool, factory, monkeypatch):
    """Four limiters (four workers' worth) hammer one key for three 2-second windows: no
    window admits more than the limit, and the slices idle in one worker go back to the
    others, so a window's admissions come close to it."""
    monkeypatch.setattr(ratelimit, "WINDOW_S", 2)
    tenant = await factory.tenant()
    key = await factory.key(tenant["id"], check=40)
    limiters = [ratelimit.Limiter() for _ in range(4)]
    sweepers = [asyncio.create_task(limiter.run(pool)) for limiter in limiters]
    admitted: list = []
    stop = time.monotonic() + 6.5

    async def client(limiter: ratelimit.Limiter, pause: float) -> None:
        while time.monotonic() < stop:
            admission = await limiter.admit(pool.acquire, key["id"], "check", 40)
            if admission.allowed:
                admitted.append(admission.window_start)
            await asyncio.sleep(pause)
    try:
        await asyncio.gather(*(client(limiters[n % 4], 0.001 * (n % 5)) for n in range(16)))
    finally:
        for sweeper in sweepers:
            sweeper.cancel()
        await asyncio.gather(*sweepers, return_exceptions=True)
        for limiter in limiters:
            await limiter.close(pool)
    windows = collections.Counter(admitted)  # by the window that counted each admission
    print(f"\nadmitted per 2 s window: {[count for _, count in sorted(windows.items())]}")
    assert all(count <= 40 for count in windows.values()), windows
    assert sum(windows.values()) >= 40 * 2, windows  # slices do not sit idle while others are refused


async def test_a_key_far_below_its_limit_is_never_refused_across_windows(pool, factory, monkeypatch):
    """A slice leased in the last instant of a window still admits the request that leased
    it: that request was counted in the window, even if the window ends before the answer."""
    monkeypatch.setattr(ratelimit, "WINDOW_S", 0.2)
    tenant = await factory.tenant()
    key = await factory.key(tenant["id"], check=UNLIMITED)
    limiter = ratelimit.Limiter()
    sweeper = asyncio.create_task(limiter.run(pool))
    refused, windows = 0, set()
    stop = time.monotonic() + 3

    async def client() -> None:
        nonlocal refused
        while time.monotonic() < stop:
            admission = await limiter.admit(pool.acquire, key["id"], "check", UNLIMITED)
            refused += not admission.allowed
            windows.add(admission.window_start)
    try:
        await asyncio.gather(*(client() for _ in range(8)))
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await limiter.close(pool)
    assert len(windows) >= 10 and refused == 0, (len(windows), refused)
