"""Monthly LLM budgets per tenant and per key: a call reserves its worst case before any
provider is asked, and settles to its real cost; concurrent calls never spend past a
budget; every call's reservation ends settled or given back."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from decimal import Decimal

import aiohttp
import pytest

from app.keycache import change_in_force
from app.keys import llm_key
from app.llm import budgets
from app.llm.budgets import prompt_tokens_bound
from app.llm.prices import PriceTable
from tests.support.gunicorn import Gunicorn
from tests.support.llm_accounting import llm_calls

PROMPT = "Explain recursion briefly"
MESSAGES = [{"role": "user", "content": PROMPT}]
HEADER = "X-Budget-Remaining-USD"


async def set_budget(db, kind: str, ident, usd: str | None) -> None:
    assert await budgets.set_budget(db, kind, ident, None if usd is None else Decimal(usd))
    await change_in_force()  # as the admin CLI does: every worker knows before it returns


def worst_case(model: str, messages, max_tokens: int | None, prices: PriceTable | None = None) -> Decimal:
    prices = prices or PriceTable()
    return prices.cost(model, prompt_tokens_bound(messages), max_tokens or prices.max_output(model))


async def settled(db, tenant_id, client=None, timeout: float = 10.0) -> dict:
    """The tenant's spend row once no reservation of it is left (the rows settle in the
    background), after the in-process app ``client`` gave back its budget slices."""
    if client is not None:
        gateway = client.server.app[llm_key]
        await gateway.budgets.close()
        await gateway.recorder.drain()
    deadline = time.monotonic() + timeout
    while True:
        row = await db.fetchrow("SELECT * FROM tenant_spend WHERE tenant_id = $1", tenant_id)
        open_ = await db.fetchval("SELECT count(*) FROM llm_reservations WHERE tenant_id = $1", tenant_id)
        if row is not None and open_ == 0 and row["reserved_usd"] == 0:
            return dict(row)
        assert time.monotonic() < deadline, (dict(row) if row else None, open_)
        await asyncio.sleep(0.05)


async def test_a_call_that_does_not_fit_is_402_before_any_provider_is_asked(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    await set_budget(db, "tenant", tenant["id"], "0.00")
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "max_tokens": 100}, headers=auth)
    assert resp.status == 402
    error = (await resp.json())["error"]
    assert error["code"] == "budget_exceeded"
    assert error["details"] == {"budget": "tenant", "remaining_usd": 0.0,
                                "needed_usd": float(worst_case("gpt-4o-mini", MESSAGES, 100))}
    assert resp.headers[HEADER] == "0"
    assert fresh_llm.requests() == []
    assert await db.fetchval("SELECT count(*) FROM llm_reservations WHERE tenant_id = $1", tenant["id"]) == 0


async def test_a_call_reserves_its_worst_case_and_settles_to_its_cost(client, factory, db, fresh_llm):
    """The header says what was left once the call's worst case was set aside; afterwards
    the month's spend is the call's cost and nothing stays reserved."""
    tenant, auth = await factory.tenant_with_key()
    await set_budget(db, "tenant", tenant["id"], "1.00")
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "max_tokens": 100}, headers=auth)
    assert resp.status == 200, await resp.text()
    worst = worst_case("gpt-4o-mini", MESSAGES, 100)
    assert Decimal(resp.headers[HEADER]) == Decimal("1.00") - worst
    [call] = await llm_calls(db, tenant["id"])
    spend = await settled(db, tenant["id"], client)
    assert spend["spent_usd"] == call["cost_usd"] > 0 and spend["calls"] == 1
    assert call["cost_usd"] <= worst
    resp = await client.get("/api/v1/usage", headers=auth)
    assert resp.status == 200
    usage = await resp.json()
    assert usage == {"period_start": usage["period_start"], "period_end": usage["period_end"], "budget_usd": 1.0,
                     "spent_usd": float(call["cost_usd"]), "reserved_usd": 0.0,
                     "remaining_usd": float(Decimal("1.00") - call["cost_usd"]), "calls": 1}
    assert usage["period_start"].endswith("-01T00:00:00Z") and usage["period_end"].endswith("-01T00:00:00Z")


async def test_without_a_budget_nothing_is_reserved_and_the_spend_is_counted(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT}, headers=auth)
    assert resp.status == 200 and HEADER not in resp.headers
    [call] = await llm_calls(db, tenant["id"])
    spend = await settled(db, tenant["id"])
    assert spend["spent_usd"] == call["cost_usd"]
    usage = await (await client.get("/api/v1/usage", headers=auth)).json()
    assert (usage["budget_usd"], usage["remaining_usd"], usage["calls"]) == (None, None, 1)
    assert usage["spent_usd"] == float(call["cost_usd"]) and "key" not in usage


async def test_without_max_tokens_the_models_output_cap_is_reserved(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    await set_budget(db, "tenant", tenant["id"], "0.01")
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "model": "gpt-4o"}, headers=auth)
    assert resp.status == 402  # 16,384 output tokens of gpt-4o cost 0.16 USD
    assert (await resp.json())["error"]["details"]["needed_usd"] == float(worst_case("gpt-4o", MESSAGES, 16_384))
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "model": "gpt-4o", "max_tokens": 500},
                             headers=auth)
    assert resp.status == 200, await resp.text()


async def test_a_keys_budget_binds_that_key_alone(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    other = await factory.key(tenant["id"])
    limited = await db.fetchval("SELECT id FROM api_keys WHERE tenant_id = $1 ORDER BY created_at LIMIT 1",
                                tenant["id"])
    await set_budget(db, "key", limited, "0.00")
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "max_tokens": 10}, headers=auth)
    assert resp.status == 402 and (await resp.json())["error"]["details"]["budget"] == "key"
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "max_tokens": 10},
                             headers={"X-API-Key": other["key"]})
    assert resp.status == 200
    usage = await (await client.get("/api/v1/usage", headers=auth)).json()
    assert usage["key"] == {"key_prefix": auth["X-API-Key"][:12], "budget_usd": 0.0, "spent_usd": 0.0,
                            "reserved_usd": 0.0, "remaining_usd": 0.0, "calls": 0}
    assert usage["budget_usd"] is None and usage["calls"] == 1


@pytest.mark.parametrize("behaviour, status, outcome", [
    ({"status": 400}, 502, "provider_error"),  # not retried
    ({"delay_s": 3}, 504, "timeout"),  # LLM_TIMEOUT_S=1, no retries
])
async def test_a_call_that_fails_gives_its_reservation_back(make_client, factory, db, fresh_llm, behaviour, status,
                                                            outcome):
    client = await make_client(LLM_MAX_RETRIES="0")
    tenant, auth = await factory.tenant_with_key()
    await set_budget(db, "tenant", tenant["id"], "1.00")
    fresh_llm.script(behaviour)
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "max_tokens": 50}, headers=auth)
    assert resp.status == status
    [call] = await llm_calls(db, tenant["id"])
    assert call["outcome"] == outcome
    spend = await settled(db, tenant["id"], client)
    assert spend["spent_usd"] == 0 and spend["calls"] == 1


async def test_a_stream_the_client_leaves_settles_to_what_was_generated(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    await set_budget(db, "tenant", tenant["id"], "1.00")
    fresh_llm.script({"chunk_delay_s": 0.3, "content": " ".join(f"word{i}" for i in range(60))})
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "stream": True, "max_tokens": 100},
                             headers=auth)
    assert resp.status == 200 and Decimal(resp.headers[HEADER]) < 1
    await resp.content.readuntil(b"\n\n")
    resp.close()
    [call] = await llm_calls(db, tenant["id"], timeout=10)
    assert call["outcome"] == "cancelled"
    spend = await settled(db, tenant["id"], client)
    assert spend["spent_usd"] == call["cost_usd"] > 0


# --- slices: calls admitted without a statement of their own ----------------------------

async def test_calls_run_on_a_slice_of_the_budget(client, factory, db, fresh_llm):
    """With plenty left, the first call's reservation is a slice (1 % of the budget) and the
    next calls are admitted from it: one reservation for five calls, each call's cost
    charged to it, and each answer's header exact all the same."""
    tenant, auth = await factory.tenant_with_key()
    await set_budget(db, "tenant", tenant["id"], "100.00")
    worst = worst_case("gpt-4o-mini", MESSAGES, 100)
    headers = []
    for _ in range(5):
        resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "max_tokens": 100}, headers=auth)
        assert resp.status == 200, await resp.text()
        headers.append(Decimal(resp.headers[HEADER]))
    calls = await llm_calls(db, tenant["id"], count=5)
    costs = [c["cost_usd"] for c in calls]
    assert headers == [Decimal("100.00") - sum(costs[:i], Decimal(0)) - worst for i in range(5)]
    [piece] = await db.fetch("SELECT * FROM llm_reservations WHERE tenant_id = $1", tenant["id"])
    assert piece["amount_usd"] == Decimal("1.00") - sum(costs)
    spend = await db.fetchrow("SELECT * FROM tenant_spend WHERE tenant_id = $1", tenant["id"])
    assert spend["spent_usd"] == sum(costs) and spend["spent_usd"] + spend["reserved_usd"] == Decimal("1.00")
    spend = await settled(db, tenant["id"], client)  # the worker gives its slice back (here: at shutdown)
    assert spend["spent_usd"] == sum(costs) and spend["reserved_usd"] == 0


async def test_a_call_that_does_not_fit_the_slice_in_hand_reserves_anew(client, factory, db, fresh_llm):
    """A slice of 0.02 USD holds the worst cases of two calls at once (no max_tokens: the
    model's output cap); a third call running beside them takes a reservation of its own."""
    tenant, auth = await factory.tenant_with_key()
    await set_budget(db, "tenant", tenant["id"], "2.00")
    fresh_llm.script(*[{"chunk_delay_s": 0.3, "content": " ".join(f"w{i}" for i in range(20))}] * 3)
    running = []
    for _ in range(3):
        resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "stream": True}, headers=auth)
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")
        running.append(resp)
    held = await db.fetch("SELECT amount_usd FROM llm_reservations WHERE tenant_id = $1 ORDER BY created_at",
                          tenant["id"])
    worst = worst_case("gpt-4o-mini", MESSAGES, None)
    assert [r["amount_usd"] for r in held] == [Decimal("0.02"), Decimal("0.02")] and 2 * worst <= Decimal("0.02")
    for resp in running:
        await resp.read()
    calls = await llm_calls(db, tenant["id"], count=3)
    spend = await settled(db, tenant["id"], client)
    assert spend["spent_usd"] == sum(c["cost_usd"] for c in calls) and spend["calls"] == 3


async def test_a_budget_change_retires_the_slices_before_it_is_in_force(client, factory, db, fresh_llm):
    """A worker admits nothing from a slice taken before a budget change: once the change's
    command has returned, the next call is judged by the new budget."""
    tenant, auth = await factory.tenant_with_key()
    await set_budget(db, "tenant", tenant["id"], "100.00")
    assert (await client.post("/api/v1/gpt", json={"prompt": PROMPT, "max_tokens": 100}, headers=auth)).status == 200
    assert await db.fetchval("SELECT amount_usd FROM llm_reservations WHERE tenant_id = $1", tenant["id"]) > 0
    await set_budget(db, "tenant", tenant["id"], "0.00")
    resp = await client.post("/api/v1/gpt", json={"prompt": PROMPT, "max_tokens": 100}, headers=auth)
    assert resp.status == 402
    [call] = await llm_calls(db, tenant["id"])
    spend = await settled(db, tenant["id"])  # released by the worker itself, on the change's notification
    assert spend["spent_usd"] == call["cost_usd"] and spend["reserved_usd"] == 0


# --- concurrency: 0 overspend ----------------------------------------------------------

ROUNDS = 20
CALLS = 100
MAX_TOKENS = 20
BUDGET = Decimal("3.00")
# gpt-4o-mini made dear: a call's worst case is about 0.10 USD, so a budget of 3.00 fits
# about 30 of the round's 100 calls at a time.
DEAR = {"gpt-4o-mini": {"input_per_1m": 1, "output_per_1m": 5000}}


@pytest.mark.parametrize("rounds, calls, budget, spread_s", [
    (ROUNDS, CALLS, BUDGET, 0),  # 1 % of the budget is less than a call: each call reserves for itself
    # Slices of about three calls until a quarter of the budget is left, the calls coming
    # over two seconds so that they share them.
    (5, 400, Decimal("30.00"), 2.0),
], ids=["exact", "sliced"])
async def test_concurrent_calls_never_spend_past_the_budget(make_client, factory, db, fresh_llm, tmp_path, rounds,
                                                            calls, budget, spread_s, monkeypatch):
    """100 concurrent calls per round, streamed and not, the provider answering at max_tokens,
    failing or breaking off mid-stream, against a budget that fits a fraction of them: in
    every round the settled spend stays within the budget, every call admitted leaves one
    settled row, and a call was refused only when its worst case did not fit what was left."""
    statements = [0]  # the reservations taken in the database (the rest came from slices)
    pooled = budgets.pooled

    def counted(pool):
        statements[0] += 1
        return pooled(pool)

    monkeypatch.setattr(budgets, "pooled", counted)
    prices_file = tmp_path / "prices.json"
    prices_file.write_text(json.dumps(DEAR))
    client = await make_client(LLM_PRICES=str(prices_file), LLM_MAX_RETRIES="0")
    prices = PriceTable({m: (p["input_per_1m"], p["output_per_1m"]) for m, p in DEAR.items()})
    rng = random.Random(20261203)
    for round_ in range(rounds):
        fresh_llm.reset()
        fresh_llm.script(*(rng.choice([{"fill_max_tokens": True}] * 3 + [{"break_after_words": 5}, {"status": 500}])
                           for _ in range(calls)))
        tenant, auth = await factory.tenant_with_key()
        await set_budget(db, "tenant", tenant["id"], str(budget))

        starts = [rng.random() * spread_s for _ in range(calls)]

        async def call(i: int):
            await asyncio.sleep(starts[i])
            body = {"prompt": f"question {round_}.{i}", "max_tokens": MAX_TOKENS, "stream": i % 2 == 0}
            resp = await client.post("/api/v1/gpt", json=body, headers=auth)
            text = await resp.text()
            return resp.status, text

        results = await asyncio.wait_for(asyncio.gather(*(call(i) for i in range(calls))), timeout=60)
        refused = [json.loads(text)["error"] for status, text in results if status == 402]
        admitted = [r for r in results if r[0] != 402]
        assert all(e["details"]["needed_usd"] > e["details"]["remaining_usd"] for e in refused), round_
        worst = worst_case("gpt-4o-mini", [{"role": "user", "content": f"question {round_}.99"}], MAX_TOKENS, prices)
        assert len(admitted) >= int(budget / worst), (round_, len(admitted))
        if spread_s:
            assert statements[0] < len(admitted) + len(refused), (round_, statements[0])  # slices were shared
        statements[0] = 0
        rows = await llm_calls(db, tenant["id"], count=len(admitted), timeout=10)
        spend = await settled(db, tenant["id"], client)
        assert len(rows) == len(admitted) == spend["calls"], round_
        assert spend["spent_usd"] == sum(r["cost_usd"] for r in rows) <= budget, round_


# --- a worker that dies mid-call ---------------------------------------------------------

TTL_S = 1.5


@pytest.mark.gunicorn
async def test_a_reservation_outlives_no_worker_by_more_than_its_lifetime(app_env, factory, db, fresh_llm):
    """While a call runs, its worker keeps its reservation alive past LLM_RESERVATION_TTL_S;
    once the worker is killed mid-call, another releases it within the lifetime and a
    third of it, and logs that it did."""
    tenant, auth = await factory.tenant_with_key()
    await set_budget(db, "tenant", tenant["id"], "1.00")
    fresh_llm.script({"chunk_delay_s": 0.5, "content": " ".join(f"word{i}" for i in range(40))})
    env = {**app_env, "LLM_RESERVATION_TTL_S": str(TTL_S)}
    with Gunicorn(env, workers=2) as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + "/api/v1/gpt", headers=auth,
                                    json={"prompt": PROMPT, "stream": True, "max_tokens": 100}) as resp:
                assert resp.status == 200
                await resp.content.readuntil(b"\n\n")
                [held] = await db.fetch("SELECT * FROM llm_reservations WHERE tenant_id = $1", tenant["id"])
                await asyncio.sleep(TTL_S * 2)  # extended meanwhile: still there
                assert await db.fetchval("SELECT count(*) FROM llm_reservations WHERE id = $1", held["id"]) == 1
                os.kill(server.worker_with_connection(fresh_llm.port, serving=False), signal.SIGKILL)
                killed = time.monotonic()
        while await db.fetchval("SELECT count(*) FROM llm_reservations WHERE id = $1", held["id"]):
            assert time.monotonic() - killed < TTL_S * 4 / 3 + 2, "the reservation was not released"
            await asyncio.sleep(0.05)
        spend = await settled(db, tenant["id"])
        assert spend["reserved_usd"] == 0 and spend["spent_usd"] == 0
        deadline = time.monotonic() + 5
        while not any("released an LLM budget reservation" in line and str(held["id"]) in line
                      for line in server.log_lines()):
            assert time.monotonic() < deadline, server.log_lines()[-5:]
            await asyncio.sleep(0.1)


def test_a_models_output_cap_comes_from_the_table_its_family_or_the_price_file():
    prices = PriceTable({"in-house": (1, 2, 4096), "uncapped": (1, 2)})
    assert prices.max_output("gpt-4o-mini-2024-07-18") == 16_384  # a dated snapshot: its family's
    assert prices.max_output("in-house") == 4096
    assert prices.max_output("uncapped") == 128_000  # priced, cap unknown: the largest of the table


def test_the_prompt_bound_counts_every_byte_a_token():
    """A byte-level BPE token covers at least one byte: bytes, plus the chat framing, bound
    what any provider of the OpenAI family counts."""
    assert prompt_tokens_bound([{"role": "user", "content": "héllo"}]) == 6 + 4 + 3
