"""The application factory: ``gunicorn 'app.main:create_app' --worker-class aiohttp.GunicornWebWorker``."""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import backup, error_tracking, metrics
from .auth import auth_ctx, auth_middleware
from .config import Settings
from .db import pool_ctx
from .idempotency import idempotency_middleware, sweep_ctx
from .keys import draining_key, settings_key
from .handlers.uploads import tus_headers
from .llm import budget_header, llm_ctx
from .log import setup_logging
from .middlewares import add_response_headers, cors_middleware, request_middleware, validation_middleware
from .release import RELEASE
from .routes import setup_openapi, setup_routes
from .storage import stop_uploads_on_shutdown, storage_ctx

# JSON bodies are small; file uploads stream and are limited by MAX_UPLOAD_BYTES instead.
CLIENT_MAX_SIZE = 8 * 1024 * 1024
# nginx limits request lines and header fields to 32 KiB (over HTTP/2 it may count them
# HPACK-compressed, so longer ones reach the app). Over aiohttp's own limits (8190 bytes,
# 128 headers) it answers in plain text, past every middleware: these are above what
# nginx forwards.
HEADER_LIMITS = {"max_line_size": 64 * 1024, "max_field_size": 64 * 1024, "max_headers": 256}


async def start_draining(app: web.Application) -> None:
    """From the start of the shutdown on, GET /ready says this process takes no more traffic."""
    app[draining_key].set()


async def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    setup_logging(settings.log_level)
    error_tracking.setup(settings, RELEASE)
    if not settings.metrics_enabled:
        metrics.switch_off()
    middlewares = [request_middleware]
    if settings.cors_origins:
        middlewares.append(cors_middleware(settings.cors_origins))
    middlewares += [auth_middleware, validation_middleware, idempotency_middleware]
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=middlewares, handler_args=HEADER_LIMITS)
    app[settings_key] = settings
    app[draining_key] = asyncio.Event()
    app.cleanup_ctx.append(pool_ctx)
    app.cleanup_ctx.append(auth_ctx)
    app.cleanup_ctx.append(storage_ctx)
    app.cleanup_ctx.append(llm_ctx)
    app.cleanup_ctx.append(backup.watch_ctx)
    app.cleanup_ctx.append(metrics.flush_ctx)
    app.cleanup_ctx.append(sweep_ctx)
    app.on_shutdown.insert(0, start_draining)
    app.on_shutdown.append(stop_uploads_on_shutdown)
    app.on_response_prepare.append(add_response_headers)
    app.on_response_prepare.append(budget_header)
    app.on_response_prepare.append(tus_headers)
    setup_routes(app)
    setup_openapi(app)
    return app
