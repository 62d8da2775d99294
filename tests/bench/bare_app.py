"""The benchmark's baseline: a bare aiohttp + asyncpg app doing one SELECT 1 per request.

``create_app`` uses asyncpg's pool as it comes: releasing a connection sends
asyncpg's reset query (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
RESET ALL;``), so each request makes two round trips to PostgreSQL.
``create_app_one_round_trip`` skips that reset, as the app's own pool does
(``app.db``), so each request makes exactly one round trip.
"""

from __future__ import annotations

import os

import asyncpg
from aiohttp import web

pool_key = web.AppKey("pool", asyncpg.Pool)


async def select_one(request: web.Request) -> web.Response:
    async with request.app[pool_key].acquire() as conn:
        value = await conn.fetchval("SELECT 1")
    return web.json_response({"value": value})


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset query on release."""


def _pool_ctx(**pool_options):
    async def pool_ctx(app: web.Application):
        app[pool_key] = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=0, max_size=10,
                                                  **pool_options)
        yield
        await app[pool_key].close()

    return pool_ctx


def _app(**pool_options) -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(_pool_ctx(**pool_options))
    app.router.add_get("/select1", select_one)
    return app


async def create_app() -> web.Application:
    return _app()


async def create_app_one_round_trip() -> web.Application:
    return _app(reset=_keep_session)
