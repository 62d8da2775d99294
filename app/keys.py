"""Typed keys for what the application object holds."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import asyncpg

    from .config import Settings
    from .llm.gateway import Gateway
    from .storage import Storage

settings_key: web.AppKey["Settings"] = web.AppKey("settings")
db_pool_key: web.AppKey["asyncpg.Pool"] = web.AppKey("db_pool")
storage_key: web.AppKey["Storage"] = web.AppKey("storage")
llm_key: web.AppKey["Gateway"] = web.AppKey("llm")
# Set once this process has begun to shut down (GET /ready answers 503 from then on).
draining_key: web.AppKey[asyncio.Event] = web.AppKey("draining", asyncio.Event)

# What a request carries between the middlewares.
request_id_key: web.RequestKey[str] = web.RequestKey("request_id", str)
cors_origin_key: web.RequestKey[str] = web.RequestKey("cors_origin", str)
ratelimit_headers_key: web.RequestKey[dict] = web.RequestKey("ratelimit_headers", dict)
