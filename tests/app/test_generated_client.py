"""A client generated from the live document with openapi-python-client, as a customer would,
drives the main flow against the app: the document is one a generator turns into working
code, with typed models and typed errors."""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

PACKAGE = "course_supporter_client"


@pytest.fixture
async def generated(client, tmp_path):
    """The client package generated from the app's /api/docs/openapi.json, imported."""
    document = tmp_path / "openapi.json"
    document.write_bytes(await (await client.get("/api/docs/openapi.json")).read())
    config = tmp_path / "config.yaml"  # as docs/api.md tells: tus's media type is bytes like any other
    config.write_text("content_type_overrides:\n  application/offset+octet-stream: application/octet-stream\n")
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path", str(document), "--meta",
                             "none", "--output-path", str(tmp_path / PACKAGE), "--config", str(config)],
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr  # nothing left out
    sys.path.insert(0, str(tmp_path))
    try:
        yield lambda name: importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


async def test_a_generated_client_drives_the_main_flow(client, generated, factory, fresh_llm):
    models, types = generated("models"), generated("types")
    def call(tag: str, operation_id: str):
        """The generated module of one operation (its functions: asyncio, asyncio_detailed, ...)."""
        return generated(f"api.{tag}.{operation_id}")

    tenant = await factory.tenant()
    key = (await factory.key(tenant["id"], check=3))["key"]
    session = generated("client").AuthenticatedClient(base_url=str(client.make_url("")).rstrip("/"), token=key,
                                                      prefix="", auth_header_name="X-API-Key")

    course = await call("courses", "create_course").asyncio(client=session, body=models.CourseCreate(
        title="Algebra", description="Linear equations"))
    assert isinstance(course, models.Course) and course.title == "Algebra"

    upload = models.UploadMaterialFilesBody(file=types.File(payload=io.BytesIO(b"# Linear equations\nax + b = 0\n"),
                                                            file_name="notes.md", mime_type="text/markdown"))
    material = await call("materials", "upload_material").asyncio(course.id, client=session, body=upload)
    assert isinstance(material, models.Material) and (material.filename, material.size_bytes) == ("notes.md", 30)

    structure = await call("courses", "generate_structure").asyncio(
        course.id, client=session, body=models.GenerateStructure(instructions="Short."))
    assert isinstance(structure, models.Structure) and structure.modules
    assert "Linear equations" in str(fresh_llm.requests()[-1])  # the material reached the LLM
    lesson = structure.modules[0].lessons[0]

    attempt = await call("homework", "check_homework").asyncio(course.id, client=session, body=models.HomeworkRequest(
        student_id="student-42", lesson_id=lesson.id, submission="x = -b/a"))
    assert isinstance(attempt, models.HomeworkAttempt) and 0 <= attempt.score <= 100

    progress = await call("homework", "get_student_progress").asyncio("student-42", client=session)
    assert isinstance(progress, models.Progress)
    assert progress.courses[0].lessons[0].attempts == 1

    report = await call("reports", "get_cost_report").asyncio(client=session,
                                                              group_by=models.GetCostReportGroupBy.ENDPOINT)
    assert isinstance(report, models.CostReport)
    assert {group.key for group in report.groups} == {"structure", "check-homework"}

    # Errors are typed too: a 404, and a 429 now that the key's 3 check requests a minute (the
    # homework check, the progress and the report) are spent.
    missing = await call("courses", "get_course").asyncio_detailed(uuid.uuid4(), client=session)
    assert missing.status_code == 404 and isinstance(missing.parsed, models.Error)
    assert missing.parsed.error.code == "not_found" and missing.headers["X-Request-ID"]
    limited = await call("homework", "get_student_progress").asyncio_detailed("student-42", client=session)
    assert limited.status_code == 429 and isinstance(limited.parsed, models.Error)
    assert limited.parsed.error.code == "rate_limited" and int(limited.headers["Retry-After"]) > 0
