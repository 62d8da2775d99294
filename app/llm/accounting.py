"""Per-tenant accounting of LLM calls: one ``llm_calls`` row per provider call, which
also counts its cost in the month's spend and settles the call's budget reservation
(``llm_settle``, in the row's own statement), and the cost report."""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Coroutine

import asyncpg

log = logging.getLogger("app.llm")

RECORD_TIMEOUT_S = 5.0
# The most UTC days one report covers (the tenant's cost report, the operator's usage).
MAX_REPORT_DAYS = 366

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


_FIELDS = list(LLMCall.__dataclass_fields__)
_INSERT = f"""WITH call AS (INSERT INTO llm_calls ({', '.join(_FIELDS)})
                            VALUES ({', '.join(f'${n}' for n in range(1, len(_FIELDS) + 1))}))
              SELECT llm_settle($1, $2, ${_FIELDS.index('cost_usd') + 1}, ${len(_FIELDS) + 1})"""
# A call that ran on a budget slice: its cost is charged to the slice first (migration 0013).
_INSERT_CHARGED = f"""WITH call AS (INSERT INTO llm_calls ({', '.join(_FIELDS)})
                                    VALUES ({', '.join(f'${n}' for n in range(1, len(_FIELDS) + 1))}))
                      SELECT llm_charge(${len(_FIELDS) + 2}, ${_FIELDS.index('cost_usd') + 1}),
                             llm_settle($1, $2, ${_FIELDS.index('cost_usd') + 1}, ${len(_FIELDS) + 1})"""


async def record(pool: asyncpg.Pool, call: LLMCall, reservation: uuid.UUID | None = None,
                 budget_slice: uuid.UUID | None = None) -> None:
    """Store the call, count its cost in the month's spend, release the budget reservation
    it settles or charge the budget slice it ran on (if any), and log it. The tokens are
    spent either way: a database that cannot take the row costs the row (logged in full),
    not the caller's answer; the reservation then expires by itself."""
    fields = asdict(call)
    log.info("llm call %s %s via %s: %s", call.endpoint, call.model, call.provider, call.outcome,
             extra={"llm": {k: str(v) if isinstance(v, (uuid.UUID, Decimal)) else v for k, v in fields.items()}})
    try:
        async with pool.acquire(timeout=RECORD_TIMEOUT_S) as conn:
            if budget_slice is None:
                await conn.execute(_INSERT, *fields.values(), reservation, timeout=RECORD_TIMEOUT_S)
            else:
                await conn.execute(_INSERT_CHARGED, *fields.values(), None, budget_slice, timeout=RECORD_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        log.exception("could not record an LLM call in llm_calls (the log line above has its figures)")


class Recorder:
    """Writes ``llm_calls`` rows off the request path (the answer does not wait for the
    insert); the worker's shutdown waits for the last ones (``drain``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending: set[asyncio.Task] = set()

    def submit(self, call: LLMCall, reservation: uuid.UUID | None = None,
               budget_slice: uuid.UUID | None = None) -> asyncio.Task:
        return self.later(record(self._pool, call, reservation, budget_slice))

    def later(self, work: Coroutine) -> asyncio.Task:
        """Run ``work`` off the request path; shutdown waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

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


USAGE_SQL = """
SELECT t.id AS tenant_id, t.name, c.calls, c.input_tokens, c.output_tokens, c.cost_usd,
       t.monthly_budget_usd AS budget_usd, COALESCE(s.spent_usd, 0) AS month_spent_usd
FROM tenants t
LEFT JOIN (SELECT tenant_id, count(*) AS calls, sum(input_tokens) AS input_tokens,
                  sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
           FROM llm_calls WHERE created_at >= $1 AND created_at < $2 GROUP BY tenant_id) c ON c.tenant_id = t.id
LEFT JOIN tenant_spend s ON s.tenant_id = t.id AND s.period_start = llm_period_start()
WHERE c.calls IS NOT NULL OR t.monthly_budget_usd IS NOT NULL
ORDER BY c.cost_usd DESC NULLS LAST, t.name, t.id
"""


async def usage_report(conn: asyncpg.Connection, first: datetime.date, last: datetime.date) -> list[dict[str, Any]]:
    """Every tenant with LLM calls from ``first`` to ``last`` (UTC days, inclusive) or with a
    budget: its calls, tokens and cost in those days, dearest first; its monthly budget and
    the share of it this month's spend has used (null without a budget)."""
    rows = await conn.fetch(USAGE_SQL, _utc_midnight(first), _utc_midnight(last + datetime.timedelta(days=1)))
    report = []
    for r in rows:
        budget = r["budget_usd"]
        report.append({
            "tenant_id": r["tenant_id"], "name": r["name"], "calls": r["calls"] or 0,
            "input_tokens": r["input_tokens"] or 0, "output_tokens": r["output_tokens"] or 0,
            "cost_usd": _usd(r["cost_usd"]), "budget_usd": None if budget is None else float(budget),
            "month_spent_usd": _usd(r["month_spent_usd"]),
            "budget_share_used": None if budget is None else (
                float(r["month_spent_usd"] / budget) if budget > 0 else (1.0 if r["month_spent_usd"] > 0 else 0.0)),
        })
    return report


def _utc_midnight(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.timezone.utc)
