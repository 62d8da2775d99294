"""What each worker knows about API keys, kept true by PostgreSQL's NOTIFY.

A worker looks a key up in PostgreSQL once (``LOOKUP_SQL``: the key, its tenant's
state and the tenant's own LLM provider) and then answers from memory. Every change
that could alter an entry -- a key issued, revoked, its expiry, scopes, limits or
budget changed, a tenant deactivated or activated, its budget or LLM settings --
fires a trigger (migrations 0008, 0009) that sends a NOTIFY in the changing transaction; each worker's
listener drops the entries named (``KeyCache.notified``).

Why a cached answer is never older than ``TRUST_S``:

- The listener connection sends a heartbeat (``SELECT 1``) every ``HEARTBEAT_S``.
  PostgreSQL delivers a notification committed before a statement starts ahead of
  that statement's answer, and asyncpg runs the listener callback before the
  awaiting task resumes. So once a heartbeat sent at ``t`` has come back, every
  change committed before ``t`` has been applied here.
- The cache is trusted only until ``t + TRUST_S`` of the last heartbeat back, and not
  at all once the listener connection is lost: then every request goes to the
  database until the listener has reconnected, listens again and has dropped
  everything it held (it may have missed notifications).
- A lookup that races a change cannot store what it read: it notes the cache's
  generation before asking, every notification moves the generation on, and a
  lookup whose generation has passed is used for its own request only.

A writer that waits ``TRUST_S`` after its commit (``change_in_force``) therefore
returns only when no worker can still admit what it changed. Expiry is checked on
every request from the cached ``expires_at``. Unknown keys are cached too, so a
repeated bad key does not reach the database again; both maps are LRUs of bounded
size, so a flood of random keys cannot grow a worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import asyncpg

log = logging.getLogger("app.keycache")

CHANNEL = "course_supporter_auth"
HEARTBEAT_S = 0.1
TRUST_S = 0.5
# A heartbeat that takes this long means the connection is not usable: reconnect.
HEARTBEAT_TIMEOUT_S = 2.0
RECONNECT_DELAY_S = 0.5
LISTENER_APPLICATION_NAME = "course-supporter-listener"
KNOWN_KEYS_MAX = 10_000
UNKNOWN_KEYS_MAX = 10_000

LOOKUP_SQL = """
WITH key AS (
    SELECT k.id, k.tenant_id, k.key_prefix, k.key_hash, k.scopes, k.expires_at,
           k.is_active AND t.is_active AS active, k.rate_limit_prep, k.rate_limit_check,
           s.base_url AS llm_base_url, s.model AS llm_model, s.api_key_encrypted AS llm_api_key_encrypted,
           k.monthly_budget_usd IS NOT NULL OR t.monthly_budget_usd IS NOT NULL AS budgeted,
           COALESCE(k.counts_as, k.id) AS counter_id
    FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         LEFT JOIN tenant_llm_settings s ON s.tenant_id = k.tenant_id
    WHERE k.key_hash = $1
),
touched AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE id = (SELECT id FROM key WHERE active)
      AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
)
SELECT * FROM key
"""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    key_prefix: str
    key_hash: bytes
    scopes: frozenset[str]
    active: bool  # the key and its tenant
    expires_at: float | None  # epoch seconds
    limits: dict[str, int]
    tenant_llm: dict | None  # the tenant's own LLM provider (BYOK), as stored
    budgeted: bool = False  # an LLM budget is over the key's calls (its own or its tenant's)
    # The key whose rate-limit counters this one counts in: itself, or after a rotation the
    # first key of its line (the keys of an overlap share one limit).
    counter_id: uuid.UUID | None = None
    tenant_label: str = field(init=False)  # str(tenant_id), for the log context

    def __post_init__(self) -> None:
        object.__setattr__(self, "tenant_label", str(self.tenant_id))
        if self.counter_id is None:
            object.__setattr__(self, "counter_id", self.key_id)

    @classmethod
    def from_row(cls, row) -> "KeyRecord":
        tenant_llm = ({"base_url": row["llm_base_url"], "model": row["llm_model"],
                       "api_key_encrypted": row["llm_api_key_encrypted"]} if row["llm_base_url"] else None)
        expires = row["expires_at"]
        return cls(row["id"], row["tenant_id"], row["key_prefix"], bytes(row["key_hash"]), frozenset(row["scopes"]),
                   row["active"], expires.timestamp() if expires is not None else None,
                   {"prep": row["rate_limit_prep"], "check": row["rate_limit_check"]}, tenant_llm, row["budgeted"],
                   row["counter_id"])

    def usable(self, now: float) -> bool:
        return self.active and (self.expires_at is None or self.expires_at > now)

    def scope_for(self, accepted: Sequence[str]) -> str | None:
        """The scope a request counts against: ``check`` when both fit, as documented."""
        for scope in ("check", "prep"):
            if scope in accepted and scope in self.scopes:
                return scope
        return None


async def lookup(conn: asyncpg.Connection, key_hash: bytes) -> KeyRecord | None:
    row = await conn.fetchrow(LOOKUP_SQL, key_hash)
    return KeyRecord.from_row(row) if row is not None else None


MISS = object()


class KeyCache:
    def __init__(self, known_max: int = KNOWN_KEYS_MAX, unknown_max: int = UNKNOWN_KEYS_MAX) -> None:
        self._known: OrderedDict[bytes, KeyRecord] = OrderedDict()
        self._unknown: OrderedDict[bytes, None] = OrderedDict()
        self._known_max, self._unknown_max = known_max, unknown_max
        self.generation = 0
        self._trusted_until = 0.0
        self.listening = False
        self.forgotten_keys: list = []  # callbacks: a key's entry was dropped (the rate limiter's slices)
        self.changed: list = []  # callbacks: a notification came, or the cache is no longer trusted (budget slices)

    # -- reading ------------------------------------------------------------------
    def trusted(self) -> bool:
        return self.listening and time.monotonic() < self._trusted_until

    def get(self, key_hash: bytes):
        """The cached record, None for a key known not to exist, or ``MISS``."""
        record = self._known.get(key_hash)
        if record is not None:
            self._known.move_to_end(key_hash)
            return record
        if key_hash in self._unknown:
            self._unknown.move_to_end(key_hash)
            return None
        return MISS

    def store(self, key_hash: bytes, record: KeyRecord | None, generation: int) -> None:
        """Keep a lookup's result, unless a notification arrived since it began."""
        if generation != self.generation:
            return
        table, limit = (self._known, self._known_max) if record is not None else (self._unknown, self._unknown_max)
        table[key_hash] = record
        table.move_to_end(key_hash)
        while len(table) > limit:
            table.popitem(last=False)

    def __len__(self) -> int:
        return len(self._known) + len(self._unknown)

    # -- invalidation -------------------------------------------------------------
    def notified(self, payload: str) -> None:
        kind, _, value = payload.partition(":")
        self.generation += 1
        self._tell_changed()
        if kind == "key":
            try:
                key_hash = bytes.fromhex(value)
            except ValueError:
                self.forget_all()
                return
            self._unknown.pop(key_hash, None)
            self._drop([key_hash])
        elif kind == "tenant":
            self._drop([h for h, r in self._known.items() if r.tenant_label == value])
        else:
            self.forget_all()

    def forget_all(self) -> None:
        self.generation += 1
        self._tell_changed()
        self._unknown.clear()
        self._drop(list(self._known))

    def _drop(self, hashes: list[bytes]) -> None:
        for key_hash in hashes:
            record = self._known.pop(key_hash, None)
            if record is not None:
                for callback in self.forgotten_keys:
                    callback(record.counter_id)

    # -- trust --------------------------------------------------------------------
    def heartbeat(self, sent_at: float) -> None:
        self._trusted_until = max(self._trusted_until, sent_at + TRUST_S)

    def distrust(self) -> None:
        self.listening = False
        self._trusted_until = 0.0
        self._tell_changed()

    def _tell_changed(self) -> None:
        for callback in self.changed:
            callback()


class Listener:
    """One worker's LISTEN connection, with its heartbeat; reconnects for ever."""

    def __init__(self, database_url: str, cache: KeyCache) -> None:
        self._url = database_url
        self._cache = cache
        self._conn: asyncpg.Connection | None = None
        self._listened = False
        self.connects = 0

    async def run(self) -> None:
        while True:
            self._listened = False
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- any failure means: distrust, reconnect
                if self._listened:  # not again for every failed reconnect while the database is away
                    log.warning("key cache listener lost; looking keys up in the database until it is back",
                                extra={"error": f"{type(exc).__name__}: {exc}"})
            finally:
                self._cache.distrust()
                await self._close()
            await asyncio.sleep(RECONNECT_DELAY_S)

    async def _listen(self) -> None:
        self._conn = conn = await asyncpg.connect(
            self._url, timeout=5, server_settings={"application_name": LISTENER_APPLICATION_NAME})
        conn.add_termination_listener(lambda _conn: self._cache.distrust())
        await conn.add_listener(CHANNEL, lambda _conn, _pid, _channel, payload: self._cache.notified(payload))
        # Listening now: anything stored before may have missed a notification.
        self._cache.forget_all()
        self._cache.listening = self._listened = True
        self.connects += 1
        if self.connects > 1:
            log.info("key cache listener reconnected")
        while True:
            sent = time.monotonic()
            await conn.fetchval("SELECT 1", timeout=HEARTBEAT_TIMEOUT_S)
            if conn.is_closed() or not self._cache.listening:
                raise ConnectionError("listener connection closed")
            self._cache.heartbeat(sent)
            await asyncio.sleep(HEARTBEAT_S)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()


async def change_in_force() -> None:
    """Call after committing a change to keys, tenants or their LLM settings: returns once
    no worker can still act on what the change replaced (see the module's docstring)."""
    await asyncio.sleep(TRUST_S)
