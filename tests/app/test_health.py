"""GET /health against real PostgreSQL and S3, and their failures."""

from __future__ import annotations

import time

from app import __version__
from app.config import Settings
from app.main import create_app
from app.migrate import apply_migrations
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
