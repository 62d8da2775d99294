"""API-key authentication, scopes and rate limits for ``/api/v1/*``.

Operations declare the scopes they accept (``app.openapi.operation``); an
unknown path or method under ``/api/v1/`` needs a key all the same. The
middleware hashes the presented key (the raw key is never compared or
stored) and finds it in the worker's key cache (``keycache``: filled from
PostgreSQL, emptied by the database's change notifications, not trusted while
its listener is not proven connected), then admits the request from the
worker's leased slice of the key's quota (``ratelimit``). A request on a
cached key with quota in hand costs no database round trip. Every
``/api/v1/*`` response carries the rate-limit headers: the key's figures once
it is counted, ``NO_ALLOWANCE`` before.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import logging
import time
import uuid
from typing import AsyncIterator, NamedTuple

from aiohttp import web

from . import keycache, log, metrics
from .db import acquire
from .errors import Forbidden, RateLimited, Unauthorized
from .keys import db_pool_key, ratelimit_headers_key, settings_key
from .openapi import operation_of
from .ratelimit import Limiter
from .tenants import hash_key, looks_like_key

logger = logging.getLogger("app.auth")

API_PREFIX = "/api/v1/"
HEADER = "X-API-Key"


class Caller(NamedTuple):  # a tuple: built for every request, cheaper than a frozen dataclass
    tenant_id: uuid.UUID
    key_id: uuid.UUID
    key_prefix: str
    scope: str
    tenant_llm: dict | None = None  # the tenant's own LLM provider (BYOK), as stored
    budgeted: bool = False  # an LLM budget is over its calls: they reserve their worst case first


caller_key: web.RequestKey[Caller] = web.RequestKey("caller", Caller)


def caller(request: web.Request) -> Caller:
    return request[caller_key]


# An unknown path or method under /api/v1/ (404/405) is authenticated and counted like
# an endpoint open to both scopes: every /api/v1/* request needs a key.
ANY_SCOPE = ("prep", "check")
# What the rate-limit headers say before a usable key with the endpoint's scope is
# known (401, 403): no requests are allowed, and waiting frees none.
NO_ALLOWANCE = {"X-RateLimit-Limit": "0", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0"}


# last_used_at of keys served from the cache is written this often, in one statement.
USAGE_FLUSH_S = 20.0
USAGE_SQL = """
UPDATE api_keys AS k SET last_used_at = u.used_at
FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, used_at)
WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.used_at - interval '1 minute')
"""


class Auth:
    """A worker's key cache with its listener, its rate limiter and its key usage."""

    def __init__(self) -> None:
        self.cache = keycache.KeyCache()
        self.limiter = Limiter()
        self.cache.forgotten_keys.append(self.limiter.forget_key)
        self.used: dict[uuid.UUID, float] = {}  # key id -> epoch seconds of its last use here

    async def flush_usage(self, pool) -> None:
        used, self.used = self.used, {}
        if not used:
            return
        stamps = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc) for t in used.values()]
        try:
            await pool.execute(USAGE_SQL, list(used), stamps)
        except Exception as exc:  # noqa: BLE001 -- a missed last_used_at is not worth failing for
            logger.warning("could not record keys' last use", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def keep_usage(self, pool) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_S)
            await self.flush_usage(pool)


auth_key: web.AppKey[Auth] = web.AppKey("auth", Auth)


async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
    """The worker's key cache listener, slice hand-back and usage writer; on shutdown
    the slices held go back and the last usage is written."""
    auth = app[auth_key] = Auth()
    pool = app[db_pool_key]
    listener = keycache.Listener(app[settings_key].database_url, auth.cache)
    tasks = [asyncio.create_task(listener.run(), name="key cache listener"),
             asyncio.create_task(auth.limiter.run(pool), name="rate-limit slices"),
             asyncio.create_task(auth.keep_usage(pool), name="key usage")]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    auth.cache.distrust()
    await auth.limiter.close(pool)
    await auth.flush_usage(pool)


async def _look_up(request: web.Request, auth: Auth, digest: bytes) -> keycache.KeyRecord | None:
    cache = auth.cache
    metrics.key_lookups.labels("miss" if cache.trusted() else "untrusted").inc()
    generation = cache.generation
    async with acquire(request) as conn:
        record = await keycache.lookup(conn, digest)
    cache.store(digest, record, generation)
    return record


@web.middleware
async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    if not request.path.startswith(API_PREFIX):
        return await handler(request)  # public endpoint (health, docs), or no such route
    declared = operation_of(request.match_info.handler)
    scopes = declared.scopes if declared is not None and declared.scopes else ANY_SCOPE
    request[ratelimit_headers_key] = NO_ALLOWANCE

    presented = request.headers.get(HEADER, "")
    if not presented:
        raise Unauthorized(f"Missing {HEADER} header.", code="missing_api_key")
    if len(request.headers.getall(HEADER)) > 1:  # which one was meant? (a proxy may join them)
        raise Unauthorized(f"Send one {HEADER} header, not several.", code="invalid_api_key")
    if not looks_like_key(presented):
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    digest = hash_key(presented)
    started = time.perf_counter()
    auth = request.app[auth_key]
    cache = auth.cache
    record = cache.get(digest) if cache.trusted() else keycache.MISS
    if record is keycache.MISS:
        record = await _look_up(request, auth, digest)
    if record is None or not hmac.compare_digest(record.key_hash, digest):
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    now = time.time()
    if not record.usable(now):
        raise Unauthorized("The API key is revoked or expired, or its tenant is inactive.", code="invalid_api_key")
    scope = record.scope_for(scopes)
    if scope is None:
        raise Forbidden(f"This endpoint needs an API key with the {' or '.join(scopes)} scope.",
                        code="insufficient_scope")

    request[caller_key] = Caller(record.tenant_id, record.key_id, record.key_prefix, scope, record.tenant_llm,
                                 record.budgeted)
    log.tenant_id_var.set(record.tenant_label)
    log.key_prefix_var.set(record.key_prefix)
    limit = record.limits[scope]
    # Counted under the key's counter: its own, or its line's after a rotation (one limit for both).
    admission = auth.limiter.take(record.counter_id, scope, limit)  # from the slice in hand: no await
    if admission is None:
        admission = await auth.limiter.admit(lambda: acquire(request), record.counter_id, scope, limit)
    metrics.observe_auth(time.perf_counter() - started)
    auth.used[record.key_id] = now
    request[ratelimit_headers_key] = admission.headers()
    if not admission.allowed:
        metrics.rate_limited.labels(scope).inc()
        raise RateLimited(f"Rate limit of {limit} {scope} requests per minute exceeded.",
                          headers={"Retry-After": str(admission.reset_s)})
    return await handler(request)
