"""Faults: PostgreSQL restarted under load, the S3 endpoint unreachable, the LLM provider
hanging. Requests fail fast with the documented status (never a 500, never a hang),
everything recovers by itself, what was acknowledged is stored, nothing is half-written,
and a failing dependency slows nothing that does not need it."""

from __future__ import annotations

import asyncio
import collections
import json
import time

from app.config import Settings
from app.main import create_app
from app.migrate import apply_migrations
from tests.support.admin_cli import admin
from tests.support.keys import UNLIMITED_KEY_ARGS
from tests.support.names import unique
from tests.support.pg import PostgresCluster
from tests.support.tcpproxy import TcpProxy

CONNECTIONS = 8
DOWN_S = 2.0
RECOVERY_S = 10.0
FAST_FAIL_S = 6.0  # the pool's acquire timeout (5 s) and a little


async def test_postgres_restarted_under_load_fails_fast_and_recovers(aiohttp_client, app_env):
    with PostgresCluster() as pg:
        url = pg.create_database("restarted")
        apply_migrations(url)
        env = {**app_env, "DATABASE_URL": url}
        tenant = admin("tenant", "create", "Faults", "--json", env=env)
        tenant_id = json.loads(tenant.stdout)["id"]
        key = json.loads(admin("key", "issue", tenant_id, *UNLIMITED_KEY_ARGS, "--json", env=env).stdout)["key"]
        client = await aiohttp_client(await create_app(Settings.from_env(env)))
        headers = {"X-API-Key": key}

        answers: list[tuple[float, str, int, float]] = []  # (at, title, status, seconds)
        stop = asyncio.Event()

        async def connection(number: int) -> None:
            turn = 0
            while not stop.is_set() and turn < 5000:
                turn += 1
                title = unique(f"load {number}-{turn}")
                started = time.monotonic()
                response = await client.post("/api/v1/courses", json={"title": title}, headers=headers)
                body = await response.json()
                answers.append((started, title, response.status, time.monotonic() - started))
                if response.status == 503:
                    assert body["error"]["code"] == "database_unavailable"
                    await asyncio.sleep(0.05)

        load = [asyncio.create_task(connection(n)) for n in range(CONNECTIONS)]
        await asyncio.sleep(1.0)
        restarted_at = time.monotonic()
        await asyncio.to_thread(pg.restart, DOWN_S)
        back_at = time.monotonic()
        await asyncio.sleep(RECOVERY_S)
        stop.set()
        await asyncio.gather(*load)

        statuses = collections.Counter(status for _, _, status, _ in answers)
        assert set(statuses) <= {201, 503}, statuses  # never a 500
        assert statuses[503] > 0, "the restart went unnoticed: no test"
        assert max(seconds for _, _, status, seconds in answers if status == 503) < FAST_FAIL_S
        # Recovered by itself: everything asked a second after the database was back succeeded.
        late = [status for at, _, status, _ in answers if at > back_at + 1.0]
        assert late and set(late) == {201}, collections.Counter(late)
        recovered = min(at + seconds for at, _, status, seconds in answers if status == 201 and at >= back_at)
        print(f"\n{len(answers)} requests: {dict(statuses)}; the database down {back_at - restarted_at:.1f} s, "
              f"the first success {recovered - back_at:.2f} s after it was back; slowest 503 "
              f"{max(seconds for _, _, status, seconds in answers if status == 503):.2f} s")

        # Every acknowledged course is stored; nothing refused was stored.
        stored = set(pg.psql("SELECT title FROM courses", "restarted").splitlines())
        acknowledged = {title for _, title, status, _ in answers if status == 201}
        refused = {title for _, title, status, _ in answers if status == 503}
        assert acknowledged <= stored
        assert not (stored & refused), sorted(stored & refused)[:5]


async def test_storage_unreachable_gives_503s_and_recovers_without_a_restart(aiohttp_client, app_env, s3, bucket,
                                                                            factory):
    with TcpProxy(s3.port) as proxy:
        client = await aiohttp_client(await create_app(Settings.from_env({**app_env, "S3_ENDPOINT_URL": proxy.url})))
        _, auth = await factory.tenant_with_key()
        course = await (await client.post("/api/v1/courses", json={"title": "Outage"}, headers=auth)).json()
        materials = f"/api/v1/courses/{course['id']}/materials"

        async def upload(name: str) -> tuple[int, dict, float]:
            started = time.monotonic()
            response = await client.post(f"{materials}?filename={name}", data=b"lecture notes", headers=auth)
            return response.status, await response.json(), time.monotonic() - started

        assert (await upload("before.txt"))[0] == 201
        proxy.cut()
        status, body, seconds = await upload("during.txt")
        assert (status, body["error"]["code"]) == (503, "storage_unavailable") and seconds < FAST_FAIL_S
        health = await client.get("/health")
        assert (health.status, (await health.json())["s3"]) == (503, "error")
        assert (await (await client.get("/api/v1/courses", headers=auth)).json())["total"] >= 1  # the rest works

        proxy.restore()  # the same app, no restart
        status, _, _ = await upload("after.txt")
        assert status == 201
        assert (await client.get("/health")).status == 200
        listed = await (await client.get(materials, headers=auth)).json()
        assert sorted(m["filename"] for m in listed["items"]) == ["after.txt", "before.txt"]  # nothing of "during"


async def test_a_provider_that_is_down_slows_nothing_else(make_client, factory, fresh_llm):
    """While LLM calls hang until their timeout, the rest of the API answers as before."""
    client = await make_client(LLM_MAX_RETRIES="0", LLM_TIMEOUT_S="2")
    _, auth = await factory.tenant_with_key()

    async def read() -> float:
        started = time.monotonic()
        assert (await client.get("/api/v1/courses", headers=auth)).status == 200
        return time.monotonic() - started

    async def ask() -> tuple[int, float]:
        started = time.monotonic()
        response = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
        return response.status, time.monotonic() - started

    fresh_llm.script(*[{"delay_s": 10}] * 20)
    calls = [asyncio.create_task(ask()) for _ in range(20)]
    await asyncio.sleep(0.3)  # all 20 are waiting on the provider now
    reads = [await read() for _ in range(50)]
    answers = await asyncio.gather(*calls)
    assert {status for status, _ in answers} == {504}
    assert max(seconds for _, seconds in answers) < 2 + 1.5  # the configured time, not the provider's 10 s
    assert max(reads) < 0.5, f"reads took up to {max(reads):.2f} s while the provider hung"
