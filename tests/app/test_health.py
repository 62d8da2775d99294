"""GET /health and GET /ready against real PostgreSQL and S3, and their failures."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from app import __version__
from app.config import Settings
from app.main import create_app
from app.migrate import apply_migrations
from app.serve import ACCEPT_GRACE_S, GracefulRunner
from tests.support.pg import PostgresCluster


async def test_health_ok(client):
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert {name: body.pop(name) for name in ("status", "db", "s3")} == {"status": "ok", "db": "ok", "s3": "ok"}
    assert body["release"] == "unpackaged" and body["version"] == __version__  # a checkout, not a release
    assert isinstance(body["uptime_s"], int) and body["uptime_s"] >= 0


async def test_missing_bucket_is_degraded(aiohttp_client, app_env):
    app = await create_app(Settings.from_env({**app_env, "S3_BUCKET": "no-such-bucket"}))
    resp = await (await aiohttp_client(app)).get("/health")
    assert resp.status == 503
    body = await resp.json()
    assert (body["status"], body["db"], body["s3"]) == ("degraded", "ok", "error")


async def test_unreachable_s3_is_degraded_quickly(aiohttp_client, app_env):
    from tests.support.net import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    app = await create_app(Settings.from_env({**app_env, "S3_ENDPOINT_URL": dead}))
    client = await aiohttp_client(app)
    started = time.monotonic()
    resp = await client.get("/health")
    assert resp.status == 503 and (await resp.json())["s3"] == "error"
    assert time.monotonic() - started < 5


async def test_database_down_gives_503_not_a_hang(aiohttp_client, app_env):
    with PostgresCluster() as pg:
        url = pg.create_database("doomed")
        apply_migrations(url)
        app = await create_app(Settings.from_env({**app_env, "DATABASE_URL": url}))
        client = await aiohttp_client(app)
        assert (await client.get("/health")).status == 200
        pg.stop()
        started = time.monotonic()
        resp = await client.get("/health")
        assert resp.status == 503
        body = await resp.json()
        assert (body["status"], body["db"], body["s3"]) == ("degraded", "error", "ok")
        resp = await client.get("/ready")  # this server cannot reach its database: send traffic elsewhere
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert await resp.json() == {"ready": False, "db": "error", "draining": False, "release": "unpackaged"}
        resp = await client.get("/api/v1/courses", headers={"X-API-Key": "cs_live_" + "0" * 32})
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "database_unavailable"
        assert time.monotonic() - started < 10


async def test_app_starts_while_the_database_is_down(aiohttp_client, app_env):
    from tests.support.net import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    client = await aiohttp_client(await create_app(Settings.from_env({**app_env, "DATABASE_URL": url})))
    resp = await client.get("/health")
    assert resp.status == 503 and (await resp.json())["db"] == "error"


async def test_ready_when_the_database_answers_even_with_s3_down(aiohttp_client, app_env):
    """Readiness is about this server: S3, shared by every server, is /health's business."""
    app = await create_app(Settings.from_env({**app_env, "S3_BUCKET": "no-such-bucket"}))
    client = await aiohttp_client(app)
    resp = await client.get("/ready")
    assert resp.status == 200 and "Retry-After" not in resp.headers
    assert await resp.json() == {"ready": True, "db": "ok", "draining": False, "release": "unpackaged"}
    assert (await client.get("/health")).status == 503


async def test_a_server_shutting_down_is_not_ready_on_the_connections_it_still_serves(app_env):
    """The appliance's runner stops accepting, then serves the connections it has for
    ACCEPT_GRACE_S: a load balancer asking on one of them hears 503 draining, told to close
    the connection. An idle kept-alive connection is still served most of that time later,
    longer than nginx keeps one idle (so nginx closes it first, never the app under a POST)."""
    runner = GracefulRunner(await create_app(Settings.from_env(app_env)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        async with session.get(f"http://127.0.0.1:{port}/ready") as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True
        stopping = asyncio.create_task(runner.cleanup())
        await asyncio.sleep(ACCEPT_GRACE_S * 0.8)
        async with session.get(f"http://127.0.0.1:{port}/ready") as resp:  # the same kept-alive connection
            assert resp.status == 503 and resp.headers["Connection"] == "close"
            assert await resp.json() == {"ready": False, "db": "unchecked", "draining": True, "release": "unpackaged"}
        await stopping
