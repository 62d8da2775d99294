"""GET /health: PostgreSQL and S3, each checked with a short timeout. GET /ready: whether
this process should take traffic (its database answers, and it is not shutting down)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .. import __version__
from ..release import RELEASE, uptime_s
from ..jsonutil import json_response
from ..keys import db_pool_key, draining_key, storage_key
from ..openapi import Response, operation
from ..schemas import HealthSchema, ReadySchema

log = logging.getLogger("app.health")

DB_TIMEOUT_S = 2.0


async def _db_ok(app: web.Application) -> bool:
    try:
        async def ping():
            async with app[db_pool_key].acquire(timeout=DB_TIMEOUT_S) as conn:
                return await conn.fetchval("SELECT 1", timeout=DB_TIMEOUT_S)

        return await asyncio.wait_for(ping(), DB_TIMEOUT_S + 0.5) == 1
    except Exception as exc:
        log.warning("database health check failed: %s", exc.__class__.__name__)
        return False


@operation("get_health", summary="Health of the app and its dependencies", tags=["health"], scopes=None,
           description="200 when PostgreSQL and S3 answer; 503 with status `degraded` otherwise. No key needed. "
                       "Also says which release runs (its content hash on the appliance) and for how long.",
           responses={200: Response("All dependencies answer", HealthSchema),
                      503: Response("A dependency failed", HealthSchema)})
async def health(request: web.Request) -> web.Response:
    db_ok, s3_ok = await asyncio.gather(_db_ok(request.app), request.app[storage_key].is_healthy())
    body = {"status": "ok" if db_ok and s3_ok else "degraded",
            "db": "ok" if db_ok else "error",
            "s3": "ok" if s3_ok else "error",
            "release": RELEASE, "version": __version__, "uptime_s": uptime_s()}
    return json_response(body, status=200 if body["status"] == "ok" else 503)


# A load balancer polling /ready may try again this soon.
READY_RETRY_AFTER_S = 5


@operation("get_readiness", summary="Whether this server should take traffic", tags=["health"], scopes=None,
           description="For a load balancer: 200 when this server's database answers and it is not shutting down; "
                       "503 with `Retry-After` otherwise. S3 is left out: every server shares it, so its failure is "
                       "no reason to send traffic elsewhere (`/health` reports it). No key needed.",
           responses={200: Response("Takes traffic", ReadySchema),
                      503: Response("Takes no traffic now", ReadySchema)})
async def ready(request: web.Request) -> web.Response:
    draining = request.app[draining_key].is_set()
    db = "unchecked" if draining else "ok" if await _db_ok(request.app) else "error"
    body = {"ready": db == "ok", "db": db, "draining": draining, "release": RELEASE}
    if body["ready"]:
        return json_response(body)
    return json_response(body, status=503, headers={"Retry-After": str(READY_RETRY_AFTER_S)})
