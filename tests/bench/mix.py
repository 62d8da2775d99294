"""A realistic mix at the app under gunicorn (2 workers): 80 % reads, 15 % course
writes, 5 % uploads of 10 MiB, from CONNECTIONS closed-loop clients for DURATION_S
(and at most MAX_REQUESTS). Prints rps, p50/p99 per kind and overall, and the error
count; any error fails the benchmark (a closed loop runs at the rate the app sustains).

    python -m tests.bench.mix
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time

import aiohttp

from app.migrate import apply_migrations
from tests.support.gunicorn import Gunicorn
from tests.support.pg import PostgresCluster
from tests.support.s3 import S3Server, app_environment

from .gateway import percentile
from .seed import seed

WORKERS = 2
CONNECTIONS = 16
DURATION_S = 20
MAX_REQUESTS = 200_000
UPLOAD_BYTES = 10 << 20
MIX = (("read", 80), ("write", 15), ("upload", 5))


async def _drive(url: str, key: str, course_id: str) -> dict:
    headers = {"X-API-Key": key}
    payload = os.urandom(UPLOAD_BYTES)
    rng = random.Random(8)  # the same sequence of kinds every run
    kinds, weights = zip(*MIX)
    samples: dict[str, list[float]] = collections.defaultdict(list)
    errors: collections.Counter = collections.Counter()
    deadline = time.monotonic() + DURATION_S
    count = 0

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(kind: str) -> int:
            if kind == "read":
                path = rng.choice((f"/api/v1/courses/{course_id}", "/api/v1/courses?limit=20"))
                async with session.get(url + path, headers=headers) as resp:
                    await resp.read()
                    return resp.status
            if kind == "write":
                async with session.post(url + "/api/v1/courses", headers=headers,
                                        json={"title": f"Mix {rng.random():.6f}", "description": "bench"}) as resp:
                    await resp.read()
                    return resp.status
            async with session.post(f"{url}/api/v1/courses/{course_id}/materials?filename=lecture.bin",
                                    data=payload, headers={**headers, "Content-Type": "application/octet-stream"}) as resp:
                await resp.read()
                return resp.status

        async def client() -> None:
            nonlocal count
            while time.monotonic() < deadline and count < MAX_REQUESTS:
                count += 1
                kind = rng.choices(kinds, weights)[0]
                started = time.perf_counter()
                try:
                    status = await one(kind)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    errors[f"{kind}: {type(exc).__name__}"] += 1
                    continue
                samples[kind].append((time.perf_counter() - started) * 1000)
                if status not in (200, 201):
                    errors[f"{kind}: {status}"] += 1

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(CONNECTIONS)))
        elapsed = time.monotonic() - started
    return {"samples": dict(samples), "errors": dict(errors), "seconds": elapsed}


def run() -> dict:
    with PostgresCluster() as pg, S3Server() as s3:
        database_url = pg.create_database("bench_mix")
        apply_migrations(database_url)
        key, course_id = asyncio.run(seed(database_url))
        env = app_environment(database_url, s3, s3.create_bucket("bench-mix"), LOG_LEVEL="WARNING")
        with Gunicorn(env, workers=WORKERS) as app:
            return asyncio.run(_drive(app.url, key, course_id))


def report(result: dict) -> bool:
    samples, seconds = result["samples"], result["seconds"]
    every = [s for kind in samples.values() for s in kind]
    print(f"\nMix at the app: {WORKERS} gunicorn workers, {CONNECTIONS} connections, {seconds:.0f} s "
          f"({', '.join(f'{share} % {kind}' for kind, share in MIX)}; uploads of {UPLOAD_BYTES >> 20} MiB)")
    print(f"{'':10} {'requests':>9} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, _ in MIX:
        if samples.get(kind):
            print(f"{kind:10} {len(samples[kind]):>9} {len(samples[kind]) / seconds:>8.1f} "
                  f"{percentile(samples[kind], 50):>8.1f} {percentile(samples[kind], 99):>8.1f}")
    print(f"{'all':10} {len(every):>9} {len(every) / seconds:>8.1f} {percentile(every, 50):>8.1f} "
          f"{percentile(every, 99):>8.1f}")
    print(f"errors: {sum(result['errors'].values())} {result['errors'] or ''}")
    return not result["errors"]


if __name__ == "__main__":
    raise SystemExit(0 if report(run()) else 1)
