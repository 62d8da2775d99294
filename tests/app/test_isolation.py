"""Tenant isolation: every endpoint answers 404 for another tenant's resources."""

from __future__ import annotations

import pytest


@pytest.fixture
async def foreign(client, factory, make_course):
    """A course with a lesson owned by tenant A, and tenant B's headers."""
    _, owner = await factory.tenant_with_key()
    _, intruder = await factory.tenant_with_key()
    course = await make_course("Secret", auth=owner,
                               structure={"modules": [{"title": "M", "lessons": [{"title": "L"}]}]})
    lesson_id = course["structure"]["modules"][0]["lessons"][0]["id"]
    material = await (await client.post(f"/api/v1/courses/{course['id']}/materials?filename=secret.txt",
                                        data=b"secret", headers=owner)).json()
    return {"course": course["id"], "lesson": lesson_id, "material": material["id"], "owner": owner,
            "intruder": intruder}


ENDPOINTS = [
    ("GET", "/api/v1/courses/{course}", None),
    ("PATCH", "/api/v1/courses/{course}", {"title": "Hijacked"}),
    ("DELETE", "/api/v1/courses/{course}", None),
    ("PUT", "/api/v1/courses/{course}/structure", {"modules": []}),
    ("GET", "/api/v1/courses/{course}/lessons/{lesson}", None),
    ("POST", "/api/v1/courses/{course}/materials", {"not": "a file"}),
    ("GET", "/api/v1/courses/{course}/materials", None),
    ("GET", "/api/v1/courses/{course}/materials/{material}", None),
    ("DELETE", "/api/v1/courses/{course}/materials/{material}", None),
    ("POST", "/api/v1/courses/{course}/slide-mapping", {"items": [{"slide_number": 1}]}),
    ("GET", "/api/v1/courses/{course}/slide-mapping", None),
    ("POST", "/api/v1/courses/{course}/structure", {}),
    ("POST", "/api/v1/courses/{course}/check-homework",
     {"student_id": "s-1", "lesson_id": "00000000-0000-4000-8000-000000000000", "submission": "x"}),
    ("OPTIONS", "/api/v1/courses/{course}/uploads", None),
    ("POST", "/api/v1/courses/{course}/uploads", None),
]

# Tenant-wide endpoints with no resource id: their isolation is tested where they are
# (test_llm_features: progress and the cost report; test_llm_byok: settings).
TENANT_WIDE = {("GET", "/api/v1/students/{student_id}/progress"), ("GET", "/api/v1/reports/cost"), ("GET", "/api/v1/usage"),
               ("POST", "/api/v1/gpt"), ("POST", "/api/v1/gpt/presentation"), ("POST", "/api/v1/gpt/improve"),
               ("PUT", "/api/v1/settings/llm"), ("GET", "/api/v1/settings/llm"), ("DELETE", "/api/v1/settings/llm")}
# A resumable upload's own routes: another tenant's upload is tested in test_resumable_uploads.
UPLOAD = "/api/v1/courses/{course_id}/uploads/{upload_id}"
TESTED_WITH_UPLOADS = {("HEAD", UPLOAD), ("PATCH", UPLOAD), ("DELETE", UPLOAD)}


@pytest.mark.parametrize("method, template, body", ENDPOINTS, ids=[f"{m} {t}" for m, t, _ in ENDPOINTS])
async def test_other_tenants_resource_is_404(client, foreign, method, template, body):
    path = template.format(**foreign)
    resp = await client.request(method, path, json=body, headers=foreign["intruder"])
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    # ...and nothing changed for the owner.
    course = await (await client.get(f"/api/v1/courses/{foreign['course']}", headers=foreign["owner"])).json()
    assert course["title"] == "Secret"
    assert course["structure"]["modules"][0]["lessons"][0]["id"] == foreign["lesson"]
    material = await client.get(f"/api/v1/courses/{foreign['course']}/materials/{foreign['material']}",
                                headers=foreign["owner"])
    assert material.status == 200


async def test_listing_shows_only_own_courses(client, foreign):
    mine = await (await client.get("/api/v1/courses", headers=foreign["intruder"])).json()
    assert mine["total"] == 0 and mine["items"] == []
    theirs = await (await client.get("/api/v1/courses", headers=foreign["owner"])).json()
    assert [c["id"] for c in theirs["items"]] == [foreign["course"]]


def test_every_api_route_is_covered(settings):
    """A new /api/v1 route must be added to ENDPOINTS (or to the listing test)."""
    import asyncio

    from app.main import create_app

    app = asyncio.run(create_app(settings))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/v1/")
              and (r.method != "HEAD" or r.resource.canonical == UPLOAD)}
    covered = {(m, t.replace("{course}", "{course_id}").replace("{lesson}", "{lesson_id}")
                .replace("{material}", "{material_id}")) for m, t, _ in ENDPOINTS}
    covered |= {("GET", "/api/v1/courses"), ("POST", "/api/v1/courses")} | TENANT_WIDE | TESTED_WITH_UPLOADS
    assert routes == covered
