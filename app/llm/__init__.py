"""LLM features' plumbing: the gateway (``gateway``), prices, accounting, BYOK and the prompts (``tasks``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from aiohttp import web

from ..auth import auth_key, caller
from ..keys import db_pool_key, llm_key, settings_key
from ..telegram import Bot
from .budget_alerts import BudgetAlerts
from .gateway import CallContext, Gateway


call_key: web.RequestKey[CallContext] = web.RequestKey("llm_calls", CallContext)


async def llm_ctx(app: web.Application) -> AsyncIterator[None]:
    """One gateway (and connection pool) per worker, closed on shutdown; its budget
    reservations tended meanwhile, and the budget alerts sent if there is a bot."""
    settings = app[settings_key]
    gateway = app[llm_key] = Gateway(settings, app[db_pool_key])
    gateway.budgets.watch(app[auth_key].cache)
    tasks = [asyncio.create_task(gateway.budgets.run(), name="LLM budget reservations")]
    alerts = None
    if settings.telegram_bot_token:
        alerts = BudgetAlerts(app[db_pool_key], Bot(settings.telegram_api_url, settings.telegram_bot_token,
                                                    settings.telegram_chat_id))
        tasks.append(asyncio.create_task(alerts.run(), name="LLM budget alerts"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if alerts is not None:
        await alerts.close()
    await gateway.close()


def call_context(request: web.Request, endpoint: str) -> CallContext:
    """The calls of this request: the caller's tenant pays, along its provider route
    (its own provider came with the authentication, in the same round trip)."""
    who = caller(request)
    gateway = request.app[llm_key]
    ctx = request[call_key] = CallContext(gateway, who.tenant_id, who.key_id, endpoint,
                                          gateway.route(who.tenant_llm), who.budgeted)
    return ctx


async def budget_header(request: web.Request, response: web.StreamResponse) -> None:
    """An LLM endpoint's answer says what is left of the budget over its calls."""
    ctx = request.get(call_key)
    if ctx is not None:
        response.headers.update(ctx.reservation.header)
