"""LLM-backed features: slides, text improvement, structure generation, homework
checking and progress, and the per-tenant cost report."""

from __future__ import annotations

import datetime
import json

import pytest

from tests.support.llm_accounting import llm_calls
from tests.support.llm_server import DEFAULT_JSON
from tests.support.pdf import make_pdf


@pytest.fixture(autouse=True)
def _fresh(fresh_llm):
    return fresh_llm


# --- presentation and improve ---------------------------------------------------------

async def test_presentation_asks_for_json_and_returns_the_slides(client, auth, fresh_llm):
    resp = await client.post("/api/v1/gpt/presentation", json={"topic": "Linear equations", "num_slides": 2},
                             headers=auth)
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"slides": DEFAULT_JSON["slides"]}
    sent = fresh_llm.requests()[0]["body"]
    assert sent["response_format"] == {"type": "json_object"}
    assert "Linear equations" in sent["messages"][-1]["content"]


async def test_a_bad_reply_is_retried_once(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"content": "Sure! Here are your slides: ..."})
    resp = await client.post("/api/v1/gpt/presentation", json={"topic": "Sets", "num_slides": 1}, headers=auth)
    assert resp.status == 200
    assert (await resp.json())["slides"] == DEFAULT_JSON["slides"][:1]
    # Both rows are written in the background, concurrently: their order in the table is not the calls'.
    calls = sorted(await llm_calls(db, tenant["id"], 2), key=lambda c: c["outcome"])
    assert [(c["endpoint"], c["outcome"]) for c in calls] == [("gpt/presentation", "bad_output"),
                                                            ("gpt/presentation", "ok")]
    assert calls[0]["input_tokens"] > 0  # the unusable reply's tokens are accounted too


async def test_two_bad_replies_are_502_llm_bad_output(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    # The default reply has 2 slides: asking for 3 makes both replies unusable.
    resp = await client.post("/api/v1/gpt/presentation", json={"topic": "Sets", "num_slides": 3}, headers=auth)
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "llm_bad_output" and "2 slides instead of 3" in error["message"]
    assert len(fresh_llm.requests()) == 2
    assert [c["outcome"] for c in await llm_calls(db, tenant["id"], 2)] == ["bad_output", "bad_output"]


@pytest.mark.parametrize("body, field", [({"topic": "x"}, "num_slides"), ({"topic": "x", "num_slides": 0}, "num_slides"),
                                         ({"topic": "", "num_slides": 2}, "topic")])
async def test_bad_presentation_input_is_422(client, auth, fresh_llm, body, field):
    resp = await client.post("/api/v1/gpt/presentation", json=body, headers=auth)
    assert resp.status == 422 and field in (await resp.json())["error"]["details"]
    assert fresh_llm.requests() == []


async def test_improve_returns_the_rewritten_text(client, auth, fresh_llm):
    fresh_llm.script({"content": "A clearer text."})
    resp = await client.post("/api/v1/gpt/improve", json={"text": "a text that is not so clear"}, headers=auth)
    assert resp.status == 200
    assert await resp.json() == {"text": "A clearer text."}
    assert fresh_llm.requests()[0]["body"]["messages"][-1]["content"] == "a text that is not so clear"


# --- structure generation -------------------------------------------------------------

async def test_structure_is_generated_from_the_course_and_its_text_materials(client, auth, fresh_llm, make_course):
    course = await make_course()
    base = f"/api/v1/courses/{course['id']}"
    notes = "# Week 1\nSolving ax + b = 0 by isolating x."
    await client.post(f"{base}/materials?filename=notes.md", data=notes.encode(),
                      headers={**auth, "Content-Type": "text/markdown"})
    await client.post(f"{base}/materials?filename=lecture.mp4", data=b"\x00VIDEO-BYTES-NOT-FOR-THE-LLM",
                      headers={**auth, "Content-Type": "video/mp4"})
    resp = await client.post(f"{base}/structure", json={"instructions": "Two modules, practice last"}, headers=auth)
    assert resp.status == 200, await resp.text()
    structure = await resp.json()
    assert [m["title"] for m in structure["modules"]] == ["Foundations", "Practice"]
    assert [len(m["lessons"]) for m in structure["modules"]] == [2, 1]
    sent = fresh_llm.requests()[0]["body"]
    assert sent["response_format"] == {"type": "json_object"}
    prompt = sent["messages"][-1]["content"]
    assert "Algebra" in prompt and "Equations" in prompt and notes in prompt and "Two modules" in prompt
    assert "VIDEO-BYTES" not in prompt
    stored = await (await client.get(base, headers=auth)).json()
    assert stored["structure"] == structure
    lesson = structure["modules"][0]["lessons"][0]
    detail = await (await client.get(f"{base}/lessons/{lesson['id']}", headers=auth)).json()
    assert detail["content"] == "What the course covers."


async def test_pdf_materials_are_read_and_broken_ones_left_out(client, auth, fresh_llm, make_course):
    course = await make_course()
    base = f"/api/v1/courses/{course['id']}"
    for name, body in (("slides.pdf", make_pdf("Vectors and matrices", "Eigenvalues explained")),
                       ("broken.pdf", b"%PDF-1.4 this is not really a PDF")):
        resp = await client.post(f"{base}/materials?filename={name}", data=body,
                                 headers={**auth, "Content-Type": "application/pdf"})
        assert resp.status == 201
    resp = await client.post(f"{base}/structure", json={}, headers=auth)
    assert resp.status == 200, await resp.text()
    prompt = fresh_llm.requests()[0]["body"]["messages"][-1]["content"]
    assert "Vectors and matrices" in prompt and "Eigenvalues explained" in prompt
    assert "broken.pdf" not in prompt


async def test_empty_materials_are_left_out(client, auth, fresh_llm, make_course):
    """Found by probing: S3 refuses any byte range of an empty object, and one empty text
    file made every generation for its course a 503 storage_unavailable."""
    course = await make_course()
    base = f"/api/v1/courses/{course['id']}"
    for name, content_type, body in (("empty.txt", "text/plain", b""), ("empty.pdf", "application/pdf", b""),
                                     ("empty.md", "application/octet-stream", b""),
                                     ("notes.md", "text/markdown", b"Limits and continuity")):
        resp = await client.post(f"{base}/materials?filename={name}", data=body,
                                 headers={**auth, "Content-Type": content_type})
        assert resp.status == 201 and (await resp.json())["size_bytes"] == len(body)
    resp = await client.post(f"{base}/structure", json={}, headers=auth)
    assert resp.status == 200, await resp.text()
    prompt = fresh_llm.requests()[0]["body"]["messages"][-1]["content"]
    assert "Limits and continuity" in prompt and "empty." not in prompt


async def test_a_material_whose_file_is_missing_from_storage_is_left_out(client, auth, fresh_llm, s3, bucket,
                                                                         make_course):
    """Deleted behind the app's back, or a database restored to before a file was deleted:
    a 503 storage_unavailable for every generation would be false."""
    course = await make_course()
    base = f"/api/v1/courses/{course['id']}"
    gone = await (await client.post(f"{base}/materials?filename=gone.md", data=b"Lost notes",
                                    headers={**auth, "Content-Type": "text/markdown"})).json()
    await client.post(f"{base}/materials?filename=kept.md", data=b"Kept notes",
                      headers={**auth, "Content-Type": "text/markdown"})
    store = s3.client()
    listed = (o["Key"] for page in store.get_paginator("list_objects_v2").paginate(Bucket=bucket)
              for o in page.get("Contents", []))
    path = f"/{course['id']}/materials/{gone['id']}"
    store.delete_object(Bucket=bucket, Key=next(key for key in listed if key.endswith(path)))
    resp = await client.post(f"{base}/structure", json={}, headers=auth)
    assert resp.status == 200, await resp.text()
    prompt = fresh_llm.requests()[0]["body"]["messages"][-1]["content"]
    assert "Kept notes" in prompt and "gone.md" not in prompt


async def test_structure_generation_without_a_body_or_materials(client, auth, fresh_llm, make_course):
    course = await make_course()
    resp = await client.post(f"/api/v1/courses/{course['id']}/structure", headers=auth)
    assert resp.status == 200, await resp.text()
    assert "Material" not in fresh_llm.requests()[0]["body"]["messages"][-1]["content"]


async def test_an_unusable_structure_keeps_the_old_one(client, auth, fresh_llm, make_course):
    course = await make_course(structure={"modules": [{"title": "Kept", "lessons": [{"title": "L"}]}]})
    bad = json.dumps({"modules": [{"title": "", "lessons": []}]})
    fresh_llm.script({"content": bad}, {"content": bad})
    resp = await client.post(f"/api/v1/courses/{course['id']}/structure", json={}, headers=auth)
    assert resp.status == 502 and (await resp.json())["error"]["code"] == "llm_bad_output"
    stored = await (await client.get(f"/api/v1/courses/{course['id']}", headers=auth)).json()
    assert stored["structure"] == course["structure"]


@pytest.mark.parametrize("reply", [
    {"modules": [{"title": "M", "lessons": {"title": "L"}}]},
    {"modules": [{"title": "M", "lessons": 5}]},
    {"modules": {"title": "M"}},
    {"modules": [{"title": ["M"], "lessons": []}]},
    {"modules": [{"title": "\u0000", "lessons": []}]},
])
async def test_a_wrongly_typed_structure_is_bad_output_and_recorded(client, factory, db, fresh_llm, make_course, reply):
    tenant, auth = await factory.tenant_with_key()
    course = await make_course(auth=auth)
    fresh_llm.script({"content": json.dumps(reply)}, {"content": json.dumps(reply)})
    resp = await client.post(f"/api/v1/courses/{course['id']}/structure", json={}, headers=auth)
    assert resp.status == 502 and (await resp.json())["error"]["code"] == "llm_bad_output"
    assert [c["outcome"] for c in await llm_calls(db, tenant["id"], 2)] == ["bad_output", "bad_output"]


async def test_nul_characters_in_a_reply_are_dropped_before_storing(client, auth, fresh_llm, make_course):
    course = await make_course()
    fresh_llm.script({"content": json.dumps(
        {"modules": [{"title": "Mod\u0000ule", "lessons": [{"title": "L\u0000", "content": "a\u0000b"}]}]})})
    resp = await client.post(f"/api/v1/courses/{course['id']}/structure", json={}, headers=auth)
    assert resp.status == 200, await resp.text()
    module = (await resp.json())["modules"][0]
    assert (module["title"], module["lessons"][0]["title"]) == ("Module", "L")
    lesson = await client.get(f"/api/v1/courses/{course['id']}/lessons/{module['lessons'][0]['id']}", headers=auth)
    assert (await lesson.json())["content"] == "ab"
    homework = await make_course(structure=HOMEWORK)
    course_id, (easy, _) = homework["id"], lesson_ids(homework)
    fresh_llm.script({"content": json.dumps({"score": 70, "feedback": "Go\u0000od."})})
    resp = await check(client, auth, course_id, easy)
    assert resp.status == 201 and (await resp.json())["feedback"] == "Good."


async def test_structure_generation_for_a_missing_course_calls_no_llm(client, auth, fresh_llm):
    resp = await client.post("/api/v1/courses/00000000-0000-4000-8000-000000000000/structure", json={}, headers=auth)
    assert resp.status == 404
    assert fresh_llm.requests() == []


# --- homework and progress ------------------------------------------------------------

# A course's structure for homework: an easy lesson (the default pass mark) and a hard one.
HOMEWORK = {"modules": [{"title": "M", "lessons": [
    {"title": "Linear equations", "content": "Solve ax + b = 0."},
    {"title": "Hard one", "content": "Proofs.", "pass_score": 90}]}]}


def lesson_ids(course: dict) -> list[str]:
    """The ids of a course's lessons (a course made with a structure), in order."""
    return [lesson["id"] for module in course["structure"]["modules"] for lesson in module["lessons"]]


async def check(client, auth, course_id, lesson_id, student="student-42", submission="x = -b/a"):
    return await client.post(f"/api/v1/courses/{course_id}/check-homework",
                             json={"student_id": student, "lesson_id": lesson_id, "submission": submission},
                             headers=auth)


async def test_homework_is_scored_and_stored(client, auth, fresh_llm, make_course):
    course = await make_course(structure=HOMEWORK)
    course_id, (easy, hard) = course["id"], lesson_ids(course)
    resp = await check(client, auth, course_id, easy)
    assert resp.status == 201, await resp.text()
    attempt = await resp.json()
    assert (attempt["score"], attempt["passed"], attempt["student_id"], attempt["lesson_id"]) == \
        (80, True, "student-42", easy)
    assert attempt["feedback"] == DEFAULT_JSON["feedback"] and attempt["id"] and attempt["created_at"]
    sent = fresh_llm.requests()[0]["body"]
    assert sent["response_format"] == {"type": "json_object"}
    assert "Solve ax + b = 0." in sent["messages"][-1]["content"] and "x = -b/a" in sent["messages"][-1]["content"]
    # The lesson's own pass mark: 80 does not pass a lesson that asks for 90.
    attempt = await (await check(client, auth, course_id, hard)).json()
    assert (attempt["score"], attempt["passed"]) == (80, False)
    assert "90" in fresh_llm.requests()[1]["body"]["messages"][0]["content"]


async def test_progress_aggregates_attempts_per_lesson(client, factory, fresh_llm, make_course):
    _, auth = await factory.tenant_with_key()
    other_course = await make_course(auth=auth, structure={"modules": [{"title": "M", "lessons": [{"title": "L"}]}]})
    fresh_llm.script({"content": json.dumps({"score": 40, "feedback": "Not yet."})},
                     {"content": json.dumps({"score": 95, "feedback": "Great."})},
                     {"content": json.dumps({"score": 70, "feedback": "Good."})})
    lesson = other_course["structure"]["modules"][0]["lessons"][0]["id"]
    for _ in range(3):
        assert (await check(client, auth, other_course["id"], lesson)).status == 201
    progress = await (await client.get("/api/v1/students/student-42/progress", headers=auth)).json()
    assert progress == {"student_id": "student-42", "courses": [{"course_id": other_course["id"], "lessons": [
        {"lesson_id": lesson, "attempts": 3, "best_score": 95, "last_score": 70, "passed": True}]}]}
    assert (await (await client.get("/api/v1/students/nobody/progress", headers=auth)).json())["courses"] == []


async def test_progress_is_per_tenant(client, auth, factory, make_course):
    course = await make_course(structure=HOMEWORK)
    course_id, (easy, _) = course["id"], lesson_ids(course)
    await check(client, auth, course_id, easy)
    _, intruder = await factory.tenant_with_key()
    resp = await client.get("/api/v1/students/student-42/progress", headers=intruder)
    assert resp.status == 200 and (await resp.json())["courses"] == []
    mine = await (await client.get("/api/v1/students/student-42/progress", headers=auth)).json()
    assert mine["courses"][0]["course_id"] == course_id


@pytest.mark.parametrize("student", ["%00", "student%00-42", "%20%20", "x" * 201])
async def test_progress_of_a_student_id_no_attempt_can_have_is_422(client, auth, student):
    resp = await client.get(f"/api/v1/students/{student}/progress", headers=auth)
    assert resp.status == 422, await resp.text()
    assert list((await resp.json())["error"]["details"]) == ["student_id"]


async def test_progress_of_the_longest_student_id(client, auth):
    resp = await client.get(f"/api/v1/students/{'x' * 200}/progress", headers=auth)
    assert resp.status == 200 and (await resp.json()) == {"student_id": "x" * 200, "courses": []}


async def test_homework_for_a_lesson_of_another_course_is_422(client, auth, fresh_llm, make_course):
    course = await make_course(structure=HOMEWORK)
    easy, _ = lesson_ids(course)
    other = await make_course()
    resp = await check(client, auth, other["id"], easy)
    assert resp.status == 422 and "lesson_id" in (await resp.json())["error"]["details"]
    assert fresh_llm.requests() == []


async def test_a_prep_only_key_cannot_check_homework(client, factory, fresh_llm, make_course):
    tenant, auth = await factory.tenant_with_key(scopes=("prep",))
    course = await make_course(auth=auth, structure={"modules": [{"title": "M", "lessons": [{"title": "L"}]}]})
    resp = await check(client, auth, course["id"], course["structure"]["modules"][0]["lessons"][0]["id"])
    assert resp.status == 403
    assert (await client.get("/api/v1/students/s/progress", headers=auth)).status == 403
    assert fresh_llm.requests() == []


async def test_an_out_of_range_score_is_bad_output_and_nothing_is_stored(client, auth, fresh_llm, make_course):
    course = await make_course(structure=HOMEWORK)
    course_id, (easy, _) = course["id"], lesson_ids(course)
    wrong = json.dumps({"score": 150, "feedback": "Too generous"})
    fresh_llm.script({"content": wrong}, {"content": wrong})
    resp = await check(client, auth, course_id, easy, student="student-bad")
    assert resp.status == 502 and (await resp.json())["error"]["code"] == "llm_bad_output"
    progress = await (await client.get("/api/v1/students/student-bad/progress", headers=auth)).json()
    assert progress["courses"] == []


# --- the cost report ------------------------------------------------------------------

async def test_cost_report_groups_and_totals(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    second_key = await factory.key(tenant["id"])
    await client.post("/api/v1/gpt", json={"prompt": "one two"}, headers=auth)
    await client.post("/api/v1/gpt", json={"prompt": "three", "model": "gpt-4o"}, headers=auth)
    await client.post("/api/v1/gpt/improve", json={"text": "four five six"},
                      headers={"X-API-Key": second_key["key"]})
    calls = await llm_calls(db, tenant["id"], 3)
    total_cost = float(sum(c["cost_usd"] for c in calls))
    total = {"calls": 3, "input_tokens": sum(c["input_tokens"] for c in calls),
             "output_tokens": sum(c["output_tokens"] for c in calls), "cost_usd": pytest.approx(total_cost)}

    today = datetime.datetime.now(datetime.timezone.utc).date()
    report = await (await client.get("/api/v1/reports/cost", headers=auth)).json()
    assert (report["from"], report["to"], report["group_by"]) == \
        ((today - datetime.timedelta(days=29)).isoformat(), today.isoformat(), "day")
    assert report["total"] == total
    assert [(g["key"], g["calls"]) for g in report["groups"]] == [(today.isoformat(), 3)]

    by_model = await (await client.get("/api/v1/reports/cost?group_by=model", headers=auth)).json()
    assert {g["key"]: g["calls"] for g in by_model["groups"]} == {"gpt-4o": 1, "gpt-4o-mini": 2}
    gpt4o = next(g for g in by_model["groups"] if g["key"] == "gpt-4o")
    assert gpt4o["cost_usd"] == pytest.approx(float(calls[1]["cost_usd"]))
    by_endpoint = await (await client.get("/api/v1/reports/cost?group_by=endpoint", headers=auth)).json()
    assert {g["key"]: g["calls"] for g in by_endpoint["groups"]} == {"gpt": 2, "gpt/improve": 1}
    by_key = await (await client.get("/api/v1/reports/cost?group_by=key", headers=auth)).json()
    assert {g["key"]: g["calls"] for g in by_key["groups"]} == {auth["X-API-Key"][:12]: 2, second_key["prefix"]: 1}
    assert sum(g["cost_usd"] for g in by_key["groups"]) == pytest.approx(total_cost)

    yesterday = (today - datetime.timedelta(days=1)).isoformat()
    empty = await (await client.get(f"/api/v1/reports/cost?from={yesterday}&to={yesterday}", headers=auth)).json()
    assert empty["total"] == {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0} and empty["groups"] == []

    _, intruder = await factory.tenant_with_key()
    theirs = await (await client.get("/api/v1/reports/cost", headers=intruder)).json()
    assert theirs["total"]["calls"] == 0


@pytest.mark.parametrize("query, field", [("group_by=week", "group_by"), ("from=2026-13-01", "from"),
                                          ("from=2026-02-01&to=2026-01-01", "from"),
                                          ("from=2020-01-01&to=2026-01-01", "from"),
                                          ("to=0001-01-05", "to"), ("from=9999-12-31&to=9999-12-31", "from")])
async def test_bad_cost_report_queries_are_422(client, auth, query, field):
    resp = await client.get(f"/api/v1/reports/cost?{query}", headers=auth)
    assert resp.status == 422 and field in (await resp.json())["error"]["details"]


async def test_the_cost_report_at_the_ends_of_its_days(client, auth):
    for query in ("from=1970-01-01&to=1970-01-01", "from=9999-12-30&to=9999-12-30"):
        resp = await client.get(f"/api/v1/reports/cost?{query}", headers=auth)
        assert resp.status == 200 and (await resp.json())["total"]["calls"] == 0


async def test_a_check_only_key_reads_the_cost_report(client, factory):
    _, auth = await factory.tenant_with_key(scopes=("check",))
    assert (await client.get("/api/v1/reports/cost", headers=auth)).status == 200
