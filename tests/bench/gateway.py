"""LLM gateway overhead: POST /api/v1/gpt through the app versus the same call made
directly with the openai client, both against the instantly answering local
OpenAI-compatible test server, in the same run.

Requests go one at a time (latency, not throughput): the app adds its own HTTP hop,
the middlewares, the key (from the worker's cache) and its rate-limit slice, the route
to the provider, JSON handling and the accounting (written in the background). Targets:
p50 overhead <= 1.5 ms, p99 <= 10 ms.

The same calls by a tenant with a monthly budget, alternated with the others, measure
what the budget adds (each call's worst case reserved from the worker's slice of the
budget, and charged to it by the call's row). Target: <= 1 ms at p50.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from decimal import Decimal

import aiohttp
import asyncpg
import openai

from app import tenants
from app.llm import budgets
from app.migrate import apply_migrations
from tests.support.gunicorn import Gunicorn
from tests.support.llm_server import LLMServer
from tests.support.pg import PostgresCluster
from tests.support.s3 import S3Server, app_environment

from .seed import seed

WARMUP = 100
REQUESTS = 2000
TARGET_P50_MS = 1.5
TARGET_P99_MS = 10.0
TARGET_BUDGET_P50_MS = 1.0
BENCH_BUDGET_USD = Decimal("100000.00")  # never reached: every call is admitted
PROMPT = "Say hello"


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if q < 100 else max(samples)


async def _timed(call, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def _give_a_budget(database_url: str, key: str) -> None:
    """A monthly budget (one no call of the run reaches) for the tenant of ``key``."""
    conn = await asyncpg.connect(database_url)
    try:
        tenant_id = await conn.fetchval("SELECT tenant_id FROM api_keys WHERE key_hash = $1", tenants.hash_key(key))
        await budgets.set_budget(conn, "tenant", tenant_id, BENCH_BUDGET_USD)
    finally:
        await conn.close()


async def _measure(app_url: str, api_key: str, budgeted_key: str,
                   llm_url: str) -> tuple[list[float], list[float], list[float]]:
    direct = openai.AsyncOpenAI(base_url=llm_url, api_key="sk-bench", max_retries=0)
    async with aiohttp.ClientSession() as session:
        async def call(key: str):
            async with session.post(f"{app_url}/api/v1/gpt", json={"prompt": PROMPT},
                                    headers={"X-API-Key": key}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"/api/v1/gpt answered {resp.status}: {await resp.text()}")
                await resp.read()

        async def through_app():
            await call(api_key)

        async def with_budget():
            await call(budgeted_key)

        async def straight():
            await direct.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])

        await _timed(through_app, WARMUP)
        await _timed(with_budget, WARMUP)
        await _timed(straight, WARMUP)
        app, budgeted, bare = [], [], []
        for _ in range(REQUESTS):  # alternating, so that drift on a noisy machine hits all alike
            app += await _timed(through_app, 1)
            budgeted += await _timed(with_budget, 1)
            bare += await _timed(straight, 1)
    await direct.close()
    return app, budgeted, bare


def run() -> dict:
    with PostgresCluster() as pg, S3Server() as s3, LLMServer() as llm:
        database_url = pg.create_database("bench_llm")
        apply_migrations(database_url)
        key, _ = asyncio.run(seed(database_url))
        budgeted_key, _ = asyncio.run(seed(database_url))  # a second tenant, given a budget
        asyncio.run(_give_a_budget(database_url, budgeted_key))
        env = app_environment(database_url, s3, s3.create_bucket("bench-llm"), LOG_LEVEL="INFO",
                              OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY="sk-bench")
        with Gunicorn(env, workers=1) as app:
            through_app, with_budget, direct = asyncio.run(_measure(app.url, key, budgeted_key, llm.base_url))
    result = {}
    for q in (50, 99):
        result[f"app_p{q}"] = percentile(through_app, q)
        result[f"budget_p{q}"] = percentile(with_budget, q)
        result[f"direct_p{q}"] = percentile(direct, q)
        result[f"overhead_p{q}"] = result[f"app_p{q}"] - result[f"direct_p{q}"]
        result[f"budget_added_p{q}"] = result[f"budget_p{q}"] - result[f"app_p{q}"]
    return result


def report(result: dict) -> bool:
    print(f"\nLLM gateway: {REQUESTS} sequential calls each, instant test server")
    print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'POST /api/v1/gpt through the app':34} {result['app_p50']:>8.2f} {result['app_p99']:>8.2f}")
    print(f"{'the same, tenant with a budget':34} {result['budget_p50']:>8.2f} {result['budget_p99']:>8.2f}")
    print(f"{'openai client, direct':34} {result['direct_p50']:>8.2f} {result['direct_p99']:>8.2f}")
    met = result["overhead_p50"] <= TARGET_P50_MS and result["overhead_p99"] <= TARGET_P99_MS
    print(f"{'overhead':34} {result['overhead_p50']:>8.2f} {result['overhead_p99']:>8.2f}"
          f"   (targets <= {TARGET_P50_MS:g} / {TARGET_P99_MS:g} ms: {'met' if met else 'NOT met'})")
    budget_met = result["budget_added_p50"] <= TARGET_BUDGET_P50_MS
    print(f"{'added by the budget':34} {result['budget_added_p50']:>8.2f} {result['budget_added_p99']:>8.2f}"
          f"   (target <= {TARGET_BUDGET_P50_MS:g} ms at p50: {'met' if budget_met else 'NOT met'})")
    return met and budget_met


if __name__ == "__main__":
    raise SystemExit(0 if report(run()) else 1)
