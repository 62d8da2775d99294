"""``Idempotency-Key`` on the operations that create something or cost money.

A client that repeats such a request with the same key (after a timeout, a dropped
connection) gets the first answer again instead of a second course, homework attempt
or LLM bill. Keys belong to the tenant and live ``KEEP_S`` (24 h).

The first request with a key claims it (``CLAIM_SQL``: one row per tenant and key, the
request's fingerprint, no answer yet) and runs; its answer, if a success, is stored on
the row. A repeat with the same fingerprint replays that answer with
``Idempotent-Replayed: true``; one with another fingerprint is 422
``idempotency_key_reused``; one that arrives while the first still runs waits for it
(``WAIT_S`` at most), then is 409 ``idempotency_in_progress`` with ``Retry-After``.

A failure (any 4xx or 5xx) is not stored: the claim is dropped and the key may be used
again, as nothing was created or kept. A claim whose worker died holds the key only
until ``CLAIM_S`` after it was made. The fingerprint is the method, the path, the query
and the body as validated (so key order and spacing do not matter). A streamed answer
cannot be replayed: a streamed request with a key is 422.

An upload's file is part of its request, but known only once it has streamed: the claim
holds the method and path, and the stored answer the file's name, type and SHA-256 as
the handler noted them (``note_content``). A repeat of a finished upload has its file
read and hashed without storing it (the operation's ``content_digest``): the same file
replays the answer, another is 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from typing import Any

import asyncpg
from aiohttp import web

from .auth import caller_key
from .db import acquire
from .errors import ApiError, ValidationFailed
from .keys import db_pool_key
from .openapi import body_key, operation_of, query_key

log = logging.getLogger("app.idempotency")

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
KEEP_S = 24 * 3600
# Longer than any request may take (nginx waits 900 s for an answer).
CLAIM_S = 960
WAIT_S = 10.0
POLL_S = 0.05
RETRY_AFTER_S = 2
SWEEP_S = 600.0
# The answer's headers a replay repeats (the rate-limit ones are the replay's own).
KEPT_HEADERS = ("Content-Type", "Location", "X-Budget-Remaining-USD")


class KeyReused(ApiError):
    status, code = 422, "idempotency_key_reused"


class InProgress(ApiError):
    status, code = 409, "idempotency_in_progress"


CLAIM_SQL = """
INSERT INTO idempotency_keys AS i (tenant_id, key, fingerprint, claimed_until)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (tenant_id, key) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, claimed_until = EXCLUDED.claimed_until, created_at = now(),
        status = NULL, headers = NULL, body = NULL
    WHERE i.created_at < now() - make_interval(secs => $5)
       OR (i.status IS NULL AND i.claimed_until < now())
RETURNING true
"""
READ_SQL = "SELECT fingerprint, status, headers, body FROM idempotency_keys WHERE tenant_id = $1 AND key = $2"
STORE_SQL = """UPDATE idempotency_keys SET status = $4, headers = $5, body = $6, fingerprint = $7
               WHERE tenant_id = $1 AND key = $2 AND fingerprint = $3 AND status IS NULL"""
DROP_SQL = "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND fingerprint = $3 AND status IS NULL"
SWEEP_SQL = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)"


def _valid_key(value: str) -> bool:
    return 0 < len(value) <= MAX_KEY_CHARS and all(" " <= c <= "~" for c in value)


def fingerprint(request: web.Request) -> bytes:
    body = request.get(body_key)
    query = request.get(query_key)
    text = json.dumps([request.method, request.path, query, body], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).digest()


_content_key = web.RequestKey("idempotent_content", bytes)


def note_content(request: web.Request, digest: bytes) -> None:
    """An upload's handler: what it stored (its ``content_digest`` of a repeat must match)."""
    request[_content_key] = digest


def _with_content(mark: bytes, content: bytes) -> bytes:
    return hashlib.sha256(mark + content).digest()


def _replay(row) -> web.Response:
    headers = {**row["headers"], REPLAYED: "true"}  # jsonb: a dict (the pool's codec)
    return web.Response(status=row["status"], body=row["body"], headers=headers)


@web.middleware
async def idempotency_middleware(request: web.Request, handler) -> web.StreamResponse:
    """After validation: a declared operation with an ``Idempotency-Key`` runs once per key."""
    declared = operation_of(request.match_info.handler)
    if declared is None or not declared.idempotent or HEADER not in request.headers:
        return await handler(request)
    key = request.headers[HEADER]
    if len(request.headers.getall(HEADER)) > 1 or not _valid_key(key):
        raise ValidationFailed("The Idempotency-Key header is not valid.", details={HEADER: [
            f"Send one, of 1 to {MAX_KEY_CHARS} printable ASCII characters."]})
    if (request.get(body_key) or {}).get("stream"):
        raise ValidationFailed("A streamed answer cannot be replayed: send Idempotency-Key without "
                               '"stream": true, or stream without the key.',
                               details={HEADER: ['Not accepted with "stream": true.']})
    tenant = request[caller_key].tenant_id
    mark = fingerprint(request)
    waited = 0.0
    while True:
        async with acquire(request) as conn:
            if await conn.fetchval(CLAIM_SQL, tenant, key, mark, float(CLAIM_S), float(KEEP_S)):
                break
            row = await conn.fetchrow(READ_SQL, tenant, key)
        if row is None:  # dropped meanwhile (the first failed): claim it again
            continue
        if bytes(row["fingerprint"]) != mark:
            if row["status"] is not None and declared.content_digest is not None:
                file_mark = _with_content(mark, await declared.content_digest(request))
                if hmac.compare_digest(file_mark, bytes(row["fingerprint"])):
                    return _replay(row)
            raise KeyReused("This Idempotency-Key was used for another request in the last 24 hours; use a new "
                            "key for a new request.")
        if row["status"] is not None:
            return _replay(row)
        if waited >= WAIT_S:
            raise InProgress("A request with this Idempotency-Key is still running; repeat it later to get its "
                             "answer.", headers={"Retry-After": str(RETRY_AFTER_S)})
        await asyncio.sleep(POLL_S)
        waited += POLL_S
    return await _run_claimed(request, handler, tenant, key, mark)


async def _run_claimed(request: web.Request, handler, tenant, key: str, mark: bytes) -> web.StreamResponse:
    pool = request.app[db_pool_key]
    try:
        response = await handler(request)
    except BaseException:
        await asyncio.shield(_drop(pool, tenant, key, mark))
        raise
    if not isinstance(response, web.Response) or response.status >= 400 or response.body is None:
        await asyncio.shield(_drop(pool, tenant, key, mark))
        return response
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    body = response.body if isinstance(response.body, bytes) else bytes(response.body)
    content = request.get(_content_key)
    if operation_of(request.match_info.handler).content_digest is not None and content is None:
        await asyncio.shield(_drop(pool, tenant, key, mark))  # nothing to compare a repeat's file with
        return response
    stored_mark = mark if content is None else _with_content(mark, content)
    try:
        async with acquire(request) as conn:
            await conn.execute(STORE_SQL, tenant, key, mark, response.status, headers, body, stored_mark)
    except ApiError:
        # The answer is given all the same; a repeat finds the claim and, once it is
        # stale, runs again.
        log.warning("could not store an idempotent answer", extra={"idempotency_key_chars": len(key)})
    return response


async def _drop(pool: asyncpg.Pool, tenant, key: str, mark: bytes) -> None:
    try:
        async with pool.acquire(timeout=5) as conn:
            await conn.execute(DROP_SQL, tenant, key, mark, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        log.warning("could not drop a failed request's idempotency claim; it goes stale by itself", exc_info=True)


async def sweep_ctx(app: web.Application) -> Any:
    """Keys older than ``KEEP_S`` are deleted every ``SWEEP_S``, by every worker (cheap)."""
    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await app[db_pool_key].execute(SWEEP_SQL, float(KEEP_S))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                log.warning("could not delete old idempotency keys", exc_info=True)

    task = asyncio.create_task(sweep(), name="idempotency keys")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
