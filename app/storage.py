"""S3-compatible object storage (boto3), kept off the event loop.

boto3 is blocking, so every call runs in the default thread pool. The client
is created once per worker (it is thread-safe) with short timeouts: a dead
storage endpoint must give a fast error, never a hung request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import boto3
from aiohttp import web
from botocore.config import Config

from .config import Settings
from .keys import settings_key, storage_key

log = logging.getLogger("app.storage")

HEALTH_TIMEOUT_S = 3.0


class Storage:
    def __init__(self, bucket: str, endpoint_url: str | None, *, connect_timeout: float = 3.0,
                 read_timeout: float = 30.0, max_attempts: int = 3) -> None:
        self.bucket = bucket
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                          retries={"max_attempts": max_attempts, "mode": "standard"},
                          max_pool_connections=32),
        )
        # Health checks get their own client with no retries and tight timeouts.
        self._probe = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=1.0, read_timeout=2.0, retries={"max_attempts": 1}),
        )

    async def _run(self, func, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(None, lambda: func(*args, **kwargs))

    async def is_healthy(self) -> bool:
        """A cheap HEAD of the bucket, bounded in time."""
        try:
            await asyncio.wait_for(self._run(self._probe.head_bucket, Bucket=self.bucket), HEALTH_TIMEOUT_S)
            return True
        except Exception as exc:  # any failure means "not usable now"
            log.warning("storage health check failed: %s", exc.__class__.__name__)
            return False


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings: Settings = app[settings_key]
    app[storage_key] = Storage(settings.s3_bucket, settings.s3_endpoint_url)
    yield
