"""Revocation lag under load: the app under gunicorn (4 workers, each with its key cache),
16 connections asking with a key while `key revoke` or `tenant deactivate` (the
functions the admin CLI runs) takes it away; every fifth trial cuts the workers'
listener connections just before. Per trial: how long after the command returned
the last answer accepting the key arrived, and how long after the command began the
last accepted request was sent (the change reaching the workers by notification
alone). Target: p100 <= 1 s after the command returned, over TRIALS trials.
"""

from __future__ import annotations

import asyncio
import statistics

import aiohttp
import asyncpg

from app import tenants
from app.migrate import apply_migrations
from tests.support.gunicorn import Gunicorn
from tests.support.pg import PostgresCluster
from tests.support.revocation import revocation_trial
from tests.support.s3 import S3Server, app_environment

TRIALS = 60
WORKERS = 4
TARGET_MAX_S = 1.0


async def _trials(url: str, database_url: str) -> list:
    conn = await asyncpg.connect(database_url)
    results = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16, force_close=True)) as session:
            for trial in range(TRIALS):
                tenant = await tenants.create_tenant(conn, f"Revocation {trial}")
                key = await tenants.issue_key(conn, tenant["id"], scopes=tenants.SCOPES, label="", env="test",
                                              rate_limit_prep=10_000_000, rate_limit_check=10_000_000,
                                              expires_at=None)

                async def revoke() -> None:
                    if trial % 2:
                        await tenants.set_tenant_active(conn, tenant["id"], False)
                    else:
                        await tenants.revoke_key(conn, key["id"])
                results.append(await revocation_trial(session, f"{url}/api/v1/courses", key["key"], revoke,
                                                      cut_listeners=conn if trial % 5 == 4 else None))
    finally:
        await conn.close()
    return results


def run() -> dict:
    with PostgresCluster() as pg, S3Server() as s3:
        database_url = pg.create_database("bench_revocation")
        apply_migrations(database_url)
        env = app_environment(database_url, s3, s3.create_bucket("bench-revocation"), LOG_LEVEL="INFO")
        with Gunicorn(env, workers=WORKERS) as app:
            results = asyncio.run(_trials(app.url, database_url))
    return {"trials": results}


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


def report(result: dict) -> bool:
    trials = result["trials"]
    after_return = _quantiles([t.lag_s for t in trials])
    after_start = _quantiles([t.lag_after_start_s for t in trials])
    accepted_late = sum(t.accepted_sent_after_return for t in trials)
    meaningful = all(t.accepted_before and t.refused_after for t in trials)
    met = after_return[2] <= TARGET_MAX_S and accepted_late == 0 and meaningful
    print(f"\nrevocation lag: {len(trials)} trials under load ({WORKERS} workers, 16 connections), "
          f"every fifth with the listeners cut just before")
    print(f"{'':58} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'last accepting answer after the command returned':58} "
          + " ".join(f"{1000 * x:>8.1f}" for x in after_return))
    print(f"{'last accepted request sent after the command began':58} "
          + " ".join(f"{1000 * x:>8.1f}" for x in after_start))
    print(f"requests sent after the command returned and still accepted: {accepted_late}; "
          f"every trial accepted before and refused after: {meaningful}")
    print(f"target: max <= {1000 * TARGET_MAX_S:.0f} ms after the command returned: {'met' if met else 'NOT met'}")
    return met


if __name__ == "__main__":
    raise SystemExit(0 if report(run()) else 1)
