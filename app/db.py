"""The asyncpg pool: created on app start-up, closed on cleanup."""

from __future__ import annotations

import logging
from typing import AsyncIterator

import asyncpg
from aiohttp import web

from . import metrics
from .config import Settings
from .errors import ServiceUnavailable
from .jsonutil import dumps, loads
from .keys import db_pool_key, settings_key

log = logging.getLogger("app.db")

# Short enough that a dead database gives a fast 503, never a hung request.
CONNECT_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 15.0

# Errors meaning "the database is not there right now" (not "your query is wrong"):
# unreachable, restarting (class 57: admin or crash shutdown, cannot connect now),
# connection-level errors (class 08), and a connection that died under a statement.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.TooManyConnectionsError,
)
# The same inside a block holding a connection: asyncpg's own errors and its command
# timeout (a bare OSError there is someone else's, e.g. the client hanging up).
DIED_UNDER_A_STATEMENT = tuple(error for error in UNAVAILABLE if error is not OSError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=dumps, decoder=loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook. The app never leaves session state behind (no SET, LISTEN,
    advisory locks or open cursors), so the default reset query -- one extra round
    trip per release -- is skipped. asyncpg still rolls back an open transaction."""


POOL_MAX_SIZE = 10


async def create_pool(database_url: str, *, min_size: int = 1, max_size: int = POOL_MAX_SIZE) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=COMMAND_TIMEOUT_S,
        init=_init_connection,
        reset=_keep_session,
        server_settings={"timezone": "UTC", "application_name": "course-supporter"},
    )


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    settings: Settings = app[settings_key]
    # min_size=0: the app starts (and /health says "degraded") while the database is down.
    app[db_pool_key] = await create_pool(settings.database_url, min_size=0)
    metrics.db_pool_size.set(POOL_MAX_SIZE)
    log.info("database pool ready")
    yield
    await app[db_pool_key].close()


def acquire(request: web.Request):
    """A pooled connection for this request; a dead database becomes a 503."""
    return _Acquire(request.app[db_pool_key])


def pooled(pool: asyncpg.Pool):
    """As ``acquire``, from the pool given (for code that holds the pool, not the request)."""
    return _Acquire(pool)


class _Acquire:
    """Also turns the database going away under a statement (a restart terminating the
    session) into the 503; the statement's transaction is gone with it, nothing half-done."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._ctx = None

    async def __aenter__(self) -> asyncpg.Connection:
        # Only an acquire that finds every connection taken waits (and is counted): on the
        # fast path the metrics cost one write less each way. An idle connection is taken
        # without a suspension, so that acquire needs no timeout (asyncpg's costs a timer).
        idle = self._pool.get_idle_size() > 0
        waits = not idle and self._pool.get_size() >= self._pool.get_max_size()
        self._ctx = self._pool.acquire(timeout=None if idle else ACQUIRE_TIMEOUT_S)
        if waits:
            metrics.acquire_waits()
        try:
            conn = await self._ctx.__aenter__()
        except UNAVAILABLE as exc:
            raise _unavailable() from exc
        finally:
            if waits:
                metrics.acquire_waited()
        metrics.connection_taken()
        return conn

    async def __aexit__(self, exc_type, exc, tb) -> None:
        metrics.connection_returned()
        try:
            await self._ctx.__aexit__(exc_type, exc, tb)  # a dead connection is dropped, not pooled
        except UNAVAILABLE as release_failure:
            if exc is None:
                raise _unavailable() from release_failure
        if isinstance(exc, DIED_UNDER_A_STATEMENT):
            raise _unavailable() from exc


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("The database is unavailable; try again shortly.", code="database_unavailable")
