"""Many requests at once with one key, each on a new connection (so on any worker)."""

from __future__ import annotations

import asyncio

import aiohttp


async def burst(url: str, headers: dict, count: int, *, connections: int | None = None) -> list[int]:
    """``count`` GETs at once over at most ``connections`` (default: ``count``) connections; their statuses."""
    connector = aiohttp.TCPConnector(limit=connections or count, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> int:
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                return resp.status
        return await asyncio.gather(*[one() for _ in range(count)])
