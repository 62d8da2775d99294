"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis):
no input gives a 500, every status is documented, every describable response matches
its schema. Bounded here (FUZZ_MAX_EXAMPLES per operation and phase, default 20);
`make fuzz` runs it longer."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography.fernet import Fernet

from tests.support.admin_cli import admin
from tests.support.courses import create_course
from tests.support.gunicorn import Gunicorn
from tests.support.keys import UNLIMITED_KEY_ARGS
from tests.support.names import unique
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.gunicorn

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "20"))
CHECKS = "never_a_500,matches_the_documentation,status_code_conformance"


@pytest.mark.timeout(1800)
def test_no_input_breaks_the_api_or_its_documentation(app_env, tmp_path):
    env = {**app_env, "APP_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    tenant = json.loads(admin("tenant", "create", unique("fuzz"), "--json", env=env).stdout)
    key = json.loads(admin("key", "issue", tenant["id"], "--scopes", "prep,check", *UNLIMITED_KEY_ARGS, "--json",
                           env=env).stdout)["key"]
    with Gunicorn(env, workers=2) as server:
        (tmp_path / "schemathesis.toml").write_text(_known_ids_config(server.url, key))
        run = subprocess.run(
            [str(Path(sys.executable).parent / "st"), "run", f"{server.url}/api/docs/openapi.json",
             "--header", f"X-API-Key: {key}", "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES),
             # One worker thread: with two, a clean-clone CI run once failed with a Runtime Error
             # inside hypothesis ("AST constructor recursion depth mismatch" from ast.parse, whose
             # recursion counter CPython 3.11.2 keeps per interpreter, not per thread).
             "--workers", "1", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=1700,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.fuzz_checks", "PYTHONPATH": REPO_ROOT})
    report = tmp_path / "schemathesis.txt"
    report.write_text(run.stdout)
    summary = run.stdout[run.stdout.rfind("SUMMARY"):]
    print(summary)
    # The failures come first in the report, each with a curl line that can run to megabytes.
    failures = run.stdout[run.stdout.find("FAILURES"):run.stdout.find("WARNINGS")]
    shown = "\n".join(line[:400] for line in failures.splitlines())
    assert run.returncode == 0, f"{shown[:20000]}\n{summary}\n{run.stderr[-3000:]}\n(full report: {report})"
    selected, documented = re.search(r"Selected: (\d+)/(\d+)", summary).groups()
    assert selected == documented and f"Tested: {documented}" in summary  # every operation
    # The operations given real ids reached more than their 404.
    warnings = run.stdout[run.stdout.find("WARNINGS"):run.stdout.find("SUMMARY")]
    assert "/lessons/{lesson_id}" not in warnings and "GET /api/v1/courses/{course_id}/slide-mapping" not in warnings, \
        warnings


async def _mapped_lesson(base_url: str, key: str) -> tuple[str, str]:
    """A new course with one lesson, mapped to a slide: the course's and the lesson's ids."""
    headers = {"X-API-Key": key}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        course = await create_course(session, base_url, headers, "Fuzzing target", structure={
            "modules": [{"title": "Module", "lessons": [{"title": "Lesson", "content": "Text."}]}]})
        lesson = course["structure"]["modules"][0]["lessons"][0]["id"]
        async with session.post(f"{base_url}/api/v1/courses/{course['id']}/slide-mapping", headers=headers, json={
                "items": [{"slide_number": 1, "lesson_id": lesson, "start_s": 0, "end_s": 30}]}) as resp:
            assert resp.status == 201, await resp.text()
    return course["id"], lesson


def _known_ids_config(base_url: str, key: str) -> str:
    """schemathesis.toml giving the operations that read one lesson or a slide mapping
    a course, lesson and mapping that exist, so that they reach more than their 404
    (random ids never match anything)."""
    course, lesson = asyncio.run(_mapped_lesson(base_url, key))
    return f"""
[[operations]]
include-name = "GET /api/v1/courses/{{course_id}}/lessons/{{lesson_id}}"
parameters = {{ course_id = "{course}", lesson_id = "{lesson}" }}

[[operations]]
include-name = "GET /api/v1/courses/{{course_id}}/slide-mapping"
parameters = {{ course_id = "{course}" }}
"""
