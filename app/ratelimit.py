"""Per-key, per-scope rate limits shared by every worker, counted in PostgreSQL
without a write per request.

The limit is a sliding-window counter: each (key, scope) row holds the count of the
current window and of the one before it, and a request is admitted while

    prev_count * (1 - elapsed / WINDOW) + curr_count < limit

Windows are anchored at a key's first request (not at wall-clock minutes), so a burst
is never split by an arbitrary minute boundary.

Workers do not count each request in the row. They **lease slices** of the window's
quota (``LEASE_SQL``, one atomic ``INSERT ... ON CONFLICT DO UPDATE``): a lease of
``n`` is granted only as far as ``n`` requests made at that moment would have been
admitted one by one, and the row counts the whole slice at once. The worker then
admits requests from its slice without asking again. So:

- **Never over the limit.** A slice is counted before any of it is used, and it is
  only used inside the window it was leased in (a lease ends with its window), so the
  requests a window admits, over all workers and hosts, are at most what the row
  counted, which the statement keeps within the limit. A worker that dies with a
  slice in hand leaves it counted: that can only refuse, never over-admit. The count
  lives in PostgreSQL, so it survives worker restarts.
- **Slices shrink as the quota runs out.** A lease asks for about what the worker's
  own traffic on that key needs for ``LEASE_HORIZON_S`` (at least the requests
  waiting), and gets at most ``SHARE`` of what the window still admits, at least 1:
  near the limit, slices are single requests, exactly as counting each one.
- **Unused slices go back promptly.** Every slice is settled once (``SETTLE_SQL``,
  batched every ``SWEEP_S``): when it is used up, idle for ``IDLE_RETURN_S``, out of
  its window, or its key changed; its unused part comes off the count. The row counts
  the slices lent and not settled yet (``lent``), and a lease that finds nothing left
  while some are lent waits for them to come back (``LENT_WAIT_S`` at most) before
  refusing: a burst over all workers admits the limit, not less.

The rate-limit headers come from the row as the last lease saw it, less the slice the
worker still holds, aged to the moment of the request.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
import uuid
from typing import AsyncContextManager, Callable, NamedTuple

import asyncpg

from . import metrics

log = logging.getLogger("app.ratelimit")

WINDOW_S = 60
SHARE = 0.25
LEASE_HORIZON_S = 0.25
LEASE_MAX = 1000
IDLE_RETURN_S = 0.1
SWEEP_S = 0.05
# A lease that finds nothing left while slices are still lent out retries this often, this long.
LENT_RETRY_S = 0.05
LENT_WAIT_S = 0.3

LEASE_SQL = """
INSERT INTO rate_limit_counters AS c (key_id, scope, window_start, curr_count, prev_count, last_grant, lent)
SELECT $1, $2, now(), g, 0, g, g
FROM (SELECT CASE WHEN $3::int <= 0 THEN 0
                  ELSE least($4::int, greatest(1, floor($3::int * $6::float8)::int)) END AS g) AS fresh
ON CONFLICT (key_id, scope) DO UPDATE SET
    (window_start, prev_count, curr_count, last_grant, lent) = (
        SELECT ws, prev, curr + g, g, lent + g
        FROM (
            SELECT ws, prev, curr, lent,
                   CASE WHEN room <= 0 THEN 0 ELSE least($4::int, greatest(1, floor(room * $6::float8)::int)) END AS g
            FROM (
                SELECT ws, prev, curr, lent,
                       ceil($3::int - (prev * (1 - greatest(extract(epoch FROM now() - ws), 0) / $5::float8) + curr)
                            - 1e-9)::int AS room
                FROM (
                    -- Rolled over: the previous windows' slices can no longer be used, none is lent.
                    SELECT c.window_start + n * make_interval(secs => $5::float8) AS ws,
                           CASE n WHEN 0 THEN c.prev_count WHEN 1 THEN c.curr_count ELSE 0 END AS prev,
                           CASE n WHEN 0 THEN c.curr_count ELSE 0 END AS curr,
                           CASE n WHEN 0 THEN c.lent ELSE 0 END AS lent
                    FROM (SELECT greatest(floor(extract(epoch FROM now() - c.window_start) / $5::float8), 0)::int
                                 AS n) AS elapsed
                ) AS shifted
            ) AS measured
        ) AS decided
    )
RETURNING c.window_start, c.last_grant, c.curr_count, c.prev_count, c.lent,
          greatest(extract(epoch FROM now() - c.window_start), 0)::float8 AS elapsed
"""

# Slices settled, in one statement for a worker's batch: a slice's unused part comes off
# the window it was leased in, whether the row still has that window as its current one
# or (rolled over since) as its previous one, and the slice is no longer lent.
SETTLE_SQL = """
UPDATE rate_limit_counters AS c SET
    curr_count = CASE WHEN c.window_start = r.ws THEN greatest(c.curr_count - r.unused, 0) ELSE c.curr_count END,
    prev_count = CASE WHEN c.window_start = r.ws + make_interval(secs => $6::float8)
                      THEN greatest(c.prev_count - r.unused, 0) ELSE c.prev_count END,
    lent = CASE WHEN c.window_start = r.ws THEN greatest(c.lent - r.granted, 0) ELSE c.lent END
FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int[], $5::int[]) AS r(key_id, scope, ws, granted, unused)
WHERE c.key_id = r.key_id AND c.scope = r.scope
"""


def remaining_requests(limit: int, prev: int, curr: int, elapsed: float, window: float = WINDOW_S) -> int:
    estimate = prev * (1 - elapsed / window) + curr
    return max(0, math.ceil(limit - estimate - 1e-9))


def seconds_until_free(limit: int, prev: int, curr: int, elapsed: float, window: float = WINDOW_S) -> int:
    """Seconds until the window admits one more request (the window's end while some remain)."""
    to_window_end = max(window - elapsed, 0.0)
    if remaining_requests(limit, prev, curr, elapsed, window) > 0:
        return max(1, math.ceil(to_window_end))
    if limit <= 0:
        return window
    if curr < limit and prev > 0:
        # Still inside this window, once the previous window's share has decayed enough.
        frees_at = window * (1 - (limit - curr) / prev)
        return max(1, math.ceil(frees_at - elapsed))
    # Only the next window frees a request, once this window's count decays below the limit.
    into_next = window * (1 - limit / curr) if curr else 0.0
    return max(1, math.ceil(to_window_end + into_next))


class Admission(NamedTuple):  # a tuple: built for every request, cheaper than a frozen dataclass
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    window_start: datetime.datetime | None = None  # of the window that counted the request

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }


class _Bucket:
    """One worker's slice of one key's quota in one scope."""

    __slots__ = ("key_id", "scope", "limit", "slots", "granted", "deadline", "window_start", "prev", "curr",
                 "elapsed", "leased_at", "used", "last_used", "waiting", "lock")

    def __init__(self, key_id: uuid.UUID, scope: str, limit: int) -> None:
        self.key_id, self.scope, self.limit = key_id, scope, limit
        self.slots = 0  # of the current slice, not used yet
        self.granted = 0  # the current slice's size; 0 once it is settled
        self.deadline = 0.0  # monotonic: the end of the window the slice belongs to
        self.window_start: datetime.datetime | None = None
        self.prev = self.curr = 0  # the row as the last lease left it (curr includes every slice out)
        self.elapsed = 0.0
        self.leased_at = 0.0
        self.used = 0  # of the current slice
        self.last_used = 0.0
        self.waiting = 0
        self.lock = asyncio.Lock()

    def take(self, now: float, *, leased_for_it: bool = False) -> Admission | None:
        """One request from the slice, while its window lasts; a request whose own lease
        just granted the slice was admitted in that window by the statement itself."""
        if self.slots <= 0 or (now >= self.deadline and not leased_for_it):
            return None
        self.slots -= 1
        self.used += 1
        self.last_used = now
        return self.admission(True, now)

    def admission(self, allowed: bool, now: float) -> Admission:
        # The count as the whole server sees it, less what this worker may still hand out.
        curr, elapsed = self.curr - self.slots, self.elapsed + (now - self.leased_at)
        if elapsed >= WINDOW_S:  # the window rolled over since the lease
            prev, curr, elapsed = (curr if elapsed < 2 * WINDOW_S else 0), 0, elapsed % WINDOW_S
        else:
            prev = self.prev
        if not allowed:
            return Admission(False, self.limit, 0, seconds_until_free(self.limit, prev, curr, elapsed),
                             self.window_start)
        return Admission(True, self.limit, remaining_requests(self.limit, prev, curr, elapsed),
                         seconds_until_free(self.limit, prev, curr, elapsed), self.window_start)

    def wanted(self, now: float) -> int:
        """How big a slice to ask for: what the last one's pace needs for the horizon."""
        if self.used and now > self.leased_at:
            wanted = math.ceil(self.used / (now - self.leased_at) * LEASE_HORIZON_S)
        else:
            wanted = 1
        return max(1, min(LEASE_MAX, max(wanted, self.waiting)))


Acquire = Callable[[], AsyncContextManager[asyncpg.Connection]]
Settle = tuple[uuid.UUID, str, datetime.datetime, int, int]  # key, scope, window, granted, unused


class Limiter:
    """A worker's buckets, its leases and the settling of its slices."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[uuid.UUID, str], _Bucket] = {}
        self._holding: set[_Bucket] = set()  # buckets with a slice not settled yet
        self._settles: list[Settle] = []

    def take(self, key_id: uuid.UUID, scope: str, limit: int) -> Admission | None:
        """A request admitted from the slice in hand, or None: then ``admit`` leases."""
        bucket = self._buckets.get((key_id, scope))
        if bucket is None or bucket.limit != limit or bucket.waiting:
            return None
        return bucket.take(time.monotonic())

    async def admit(self, acquire: Acquire, key_id: uuid.UUID, scope: str, limit: int) -> Admission:
        bucket = self._buckets.get((key_id, scope))
        if bucket is None or bucket.limit != limit:
            if bucket is not None:
                self._settle(bucket)
            bucket = self._buckets[(key_id, scope)] = _Bucket(key_id, scope, limit)
        bucket.waiting += 1
        try:
            async with bucket.lock:
                admitted = bucket.take(time.monotonic())
                if admitted is not None:
                    return admitted
                return await self._lease(acquire, bucket)
        finally:
            bucket.waiting -= 1

    async def _lease(self, acquire: Acquire, bucket: _Bucket) -> Admission:
        self._settle(bucket)  # the slice before: used up, or its window ended
        give_up_at = time.monotonic() + LENT_WAIT_S
        while True:
            sent = time.monotonic()
            async with acquire() as conn:
                row = await conn.fetchrow(LEASE_SQL, bucket.key_id, bucket.scope, bucket.limit,
                                          bucket.wanted(sent), float(WINDOW_S), SHARE)
            bucket.window_start, bucket.prev, bucket.curr = row["window_start"], row["prev_count"], row["curr_count"]
            bucket.elapsed, bucket.leased_at, bucket.used = row["elapsed"], sent, 0
            # A slice is usable until its window ends, measured from before the statement was sent.
            bucket.deadline = sent + max(WINDOW_S - row["elapsed"], 0.0)
            granted = row["last_grant"]
            metrics.rate_limit_leases.labels("yes" if granted > 0 else "no").inc()
            if granted > 0:
                bucket.slots = bucket.granted = granted
                self._holding.add(bucket)
                return bucket.take(time.monotonic(), leased_for_it=True)
            # Nothing left to lend. Slices out elsewhere may come back unused (idle ones
            # are settled within IDLE_RETURN_S + SWEEP_S): wait for them, for a while.
            if row["lent"] <= 0 or time.monotonic() + LENT_RETRY_S > give_up_at:
                return bucket.admission(False, time.monotonic())
            await asyncio.sleep(LENT_RETRY_S)

    def _settle(self, bucket: _Bucket) -> None:
        """The current slice is done with: its unused part goes back."""
        if bucket.granted > 0 and bucket.window_start is not None:
            self._settles.append((bucket.key_id, bucket.scope, bucket.window_start, bucket.granted, bucket.slots))
        bucket.slots = bucket.granted = 0
        self._holding.discard(bucket)

    def forget_key(self, key_id: uuid.UUID) -> None:
        """The key changed (its limits, or it is gone): its slices go back, its buckets start over."""
        for scope in ("prep", "check"):
            bucket = self._buckets.pop((key_id, scope), None)
            if bucket is not None:
                self._settle(bucket)

    def sweep(self, now: float) -> None:
        for bucket in list(self._holding):
            if bucket.lock.locked():
                continue  # leasing: it settles its slice itself
            if bucket.slots == 0 or now - bucket.last_used >= IDLE_RETURN_S or now >= bucket.deadline:
                self._settle(bucket)
        # Buckets of keys not seen for two windows hold nothing worth keeping.
        if len(self._buckets) > len(self._holding) + 1000:
            for ident, bucket in list(self._buckets.items()):
                if not bucket.granted and not bucket.waiting and now - bucket.last_used > 2 * WINDOW_S:
                    del self._buckets[ident]

    async def flush_settles(self, pool: asyncpg.Pool) -> None:
        settles, self._settles = self._settles, []
        while settles:
            # One statement updates a row once: a (key, scope) settled twice goes in the next batch.
            batch, rest, seen = [], [], set()
            for settle in settles:
                (rest if settle[:2] in seen else batch).append(settle)
                seen.add(settle[:2])
            settles = rest
            key_ids, scopes, windows, granted, unused = (list(column) for column in zip(*batch))
            try:
                await pool.execute(SETTLE_SQL, key_ids, scopes, windows, granted, unused, float(WINDOW_S))
            except Exception as exc:  # noqa: BLE001 -- unsettled slices stay counted: stricter, never looser
                log.warning("could not settle rate-limit slices",
                            extra={"error": f"{type(exc).__name__}: {exc}", "slices": len(batch)})

    async def run(self, pool: asyncpg.Pool) -> None:
        """Every SWEEP_S: settle the slices used up, idle or out of their window."""
        while True:
            await asyncio.sleep(SWEEP_S)
            self.sweep(time.monotonic())
            await self.flush_settles(pool)

    async def close(self, pool: asyncpg.Pool) -> None:
        for bucket in list(self._holding):
            self._settle(bucket)
        await self.flush_settles(pool)
