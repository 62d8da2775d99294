"""API-key authentication, scopes and rate limits for ``/api/v1/*``.

Operations declare the scopes they accept (``app.openapi.operation``); an
unknown path or method under ``/api/v1/`` needs a key all the same. The
middleware hashes the presented key (the raw key is never compared or
stored), and one statement looks the key up and counts the request
(see ``ratelimit``). Every ``/api/v1/*`` response carries the rate-limit
headers: the key's figures once it is counted, ``NO_ALLOWANCE`` before.
Nothing is cached: a revoked key or a deactivated tenant is refused on the
very next request.
"""

from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from . import log, metrics
from .db import acquire
from .errors import Forbidden, RateLimited, Unauthorized
from .keys import ratelimit_headers_key
from .openapi import operation_of
from .ratelimit import authenticate
from .tenants import hash_key, looks_like_key

API_PREFIX = "/api/v1/"
HEADER = "X-API-Key"


@dataclass(frozen=True)
class Caller:
    tenant_id: uuid.UUID
    key_id: uuid.UUID
    key_prefix: str
    scope: str
    tenant_llm: dict | None = None  # the tenant's own LLM provider (BYOK), as stored


caller_key: web.RequestKey[Caller] = web.RequestKey("caller", Caller)


def caller(request: web.Request) -> Caller:
    return request[caller_key]


# An unknown path or method under /api/v1/ (404/405) is authenticated and counted like
# an endpoint open to both scopes: every /api/v1/* request needs a key.
ANY_SCOPE = ("prep", "check")
# What the rate-limit headers say before a usable key with the endpoint's scope is
# known (401, 403): no requests are allowed, and waiting frees none.
NO_ALLOWANCE = {"X-RateLimit-Limit": "0", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0"}


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
    async with acquire(request) as conn:
        decision = await authenticate(conn, digest, scopes)
    metrics.observe_auth(time.perf_counter() - started)
    if not decision.found or not hmac.compare_digest(decision.key_hash, digest):
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    if not decision.usable:
        raise Unauthorized("The API key is revoked or expired, or its tenant is inactive.", code="invalid_api_key")
    if decision.scope is None:
        raise Forbidden(f"This endpoint needs an API key with the {' or '.join(scopes)} scope.",
                        code="insufficient_scope")

    request[caller_key] = Caller(decision.tenant_id, decision.key_id, decision.key_prefix, decision.scope,
                                 decision.tenant_llm)
    log.tenant_id_var.set(str(decision.tenant_id))
    log.key_prefix_var.set(decision.key_prefix)
    request[ratelimit_headers_key] = decision.headers()
    if not decision.allowed:
        metrics.rate_limited.labels(decision.scope).inc()
        raise RateLimited(f"Rate limit of {decision.limit} {decision.scope} requests per minute exceeded.",
                          headers={"Retry-After": str(decision.reset_s)})
    return await handler(request)
