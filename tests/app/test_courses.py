"""Courses CRUD, structure, lessons, pagination and input validation."""

from __future__ import annotations

import uuid

import pytest


async def test_create_get_update_delete(client, auth, make_course):
    course = await make_course(description="Intro")
    assert set(course) == {"id", "title", "description", "created_at", "updated_at"}
    assert course["title"] == "Algebra" and course["description"] == "Intro"
    uuid.UUID(course["id"])

    resp = await client.get(f"/api/v1/courses/{course['id']}", headers=auth)
    assert resp.status == 200
    detail = await resp.json()
    assert detail["structure"] == {"modules": []}
    assert detail["created_at"] == course["created_at"]

    resp = await client.patch(f"/api/v1/courses/{course['id']}", json={"title": "Algebra I"}, headers=auth)
    assert resp.status == 200
    patched = await resp.json()
    assert patched["title"] == "Algebra I" and patched["description"] == "Intro"
    assert patched["updated_at"] > course["updated_at"]

    resp = await client.delete(f"/api/v1/courses/{course['id']}", headers=auth)
    assert resp.status == 204
    assert (await client.get(f"/api/v1/courses/{course['id']}", headers=auth)).status == 404
    assert (await client.delete(f"/api/v1/courses/{course['id']}", headers=auth)).status == 404


async def test_description_is_optional(client, auth):
    resp = await client.post("/api/v1/courses", json={"title": "Only a title"}, headers=auth)
    assert resp.status == 201
    assert (await resp.json())["description"] == ""


async def test_pagination_reports_total(client, auth, make_course):
    for i in range(5):
        await make_course(title=f"Course {i}")
    resp = await client.get("/api/v1/courses?limit=2&offset=1", headers=auth)
    assert resp.status == 200
    page = await resp.json()
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 1
    assert [c["title"] for c in page["items"]] == ["Course 1", "Course 2"]

    past_end = await (await client.get("/api/v1/courses?offset=50", headers=auth)).json()
    assert past_end == {"items": [], "total": 5, "limit": 20, "offset": 50}


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "offset=-1", "limit=abc"])
async def test_bad_pagination_is_422(client, auth, query):
    resp = await client.get(f"/api/v1/courses?{query}", headers=auth)
    assert resp.status == 422
    body = await resp.json()
    assert body["error"]["code"] == "validation_failed"
    assert set(body["error"]["details"]) <= {"limit", "offset"} and body["error"]["details"]


async def test_structure_replace_and_lessons(client, auth, make_course):
    course = await make_course()
    structure = {"modules": [
        {"title": "Basics", "lessons": [{"title": "Numbers", "content": "1, 2, 3"}, {"title": "Sets"}]},
        {"title": "Equations", "lessons": [{"title": "Linear", "content": "ax + b = 0"}]},
        {"title": "Empty module"},
    ]}
    resp = await client.put(f"/api/v1/courses/{course['id']}/structure", json=structure, headers=auth)
    assert resp.status == 200, await resp.text()
    stored = await resp.json()
    assert [m["title"] for m in stored["modules"]] == ["Basics", "Equations", "Empty module"]
    assert [m["position"] for m in stored["modules"]] == [1, 2, 3]
    assert [(l["title"], l["position"]) for l in stored["modules"][0]["lessons"]] == [("Numbers", 1), ("Sets", 2)]
    assert stored["modules"][2]["lessons"] == []

    detail = await (await client.get(f"/api/v1/courses/{course['id']}", headers=auth)).json()
    assert detail["structure"] == stored

    numbers = stored["modules"][0]["lessons"][0]
    resp = await client.get(f"/api/v1/courses/{course['id']}/lessons/{numbers['id']}", headers=auth)
    assert resp.status == 200
    lesson = await resp.json()
    assert lesson == {"id": numbers["id"], "course_id": course["id"], "module_id": stored["modules"][0]["id"],
                      "title": "Numbers", "position": 1, "content": "1, 2, 3", "pass_score": None}
    sets = await (await client.get(f"/api/v1/courses/{course['id']}/lessons/"
                                   f"{stored['modules'][0]['lessons'][1]['id']}", headers=auth)).json()
    assert sets["content"] == ""

    # Replacing gives new ids; the old lessons are gone.
    resp = await client.put(f"/api/v1/courses/{course['id']}/structure",
                            json={"modules": [{"title": "Only", "lessons": [{"title": "One"}]}]}, headers=auth)
    replaced = await resp.json()
    assert replaced["modules"][0]["id"] != stored["modules"][0]["id"]
    resp = await client.get(f"/api/v1/courses/{course['id']}/lessons/{numbers['id']}", headers=auth)
    assert resp.status == 404

    resp = await client.put(f"/api/v1/courses/{course['id']}/structure", json={"modules": []}, headers=auth)
    assert (await resp.json()) == {"modules": []}


async def test_lesson_of_another_course_is_404(client, auth, make_course):
    first, second = await make_course(), await make_course()
    stored = await (await client.put(f"/api/v1/courses/{first['id']}/structure",
                                     json={"modules": [{"title": "M", "lessons": [{"title": "L"}]}]},
                                     headers=auth)).json()
    lesson_id = stored["modules"][0]["lessons"][0]["id"]
    resp = await client.get(f"/api/v1/courses/{second['id']}/lessons/{lesson_id}", headers=auth)
    assert resp.status == 404


@pytest.mark.parametrize("body, field", [
    ({}, "title"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": 5}, "title"),
    ({"title": "ok", "description": ["no"]}, "description"),
    ({"title": "ok", "colour": "red"}, "colour"),
])
async def test_invalid_course_body_is_422_with_details(client, auth, body, field):
    resp = await client.post("/api/v1/courses", json=body, headers=auth)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["code"] == "validation_failed"
    assert field in error["details"]


async def test_invalid_structure_is_422(client, auth, make_course):
    course = await make_course()
    for body, field in (({"modules": [{"lessons": []}]}, "modules"),
                        ({"modules": "nope"}, "modules"),
                        ({"modules": [{"title": "M", "lessons": [{"title": "L", "extra": 1}]}]}, "modules")):
        resp = await client.put(f"/api/v1/courses/{course['id']}/structure", json=body, headers=auth)
        assert resp.status == 422, body
        assert field in (await resp.json())["error"]["details"]


async def test_empty_patch_is_422(client, auth, make_course):
    course = await make_course()
    resp = await client.patch(f"/api/v1/courses/{course['id']}", json={}, headers=auth)
    assert resp.status == 422


async def test_malformed_json_is_400(client, auth):
    resp = await client.post("/api/v1/courses", data=b'{"title": ', headers={**auth, "Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "malformed_json"


async def test_non_object_json_is_422(client, auth):
    resp = await client.post("/api/v1/courses", json=["title"], headers=auth)
    assert resp.status == 422


async def test_wrong_media_type_is_415(client, auth):
    resp = await client.post("/api/v1/courses", data="title=x", headers={**auth, "Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_missing_body_is_422(client, auth):
    resp = await client.post("/api/v1/courses", headers=auth)
    assert resp.status == 422


@pytest.mark.parametrize("path", ["/api/v1/courses/not-a-uuid", f"/api/v1/courses/{uuid.uuid4()}"])
async def test_unknown_course_is_404(client, auth, path):
    resp = await client.get(path, headers=auth)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_structure_of_unknown_course_is_404(client, auth):
    resp = await client.put(f"/api/v1/courses/{uuid.uuid4()}/structure", json={"modules": []}, headers=auth)
    assert resp.status == 404


async def test_text_with_a_nul_character_is_a_422_not_a_500(client, auth, make_course):
    """Found by the fuzzer: PostgreSQL cannot store U+0000, and such a title was a 500."""
    resp = await client.post("/api/v1/courses", json={"title": "A\u0000B", "description": "fine"}, headers=auth)
    assert resp.status == 422
    assert (await resp.json())["error"]["details"] == {"title": ["Text must not contain NUL (\\u0000) characters."]}
    course = await make_course(title="Fine")
    resp = await client.put(f"/api/v1/courses/{course['id']}/structure", headers=auth, json={
        "modules": [{"title": "M", "lessons": [{"title": "ok"}, {"title": "L", "content": "x\u0000"}]}]})
    assert resp.status == 422
    assert (await resp.json())["error"]["details"] == {
        "modules": {"0": {"lessons": {"1": {"content": ["Text must not contain NUL (\\u0000) characters."]}}}}}
