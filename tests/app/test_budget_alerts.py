"""The operator's Telegram messages about tenants' LLM budgets: one when a tenant's month
passes 80 % of its budget, one when the budget refuses a call (or the spend reaches it),
each once per tenant, month and budget, however many calls and workers see it; a message
the Bot API did not take is sent again later; the bot's token never reaches the log."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import pytest
from aiohttp import web

from app.keycache import change_in_force
from app.llm import budget_alerts, budgets
from tests.localvps import telegram as fake_telegram

TOKEN = "1234567890:test-bot-secret-0123456789abcdef"
CHAT = "-1001000000001"
# Each call answers max_tokens words (gpt-4o: 10 USD a million output tokens): 0.004 USD and a
# little for the prompt, so two calls pass 80 % of 0.01 USD and the third does not fit.
CALL = {"prompt": "Explain recursion briefly", "model": "gpt-4o", "max_tokens": 400}


@pytest.fixture
async def bot_api(aiohttp_server, tmp_path):
    """The local VPS's fake Bot API over plain HTTP; ``failing`` answers the next n with 502."""
    log = tmp_path / "telegram.jsonl"
    app = fake_telegram.create_app(str(log))
    failing = [0]

    @web.middleware
    async def fail_on_demand(request, handler):
        if failing[0] > 0:
            failing[0] -= 1
            return web.json_response({"ok": False, "error_code": 502, "description": "Bad Gateway"}, status=502)
        return await handler(request)

    app.middlewares.append(fail_on_demand)
    server = await aiohttp_server(app)

    class BotApi:
        url = str(server.make_url("")).rstrip("/")

        def fail_next(self, n: int) -> None:
            failing[0] = n

        def messages(self) -> list[dict]:
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return BotApi()


@pytest.fixture
async def alerting_client(make_client, bot_api, monkeypatch):
    monkeypatch.setattr(budget_alerts, "POLL_S", 0.1)
    monkeypatch.setattr(budget_alerts, "RETRY_AFTER_S", 0.5)
    return await make_client(TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_CHAT_ID=CHAT, TELEGRAM_API_URL=bot_api.url)


async def tenant_with_budget(factory, db, usd: str):
    tenant, auth = await factory.tenant_with_key()
    assert await budgets.set_budget(db, "tenant", tenant["id"], Decimal(usd))
    await change_in_force()
    return tenant, auth


async def messages_about(bot_api, tenant, count: int, timeout: float = 10.0) -> list[dict]:
    """The messages naming the tenant, once there are ``count`` (and a moment later, no more)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in bot_api.messages() if str(tenant["id"]) in m["text"]]
        if len(found) >= count:
            await asyncio.sleep(0.5)  # a second worker's (or a repeated) message would come in this time
            return [m for m in bot_api.messages() if str(tenant["id"]) in m["text"]]
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)


async def test_the_operator_hears_of_80_percent_and_of_the_first_refusal_once(alerting_client, bot_api, factory,
                                                                             db, fresh_llm):
    tenant, auth = await tenant_with_budget(factory, db, "0.01")
    fresh_llm.script(*[{"fill_max_tokens": True}] * 2)
    first = await alerting_client.post("/api/v1/gpt", json=CALL, headers=auth)
    assert first.status == 200, await first.text()
    await asyncio.sleep(1)
    assert [m for m in bot_api.messages() if str(tenant["id"]) in m["text"]] == []  # 40 %: nothing to say
    second = await alerting_client.post("/api/v1/gpt", json=CALL, headers=auth)
    assert second.status == 200
    [warning] = await messages_about(bot_api, tenant, 1)
    assert warning["chat_id"] == CHAT and warning["bot"] == "1234567890" and warning["parse_mode"] is None
    assert warning["text"].startswith(f"⚠️ Course Supporter: tenant \"{tenant['name']}\" ({tenant['id']}) has "
                                      "passed 80 % of its LLM budget for ")
    assert "of 0.01 USD spent, 80 %" in warning["text"]

    for _ in range(3):  # the budget refuses them all; the operator hears it once
        refused = await alerting_client.post("/api/v1/gpt", json=CALL, headers=auth)
        assert refused.status == 402
    warning_again, reached = await messages_about(bot_api, tenant, 2)
    assert warning_again == warning
    assert reached["text"].startswith(f"🔴 Course Supporter: tenant \"{tenant['name']}\" ({tenant['id']}) has "
                                      "reached its LLM budget for ")
    assert "a call that could cost up to 0.0041 USD was refused" in reached["text"]
    assert f"course-supporter-admin tenant budget set {tenant['id']} --usd AMOUNT" in reached["text"]
    rows = await db.fetch("SELECT threshold_pct, sent_at, attempts FROM budget_alerts WHERE tenant_id = $1 "
                          "ORDER BY threshold_pct", tenant["id"])
    assert [(r["threshold_pct"], r["attempts"]) for r in rows] == [(80, 1), (100, 1)]
    assert all(r["sent_at"] is not None for r in rows)


async def test_a_new_budget_is_a_new_line_to_cross(alerting_client, bot_api, factory, db, fresh_llm):
    tenant, auth = await tenant_with_budget(factory, db, "0.01")
    fresh_llm.script(*[{"fill_max_tokens": True}] * 3)
    for _ in range(2):
        assert (await alerting_client.post("/api/v1/gpt", json=CALL, headers=auth)).status == 200
    await messages_about(bot_api, tenant, 1)
    assert await budgets.set_budget(db, "tenant", tenant["id"], Decimal("0.015"))  # numeric(14, 2): 0.02
    await change_in_force()
    assert (await alerting_client.post("/api/v1/gpt", json=CALL, headers=auth)).status == 200  # 60 % of 0.02
    fresh_llm.script({"fill_max_tokens": True})
    assert (await alerting_client.post("/api/v1/gpt", json=CALL, headers=auth)).status == 200  # 80 %
    texts = [m["text"] for m in await messages_about(bot_api, tenant, 2)]
    assert ["of 0.01 USD spent" in t for t in texts] == [True, False] and "of 0.02 USD spent" in texts[1]


async def test_concurrent_calls_across_the_line_make_one_message_each(alerting_client, bot_api, factory, db,
                                                                     fresh_llm):
    """40 calls at once against a budget that fits about 12: the month crosses 80 % in one
    call's settlement and the budget refuses many, yet the operator gets two messages."""
    tenant, auth = await tenant_with_budget(factory, db, "0.05")
    fresh_llm.script(*[{"fill_max_tokens": True}] * 40)
    answers = await asyncio.gather(*(alerting_client.post("/api/v1/gpt", json=CALL, headers=auth)
                                     for _ in range(40)))
    statuses = sorted(r.status for r in answers)
    assert statuses.count(402) > 0 and statuses.count(200) >= 10, statuses
    found = await messages_about(bot_api, tenant, 2)
    assert [m["text"][0] for m in found] in (["⚠", "🔴"], ["🔴", "⚠"])
    assert len(found) == 2


async def test_a_message_the_bot_api_refused_is_sent_again_and_the_token_never_logged(
        alerting_client, bot_api, factory, db, fresh_llm, json_log):
    tenant, auth = await tenant_with_budget(factory, db, "0.00")
    bot_api.fail_next(2)
    assert (await alerting_client.post("/api/v1/gpt", json=CALL, headers=auth)).status == 402
    [reached] = await messages_about(bot_api, tenant, 1)
    assert reached["text"].startswith("🔴")
    row = await db.fetchrow("SELECT attempts, sent_at FROM budget_alerts WHERE tenant_id = $1", tenant["id"])
    assert row["attempts"] == 3 and row["sent_at"] is not None
    failures = [r for r in json_log() if r["message"].startswith("could not send a budget alert")]
    assert len(failures) == 2
    assert failures[0]["error"] == "the Bot API answered 502 Bad Gateway"
    assert failures[0]["budget_alert"]["tenant_id"] == str(tenant["id"])
    assert [r for r in json_log() if r["message"] == "sent a budget alert to Telegram"]
    assert not [r for r in json_log() if "test-bot-secret" in json.dumps(r)]


async def test_a_key_budget_refusing_is_not_the_tenants_budget(alerting_client, bot_api, factory, db, fresh_llm):
    """Only the tenant's budget is the operator's business; a key's is the tenant's own limit."""
    tenant, auth = await factory.tenant_with_key()
    key = await db.fetchval("SELECT id FROM api_keys WHERE tenant_id = $1", tenant["id"])
    assert await budgets.set_budget(db, "key", key, Decimal("0.00"))
    await change_in_force()
    assert (await alerting_client.post("/api/v1/gpt", json=CALL, headers=auth)).status == 402
    await asyncio.sleep(1)
    assert await db.fetchval("SELECT count(*) FROM budget_alerts WHERE tenant_id = $1", tenant["id"]) == 0
    assert [m for m in bot_api.messages() if str(tenant["id"]) in m["text"]] == []


@pytest.mark.parametrize("amount, shown", [("0", "0"), ("0.00000915", "0.0000092"), ("0.004107", "0.0041"),
                                           ("0.1638", "0.1638"), ("20.1345", "20.13"), ("1234.5", "1,234.50")])
def test_amounts_read_as_money_however_small(amount, shown):
    """Cents from 1 USD up; below, enough decimals to say something (a refused call of a
    cheap model costs millionths)."""
    import datetime
    import uuid

    alert = {"tenant_id": uuid.uuid4(), "tenant_name": "Acme", "period_start": datetime.date(2026, 12, 1),
             "budget_usd": Decimal("25.00"), "threshold_pct": 100, "spent_usd": Decimal("24.99"),
             "refused_usd": Decimal(amount)}
    assert f"a call that could cost up to {shown} USD was refused (24.99 of 25.00 USD spent, 100 %)" in \
        budget_alerts.message(alert)
