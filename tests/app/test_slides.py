"""Slide mappings: stored and replaced whole, validated item by item and against the course."""

from __future__ import annotations

import pytest


@pytest.fixture
async def course(client, auth, make_course):
    """A course (from make_course) with two lessons and a deck: its id, the lessons' ids, the deck's id."""
    created = await make_course("Slides", structure={
        "modules": [{"title": "M", "lessons": [{"title": "L1"}, {"title": "L2"}]}]})
    lessons = [lesson["id"] for lesson in created["structure"]["modules"][0]["lessons"]]
    material = await (await client.post(f"/api/v1/courses/{created['id']}/materials?filename=deck.pdf",
                                        data=b"%PDF", headers=auth)).json()
    return {"id": created["id"], "lessons": lessons, "material": material["id"]}


async def test_mapping_is_stored_sorted_and_replaced(client, auth, course):
    url = f"/api/v1/courses/{course['id']}/slide-mapping"
    assert (await client.get(url, headers=auth)).status == 404
    body = {"material_id": course["material"], "items": [
        {"slide_number": 2, "lesson_id": course["lessons"][1], "start_s": 60, "end_s": 120.5},
        {"slide_number": 1, "lesson_id": course["lessons"][0], "start_s": 0, "end_s": 60},
        {"slide_number": 3, "lesson_id": None}]}
    response = await client.post(url, json=body, headers=auth)
    assert response.status == 201, await response.text()
    mapping = await response.json()
    assert mapping["course_id"] == course["id"] and mapping["material_id"] == course["material"]
    assert [i["slide_number"] for i in mapping["items"]] == [1, 2, 3]
    assert mapping["items"][1] == {"slide_number": 2, "lesson_id": course["lessons"][1], "start_s": 60,
                                   "end_s": 120.5}
    assert mapping["items"][2] == {"slide_number": 3, "lesson_id": None, "start_s": None, "end_s": None}
    assert await (await client.get(url, headers=auth)).json() == mapping

    replaced = await (await client.post(url, json={"items": [{"slide_number": 1}]}, headers=auth)).json()
    assert replaced["material_id"] is None and len(replaced["items"]) == 1


async def test_a_new_structure_leaves_the_mapping_without_the_old_lessons(client, auth, course, make_course):
    """Found by probing: the mapping kept lesson ids that PUT …/structure had replaced."""
    url = f"/api/v1/courses/{course['id']}/slide-mapping"
    items = [{"slide_number": 1, "lesson_id": course["lessons"][0], "start_s": 0.0, "end_s": 30.0},
             {"slide_number": 2, "lesson_id": None, "start_s": 30.0, "end_s": None},
             {"slide_number": 3, "lesson_id": course["lessons"][1], "start_s": None, "end_s": None}]
    before = await (await client.post(url, json={"material_id": course["material"], "items": items},
                                      headers=auth)).json()
    other = await make_course("Untouched", structure={"modules": [{"title": "M", "lessons": [{"title": "Stays"}]}]})
    other_lessons = other["structure"]["modules"][0]["lessons"]
    other_mapping = await (await client.post(f"/api/v1/courses/{other['id']}/slide-mapping", headers=auth, json={
        "items": [{"slide_number": 1, "lesson_id": other_lessons[0]["id"]}]})).json()

    resp = await client.put(f"/api/v1/courses/{course['id']}/structure", headers=auth,
                            json={"modules": [{"title": "New", "lessons": [{"title": "N1"}]}]})
    assert resp.status == 200
    after = await (await client.get(url, headers=auth)).json()
    assert after["items"] == [{**item, "lesson_id": None} for item in items]
    assert after["material_id"] == course["material"] and after["updated_at"] > before["updated_at"]
    assert await (await client.get(f"/api/v1/courses/{other['id']}/slide-mapping", headers=auth)).json() \
        == other_mapping
    # With no lesson left to forget, a new structure leaves the mapping as it is.
    await client.put(f"/api/v1/courses/{course['id']}/structure", headers=auth, json={"modules": []})
    assert await (await client.get(url, headers=auth)).json() == after


@pytest.mark.parametrize("items, where", [
    ([{"slide_number": 0}], ("items", "0", "slide_number")),
    ([{"slide_number": "one"}], ("items", "0", "slide_number")),
    ([{"slide_number": 2**64}], ("items", "0", "slide_number")),  # was a 500: too big for the jsonb encoder
    ([{"slide_number": 1}, {"slide_number": 1}], ("items", "1", "slide_number")),
    ([{"slide_number": 1, "start_s": 30, "end_s": 10}], ("items", "0", "end_s")),
    ([{"slide_number": 1, "start_s": -1}], ("items", "0", "start_s")),
    ([{"slide_number": 1, "start_s": "1.5"}], ("items", "0", "start_s")),  # a number, as for slide_number
    ([{"slide_number": 1, "colour": "red"}], ("items", "0", "colour")),
])
async def test_bad_items_are_422_with_field_details(client, auth, course, items, where):
    response = await client.post(f"/api/v1/courses/{course['id']}/slide-mapping", json={"items": items},
                                 headers=auth)
    assert response.status == 422
    details = (await response.json())["error"]["details"]
    for key in where:
        details = details[key]
    assert details


async def test_lessons_and_material_must_belong_to_the_course(client, auth, course, make_course):
    other = await make_course("Other", structure={"modules": [{"title": "M", "lessons": [{"title": "Elsewhere"}]}]})
    foreign_lesson = other["structure"]["modules"][0]["lessons"][0]["id"]
    foreign_material = (await (await client.post(f"/api/v1/courses/{other['id']}/materials?filename=x.pdf",
                                                 data=b"x", headers=auth)).json())["id"]
    response = await client.post(f"/api/v1/courses/{course['id']}/slide-mapping", headers=auth, json={
        "material_id": foreign_material,
        "items": [{"slide_number": 1, "lesson_id": course["lessons"][0]},
                  {"slide_number": 2, "lesson_id": foreign_lesson}]})
    assert response.status == 422
    details = (await response.json())["error"]["details"]
    assert details["material_id"] and details["items"]["1"]["lesson_id"] and "0" not in details["items"]
    assert (await client.get(f"/api/v1/courses/{course['id']}/slide-mapping", headers=auth)).status == 404
