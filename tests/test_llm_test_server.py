"""The local OpenAI-compatible test server speaks the protocol the real openai client expects."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from tests.support.llm_server import LLMServer


@pytest.fixture(scope="module")
def llm():
    with LLMServer() as server:
        yield server


@pytest.fixture
def client(llm):
    llm.reset()
    return openai.OpenAI(base_url=llm.base_url, api_key="sk-test-key", max_retries=0, timeout=10)


def test_plain_completion_with_usage(client):
    reply = client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "Explain fractions"}])
    assert reply.choices[0].message.content == "Fake answer to: Explain fractions"
    assert reply.usage.prompt_tokens == 2 and reply.usage.completion_tokens == 5


def test_json_object_answer_carries_every_structured_key(client):
    reply = client.chat.completions.create(model="gpt-4o-mini", response_format={"type": "json_object"},
                                           messages=[{"role": "user", "content": "Grade this"}])
    answer = json.loads(reply.choices[0].message.content)
    assert {"modules", "score", "feedback", "slides"} <= set(answer)


def test_stream_yields_the_same_text_and_usage(client):
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Stream please"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Fake answer to: Stream please"
    assert chunks[-1].usage.completion_tokens == 5


def test_scripted_429_is_retried_by_the_client(llm):
    client = openai.OpenAI(base_url=llm.base_url, api_key="sk-test-key", max_retries=2, timeout=10)
    llm.reset()
    llm.script({"status": 429, "retry_after": 0}, {"status": 503})
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Fake answer to: hi"
    assert len(llm.requests()) == 3


def test_scripted_errors_and_slowness(client, llm):
    llm.script({"status": 500})
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    llm.script({"delay_s": 2})
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    llm.script({"content": "not json at all"})
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == "not json at all"


def test_missing_key_is_401(llm):
    req = urllib.request.Request(llm.base_url + "/chat/completions", method="POST",
                                 data=b'{"model": "m", "messages": []}', headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    assert caught.value.code == 401
