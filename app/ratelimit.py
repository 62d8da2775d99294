"""Per-key, per-scope rate limits shared by every worker, kept in PostgreSQL.

Sliding-window counter: each (key, scope) row holds the count of the current
window and of the one before it. A request is admitted while

    prev_count * (1 - elapsed / WINDOW) + curr_count < limit

Windows are anchored at a key's first request (not at wall-clock minutes),
so a burst is never split by an arbitrary minute boundary. ``now()`` is the
transaction's start, which for a request that queued on the row lock can be
slightly before the window it lands in: elapsed time is clamped at zero, so
such a request counts in that window instead of resetting it. The key lookup,
the scope decision and the counter update are ONE statement, hence one round
trip per request (it also brings the tenant's own LLM provider, if any, so that
LLM calls need no lookup of their own); the ``INSERT ... ON CONFLICT DO UPDATE`` row lock makes
concurrent requests from any number of workers queue on the counter row, so
exactly ``limit`` requests of a burst are admitted.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Sequence

import asyncpg

WINDOW_S = 60

AUTHENTICATE_SQL = """
WITH key AS (
    SELECT k.id, k.tenant_id, k.key_prefix, k.key_hash,
           s.base_url AS llm_base_url, s.model AS llm_model, s.api_key_encrypted AS llm_api_key_encrypted,
           k.is_active AND t.is_active AND (k.expires_at IS NULL OR k.expires_at > now()) AS usable,
           CASE WHEN 'check' = ANY($2::text[]) AND 'check' = ANY(k.scopes) THEN 'check'
                WHEN 'prep' = ANY($2::text[]) AND 'prep' = ANY(k.scopes) THEN 'prep'
           END AS scope,
           k.rate_limit_prep, k.rate_limit_check
    FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         LEFT JOIN tenant_llm_settings s ON s.tenant_id = k.tenant_id
    WHERE k.key_hash = $1
),
admitted AS (
    SELECT id, scope,
           CASE scope WHEN 'prep' THEN rate_limit_prep ELSE rate_limit_check END AS lim
    FROM key
    WHERE usable AND scope IS NOT NULL
),
hit AS (
    INSERT INTO rate_limit_counters AS c (key_id, scope, window_start, curr_count, prev_count, allowed)
    SELECT id, scope, now(), (lim > 0)::int, 0, lim > 0 FROM admitted
    ON CONFLICT (key_id, scope) DO UPDATE SET
        (window_start, prev_count, curr_count, allowed) = (
            SELECT ws, prev, curr + ok::int, ok
            FROM (
                SELECT ws, prev, curr,
                       prev * (1 - greatest(extract(epoch FROM now() - ws), 0) / $3) + curr
                           < (SELECT lim FROM admitted) AS ok
                FROM (
                    SELECT c.window_start + n * make_interval(secs => $3) AS ws,
                           CASE n WHEN 0 THEN c.prev_count WHEN 1 THEN c.curr_count ELSE 0 END AS prev,
                           CASE n WHEN 0 THEN c.curr_count ELSE 0 END AS curr
                    FROM (SELECT greatest(floor(extract(epoch FROM now() - c.window_start) / $3), 0)::int AS n)
                         AS elapsed
                ) AS shifted
            ) AS decided
        )
    RETURNING c.allowed, c.curr_count, c.prev_count,
              greatest(extract(epoch FROM now() - c.window_start), 0)::float8 AS elapsed
),
touched AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE id = (SELECT id FROM admitted)
      AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
)
SELECT key.id, key.tenant_id, key.key_prefix, key.key_hash, key.usable, key.scope,
       key.llm_base_url, key.llm_model, key.llm_api_key_encrypted,
       admitted.lim, hit.allowed, hit.curr_count, hit.prev_count, hit.elapsed
FROM key LEFT JOIN admitted ON true LEFT JOIN hit ON true
"""


@dataclass(frozen=True)
class Decision:
    """The outcome for one request; ``status`` is None when it may proceed."""

    key_id: uuid.UUID | None = None
    tenant_id: uuid.UUID | None = None
    key_prefix: str | None = None
    key_hash: bytes | None = None
    # The tenant's own LLM provider (BYOK), read in the same round trip: {base_url, model, api_key_encrypted}.
    tenant_llm: dict | None = None
    found: bool = False
    usable: bool = False
    scope: str | None = None
    limit: int = 0
    allowed: bool = False
    remaining: int = 0
    reset_s: int = 0

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }


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


async def authenticate(conn: asyncpg.Connection, key_hash: bytes, scopes: Sequence[str]) -> Decision:
    """Look the key up, pick the scope, and count the request: one round trip."""
    row = await conn.fetchrow(AUTHENTICATE_SQL, key_hash, list(scopes), WINDOW_S)
    if row is None:
        return Decision()
    tenant_llm = ({"base_url": row["llm_base_url"], "model": row["llm_model"],
                   "api_key_encrypted": row["llm_api_key_encrypted"]} if row["llm_base_url"] else None)
    common = dict(key_id=row["id"], tenant_id=row["tenant_id"], key_prefix=row["key_prefix"],
                  key_hash=bytes(row["key_hash"]), tenant_llm=tenant_llm, found=True, usable=row["usable"],
                  scope=row["scope"])
    if row["allowed"] is None:  # unusable key or no matching scope: nothing was counted
        return Decision(**common)
    limit, prev, curr, elapsed = row["lim"], row["prev_count"], row["curr_count"], row["elapsed"]
    return Decision(
        **common,
        limit=limit,
        allowed=row["allowed"],
        remaining=remaining_requests(limit, prev, curr, elapsed),
        reset_s=seconds_until_free(limit, prev, curr, elapsed),
    )
