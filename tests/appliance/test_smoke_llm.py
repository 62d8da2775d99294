"""The LLM endpoints on the appliance, over real HTTPS through nginx.

The VPS's provider is the OpenAI-compatible test server on the host unless
``make vps`` ran with OPENAI_API_KEY set; the checks hold for either, and the
ones that script the provider's pacing check it only against the test server."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.localvps.layout import HOST_ADDRESS, LLM_PORT
from tests.support import llm_server
from tests.support.pdf import make_pdf
from tests.support.telegram_log import messages_since

TEST_SERVER = f"http://{HOST_ADDRESS}:{LLM_PORT}/v1"


@pytest.fixture(scope="module")
def api(curl, vps):
    def call(method: str, path: str, body: dict | None = None):
        args = ["-X", method, "-H", f"X-API-Key: {vps['api_key']}"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        return curl.json(path, *args, max_time=120)

    return call


@pytest.fixture(scope="module")
def provider_is_test_server(host) -> bool:
    return f'OPENAI_BASE_URL="{TEST_SERVER}"' in host.check_output("cat /etc/course-supporter/env")


def test_gpt_answers_with_usage_and_cost(api):
    status, body = api("POST", "/api/v1/gpt", {"prompt": "Say hello in one word.", "max_tokens": 20})
    assert status == 200, body
    assert body["text"] and body["model"]
    assert body["usage"]["input_tokens"] > 0 and body["cost_usd"] >= 0


def test_a_stream_reaches_the_client_event_by_event_through_nginx(vps, provider_is_test_server):
    if provider_is_test_server:  # six words, half a second apart
        llm_server.script(TEST_SERVER, {"chunk_delay_s": 0.5, "content": "one two three four five six"})
    proc = subprocess.Popen(
        ["curl", "-sS", "-N", "--max-time", "60", "--resolve", f"{vps['domain']}:443:{vps['address']}",
         "--cacert", vps["ca_cert"], "-H", f"X-API-Key: {vps['api_key']}", "-H", "Content-Type: application/json",
         "--data", json.dumps({"prompt": "Count", "stream": True}), f"{vps['url']}/api/v1/gpt"],
        stdout=subprocess.PIPE, text=True)
    arrivals = []
    started = time.monotonic()
    for line in proc.stdout:
        if line.startswith("event: "):
            arrivals.append((line.split(": ", 1)[1].strip(), time.monotonic() - started))
    assert proc.wait(timeout=60) == 0
    names = [name for name, _ in arrivals]
    assert names[-1] == "done" and set(names[:-1]) == {"delta"}
    if provider_is_test_server:
        assert len(names) == 7
        # Buffered by nginx, every event would arrive at the end (~3 s); streamed, the first comes at once.
        assert arrivals[-1][1] - arrivals[0][1] > 2


def test_homework_progress_and_cost_report(api):
    status, course = api("POST", "/api/v1/courses", {"title": f"LLM smoke {uuid.uuid4().hex[:8]}"})
    assert status == 201, course
    status, structure = api("PUT", f"/api/v1/courses/{course['id']}/structure",
                            {"modules": [{"title": "Arithmetic", "lessons": [{"title": "Addition",
                                                                               "content": "2 + 2 = 4"}]}]})
    lesson_id = structure["modules"][0]["lessons"][0]["id"]
    student = f"smoke-{uuid.uuid4().hex[:8]}"
    status, attempt = api("POST", f"/api/v1/courses/{course['id']}/check-homework",
                          {"student_id": student, "lesson_id": lesson_id, "submission": "2 + 2 = 4"})
    assert status == 201, attempt
    assert 0 <= attempt["score"] <= 100 and attempt["feedback"]
    status, progress = api("GET", f"/api/v1/students/{student}/progress")
    assert status == 200
    assert progress["courses"][0]["lessons"][0]["attempts"] == 1
    status, report = api("GET", "/api/v1/reports/cost?group_by=endpoint")
    assert status == 200
    assert {g["key"] for g in report["groups"]} >= {"check-homework"}


def test_a_pdf_material_is_read_for_structure_generation(api, curl, vps, provider_is_test_server, tmp_path):
    """PDFs are read in a child process (app.pdf_reader): the service's sandbox must let it run."""
    phrase = f"Orbital mechanics {uuid.uuid4().hex[:8]}"
    pdf = tmp_path / "deck.pdf"
    pdf.write_bytes(make_pdf(phrase, "Second page"))
    status, course = api("POST", "/api/v1/courses", {"title": f"PDF smoke {uuid.uuid4().hex[:8]}"})
    assert status == 201, course
    status, material = curl.json(f"/api/v1/courses/{course['id']}/materials?filename=deck.pdf",
                                 "-X", "POST", "-H", f"X-API-Key: {vps['api_key']}",
                                 "-H", "Content-Type: application/pdf", "--data-binary", f"@{pdf}")
    assert status == 201, material
    if provider_is_test_server:
        llm_server.control(TEST_SERVER, "DELETE", "/_control/requests")
    status, structure = api("POST", f"/api/v1/courses/{course['id']}/structure", {})
    assert status == 200, structure
    assert structure["modules"]
    if provider_is_test_server:
        prompts = json.dumps(llm_server.control(TEST_SERVER, "GET", "/_control/requests"))
        assert phrase in prompts, "the PDF's text should reach the provider"


def test_a_tenant_over_its_budget_gets_402_through_nginx_and_sees_its_usage(host, curl, vps):
    """The budget path on the appliance (its PostgreSQL, migrations and nginx): a tenant whose
    monthly budget is spent is refused before any provider is asked, with what is left; the
    operator hears of it on Telegram (Netdata's bot, the fake Bot API on the host), once."""
    tenant = json.loads(host.check_output("course-supporter-admin tenant create 'Budget smoke' --json"))
    host.run_expect([0], f"course-supporter-admin tenant budget set {tenant['id']} --usd 0 --json")
    key = json.loads(host.check_output(f"course-supporter-admin key issue {tenant['id']} --json"))["key"]
    status, headers, body = curl("/api/v1/gpt", "-H", f"X-API-Key: {key}", "-H", "Content-Type: application/json",
                                 "--data", json.dumps({"prompt": "Say hello.", "max_tokens": 10}))
    assert status == 402 and json.loads(body)["error"]["code"] == "budget_exceeded"
    assert headers["x-budget-remaining-usd"] == "0"
    status, usage = curl.json("/api/v1/usage", "-H", f"X-API-Key: {key}")
    assert status == 200 and (usage["budget_usd"], usage["spent_usd"], usage["calls"]) == (0.0, 0.0, 0)
    deadline = time.monotonic() + 60  # a worker sends pending alerts every 10 s
    while not (found := [m for m in messages_since(Path(vps["telegram_log"]), 0) if tenant["id"] in m["text"]]):
        assert time.monotonic() < deadline, "no budget message reached the fake Bot API"
        time.sleep(1)
    [message] = found
    assert message["text"].startswith("🔴 Course Supporter: tenant \"Budget smoke\"")
    assert "has reached its LLM budget" in message["text"] and message["chat_id"] == "-1001000000001"
    assert curl("/api/v1/gpt", "-H", f"X-API-Key: {key}", "-H", "Content-Type: application/json",
                "--data", json.dumps({"prompt": "Again.", "max_tokens": 10}))[0] == 402
    time.sleep(12)
    assert len([m for m in messages_since(Path(vps["telegram_log"]), 0) if tenant["id"] in m["text"]]) == 1
