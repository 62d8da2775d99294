"""The benchmark's baseline: a bare aiohttp + asyncpg app doing one SELECT 1 per request."""

from __future__ import annotations

import os

import asyncpg
from aiohttp import web

pool_key = web.AppKey("pool", asyncpg.Pool)


async def select_one(request: web.Request) -> web.Response:
    async with request.app[pool_key].acquire() as conn:
        value = await conn.fetchval("SELECT 1")
    return web.json_response({"value": value})


async def pool_ctx(app: web.Application):
    app[pool_key] = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=0, max_size=10)
    yield
    await app[pool_key].close()


async def create_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/select1", select_one)
    return app
