"""Telegram messages to the operator when a tenant passes 80 % and 100 % of its monthly
LLM budget.

The database writes each alert once per tenant, month, budget and threshold (migration
0012): ``llm_settle`` when a call's cost takes the month's spend past 80 % or to 100 %,
``llm_budget_refused`` when the tenant's budget refuses a call (the budget is reached
for that call: a budget cannot be overspent, so a tenant meets its end before it spends
100 %). Every worker with a bot sends the pending alerts every ``POLL_S``: it leases a
row (the lease is also the backoff of the next try), sends it, marks it sent. A failed
send is logged and tried again after the lease; an alert not sent within a day is left.
A worker that dies between the send and the mark sends it again: at least once.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

import asyncpg

from ..telegram import Bot, TelegramError
from .budgets import usd_text

log = logging.getLogger("app.llm")

POLL_S = 10.0
BATCH = 20
RETRY_AFTER_S = 30.0  # doubled with each failed try,
MAX_RETRY_AFTER_S = 3600.0  # up to this
DB_TIMEOUT_S = 5.0

CLAIM_SQL = """UPDATE budget_alerts a SET attempts = a.attempts + 1,
                      next_attempt_at = now() + make_interval(secs => least($1 * 2 ^ a.attempts, $2))
               FROM tenants t
               WHERE t.id = a.tenant_id AND (a.tenant_id, a.period_start, a.budget_usd, a.threshold_pct) IN (
                   SELECT tenant_id, period_start, budget_usd, threshold_pct FROM budget_alerts
                   WHERE sent_at IS NULL AND next_attempt_at <= now() AND created_at > now() - interval '1 day'
                   ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED)
               RETURNING a.tenant_id, a.period_start, a.budget_usd, a.threshold_pct, a.spent_usd, a.refused_usd,
                         a.attempts, t.name AS tenant_name"""
SENT_SQL = """UPDATE budget_alerts SET sent_at = now()
              WHERE tenant_id = $1 AND period_start = $2 AND budget_usd = $3 AND threshold_pct = $4"""


def _usd(amount: Decimal) -> str:
    """Cents from 1 USD up; below, at least 4 decimals and 2 significant digits."""
    if amount >= 1:
        return f"{amount:,.2f}"
    return usd_text(amount.quantize(Decimal(1).scaleb(min(-4, amount.adjusted() - 1)))) if amount else "0"


def message(alert: dict[str, Any]) -> str:
    """The text the operator reads (plain text: tenant names are the operator's own words)."""
    month = alert["period_start"].strftime("%B %Y")
    spent, budget = alert["spent_usd"], alert["budget_usd"]
    figures = f"{_usd(spent)} of {_usd(budget)} USD spent" + (f", {spent / budget * 100:.0f} %" if budget else "")
    who = f"tenant \"{alert['tenant_name']}\" ({alert['tenant_id']})"
    if alert["threshold_pct"] == 80:
        return (f"⚠️ Course Supporter: {who} has passed 80 % of its LLM budget for {month} ({figures}). "
                "Calls that do not fit the rest will be refused (402 budget_exceeded).")
    if alert["refused_usd"] is not None:
        head = (f"🔴 Course Supporter: {who} has reached its LLM budget for {month}: a call that could cost up to "
                f"{_usd(alert['refused_usd'])} USD was refused ({figures}).")
    else:
        head = f"🔴 Course Supporter: {who} has spent its whole LLM budget for {month} ({figures})."
    return (f"{head} Calls that do not fit are refused (402) until next month or a larger budget: "
            f"course-supporter-admin tenant budget set {alert['tenant_id']} --usd AMOUNT")


def _described(alert: dict[str, Any]) -> dict[str, Any]:
    return {"tenant_id": str(alert["tenant_id"]), "period_start": alert["period_start"].isoformat(),
            "threshold_pct": alert["threshold_pct"], "budget_usd": float(alert["budget_usd"]),
            "spent_usd": float(alert["spent_usd"]), "attempt": alert["attempts"]}


class BudgetAlerts:
    """A worker's sender of the pending budget alerts."""

    def __init__(self, pool: asyncpg.Pool, bot: Bot) -> None:
        self._pool = pool
        self._bot = bot

    async def send_pending(self) -> int:
        """Send the alerts due now (leased to this worker meanwhile); how many went out."""
        async with self._pool.acquire(timeout=DB_TIMEOUT_S) as conn:
            alerts = [dict(a) for a in await conn.fetch(CLAIM_SQL, RETRY_AFTER_S, MAX_RETRY_AFTER_S, BATCH,
                                                        timeout=DB_TIMEOUT_S)]
        sent = 0
        for alert in alerts:
            try:
                await self._bot.send(message(alert))
            except TelegramError as exc:
                log.warning("could not send a budget alert to Telegram; it is tried again later",
                            extra={"budget_alert": _described(alert), "error": str(exc)})
                continue
            async with self._pool.acquire(timeout=DB_TIMEOUT_S) as conn:
                await conn.execute(SENT_SQL, alert["tenant_id"], alert["period_start"], alert["budget_usd"],
                                   alert["threshold_pct"], timeout=DB_TIMEOUT_S)
            log.info("sent a budget alert to Telegram", extra={"budget_alert": _described(alert)})
            sent += 1
        return sent

    async def run(self) -> None:
        """``send_pending`` every ``POLL_S``, for as long as the worker runs."""
        while True:
            try:
                await self.send_pending()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                log.warning("could not read the pending budget alerts", exc_info=True)
            await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        await self._bot.close()
