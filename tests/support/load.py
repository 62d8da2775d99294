"""A bounded load client for the local VPS or cluster: authenticated reads and writes over
real HTTPS, counting every answer, while something else happens (a deploy, a reload, a host
going down).

    with Load(vps, api_key) as load:
        ...                                   # deploy
    load.result  ->  {"requests": n, "failed": [...], "statuses": {...}}

``load.failures`` holds (started, ended, what) per failed request, in time.monotonic().
Bounded in requests and in time; only ever talks to the site's own address (vps.json's or
cluster.json's "address").
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import threading
import time

import aiohttp

CONCURRENCY = 4
MAX_REQUESTS = 100_000
MAX_SECONDS = 900
OK = {200, 201}


class Load:
    def __init__(self, vps: dict, api_key: str, *, concurrency: int = CONCURRENCY,
                 max_requests: int = MAX_REQUESTS, max_seconds: float = MAX_SECONDS,
                 request_timeout_s: float = 120) -> None:
        self.vps, self.api_key, self.request_timeout_s = vps, api_key, request_timeout_s
        self.concurrency, self.max_requests, self.max_seconds = concurrency, max_requests, max_seconds
        self.statuses: collections.Counter = collections.Counter()
        self.failed: list[str] = []
        self.failures: list[tuple[float, float, str]] = []
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)

    def __enter__(self) -> "Load":
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.requests < 20 and not self.failed:  # warmed up: requests are flowing
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the load client did not get going: {self.failed[:3]}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    @property
    def result(self) -> dict:
        return {"requests": self.requests, "failed": list(self.failed), "statuses": dict(self.statuses)}

    def _fail(self, started: float, what: str) -> None:
        self.failed.append(what)
        self.failures.append((started, time.monotonic(), what))

    async def _run(self) -> None:
        context = ssl.create_default_context(cafile=self.vps["ca_cert"])
        base = f"https://{self.vps['address']}"
        headers = {"Host": self.vps["domain"], "X-API-Key": self.api_key}
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        deadline = time.monotonic() + self.max_seconds
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            async def worker(number: int) -> None:
                turn = 0
                while not self._stop.is_set() and self.requests < self.max_requests and time.monotonic() < deadline:
                    turn += 1
                    if turn % 2:
                        request = session.get(f"{base}/api/v1/courses?limit=5", ssl=context,
                                              server_hostname=self.vps["domain"])
                    else:
                        request = session.post(f"{base}/api/v1/courses", json={"title": f"load {number}-{turn}"},
                                               ssl=context, server_hostname=self.vps["domain"])
                    self.requests += 1
                    started = time.monotonic()
                    try:
                        async with request as resp:
                            await resp.read()
                            self.statuses[resp.status] += 1
                            if resp.status not in OK:
                                self._fail(started, f"{resp.method} {resp.url.path}: {resp.status}")
                    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                        self.statuses[type(exc).__name__] += 1
                        self._fail(started, f"{type(exc).__name__}: {exc}")

            await asyncio.gather(*(worker(n) for n in range(self.concurrency)))
