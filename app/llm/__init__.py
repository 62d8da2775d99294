"""LLM features' plumbing: the gateway (``gateway``), prices, accounting, BYOK and the prompts (``tasks``)."""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from ..auth import caller
from ..keys import db_pool_key, llm_key, settings_key
from .gateway import CallContext, Gateway


async def llm_ctx(app: web.Application) -> AsyncIterator[None]:
    """One gateway (and connection pool) per worker, closed on shutdown."""
    app[llm_key] = Gateway(app[settings_key], app[db_pool_key])
    yield
    await app[llm_key].close()


def call_context(request: web.Request, endpoint: str) -> CallContext:
    """The calls of this request: the caller's tenant pays, along its provider route
    (its own provider came with the authentication, in the same round trip)."""
    who = caller(request)
    gateway = request.app[llm_key]
    return CallContext(gateway, who.tenant_id, who.key_id, endpoint, gateway.route(who.tenant_llm))
