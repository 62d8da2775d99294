"""The LLM gateway through /api/v1/gpt: the real openai client against the local
OpenAI-compatible test server, with failures scripted per test."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import pytest

from app.keys import llm_key
from tests.support.llm_accounting import llm_calls
from tests.support.llm_server import LLMServer


@pytest.fixture(scope="module")
def backup_llm():
    """A second provider: the fallback, or a tenant's own."""
    with LLMServer() as server:
        yield server


@pytest.fixture
def fresh_backup(backup_llm):
    backup_llm.reset()
    return backup_llm


def expected_cost(input_tokens: int, output_tokens: int, per_1m_in: str, per_1m_out: str) -> Decimal:
    return ((input_tokens * Decimal(per_1m_in) + output_tokens * Decimal(per_1m_out)) / 1_000_000).quantize(
        Decimal("0.00000001"))


async def test_gpt_answers_and_accounts_the_call(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    resp = await client.post("/api/v1/gpt", json={"prompt": "Explain recursion briefly", "system_prompt": "Be kind"},
                             headers=auth)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["text"] == "Fake answer to: Explain recursion briefly"
    assert body["model"] == "gpt-4o-mini"
    # The test server counts words: system 2 + user 3 in, 6 out.
    assert body["usage"] == {"input_tokens": 5, "output_tokens": 6}
    cost = expected_cost(5, 6, "0.15", "0.60")
    assert body["cost_usd"] == pytest.approx(float(cost))
    sent = fresh_llm.requests()
    assert len(sent) == 1
    assert sent[0]["body"]["messages"] == [{"role": "system", "content": "Be kind"},
                                           {"role": "user", "content": "Explain recursion briefly"}]
    assert "response_format" not in sent[0]["body"] and "temperature" not in sent[0]["body"]
    [call] = await llm_calls(db, tenant["id"])
    assert (call["endpoint"], call["provider"], call["model"], call["outcome"], call["attempts"]) == \
        ("gpt", "default", "gpt-4o-mini", "ok", 1)
    assert (call["input_tokens"], call["output_tokens"], call["cost_usd"]) == (5, 6, cost)
    assert call["key_id"] is not None and call["latency_ms"] >= 0 and not call["usage_estimated"]


async def test_one_client_per_provider_serves_every_request(client, auth, fresh_llm):
    gateway = client.app[llm_key]
    made = gateway.default.client
    for _ in range(3):
        assert (await client.post("/api/v1/gpt", json={"prompt": "Hi"}, headers=auth)).status == 200
    assert gateway.default.client is made and gateway.client_count == 1


async def test_request_options_reach_the_provider(client, auth, fresh_llm):
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hi", "model": "gpt-4o", "temperature": 0.2,
                                                  "max_tokens": 50}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["model"] == "gpt-4o"
    sent = fresh_llm.requests()[0]["body"]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("gpt-4o", 0.2, 50)


@pytest.mark.parametrize("body, field", [
    ({}, "prompt"), ({"prompt": "   "}, "prompt"), ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"), ({"prompt": "x", "model": "no spaces please"}, "model"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    # Found by probing: a trailing newline passed the model pattern (re.match's "$") and went
    # unpriced; a numeric string passed as a temperature, and 1 as true.
    ({"prompt": "x", "model": "gpt-4o\n"}, "model"), ({"prompt": "x", "temperature": "1"}, "temperature"),
    ({"prompt": "x", "stream": 1}, "stream"), ({"prompt": "x", "stream": 0}, "stream"),
])
async def test_bad_gpt_input_is_422_without_a_call(client, auth, fresh_llm, body, field):
    resp = await client.post("/api/v1/gpt", json=body, headers=auth)
    assert resp.status == 422
    assert field in (await resp.json())["error"]["details"]
    assert fresh_llm.requests() == []


async def test_retryable_failures_are_retried_honouring_retry_after(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"status": 500}, {"status": 429, "retry_after": 1})
    started = time.monotonic()
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    assert resp.status == 200, await resp.text()
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was waited for
    assert len(fresh_llm.requests()) == 3
    [call] = await llm_calls(db, tenant["id"])
    assert (call["outcome"], call["attempts"]) == ("ok", 3)


async def test_attempts_stop_at_one_plus_max_retries(make_client, factory, db, fresh_llm):
    client = await make_client(LLM_MAX_RETRIES="2")
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script(*[{"status": 503}] * 4)
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "llm_provider_error" and "HTTP 503" in error["message"]
    assert len(fresh_llm.requests()) == 3  # 1 + LLM_MAX_RETRIES, the fourth failure is still queued
    [call] = await llm_calls(db, tenant["id"])
    assert (call["outcome"], call["attempts"], call["cost_usd"]) == ("provider_error", 3, 0)


async def test_a_provider_that_hangs_gives_504_in_bounded_time(make_client, factory, db, fresh_llm):
    client = await make_client(LLM_MAX_RETRIES="1", LLM_TIMEOUT_S="1")
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"delay_s": 4}, {"delay_s": 4})
    started = time.monotonic()
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    elapsed = time.monotonic() - started
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "llm_timeout"
    assert elapsed < 4  # 2 attempts of 1 s and one backoff of at most 0.5 s, not the provider's 8 s
    [call] = await llm_calls(db, tenant["id"])
    assert (call["outcome"], call["attempts"]) == ("timeout", 2)


async def test_fallback_takes_over_after_the_retries(make_client, factory, db, fresh_llm, fresh_backup):
    client = await make_client(LLM_MAX_RETRIES="1", LLM_FALLBACK_BASE_URL=fresh_backup.base_url,
                               LLM_FALLBACK_API_KEY="sk-fallback-000000000000", LLM_FALLBACK_MODEL="fake-small")
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"status": 500}, {"status": 429})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["model"] == "fake-small"
    assert len(fresh_llm.requests()) == 2 and len(fresh_backup.requests()) == 1
    calls = await llm_calls(db, tenant["id"], 2)
    assert [(c["provider"], c["outcome"], c["attempts"]) for c in calls] == \
        [("default", "provider_error", 2), ("fallback", "ok", 1)]


async def test_fallback_failing_too_gives_the_last_error(make_client, factory, fresh_llm, fresh_backup):
    client = await make_client(LLM_MAX_RETRIES="0", LLM_TIMEOUT_S="1", LLM_FALLBACK_BASE_URL=fresh_backup.base_url,
                               LLM_FALLBACK_API_KEY="sk-fallback-000000000000")
    _, auth = await factory.tenant_with_key()
    fresh_llm.script({"status": 500})
    fresh_backup.script({"delay_s": 3})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "llm_timeout"


async def test_client_errors_are_neither_retried_nor_passed_to_the_fallback(make_client, factory, fresh_llm,
                                                                            fresh_backup):
    client = await make_client(LLM_FALLBACK_BASE_URL=fresh_backup.base_url,
                               LLM_FALLBACK_API_KEY="sk-fallback-000000000000")
    _, auth = await factory.tenant_with_key()
    fresh_llm.script({"status": 400, "message": "model does not exist"})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    assert resp.status == 502
    assert "HTTP 400" in (await resp.json())["error"]["message"]
    assert len(fresh_llm.requests()) == 1 and fresh_backup.requests() == []


async def test_a_dropped_connection_is_retried(client, auth, fresh_llm):
    fresh_llm.script({"disconnect": True})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    assert resp.status == 200
    assert len(fresh_llm.requests()) == 2


async def test_no_provider_configured_is_503(make_client, factory):
    client = await make_client(OPENAI_API_KEY="")
    _, auth = await factory.tenant_with_key()
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "llm_not_configured"


async def test_llm_calls_count_against_the_rate_limit(client, factory, fresh_llm):
    _, auth = await factory.tenant_with_key(prep=2)
    statuses = [(await client.post("/api/v1/gpt", json={"prompt": "Hi"}, headers=auth)).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert len(fresh_llm.requests()) == 2


async def test_a_check_only_key_cannot_use_prep_llm_endpoints(client, factory, fresh_llm):
    _, auth = await factory.tenant_with_key(scopes=("check",))
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hi"}, headers=auth)
    assert resp.status == 403
    assert fresh_llm.requests() == []


async def test_llm_prices_extend_the_built_in_table(make_client, factory, db, fresh_llm, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"fake-small": {"input_per_1m": 1000, "output_per_1m": 2000},
                                  "gpt-4o-mini": {"input_per_1m": 1, "output_per_1m": 1}}))
    client = await make_client(LLM_PRICES=str(prices))
    tenant, auth = await factory.tenant_with_key()
    resp = await client.post("/api/v1/gpt", json={"prompt": "one two three", "model": "fake-small"}, headers=auth)
    body = await resp.json()
    assert body["usage"] == {"input_tokens": 3, "output_tokens": 6}
    assert body["cost_usd"] == pytest.approx(0.015)  # (3 * 1000 + 6 * 2000) / 1e6
    resp = await client.post("/api/v1/gpt", json={"prompt": "one"}, headers=auth)
    assert (await resp.json())["cost_usd"] == pytest.approx(5e-6)  # overridden: (1 + 4) * 1 / 1e6
    assert [c["cost_usd"] for c in await llm_calls(db, tenant["id"], 2)] == [Decimal("0.015"), Decimal("0.000005")]


@pytest.mark.parametrize("behaviour", [
    {"raw": {"content_type": "text/html", "body": "<html>a captive portal</html>"}},
    {"raw": {"content_type": "application/json", "body": "not json"}},
    {"raw": {"content_type": "application/json", "body": '"a string"'}},
    {"reply_fields": {"choices": "abc"}},
    {"reply_fields": {"choices": [{"index": 0, "message": {"role": "assistant", "content": 5}}]}},
])
async def test_a_success_that_is_no_chat_completion_is_a_provider_error(client, factory, db, fresh_llm, behaviour):
    """Found by probing (a tenant's provider can be any site): these were 500s."""
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script(behaviour)
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    assert resp.status == 502, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "llm_provider_error" and "malformed reply" in error["message"]
    [call] = await llm_calls(db, tenant["id"])
    assert call["outcome"] == "provider_error" and call["error"].startswith("malformed reply")


@pytest.mark.parametrize("fields", [
    {"usage": [1]},
    {"usage": {"prompt_tokens": "five", "completion_tokens": 6, "total_tokens": 11}},
    {"usage": {"prompt_tokens": 1e30, "completion_tokens": 6, "total_tokens": 11}},
    {"usage": {"prompt_tokens": -5, "completion_tokens": 6, "total_tokens": 1}},
    {"model": 5},
    {"model": "\ud800"},
])
async def test_unbelievable_usage_or_model_in_a_reply_is_estimated_or_ignored(client, factory, db, fresh_llm, fields):
    tenant, auth = await factory.tenant_with_key()
    for stream in (False, True):
        fresh_llm.script({"reply_fields": fields})
        resp = await client.post("/api/v1/gpt", json={"prompt": "Hello there", "stream": stream}, headers=auth)
        assert resp.status == 200, await resp.text()
        answer = parse_sse(await resp.text())[-1][1] if stream else await resp.json()
        assert answer["model"] == "gpt-4o-mini"
        assert min(answer["usage"].values()) >= 0
    calls = await llm_calls(db, tenant["id"], 2)
    assert [(c["outcome"], c["model"]) for c in calls] == [("ok", "gpt-4o-mini")] * 2
    assert all(c["usage_estimated"] for c in calls) == ("usage" in fields)


async def test_text_that_json_cannot_carry_becomes_replacement_characters(client, auth, fresh_llm):
    fresh_llm.script({"content": "half a pair: \ud83d!"})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hello"}, headers=auth)
    assert resp.status == 200 and (await resp.json())["text"] == "half a pair: \ufffd!"


# --- streaming ------------------------------------------------------------------------

def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_stream_sends_deltas_then_usage_and_cost(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    resp = await client.post("/api/v1/gpt", json={"prompt": "Tell me a story", "stream": True}, headers=auth)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-RateLimit-Limit"] and resp.headers["X-Request-ID"]
    events = parse_sse(await resp.text())
    deltas = [data["text"] for name, data in events if name == "delta"]
    assert len(deltas) == 7 and "".join(deltas) == "Fake answer to: Tell me a story"
    name, done = events[-1]
    assert name == "done"
    assert done["usage"] == {"input_tokens": 4, "output_tokens": 7} and done["model"] == "gpt-4o-mini"
    assert done["cost_usd"] == pytest.approx(float(expected_cost(4, 7, "0.15", "0.60")))
    assert fresh_llm.requests()[0]["body"]["stream_options"] == {"include_usage": True}
    [call] = await llm_calls(db, tenant["id"])
    assert (call["outcome"], call["input_tokens"], call["output_tokens"], call["usage_estimated"]) == \
        ("ok", 4, 7, False)


async def test_stream_errors_before_the_first_byte_are_plain_json(client, auth, fresh_llm):
    fresh_llm.script({"status": 401})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hi", "stream": True}, headers=auth)
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "llm_provider_error"


def _sse_chunk(content: str, finish_reason: str | None = None) -> str:
    return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o-mini",
                                  "choices": [{"index": 0, "delta": {"content": content},
                                               "finish_reason": finish_reason}]}) + "\n\n"


@pytest.mark.parametrize("raw", [
    {"content_type": "text/html", "body": "<html>a captive portal</html>"},
    {"content_type": "application/json", "body": "{}"},
    {"content_type": "text/event-stream", "body": ""},
    {"content_type": "text/event-stream", "body": "data: [DONE]\n\n"},
])
async def test_a_stream_that_is_no_event_stream_of_chat_chunks_is_a_plain_502(client, factory, db, fresh_llm, raw):
    """Found by probing: these were a 200 stream with a `done` event, recorded as ok and billed."""
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"raw": raw})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hi", "stream": True}, headers=auth)
    assert resp.status == 502, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "llm_provider_error" and "malformed reply" in error["message"]
    [call] = await llm_calls(db, tenant["id"])
    assert call["outcome"] == "provider_error" and call["error"].startswith("malformed reply")


async def test_a_stream_that_ends_before_its_reply_is_finished_ends_with_an_error_event(client, factory, db,
                                                                                         fresh_llm):
    """Found by probing: a stream cut off cleanly (no finish_reason, no [DONE]) ended with `done`."""
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"raw": {"content_type": "text/event-stream",
                              "body": _sse_chunk("The answer") + _sse_chunk(" is")}})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hi", "stream": True}, headers=auth)
    assert resp.status == 200
    events = parse_sse(await resp.text())
    assert events[:2] == [("delta", {"text": "The answer"}), ("delta", {"text": " is"})]
    name, error = events[-1]
    assert len(events) == 3 and name == "error" and error["error"]["code"] == "llm_provider_error"
    assert "before the reply was finished" in error["error"]["message"]
    [call] = await llm_calls(db, tenant["id"])
    assert call["outcome"] == "provider_error" and call["output_tokens"] >= 2
    # The same stream, finished, is a success without any [DONE] line.
    fresh_llm.script({"raw": {"content_type": "text/event-stream",
                              "body": _sse_chunk("The answer") + _sse_chunk(".", "stop")}})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hi", "stream": True}, headers=auth)
    assert [name for name, _ in parse_sse(await resp.text())] == ["delta", "delta", "done"]


async def test_a_provider_dying_mid_stream_ends_with_an_error_event(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"break_after_words": 3})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Tell me a story", "stream": True}, headers=auth)
    events = parse_sse(await resp.text())
    assert [name for name, _ in events[:3]] == ["delta"] * 3
    name, error = events[-1]
    assert name == "error" and error["error"]["code"] in ("llm_provider_error", "llm_timeout")
    [call] = await llm_calls(db, tenant["id"])
    assert call["outcome"] in ("provider_error", "timeout") and call["output_tokens"] >= 3


async def test_a_client_leaving_mid_stream_cancels_the_upstream_and_is_accounted(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"chunk_delay_s": 0.3, "content": " ".join(f"word{i}" for i in range(60))})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Tell me a long story", "stream": True}, headers=auth)
    assert resp.status == 200
    first = await resp.content.readuntil(b"\n\n")
    assert first.startswith(b"event: delta")
    resp.close()  # the client goes away after the first delta; the full answer would take 18 s
    deadline = time.monotonic() + 10
    while fresh_llm.requests()[0].get("stream") != "client_disconnected":
        assert time.monotonic() < deadline, fresh_llm.requests()[0].get("stream")
        await asyncio.sleep(0.1)
    while not await llm_calls(db, tenant["id"]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    [call] = await llm_calls(db, tenant["id"])
    assert call["outcome"] == "cancelled" and call["usage_estimated"]
    assert 1 <= call["output_tokens"] < 60 and call["input_tokens"] >= 1 and call["cost_usd"] > 0
