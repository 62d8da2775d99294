"""The least app that serves GET /api/v1/courses/{id} for a key known to the worker.

What the app's hot path cannot do without for a cached key with quota in hand: hash the
key, find its tenant in memory, and run the shipped course read
(``app.courses.get_course``) on a pooled connection from the app's own pool settings
(``app.db.create_pool``: no session reset, the JSON codec). Nothing else: no
middlewares, access log, request id, validation, error handling, expiry or scope check,
rate-limit accounting or headers. Its ratio against the bare app is about the most an
implementation reaches on this stack, and the app's ratio against it is what the app's
own code costs.
"""

from __future__ import annotations

import os
import uuid

import asyncpg
from aiohttp import web

from app import courses, keycache, tenants
from app.db import create_pool
from app.jsonutil import dumps_bytes

pool_key = web.AppKey("pool", asyncpg.Pool)
keys_key = web.AppKey("keys", dict)


async def get_course(request: web.Request) -> web.Response:
    key_hash = tenants.hash_key(request.headers["X-API-Key"])
    known = request.app[keys_key]
    record = known.get(key_hash)
    if record is None:
        async with request.app[pool_key].acquire() as conn:
            record = known[key_hash] = await keycache.lookup(conn, key_hash)
    if record is None:
        return web.Response(status=401)
    async with request.app[pool_key].acquire() as conn:
        course = await courses.get_course(conn, record.tenant_id, uuid.UUID(request.match_info["course_id"]))
    return web.Response(body=dumps_bytes(course), content_type="application/json")


async def pool_ctx(app: web.Application):
    app[pool_key] = await create_pool(os.environ["DATABASE_URL"], min_size=0)
    app[keys_key] = {}
    yield
    await app[pool_key].close()


async def create_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/api/v1/courses/{course_id}", get_course)
    app.router.add_get("/ready", lambda request: web.Response(text="ok"))
    return app
