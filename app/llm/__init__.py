"""LLM features' plumbing: the gateway (``gateway``), prices, accounting, BYOK and the prompts (``tasks``)."""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from ..auth import caller
from ..db import acquire
from ..keys import db_pool_key, llm_key, settings_key
from . import byok
from .gateway import CallContext, Gateway


async def llm_ctx(app: web.Application) -> AsyncIterator[None]:
    """One gateway (and connection pool) per worker, closed on shutdown."""
    app[llm_key] = Gateway(app[settings_key], app[db_pool_key])
    yield
    await app[llm_key].close()


async def call_context(request: web.Request, endpoint: str) -> CallContext:
    """The calls of this request: the caller's tenant pays, along its provider route."""
    who = caller(request)
    async with acquire(request) as conn:
        own = await byok.get_settings(conn, who.tenant_id)
    gateway = request.app[llm_key]
    return CallContext(gateway, who.tenant_id, who.key_id, endpoint, gateway.route(own))
