"""Idempotency-Key: a repeat gets the first answer and does nothing again (no second
course, no second provider call or bill); another request with the key is 422; one
arriving while the first runs waits for its answer."""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import pytest

from tests.support.llm_accounting import llm_calls

GPT = {"prompt": "Explain recursion briefly", "max_tokens": 50}


def keyed(auth: dict, key: str) -> dict:
    return {**auth, "Idempotency-Key": key}


async def test_a_repeat_replays_the_answer_without_calling_the_provider_again(client, factory, db, fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    first = await client.post("/api/v1/gpt", json=GPT, headers=keyed(auth, "retry-1"))
    assert first.status == 200 and "Idempotent-Replayed" not in first.headers
    again = await client.post("/api/v1/gpt", json={"max_tokens": 50, "prompt": GPT["prompt"]},
                              headers=keyed(auth, "retry-1"))  # the same request, its fields in another order
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert len(fresh_llm.requests()) == 1
    assert len(await llm_calls(db, tenant["id"], count=2, timeout=1)) == 1


async def test_a_created_course_is_created_once(client, factory, db):
    tenant, auth = await factory.tenant_with_key()
    answers = [await client.post("/api/v1/courses", json={"title": "Once"}, headers=keyed(auth, "course-1"))
               for _ in range(3)]
    assert [a.status for a in answers] == [201, 201, 201]
    bodies = [await a.json() for a in answers]
    assert bodies[0] == bodies[1] == bodies[2]
    assert answers[2].headers["Location"] == answers[0].headers["Location"]
    assert await db.fetchval("SELECT count(*) FROM courses WHERE tenant_id = $1", tenant["id"]) == 1


async def test_the_same_key_for_another_request_is_422(client, factory):
    _, auth = await factory.tenant_with_key()
    assert (await client.post("/api/v1/courses", json={"title": "A"}, headers=keyed(auth, "k"))).status == 201
    resp = await client.post("/api/v1/courses", json={"title": "B"}, headers=keyed(auth, "k"))
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "idempotency_key_reused"


async def test_keys_belong_to_their_tenant(client, factory, db):
    one, auth_one = await factory.tenant_with_key()
    two, auth_two = await factory.tenant_with_key()
    for auth in (auth_one, auth_two):
        assert (await client.post("/api/v1/courses", json={"title": "Mine"}, headers=keyed(auth, "shared"))).status == 201
    for tenant in (one, two):
        assert await db.fetchval("SELECT count(*) FROM courses WHERE tenant_id = $1", tenant["id"]) == 1


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "tab\there"])
async def test_a_malformed_key_is_422_and_nothing_is_done(client, factory, db, value):
    tenant, auth = await factory.tenant_with_key()
    resp = await client.post("/api/v1/courses", json={"title": "No"}, headers=keyed(auth, value))
    assert resp.status == 422
    assert "Idempotency-Key" in (await resp.json())["error"]["details"]
    assert await db.fetchval("SELECT count(*) FROM courses WHERE tenant_id = $1", tenant["id"]) == 0


async def test_a_streamed_request_with_a_key_is_422_before_any_call(client, factory, fresh_llm):
    _, auth = await factory.tenant_with_key()
    resp = await client.post("/api/v1/gpt", json={**GPT, "stream": True}, headers=keyed(auth, "s"))
    assert resp.status == 422 and "stream" in (await resp.json())["error"]["message"]
    assert fresh_llm.requests() == []


async def test_a_failure_is_not_kept_and_the_key_may_be_used_again(make_client, factory, db, fresh_llm):
    client = await make_client(LLM_MAX_RETRIES="0")
    tenant, auth = await factory.tenant_with_key()
    fresh_llm.script({"status": 500})
    assert (await client.post("/api/v1/gpt", json=GPT, headers=keyed(auth, "f"))).status == 502
    again = await client.post("/api/v1/gpt", json=GPT, headers=keyed(auth, "f"))
    assert again.status == 200 and "Idempotent-Replayed" not in again.headers
    assert len(fresh_llm.requests()) == 2


async def test_a_claim_whose_worker_died_goes_stale(client, factory, db):
    """A claim with no answer whose time is up (its worker stopped mid-request) frees the key."""
    tenant, auth = await factory.tenant_with_key()
    await db.execute("""INSERT INTO idempotency_keys (tenant_id, key, fingerprint, claimed_until)
                        VALUES ($1, 'stale', '\\x00', now() - interval '1 second')""", tenant["id"])
    resp = await client.post("/api/v1/courses", json={"title": "After a crash"}, headers=keyed(auth, "stale"))
    assert resp.status == 201


async def test_a_key_older_than_a_day_is_a_new_key(client, factory, db):
    tenant, auth = await factory.tenant_with_key()
    assert (await client.post("/api/v1/courses", json={"title": "Old"}, headers=keyed(auth, "day"))).status == 201
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE tenant_id = $1",
                     tenant["id"])
    resp = await client.post("/api/v1/courses", json={"title": "New"}, headers=keyed(auth, "day"))
    assert resp.status == 201 and "Idempotent-Replayed" not in resp.headers
    assert await db.fetchval("SELECT count(*) FROM courses WHERE tenant_id = $1", tenant["id"]) == 2


RUNS = 20
CONCURRENT = 20


async def test_concurrent_repeats_make_one_provider_call(client, factory, db, fresh_llm):
    """20 requests with one key at once, in 20 runs: one provider call and one accounted row
    per run, and 20 identical answers (the repeats wait for the first)."""
    for run in range(RUNS):
        fresh_llm.reset()
        fresh_llm.script({"delay_s": 0.3})
        tenant, auth = await factory.tenant_with_key()
        answers = await asyncio.gather(*(client.post("/api/v1/gpt", json=GPT, headers=keyed(auth, f"run-{run}"))
                                         for _ in range(CONCURRENT)))
        bodies = [(a.status, await a.read()) for a in answers]
        assert {status for status, _ in bodies} == {200}, (run, bodies[:3])
        assert len({body for _, body in bodies}) == 1, run
        assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == CONCURRENT - 1
        assert len(fresh_llm.requests()) == 1, run
        assert len(await llm_calls(db, tenant["id"], count=2, timeout=0.5)) == 1, run


async def test_a_repeat_that_outwaits_the_first_gets_409_with_retry_after(client, factory, fresh_llm, monkeypatch):
    from app import idempotency

    monkeypatch.setattr(idempotency, "WAIT_S", 0.2)
    _, auth = await factory.tenant_with_key()
    fresh_llm.script({"delay_s": 0.8})
    first = asyncio.ensure_future(client.post("/api/v1/gpt", json=GPT, headers=keyed(auth, "slow")))
    await asyncio.sleep(0.2)
    resp = await client.post("/api/v1/gpt", json=GPT, headers=keyed(auth, "slow"))
    assert resp.status == 409 and int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"]["code"] == "idempotency_in_progress"
    assert (await first).status == 200


# --- uploads: the file is part of the request ------------------------------------------------

def _form(data: bytes, filename: str = "notes.pdf", content_type: str = "application/pdf") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type=content_type)
    return form


async def _stored_materials(db, tenant_id) -> list:
    return await db.fetch("SELECT id, sha256 FROM materials WHERE tenant_id = $1", tenant_id)


async def test_a_repeated_upload_is_stored_once_and_replayed(client, factory, db, make_course, s3, bucket):
    tenant, auth = await factory.tenant_with_key()
    course = await make_course(auth=auth)
    data = os.urandom(300_000)
    url = f"/api/v1/courses/{course['id']}/materials"
    first = await client.post(url, data=_form(data), headers=keyed(auth, "upload-1"))
    assert first.status == 201, await first.text()
    again = await client.post(url, data=_form(data), headers=keyed(auth, "upload-1"))  # another boundary, same file
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json() and again.headers["Location"] == first.headers["Location"]
    raw = await client.post(f"{url}?filename=notes.pdf", data=data,  # the same file sent raw
                            headers={**keyed(auth, "upload-1"), "Content-Type": "application/pdf"})
    assert raw.status == 201 and raw.headers["Idempotent-Replayed"] == "true"
    [material] = await _stored_materials(db, tenant["id"])
    assert material["sha256"] == hashlib.sha256(data).hexdigest()
    objects = s3.client().list_objects_v2(Bucket=bucket, Prefix=f"tenants/{tenant['id']}/").get("KeyCount")
    assert objects == 1


@pytest.mark.parametrize("change", ["content", "filename", "course"])
async def test_the_key_of_an_upload_with_another_file_or_place_is_422(client, factory, db, make_course, change):
    tenant, auth = await factory.tenant_with_key()
    course, other_course = await make_course(auth=auth), await make_course(auth=auth)
    data = os.urandom(10_000)
    url = f"/api/v1/courses/{course['id']}/materials"
    assert (await client.post(url, data=_form(data), headers=keyed(auth, "u"))).status == 201
    second = {"content": (url, _form(data[:-1] + b"!")), "filename": (url, _form(data, filename="other.pdf")),
              "course": (f"/api/v1/courses/{other_course['id']}/materials", _form(data))}[change]
    resp = await client.post(second[0], data=second[1], headers=keyed(auth, "u"))
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "idempotency_key_reused"
    assert len(await _stored_materials(db, tenant["id"])) == 1


async def test_a_failed_upload_keeps_no_key(make_client, factory, db, make_course):
    """A file too large is a 413 and nothing is kept, the key included: the retry with a
    smaller file under the same key is stored."""
    small = await make_client(MAX_UPLOAD_BYTES=str(50_000))
    tenant, auth = await factory.tenant_with_key()
    course = await make_course(auth=auth, client=small)
    url = f"/api/v1/courses/{course['id']}/materials?filename=big.bin"
    async def chunked():  # no Content-Length: found too large while streaming
        for _ in range(6):
            yield bytes(10_000)

    assert (await small.post(url, data=chunked(), headers=keyed(auth, "big"))).status == 413
    assert (await small.post(url, data=bytes(40_000), headers=keyed(auth, "big"))).status == 201
    assert len(await _stored_materials(db, tenant["id"])) == 1


async def test_concurrent_uploads_with_one_key_store_one_file(client, factory, db, make_course):
    tenant, auth = await factory.tenant_with_key()
    course = await make_course(auth=auth)
    data = os.urandom(2_000_000)
    url = f"/api/v1/courses/{course['id']}/materials"
    answers = await asyncio.gather(*(client.post(url, data=_form(data), headers=keyed(auth, "together"))
                                     for _ in range(8)))
    statuses = [a.status for a in answers]
    assert set(statuses) <= {201, 409} and statuses.count(201) >= 1, statuses
    ids = {(await a.json())["id"] for a in answers if a.status == 201}
    assert len(ids) == 1
    assert [a.headers.get("Idempotent-Replayed") for a in answers if a.status == 201].count(None) == 1
    assert len(await _stored_materials(db, tenant["id"])) == 1
