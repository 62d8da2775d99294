"""Per-tenant accounting of LLM calls: one ``llm_calls`` row per provider call, and the cost report."""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

import asyncpg

log = logging.getLogger("app.llm")

RECORD_TIMEOUT_S = 5.0

GROUPS = {
    "day": "to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "model": "c.model",
    "endpoint": "c.endpoint",
    "key": "COALESCE(k.key_prefix, 'deleted key')",
}


@dataclass(frozen=True)
class LLMCall:
    tenant_id: uuid.UUID
    key_id: uuid.UUID | None
    endpoint: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    usage_estimated: bool
    cost_usd: Decimal
    latency_ms: int
    attempts: int
    outcome: str
    error: str | None = None


_INSERT = f"""INSERT INTO llm_calls ({', '.join(LLMCall.__dataclass_fields__)})
              VALUES ({', '.join(f'${n}' for n in range(1, len(LLMCall.__dataclass_fields__) + 1))})"""


async def record(pool: asyncpg.Pool, call: LLMCall) -> None:
    """Store the call and log it. The tokens are spent either way: a database that
    cannot take the row costs the row (logged in full), not the caller's answer."""
    fields = asdict(call)
    log.info("llm call %s %s via %s: %s", call.endpoint, call.model, call.provider, call.outcome,
             extra={"llm": {k: str(v) if isinstance(v, (uuid.UUID, Decimal)) else v for k, v in fields.items()}})
    try:
        async with pool.acquire(timeout=RECORD_TIMEOUT_S) as conn:
            await conn.execute(_INSERT, *fields.values(), timeout=RECORD_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        log.exception("could not record an LLM call in llm_calls (the log line above has its figures)")


class Recorder:
    """Writes ``llm_calls`` rows off the request path (the answer does not wait for the
    insert); the worker's shutdown waits for the last ones (``drain``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending: set[asyncio.Task] = set()

    def submit(self, call: LLMCall) -> None:
        task = asyncio.get_running_loop().create_task(record(self._pool, call))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)


def _usd(value: Decimal | None) -> float:
    return float(value or 0)


async def cost_report(conn: asyncpg.Connection, tenant_id: uuid.UUID, first: datetime.date, last: datetime.date,
                      group_by: str) -> dict[str, Any]:
    """Calls, tokens and cost of one tenant from ``first`` to ``last`` (UTC days, inclusive)."""
    rows = await conn.fetch(
        f"""SELECT {GROUPS[group_by]} AS key, count(*) AS calls,
                   COALESCE(sum(c.input_tokens), 0) AS input_tokens,
                   COALESCE(sum(c.output_tokens), 0) AS output_tokens,
                   COALESCE(sum(c.cost_usd), 0) AS cost_usd
            FROM llm_calls c LEFT JOIN api_keys k ON k.id = c.key_id
            WHERE c.tenant_id = $1 AND c.created_at >= $2 AND c.created_at < $3
            GROUP BY 1 ORDER BY 1""",
        tenant_id, _utc_midnight(first), _utc_midnight(last + datetime.timedelta(days=1)))
    groups = [{"key": r["key"], "calls": r["calls"], "input_tokens": r["input_tokens"],
               "output_tokens": r["output_tokens"], "cost_usd": _usd(r["cost_usd"])} for r in rows]
    total = {"calls": sum(g["calls"] for g in groups),
             "input_tokens": sum(g["input_tokens"] for g in groups),
             "output_tokens": sum(g["output_tokens"] for g in groups),
             "cost_usd": _usd(sum((r["cost_usd"] for r in rows), Decimal(0)))}
    return {"from": first.isoformat(), "to": last.isoformat(), "group_by": group_by, "total": total, "groups": groups}


def _utc_midnight(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.timezone.utc)
