"""A realistic mix: 80 % reads, 15 % course writes, 5 % uploads of 10 MiB, from
CONNECTIONS closed-loop clients for DURATION_S (and at most MAX_REQUESTS), at the app
under gunicorn (2 workers) and through nginx over HTTPS on the local VPS (2 workers
too). Prints rps, p50/p99 per kind and overall, and the error count; any error fails
the benchmark (a closed loop runs at the rate the server sustains).

    python -m tests.bench.mix [--vps]
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import time

import aiohttp
from aiohttp.abc import AbstractResolver

from app.migrate import apply_migrations
from tests.support.courses import create_course
from tests.support.gunicorn import Gunicorn
from tests.support.keys import unlimited_key_command
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
LOG_LINES_SHOWN = 20


class _PinnedResolver(AbstractResolver):
    """The VPS's domain resolves to its address (what `curl --resolve` does)."""

    def __init__(self, domain: str, address: str) -> None:
        self.domain, self.address = domain, address

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        if host != self.domain:
            raise OSError(f"only {self.domain} is resolved here")
        return [{"hostname": host, "host": self.address, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


async def _drive(url: str, key: str, course_id: str, connector: aiohttp.TCPConnector | None = None) -> dict:
    headers = {"X-API-Key": key}
    payload = os.urandom(UPLOAD_BYTES)
    rng = random.Random(8)  # the same sequence of kinds every run
    kinds, weights = zip(*MIX)
    samples: dict[str, list[float]] = collections.defaultdict(list)
    errors: collections.Counter = collections.Counter()
    deadline = time.monotonic() + DURATION_S
    count = 0

    async with aiohttp.ClientSession(connector=connector or aiohttp.TCPConnector(limit=CONNECTIONS),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(kind: str) -> str:
            if kind == "read":
                path = rng.choice((f"/api/v1/courses/{course_id}", "/api/v1/courses?limit=20"))
                async with session.get(url + path, headers=headers) as resp:
                    return await _outcome(resp)
            if kind == "write":
                async with session.post(url + "/api/v1/courses", headers=headers,
                                        json={"title": f"Mix {rng.random():.6f}", "description": "bench"}) as resp:
                    return await _outcome(resp)
            async with session.post(f"{url}/api/v1/courses/{course_id}/materials?filename=lecture.bin",
                                    data=payload, headers={**headers, "Content-Type": "application/octet-stream"}) as resp:
                return await _outcome(resp)

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
                if status:
                    errors[f"{kind}: {status}"] += 1

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(CONNECTIONS)))
        elapsed = time.monotonic() - started
    return {"samples": dict(samples), "errors": dict(errors), "seconds": elapsed}


async def _outcome(resp: aiohttp.ClientResponse) -> str:
    """An empty string for a success, else the status and the error's code."""
    body = await resp.read()
    if resp.status in (200, 201):
        return ""
    try:
        error = json.loads(body)["error"]
        return f"{resp.status} {error['code']}"
    except (ValueError, KeyError, TypeError):
        return f"{resp.status} {body[:80]!r}"


def run() -> dict:
    with PostgresCluster() as pg, S3Server() as s3:
        database_url = pg.create_database("bench_mix")
        apply_migrations(database_url)
        key, course_id = asyncio.run(seed(database_url))
        env = app_environment(database_url, s3, s3.create_bucket("bench-mix"), LOG_LEVEL="WARNING")
        with Gunicorn(env, workers=WORKERS) as app:
            result = asyncio.run(_drive(app.url, key, course_id))
            # What the app logged about any failures (it logs WARNING and up here).
            result["log"] = [line for line in app.log_lines() if _level(line) not in ("DEBUG", "INFO")]
            return result


def _level(line: str) -> str:
    try:
        return json.loads(line).get("level", "")
    except ValueError:
        return ""


def run_vps() -> dict:
    """The same mix through nginx on the local VPS (brought up as `make vps` does, and
    taken down again if it was not running), with a key whose limits it cannot reach."""
    from tests.localvps import machine
    from tests.localvps.layout import ROOT, VPS_JSON

    was_up = VPS_JSON.exists() and machine.ssh("true", check=False, timeout=30).returncode == 0
    subprocess.run([sys.executable, "-m", "tests.localvps", "up"], cwd=ROOT, check=True, timeout=1200,
                   stdout=subprocess.DEVNULL)
    try:
        vps = json.loads(VPS_JSON.read_text())
        tenant = json.loads(machine.ssh("course-supporter-admin tenant create 'Bench mix' --json").stdout)
        key = json.loads(machine.ssh(unlimited_key_command(tenant["id"], "bench")).stdout)["key"]
        return asyncio.run(_drive_vps(vps, key))
    finally:
        if not was_up:
            subprocess.run([sys.executable, "-m", "tests.localvps", "down"], cwd=ROOT, check=False, timeout=300,
                           stdout=subprocess.DEVNULL)


async def _drive_vps(vps: dict, key: str) -> dict:
    url = f"https://{vps['domain']}"
    connector = aiohttp.TCPConnector(limit=CONNECTIONS, resolver=_PinnedResolver(vps["domain"], vps["address"]),
                                     ssl=ssl.create_default_context(cafile=vps["ca_cert"]))
    async with aiohttp.ClientSession(connector=connector, connector_owner=False) as session:
        course_id = (await create_course(session, url, {"X-API-Key": key}, "Bench mix"))["id"]
    return await _drive(url, key, course_id, connector)


def report(result: dict, where: str = "at the app") -> bool:
    samples, seconds = result["samples"], result["seconds"]
    every = [s for kind in samples.values() for s in kind]
    print(f"\nMix {where}: {WORKERS} gunicorn workers, {CONNECTIONS} connections, {seconds:.0f} s "
          f"({', '.join(f'{share} % {kind}' for kind, share in MIX)}; uploads of {UPLOAD_BYTES >> 20} MiB)")
    print(f"{'':10} {'requests':>9} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, _ in MIX:
        if samples.get(kind):
            print(f"{kind:10} {len(samples[kind]):>9} {len(samples[kind]) / seconds:>8.1f} "
                  f"{percentile(samples[kind], 50):>8.1f} {percentile(samples[kind], 99):>8.1f}")
    print(f"{'all':10} {len(every):>9} {len(every) / seconds:>8.1f} {percentile(every, 50):>8.1f} "
          f"{percentile(every, 99):>8.1f}")
    print(f"errors: {sum(result['errors'].values())} {result['errors'] or ''}")
    log = result.get("log", [])
    for line in log[:LOG_LINES_SHOWN]:
        print(f"  app log: {line}")
    if len(log) > LOG_LINES_SHOWN:
        print(f"  app log: ... {len(log) - LOG_LINES_SHOWN} more line(s)")
    return not result["errors"]


if __name__ == "__main__":
    if "--vps" in sys.argv:
        raise SystemExit(0 if report(run_vps(), "through nginx on the local VPS") else 1)
    raise SystemExit(0 if report(run()) else 1)
