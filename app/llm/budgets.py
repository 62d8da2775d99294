"""Monthly LLM spend limits per tenant and per key (USD, calendar months in UTC).

A call of a key that has a budget over it (its own or its tenant's: the key cache
knows) first reserves its worst case -- ``worst_case``: every byte of the prompt a
token, plus the request's ``max_tokens`` or the model's output cap, at the dearest
model of the route -- in one statement that checks and takes it under the spend
rows' locks (``llm_reserve``, migration 0009), so that concurrent calls on any worker
cannot pass a budget together. A call that does not fit is refused (402
``budget_exceeded``) before any provider is asked. The call's ``llm_calls`` row
settles it in the row's own transaction: the reservation goes, the real cost stays
(``accounting.record``). A failed call gives its reservation back. The operator is told
when a tenant passes 80 % and 100 % of its budget (``budget_alerts``).

Most calls need no statement of their own: a worker reserving for a call may be
granted a **slice** (``SLICE_SHARE`` of the tightest budget, while ``SLICE_FLOOR`` of it
stays free beside), admits the next calls of that tenant and key from the slice in hand
while their worst cases fit, and charges each call's cost to the slice when its row is
written (migration 0013). A slice is a reservation like any other, so the budgets hold
however many workers take slices. Any change to keys or tenants (a budget set, say)
retires every slice before the change is in force (the key cache's notifications), as
does an untrusted key cache, a new month, or a TTL without calls; what is left of a
retired slice goes back once its calls' rows are written.

A reservation lives ``LLM_RESERVATION_TTL_S``; each worker extends those of its calls
still running (and its slices) every third of it, and releases the ones nobody
extended -- a worker that died mid-call -- logging each (``Budgets.run``).

Calls without a budget over them reserve nothing: their cost is counted all the
same when their row is written, so a budget set mid-month sees the month's spend.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, AsyncIterator, Callable, Coroutine, Sequence

import asyncpg

from ..db import pooled
from ..errors import ApiError

log = logging.getLogger("app.llm")

# Chat framing per message and per reply, in tokens (OpenAI's accounting: at most 4 and 3).
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
RESERVE_TIMEOUT_S = 5.0
# A worker reserves a slice of this share of the tightest budget when a call needs less,
# while at least SLICE_FLOOR of each budget stays free beside it: near the end of a budget
# every call reserves its own worst case again.
SLICE_SHARE = Decimal("0.01")
SLICE_FLOOR = Decimal("0.25")
RELEASE_SQL = "SELECT llm_release($1)"
REFUSED_SQL = "SELECT llm_budget_refused($1, $2)"
HEADER = "X-Budget-Remaining-USD"


class BudgetExceeded(ApiError):
    status, code = 402, "budget_exceeded"


def prompt_tokens_bound(messages: Sequence[dict]) -> int:
    """At most this many prompt tokens: a byte-level BPE token covers at least one byte."""
    return (sum(len(str(m.get("content", "")).encode("utf-8")) for m in messages)
            + TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_REPLY)


@dataclass(eq=False)
class Slice:
    """A reservation larger than one call, held by this worker for the calls of one tenant
    and key: admitted from it while it lasts, each call's cost charged to it."""

    id: uuid.UUID
    account: tuple[uuid.UUID, uuid.UUID | None]  # (tenant, key)
    amount: Decimal  # in the database, less the costs charged since
    outside: Decimal  # what was left of the tightest budget beside it when it was taken
    period: datetime.date
    generation: int  # the key cache's when it was taken: any change to keys or tenants retires it
    held: Decimal = Decimal(0)  # the worst cases of this worker's calls running on it
    used_at: float = 0.0
    retired: bool = False
    settling: set = field(default_factory=set)  # its calls' llm_calls rows still being written

    @property
    def free(self) -> Decimal:
        return self.amount - self.held


@dataclass(eq=False)
class Reservation:
    """What a call holds: ``id`` None when no budget is over it (nothing reserved); with a
    ``slice``, its worst case is held in that slice (``id`` is the slice's)."""

    id: uuid.UUID | None
    amount_usd: Decimal
    remaining_usd: Decimal | None  # of the tightest budget, after this reservation
    slice: Slice | None = None
    open: bool = True  # until its call has ended (settled or given back)

    @property
    def header(self) -> dict[str, str]:
        return {} if self.remaining_usd is None else {HEADER: usd_text(self.remaining_usd)}


NOTHING = Reservation(None, Decimal(0), None, open=False)


def usd_text(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.00000001')).normalize():f}"


def _period_now() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date().replace(day=1)


class Budgets:
    """A worker's reservations: taken, extended while their calls run, given back; and its
    budget slices, from which it admits calls without asking the database."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float, later: Callable[[Coroutine], asyncio.Task]) -> None:
        self._pool = pool
        self.ttl_s = ttl_s
        self._later = later  # runs work off the request path, awaited at shutdown
        self._live: set[uuid.UUID] = set()  # the reservations (and slices) this worker holds
        self._slices: dict[tuple, Slice] = {}  # the slice in hand per (tenant, key)
        self._cache = None  # the key cache: slices only while it is trusted (see ``watch``)

    def watch(self, cache) -> None:
        """Take slices, trusting them while ``cache`` (app/keycache.py) is: a change to any key
        or tenant (a budget set, say) retires every slice before the change is in force."""
        self._cache = cache
        cache.changed.append(self._retire_all)

    def _retire_all(self) -> None:
        for piece in list(self._slices.values()):
            self._retire(piece)

    def _usable(self, piece: Slice) -> bool:
        cache = self._cache
        return (not piece.retired and piece.generation == cache.generation and cache.trusted()
                and piece.period == _period_now())

    async def reserve(self, tenant_id: uuid.UUID, key_id: uuid.UUID | None, amount: Decimal) -> Reservation:
        """Take ``amount`` from the tenant's and the key's budgets, or raise ``BudgetExceeded``."""
        account = (tenant_id, key_id)
        piece = self._slices.get(account)
        if piece is not None:
            if self._usable(piece) and piece.free >= amount:
                piece.held += amount
                piece.used_at = time.monotonic()
                return Reservation(piece.id, amount, piece.outside + piece.free, piece)
            self._retire(piece)
        share = SLICE_SHARE if self._cache is not None and self._cache.trusted() else 0
        generation = self._cache.generation if self._cache is not None else 0
        async with pooled(self._pool) as conn:  # the database away: 503 database_unavailable
            row = await conn.fetchrow("SELECT * FROM llm_reserve($1, $2, $3, $4, $5, $6)", tenant_id, key_id, amount,
                                      self.ttl_s, share, SLICE_FLOOR)
        remaining = row["remaining_usd"]
        if row["reservation"] is None:
            if row["refused_by"] == "tenant":  # the operator hears of it (once a month: budget_alerts)
                self._later(self._note_refused(tenant_id, amount))
            whose = "this API key's" if row["refused_by"] == "key" else "the tenant's"
            raise BudgetExceeded(
                f"This call could cost up to {usd_text(amount)} USD, more than the {usd_text(remaining)} USD left "
                f"of {whose} monthly LLM budget (GET /api/v1/usage). Ask for fewer max_tokens, or wait for the "
                "next month or a larger budget.",
                details={"budget": row["refused_by"], "remaining_usd": float(remaining),
                         "needed_usd": float(amount)},
                headers={HEADER: usd_text(remaining)})
        self._live.add(row["reservation"])
        granted = row["granted_usd"]
        if granted == amount:
            return Reservation(row["reservation"], amount, remaining)
        piece = Slice(row["reservation"], account, granted, remaining, _period_now(), generation, held=amount,
                      used_at=time.monotonic())
        if account in self._slices:  # another call took one meanwhile: this one is for this call alone
            piece.retired = True
        else:
            self._slices[account] = piece
        return Reservation(piece.id, amount, remaining + piece.free, piece)

    def done(self, reservation: Reservation, cost: Decimal, settling: asyncio.Task) -> None:
        """The call holding it has ended here, costing ``cost``; ``settling`` writes its row
        (which releases its own reservation, or charges the cost to its slice)."""
        if not reservation.open:
            return
        reservation.open = False
        piece = reservation.slice
        if piece is None:
            self._live.discard(reservation.id)
            return
        piece.held -= reservation.amount_usd
        piece.amount -= min(cost, piece.amount)
        piece.settling.add(settling)
        settling.add_done_callback(piece.settling.discard)
        if piece.retired and piece.held == 0:
            self._release_slice(piece)

    def abandon(self, reservation: Reservation) -> None:
        """The call holding it has ended: if no row settled it, give it back (off the request path)."""
        if not reservation.open:
            return
        reservation.open = False
        piece = reservation.slice
        if piece is not None:
            piece.held -= reservation.amount_usd
            if piece.retired and piece.held == 0:
                self._release_slice(piece)
        elif reservation.id in self._live:
            self._live.discard(reservation.id)
            self._later(self._release(reservation.id, "an LLM budget reservation"))

    def _retire(self, piece: Slice) -> None:
        """No more calls on ``piece``; what is left of it goes back once its calls have ended."""
        piece.retired = True
        if self._slices.get(piece.account) is piece:
            del self._slices[piece.account]
        if piece.held == 0:
            self._release_slice(piece)

    def _release_slice(self, piece: Slice) -> None:
        if piece.id not in self._live:
            return
        self._live.discard(piece.id)
        self._later(self._release_after(piece.id, set(piece.settling)))

    async def _release_after(self, reservation: uuid.UUID, settling: set) -> None:
        """Release a slice once its calls' rows have charged it (a release first would hand
        back what they are about to spend)."""
        if settling:
            await asyncio.wait(settling, timeout=RESERVE_TIMEOUT_S * 2)
        await self._release(reservation, "an LLM budget slice")

    async def _release(self, reservation: uuid.UUID, what: str) -> None:
        async with self._off_the_path(f"release {what}; it expires by itself", reservation=str(reservation)) as conn:
            await conn.execute(RELEASE_SQL, reservation, timeout=RESERVE_TIMEOUT_S)

    async def _note_refused(self, tenant_id: uuid.UUID, amount: Decimal) -> None:
        async with self._off_the_path("note that a tenant's LLM budget refused a call", tenant_id=str(tenant_id)) as conn:
            await conn.execute(REFUSED_SQL, tenant_id, amount, timeout=RESERVE_TIMEOUT_S)

    @contextlib.asynccontextmanager
    async def _off_the_path(self, what: str, **context: str) -> AsyncIterator[asyncpg.Connection]:
        """A connection for work off the request path; a failure is logged, not raised."""
        try:
            async with self._pool.acquire(timeout=RESERVE_TIMEOUT_S) as conn:
                yield conn
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            log.warning(f"could not {what}", extra=context, exc_info=True)

    async def tend(self) -> list[dict[str, Any]]:
        """Retire the slices idle for a TTL or no longer trusted; extend this worker's live
        reservations; release everyone's expired ones (logged)."""
        idle_since = time.monotonic() - self.ttl_s
        for piece in list(self._slices.values()):
            if piece.held == 0 and (piece.used_at < idle_since or not self._usable(piece)):
                self._retire(piece)
        async with self._pool.acquire(timeout=RESERVE_TIMEOUT_S) as conn:
            if self._live:
                await conn.execute("SELECT llm_extend($1, $2)", list(self._live), self.ttl_s,
                                   timeout=RESERVE_TIMEOUT_S)
            released = [dict(r) for r in await conn.fetch("SELECT * FROM llm_release_expired()",
                                                          timeout=RESERVE_TIMEOUT_S)]
        for row in released:
            log.warning("released an LLM budget reservation nobody extended (its call's worker stopped mid-call)",
                        extra={"reservation": {**{k: str(v) for k, v in row.items() if v is not None},
                                               "age_s": round((datetime.datetime.now(datetime.timezone.utc)
                                                               - row["created_at"]).total_seconds(), 1)}})
        return released

    async def run(self) -> None:
        """``tend`` every third of the reservations' lifetime, for as long as the worker runs."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.tend()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                log.warning("could not tend the LLM budget reservations", exc_info=True)

    async def close(self) -> None:
        """At shutdown: give back the slices (their calls have ended: the worker drained)."""
        self._retire_all()


# What a statement says besides its period.
FIGURES = ("budget_usd", "spent_usd", "reserved_usd", "remaining_usd", "calls")

TENANT_STATEMENT_SQL = """SELECT llm_period_start() AS period_start, t.monthly_budget_usd AS budget,
                        COALESCE(s.spent_usd, 0) AS spent, COALESCE(s.reserved_usd, 0) AS reserved,
                        COALESCE(s.calls, 0) AS calls
                 FROM tenants t LEFT JOIN tenant_spend s
                      ON s.tenant_id = t.id AND s.period_start = llm_period_start()
                 WHERE t.id = $1"""
KEY_STATEMENT_SQL = """SELECT llm_period_start() AS period_start, k.monthly_budget_usd AS budget,
                     COALESCE(s.spent_usd, 0) AS spent, COALESCE(s.reserved_usd, 0) AS reserved,
                     COALESCE(s.calls, 0) AS calls
              FROM api_keys k LEFT JOIN key_spend s
                   ON s.key_id = llm_key_account(k.id) AND s.period_start = llm_period_start()
              WHERE k.id = $1"""
SET_TENANT_BUDGET_SQL = "UPDATE tenants SET monthly_budget_usd = $2 WHERE id = $1 RETURNING true"
SET_KEY_BUDGET_SQL = "UPDATE api_keys SET monthly_budget_usd = $2 WHERE id = $1 RETURNING true"


async def statement(conn: asyncpg.Connection, kind: str, ident: uuid.UUID) -> dict[str, Any] | None:
    """A tenant's (``kind`` "tenant") or a key's ("key") budget and spend this month; None if
    there is no such tenant or key. Amounts in USD; ``remaining_usd`` null without a budget."""
    row = await (conn.fetchrow(TENANT_STATEMENT_SQL, ident) if kind == "tenant"
                 else conn.fetchrow(KEY_STATEMENT_SQL, ident))
    if row is None:
        return None
    start = datetime.datetime.combine(row["period_start"], datetime.time(), tzinfo=datetime.timezone.utc)
    end = (start.replace(day=28) + datetime.timedelta(days=4)).replace(day=1)
    budget = row["budget"]
    remaining = None if budget is None else max(budget - row["spent"] - row["reserved"], Decimal(0))
    return {"period_start": _utc(start), "period_end": _utc(end),
            "budget_usd": None if budget is None else float(budget), "spent_usd": float(row["spent"]),
            "reserved_usd": float(row["reserved"]), "remaining_usd": None if remaining is None else float(remaining),
            "calls": row["calls"]}


def _utc(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def set_budget(conn: asyncpg.Connection, kind: str, ident: uuid.UUID, usd: Decimal | None) -> bool:
    """Set (or with None clear) a tenant's or a key's monthly budget; False if there is no such one."""
    found = await (conn.fetchval(SET_TENANT_BUDGET_SQL, ident, usd) if kind == "tenant"
                   else conn.fetchval(SET_KEY_BUDGET_SQL, ident, usd))
    return found is not None
