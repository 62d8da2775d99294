"""The app under gunicorn with several workers: limits hold across all of them."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import time

import aiohttp
import pytest

from tests.support.bursts import burst
from tests.support.gunicorn import Gunicorn

pytestmark = pytest.mark.gunicorn

WORKERS = 4


@pytest.fixture(scope="module")
def server(app_env):
    with Gunicorn(app_env, workers=WORKERS) as gunicorn:
        yield gunicorn


async def test_exactly_the_limit_passes_a_concurrent_burst_across_workers(server, factory):
    assert len(server.worker_pids()) == WORKERS
    _, headers = await factory.tenant_with_key(check=40)
    statuses = await burst(server.url + "/api/v1/courses", headers, 150)
    assert statuses.count(200) == 40 and statuses.count(429) == 110, sorted(set(statuses))


async def test_a_10000_request_burst_from_50_connections_lets_exactly_the_limit_through(server, factory):
    """An attack-sized burst with one key, 50 keep-alive connections spread over the workers."""
    _, headers = await factory.tenant_with_key(check=1000)
    statuses: collections.Counter = collections.Counter()
    requests = iter(range(10_000))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as session:
        async def connection() -> None:
            for _ in requests:  # shared: the 50 of them drain the 10,000 together
                async with session.get(server.url + "/api/v1/courses", headers=headers) as resp:
                    body = await resp.json()
                    statuses[resp.status] += 1
                    if resp.status == 429:
                        assert body["error"]["code"] == "rate_limited" and int(resp.headers["Retry-After"]) > 0

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(connection() for _ in range(50))), timeout=180)
    print(f"\n10,000 requests from 50 connections in {time.monotonic() - started:.1f} s: {dict(statuses)}")
    assert statuses == {200: 1000, 429: 9000}


async def test_limits_survive_worker_restarts(server, factory):
    _, headers = await factory.tenant_with_key(check=10)
    statuses = await burst(server.url + "/api/v1/courses", headers, 10)
    assert statuses.count(200) == 10
    old = set(server.worker_pids())
    os.kill(server.proc.pid, signal.SIGHUP)  # gunicorn replaces every worker
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (set(server.worker_pids()) & old or len(server.worker_pids()) != WORKERS):
        await asyncio.sleep(0.2)
    assert not set(server.worker_pids()) & old
    server.wait_healthy()
    statuses = await burst(server.url + "/api/v1/courses", headers, 5)
    assert statuses == [429] * 5


async def test_a_killed_worker_is_replaced_and_loses_only_what_it_was_serving(server, factory):
    """SIGKILL to one worker under load: the requests it had in flight fail (at most one
    per client connection), every other request succeeds, and gunicorn starts a new worker."""
    _, headers = await factory.tenant_with_key(check=100_000_000)
    connections, answers, stop = 8, [], asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections, force_close=True)) as session:
        async def connection() -> None:
            while not stop.is_set() and len(answers) < 50_000:
                try:
                    async with session.get(server.url + "/api/v1/courses", headers=headers) as resp:
                        await resp.read()
                        answers.append(resp.status)
                except aiohttp.ClientError as exc:
                    answers.append(type(exc).__name__)

        load = [asyncio.create_task(connection()) for _ in range(connections)]
        await asyncio.sleep(1)
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (victim in server.worker_pids() or len(server.worker_pids()) != WORKERS):
            await asyncio.sleep(0.2)
        replaced_at = len(answers)
        deadline = time.monotonic() + 30  # enough answers after the replacement to mean something, on a busy machine too
        while time.monotonic() < deadline and len(answers) - replaced_at <= 200:
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.gather(*load)
    assert victim not in server.worker_pids() and len(server.worker_pids()) == WORKERS
    lost = [a for a in answers if a != 200]
    print(f"\n{len(answers)} requests, {len(lost)} lost with the killed worker: {collections.Counter(lost)}")
    assert len(lost) <= connections and all(isinstance(a, str) for a in lost), collections.Counter(lost)
    assert len(answers) - replaced_at > 100 and set(answers[replaced_at:]) == {200}


async def test_logs_are_json_lines_without_keys(server, factory):
    tenant, headers = await factory.tenant_with_key()
    key = headers["X-API-Key"]
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/api/v1/courses", json={"title": "Logged"}, headers=headers) as resp:
            assert resp.status == 201
            request_id = resp.headers["X-Request-ID"]
        async with session.get(server.url + "/api/v1/courses", headers={"X-API-Key": key[:-1] + "0"}) as resp:
            assert resp.status in (401, 200)
    await asyncio.sleep(0.5)
    lines = server.log_lines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"timestamp", "level", "logger", "message"} <= set(r) for r in records)
    access = [r for r in records if r.get("request_id") == request_id and r["logger"] == "app.access"]
    assert len(access) == 1
    line = access[0]
    assert line["method"] == "POST" and line["path"] == "/api/v1/courses" and line["status"] == 201
    assert line["tenant_id"] == str(tenant["id"]) and line["key_prefix"] == key[:12]
    assert isinstance(line["duration_ms"], float)
    text = "\n".join(lines)
    assert key not in text and key[12:] not in text and key[:-1] not in text


async def test_a_client_leaving_a_stream_cancels_the_upstream_under_gunicorn(server, factory, db, fresh_llm):
    """Under gunicorn a client's disconnect does not cancel the handler (aiohttp's default):
    the next write fails instead, which must stop the provider's generation too."""
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"chunk_delay_s": 0.3, "content": " ".join(f"word{i}" for i in range(60))})
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/api/v1/gpt", json={"prompt": "A long story", "stream": True},
                                headers=auth) as resp:
            assert resp.status == 200
            assert (await resp.content.readuntil(b"\n\n")).startswith(b"event: delta")
    deadline = time.monotonic() + 10
    while (fresh_llm.requests()[0].get("stream") != "client_disconnected"
           or not await db.fetchval("SELECT count(*) FROM llm_calls WHERE tenant_id = $1", tenant["id"])):
        assert time.monotonic() < deadline, fresh_llm.requests()[0].get("stream")
        await asyncio.sleep(0.1)
    call = await db.fetchrow("SELECT outcome, output_tokens FROM llm_calls WHERE tenant_id = $1", tenant["id"])
    assert call["outcome"] == "cancelled" and 1 <= call["output_tokens"] < 60
