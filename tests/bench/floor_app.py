"""The least app that does what issue 3 requires of GET /api/v1/courses/{id}.

The shipped auth + rate-limit statement (``app.ratelimit``) and the shipped course
read (``app.courses.get_course``) on ONE pooled connection, with no session reset,
and nothing else: no middlewares, access log, request id, validation or error
handling. It keeps the app's pool settings (asyncpg's timeouts, the JSON codec).
Its ratio against the bare app is about the most an implementation of the issue
reaches on this stack, and the app's ratio against it is what the app's own code
costs.
"""

from __future__ import annotations

import os
import uuid

import asyncpg
from aiohttp import web

from app import courses, ratelimit, tenants
from app.db import create_pool
from app.jsonutil import dumps_bytes

pool_key = web.AppKey("pool", asyncpg.Pool)


async def get_course(request: web.Request) -> web.Response:
    key_hash = tenants.hash_key(request.headers["X-API-Key"])
    async with request.app[pool_key].acquire() as conn:
        decision = await ratelimit.authenticate(conn, key_hash, ("prep", "check"))
        if not decision.allowed:
            return web.Response(status=401 if not decision.usable else 429)
        course = await courses.get_course(conn, decision.tenant_id, uuid.UUID(request.match_info["course_id"]))
    return web.Response(body=dumps_bytes(course), content_type="application/json", headers=decision.headers())


async def pool_ctx(app: web.Application):
    app[pool_key] = await create_pool(os.environ["DATABASE_URL"], min_size=0)
    yield
    await app[pool_key].close()


async def create_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/api/v1/courses/{course_id}", get_course)
    app.router.add_get("/ready", lambda request: web.Response(text="ok"))
    return app
