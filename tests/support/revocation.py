"""One revocation trial under load, for the hot-path tests and `make bench`: clients keep
asking with a key while it is revoked, and the trial says how long after the revoking
command returned the key was still accepted."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import aiohttp
import asyncpg

from app import keycache

CONNECTIONS = 16
LOAD_BEFORE_S = 0.2
LOAD_AFTER_S = 0.3
FIRST_ACCEPT_WAIT_S = 10.0  # a busy machine may take longer than LOAD_BEFORE_S to answer at all


@dataclass(frozen=True)
class Trial:
    lag_s: float  # the last accepting answer's arrival after the command returned (0 if none)
    # The last accepted request's sending after the command began (0 if none): the command
    # commits at once and then waits out the trust window, so this bounds how long the
    # change took to reach the workers by notification alone.
    lag_after_start_s: float
    accepted_before: int
    accepted_sent_after_return: int  # requests sent once the command had returned, and accepted
    refused_after: int


async def revocation_trial(session: aiohttp.ClientSession, url: str, key: str,
                           revoke: Callable[[], Awaitable[None]], *,
                           cut_listeners: asyncpg.Connection | None = None,
                           connections: int = CONNECTIONS) -> Trial:
    """Load from ``connections`` clients, ``revoke()`` after LOAD_BEFORE_S and once the key
    has been accepted at least once (cutting every worker's listener connection first when
    ``cut_listeners`` is a database connection), and LOAD_AFTER_S more once it returned."""
    answers: list[tuple[float, float, int]] = []  # sent, received, status
    stop = asyncio.Event()
    headers = {"X-API-Key": key}

    async def client() -> None:
        while not stop.is_set() and len(answers) < 100_000:
            sent = time.monotonic()
            try:
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    answers.append((sent, time.monotonic(), resp.status))
            except aiohttp.ClientError:
                answers.append((sent, time.monotonic(), 0))

    load = [asyncio.create_task(client()) for _ in range(connections)]
    try:
        await asyncio.sleep(LOAD_BEFORE_S)
        deadline = time.monotonic() + FIRST_ACCEPT_WAIT_S
        while not any(status == 200 for _, _, status in answers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if cut_listeners is not None:
            await cut_listeners.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE application_name = $1", keycache.LISTENER_APPLICATION_NAME)
        started = time.monotonic()
        await revoke()
        returned = time.monotonic()
        await asyncio.sleep(LOAD_AFTER_S)
    finally:
        stop.set()
        await asyncio.gather(*load)
    accepted = [(sent, received) for sent, received, status in answers if status == 200]
    return Trial(
        lag_s=max([received - returned for _, received in accepted] + [0.0]),
        lag_after_start_s=max([sent - started for sent, _ in accepted] + [0.0]),
        accepted_before=sum(1 for _, received in accepted if received < started),
        accepted_sent_after_return=sum(1 for sent, _ in accepted if sent > returned),
        refused_after=sum(1 for sent, _, status in answers if sent > returned and status == 401),
    )
