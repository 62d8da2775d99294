"""The API's description, as client generators and linters read it: OpenAPI 3.1, valid,
lint-clean, every operation with a stable operationId, a summary, tags, its security and
every response it can give; and the old Swagger 2.0 path redirecting to it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from openapi_spec_validator import validate

from app.openapi import ERROR_MEANINGS, operation_of
from tests.support.paths import REPO_ROOT

LINTER = Path(REPO_ROOT) / "tests" / "openapi_lint"
# Warnings the linter may still give, each explained in docs/api.md ("The OpenAPI document").
KNOWN_WARNINGS = {"info-contact"}
DOCUMENTED_PATHS = ("/api/v1/", "/health", "/ready")
# Public probes, whose 503 answers in their own schema, not the error envelope.
PROBES = ("/health", "/ready")


async def _document(client) -> dict:
    resp = await client.get("/api/docs/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    return await resp.json()


def _operations(document: dict):
    for path, operations in document["paths"].items():
        for method, described in operations.items():
            yield path, method, described


async def test_the_document_is_valid_openapi_3_1(client):
    document = await _document(client)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "Course Supporter API"
    validate(document)  # openapi-spec-validator: raises on any error


async def test_the_linter_finds_no_error(client, tmp_path):
    """Spectral with its recommended rule set for OpenAPI (spectral:oas)."""
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(await _document(client)))
    result = subprocess.run([str(LINTER / "node_modules" / ".bin" / "spectral"), "lint", "--format", "json",
                             "--ruleset", str(LINTER / ".spectral.yaml"), "--fail-severity", "error", str(path)],
                            capture_output=True, text=True, timeout=120)
    findings = json.loads(result.stdout[result.stdout.find("["):])
    assert [f for f in findings if f["severity"] == 0] == [] and result.returncode == 0, findings
    assert {f["code"] for f in findings} <= KNOWN_WARNINGS, findings


async def test_every_route_declares_its_operation(client):
    """A route added without a declaration (operationId, summary, tags, security, responses and
    errors) fails here: every /api/v1 route and each probe (/health, /ready) is an operation of the document."""
    gets = {(route.resource, route.handler) for route in client.app.router.routes() if route.method == "GET"}
    own = [route for route in client.app.router.routes() if route.resource.canonical.startswith(DOCUMENTED_PATHS)
           and not (route.method == "HEAD" and (route.resource, route.handler) in gets)]  # a GET's HEAD is the GET
    undeclared = [f"{route.method} {route.resource.canonical}" for route in own if operation_of(route.handler) is None]
    assert undeclared == []
    document = await _document(client)
    routes = {(route.resource.canonical, route.method.lower()) for route in own}
    assert routes == {(path, method) for path, method, _ in _operations(document)}
    assert len(routes) == 31


async def test_every_operation_is_named_described_and_secured(client):
    document = await _document(client)
    assert document["components"]["securitySchemes"]["ApiKeyAuth"] == {"type": "apiKey", "in": "header",
                                                                      "name": "X-API-Key"}
    ids = [described["operationId"] for _, _, described in _operations(document)]
    assert len(ids) == len(set(ids)) and all(i.isidentifier() and i.islower() for i in ids)
    assert {"create_course", "upload_material", "generate_structure", "check_homework", "get_cost_report",
            "ask_llm"} <= set(ids)
    for path, method, described in _operations(document):
        assert described["summary"] and described["tags"], (path, method)
        public = path in PROBES
        assert described["security"] == ([] if public else [{"ApiKeyAuth": []}]), (path, method)


# Bodies that are files, streamed: no JSON to find invalid (422) beyond what their declarations say.
STREAMED_BODIES = ("/api/v1/courses/{course_id}/materials", "/api/v1/courses/{course_id}/uploads/{upload_id}")


async def test_every_error_an_operation_can_give_is_documented_with_the_envelope(client):
    document = await _document(client)
    for path, method, described in _operations(document):
        responses = described["responses"]
        if path.startswith("/api/v1/"):
            assert {"401", "403", "429", "503"} <= set(responses), (path, method)
        if "requestBody" in described and path not in STREAMED_BODIES:
            assert {"400", "413", "415", "422"} <= set(responses), (path, method)
        if "{" in path:
            assert "404" in responses or "422" in responses, (path, method)
        for status, response in responses.items():
            if int(status) < 400 or path in PROBES:
                continue
            media = response["content"]["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/Error"}, (path, method, status)
            assert media["examples"] and set(media["examples"]) <= set(ERROR_MEANINGS)
            assert {example["value"]["error"]["code"] for example in media["examples"].values()} == \
                set(media["examples"])
            assert "X-Request-ID" in response["headers"]
            if status in ("429", "503"):
                assert "Retry-After" in response["headers"], (path, method, status)
    llm_errors = document["paths"]["/api/v1/courses/{course_id}/check-homework"]["post"]["responses"]
    assert {"502", "504"} <= set(llm_errors) and "llm_bad_output" in llm_errors["502"]["content"][
        "application/json"]["examples"]


async def test_responses_carry_the_rate_limit_and_request_id_headers(client):
    document = await _document(client)
    for path, method, described in _operations(document):
        for status, response in described["responses"].items():
            headers = set(response.get("headers", {}))
            assert "X-Request-ID" in headers
            if path.startswith("/api/v1/"):
                assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= headers, (path, status)
    created = document["paths"]["/api/v1/courses"]["post"]["responses"]["201"]
    assert "Location" in created["headers"]


async def test_bodies_uploads_streams_and_nullable_fields_are_described_the_3_1_way(client):
    document = await _document(client)
    paths, schemas = document["paths"], document["components"]["schemas"]
    create = paths["/api/v1/courses"]["post"]["requestBody"]
    assert create["required"] and create["content"]["application/json"]["example"]["title"]
    bodies = [described["requestBody"] for _, _, described in _operations(document) if "requestBody" in described]
    assert all("example" in content for body in bodies for media, content in body["content"].items()
               if media == "application/json")
    upload = paths["/api/v1/courses/{course_id}/materials"]["post"]
    assert set(upload["requestBody"]["content"]) == {"multipart/form-data", "application/octet-stream"}
    assert upload["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    assert [p["name"] for p in upload["parameters"] if p["in"] == "query"] == ["filename"]
    answer = paths["/api/v1/gpt"]["post"]["responses"]["200"]["content"]
    assert set(answer) == {"application/json", "text/event-stream"}
    assert "`delta`" in answer["text/event-stream"]["schema"]["description"]
    assert answer["text/event-stream"]["example"].startswith("event: delta\n")
    # Nullable: a type list with "null" (3.0's `nullable` and Swagger's `x-nullable` are gone).
    assert schemas["LessonInput"]["properties"]["pass_score"]["type"] == ["integer", "null"]
    assert schemas["Lesson"]["properties"]["pass_score"]["type"] == ["integer", "null"]
    text = json.dumps(document)
    assert '"nullable"' not in text and "x-nullable" not in text


async def test_swagger_ui_reads_the_3_1_document(client):
    resp = await client.get("/docs")
    assert resp.status == 200
    page = await resp.text()
    assert "/api/docs/openapi.json" in page and "swagger-ui-bundle.js" in page
    assets = await client.get("/api/docs/ui/swagger-ui-bundle.js")
    assert assets.status == 200 and len(await assets.read()) > 100_000


async def test_the_old_swagger_path_redirects_to_the_document(client):
    resp = await client.get("/api/docs/swagger.json", allow_redirects=False)
    assert resp.status == 308 and resp.headers["Location"] == "/api/docs/openapi.json"
    followed = await client.get("/api/docs/swagger.json")
    assert followed.status == 200 and (await followed.json())["openapi"] == "3.1.0"
