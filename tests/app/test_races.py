"""Requests racing a delete or a new structure, replayed step by step: another connection
holds the competing change uncommitted, the request is sent, and the change commits once
the request waits on it. Found by probing the appliance with concurrent requests: these
were 500s (a foreign key violated), files left in storage for good, and slide mappings
naming lessons that no longer existed."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from app.materials import course_prefix


@pytest.fixture
async def rival(database_url):
    """A second session, in a transaction the test commits when it chooses."""
    conn = await asyncpg.connect(database_url)
    transaction = conn.transaction()
    await transaction.start()
    yield conn, transaction
    if conn.is_in_transaction():
        await transaction.rollback()
    await conn.close()


async def sent_and_waiting(request, database_url) -> asyncio.Future:
    """``request`` (a coroutine) under way, once it waits on a lock (or after 10 s)."""
    pending = asyncio.ensure_future(request)
    watcher = await asyncpg.connect(database_url)
    try:
        for _ in range(200):
            if pending.done() or await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"):
                break
            await asyncio.sleep(0.05)
    finally:
        await watcher.close()
    return pending


async def send_while_rival_commits(request, rival, database_url) -> object:
    """Send ``request``, let the rival commit once the request waits for it, and return the answer."""
    pending = await sent_and_waiting(request, database_url)
    assert not pending.done(), "the request did not wait for the rival's change"
    await rival[1].commit()
    return await asyncio.wait_for(pending, 30)


def objects_under(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


@pytest.fixture
async def course(factory, make_course):
    """A course (from make_course) with two lessons, of a tenant of its own: its id, the
    tenant's id and key headers, the lessons' ids, and where its files are stored."""
    tenant, auth = await factory.tenant_with_key()
    created = await make_course("Races", auth=auth, structure={
        "modules": [{"title": "M", "lessons": [{"title": "L1"}, {"title": "L2"}]}]})
    return {"id": created["id"], "tenant_id": tenant["id"], "auth": auth,
            "lessons": [lesson["id"] for lesson in created["structure"]["modules"][0]["lessons"]],
            "prefix": course_prefix(tenant["id"], uuid.UUID(created["id"]))}


async def test_an_upload_finishing_as_its_course_is_deleted_is_404_and_leaves_no_file(
        client, course, rival, database_url, s3, bucket):
    await rival[0].execute("DELETE FROM courses WHERE id = $1", uuid.UUID(course["id"]))
    resp = await send_while_rival_commits(
        client.post(f"/api/v1/courses/{course['id']}/materials?filename=a.txt", data=b"bytes",
                    headers=course["auth"]), rival, database_url)
    assert resp.status == 404, await resp.text()
    assert objects_under(s3, bucket, course["prefix"]) == []


async def test_deleting_a_course_as_an_upload_records_its_file_leaves_no_file(
        client, course, rival, database_url, s3, bucket):
    """The upload's file is complete after the delete would have listed the course's files,
    and its row is recorded before the delete: the delete must still remove the file."""
    key = course["prefix"] + f"materials/{uuid.uuid4()}"
    await rival[0].execute(
        """INSERT INTO materials (id, tenant_id, course_id, filename, content_type, size_bytes, sha256, object_key)
           VALUES ($1, $2, $3, 'late.txt', 'text/plain', 4, '', $4)""",
        uuid.uuid4(), course["tenant_id"], uuid.UUID(course["id"]), key)
    # The delete waits for the upload's row, whatever it did before.
    pending = await sent_and_waiting(client.delete(f"/api/v1/courses/{course['id']}", headers=course["auth"]),
                                     database_url)
    s3.client().put_object(Bucket=bucket, Key=key, Body=b"late")
    await rival[1].commit()
    resp = await asyncio.wait_for(pending, 30)
    assert resp.status == 204, await resp.text()
    assert objects_under(s3, bucket, course["prefix"]) == []


async def test_homework_recorded_as_its_course_is_deleted_is_404(client, course, rival, database_url, fresh_llm):
    await rival[0].execute("DELETE FROM courses WHERE id = $1", uuid.UUID(course["id"]))
    resp = await send_while_rival_commits(
        client.post(f"/api/v1/courses/{course['id']}/check-homework", headers=course["auth"], json={
            "student_id": "s1", "lesson_id": course["lessons"][0], "submission": "x = 2"}), rival, database_url)
    assert resp.status == 404, await resp.text()


async def test_a_slide_mapping_stored_as_its_course_is_deleted_is_404(client, course, rival, database_url):
    await rival[0].execute("DELETE FROM courses WHERE id = $1", uuid.UUID(course["id"]))
    resp = await send_while_rival_commits(
        client.post(f"/api/v1/courses/{course['id']}/slide-mapping", headers=course["auth"],
                    json={"items": [{"slide_number": 1}]}), rival, database_url)
    assert resp.status == 404, await resp.text()


async def test_a_slide_mapping_naming_a_material_being_deleted_is_422(client, course, rival, database_url):
    material = await (await client.post(f"/api/v1/courses/{course['id']}/materials?filename=deck.pdf",
                                        data=b"%PDF", headers=course["auth"])).json()
    await rival[0].execute("DELETE FROM materials WHERE id = $1", uuid.UUID(material["id"]))
    resp = await send_while_rival_commits(
        client.post(f"/api/v1/courses/{course['id']}/slide-mapping", headers=course["auth"],
                    json={"material_id": material["id"], "items": [{"slide_number": 1}]}), rival, database_url)
    assert resp.status == 422, await resp.text()
    assert "material_id" in (await resp.json())["error"]["details"]


async def test_a_slide_mapping_stored_as_the_structure_is_replaced_names_no_lost_lesson(
        client, course, rival, database_url):
    course_id = uuid.UUID(course["id"])
    # What PUT …/structure does, up to its commit: the course locked, the old lessons deleted.
    await rival[0].execute("SELECT 1 FROM courses WHERE id = $1 FOR UPDATE", course_id)
    await rival[0].execute("DELETE FROM modules WHERE course_id = $1", course_id)
    resp = await send_while_rival_commits(
        client.post(f"/api/v1/courses/{course['id']}/slide-mapping", headers=course["auth"],
                    json={"items": [{"slide_number": 1, "lesson_id": course["lessons"][0]}]}), rival, database_url)
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["details"]["items"]["0"]["lesson_id"]
