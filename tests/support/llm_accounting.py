"""What the app accounted for a tenant's LLM calls (the llm_calls table)."""

from __future__ import annotations

import asyncio


async def llm_calls(db, tenant_id, count: int = 1, timeout: float = 5.0) -> list[dict]:
    """The tenant's accounted LLM calls, oldest first, once ``count`` of them are in
    (the app writes them in the background, just after answering)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await db.fetch("SELECT * FROM llm_calls WHERE tenant_id = $1 ORDER BY id", tenant_id)
        if len(rows) >= count or asyncio.get_running_loop().time() > deadline:
            return [dict(r) for r in rows]
        await asyncio.sleep(0.02)
