"""A worker streams at most UPLOADS_PER_WORKER uploads at once: more wait their turn, their
bodies unread, so that memory stays bounded however many arrive together (found by probing:
96 uploads at once grew one worker by 778 MiB). One that waits too long, or is still waiting
when the worker shuts down, is a 503 with Retry-After, and nothing of it is kept."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import pytest

from app.keys import storage_key
from app.main import create_app
from app.storage import TRANSFER_THREADS, Storage, UploadsBusy

MiB = 1 << 20


async def _one_slot_client(aiohttp_client, settings, wait_s: int):
    return await aiohttp_client(await create_app(dataclasses.replace(
        settings, uploads_per_worker=1, upload_queue_wait_s=wait_s, s3_part_bytes=5 * MiB)))


def _keys(s3, bucket: str, course_id: str) -> list[str]:
    objects = s3.client().list_objects_v2(Bucket=bucket, Prefix="tenants/").get("Contents", [])
    uploads = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [o["Key"] for o in objects + uploads if course_id in o["Key"]]


def _held_upload(client, auth, course_id: str, name: str):
    """An upload that sends 1 MiB, then holds its slot until ``release`` is set."""
    started, release = asyncio.Event(), asyncio.Event()

    async def body():
        yield os.urandom(MiB)
        started.set()
        await release.wait()
        yield os.urandom(MiB)

    response = asyncio.ensure_future(client.post(
        f"/api/v1/courses/{course_id}/materials?filename={name}", data=body(), headers=auth))
    return response, started, release


async def _until_the_slot_is_taken(client, started: asyncio.Event) -> None:
    """Until the held upload has its slot in the app (its client having sent a first chunk
    says nothing of that: the app may not have read the request yet)."""
    await asyncio.wait_for(started.wait(), 10)
    deadline = time.monotonic() + 10
    while not client.server.app[storage_key].upload_slots_all_taken:
        assert time.monotonic() < deadline, "the held upload never took its slot"
        await asyncio.sleep(0.01)


async def test_an_upload_waits_for_a_free_slot_then_is_stored(aiohttp_client, settings, auth, s3, bucket,
                                                               make_course):
    client = await _one_slot_client(aiohttp_client, settings, wait_s=60)
    course_id = (await make_course(client=client))["id"]
    first, started, release = _held_upload(client, auth, course_id, "first.bin")
    await _until_the_slot_is_taken(client, started)
    second = asyncio.ensure_future(client.post(
        f"/api/v1/courses/{course_id}/materials?filename=second.bin", data=b"x" * 1000, headers=auth))
    await asyncio.sleep(1.0)
    assert not second.done(), "the second upload should wait for the first one's slot"
    assert _keys(s3, bucket, course_id) == [], "nothing of either upload is stored yet"
    release.set()
    first_response, second_response = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert first_response.status == 201, await first_response.text()
    assert second_response.status == 201, await second_response.text()
    assert (await second_response.json())["size_bytes"] == 1000
    assert len(_keys(s3, bucket, course_id)) == 2


async def test_an_upload_that_waits_too_long_is_503_uploads_busy_and_keeps_nothing(aiohttp_client, settings, auth,
                                                                                    s3, bucket, make_course):
    client = await _one_slot_client(aiohttp_client, settings, wait_s=1)
    course_id = (await make_course(client=client))["id"]
    first, started, release = _held_upload(client, auth, course_id, "first.bin")
    await _until_the_slot_is_taken(client, started)
    began = time.monotonic()
    refused = await client.post(f"/api/v1/courses/{course_id}/materials?filename=late.bin", data=b"y" * 1000,
                                headers=auth)
    waited = time.monotonic() - began
    assert refused.status == 503
    body = await refused.json()
    assert body["error"]["code"] == "uploads_busy" and body["error"]["request_id"]
    assert refused.headers["Retry-After"] == "10"
    assert "X-RateLimit-Limit" in refused.headers
    assert 0.9 <= waited < 10
    release.set()
    assert (await asyncio.wait_for(first, 30)).status == 201
    assert len(_keys(s3, bucket, course_id)) == 1
    listed = await (await client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)).json()
    assert [m["filename"] for m in listed["items"]] == ["first.bin"]


@pytest.fixture
async def storage(s3, bucket):
    store = Storage(bucket, s3.endpoint_url, uploads_at_once=1)
    yield store
    store.close()


async def _slot_is_free(store: Storage) -> bool:
    try:
        async with store.upload_slot(0.2):
            return True
    except UploadsBusy:
        return False


async def _hold_the_slot(store: Storage) -> tuple[asyncio.Future, asyncio.Event]:
    """A task holding the one slot until the event is set."""
    holding, done = asyncio.Event(), asyncio.Event()

    async def holder():
        async with store.upload_slot(10):
            holding.set()
            await done.wait()

    held = asyncio.ensure_future(holder())
    await holding.wait()
    return held, done


async def test_shutdown_refuses_uploads_still_waiting_for_a_slot(storage):
    held, done = await _hold_the_slot(storage)
    waiting = asyncio.ensure_future(storage.upload_slot(60).__aenter__())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    began = time.monotonic()
    await storage.finish_or_discard_active(0)
    with pytest.raises(UploadsBusy, match="restarting"):
        await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - began < 5
    with pytest.raises(UploadsBusy, match="restarting"):  # and so is any new one
        await storage.upload_slot(60).__aenter__()
    done.set()
    await held


async def test_slots_are_given_back_after_timeouts_and_cancelled_waits(storage):
    held, done = await _hold_the_slot(storage)
    assert not await _slot_is_free(storage)  # timed out: 503
    cancelled = asyncio.ensure_future(storage.upload_slot(60).__aenter__())
    await asyncio.sleep(0.1)
    cancelled.cancel()  # the client went away while it waited
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    done.set()
    await held
    # One slot, and it is free again: nobody kept it.
    assert await _slot_is_free(storage)
    assert await _slot_is_free(storage)


async def test_every_part_slot_is_given_back_after_uploads_succeed_and_fail(aiohttp_client, settings, auth,
                                                                            make_course):
    client = await aiohttp_client(await create_app(dataclasses.replace(
        settings, max_upload_bytes=12 * MiB, s3_part_bytes=5 * MiB)))
    course_id = (await make_course(client=client))["id"]
    ok = [client.post(f"/api/v1/courses/{course_id}/materials?filename=ok{i}.bin", data=os.urandom(11 * MiB),
                      headers=auth) for i in range(3)]

    async def chunked(mib: int):  # no Content-Length: the streamed count finds it too large, parts sent
        for _ in range(mib):
            yield os.urandom(MiB)

    too_large = [client.post(f"/api/v1/courses/{course_id}/materials?filename=big{i}.bin",
                             data=chunked(13), headers=auth) for i in range(3)]
    statuses = [r.status for r in await asyncio.gather(*ok, *too_large)]
    assert statuses == [201] * 3 + [413] * 3
    parts = client.app[storage_key].part_slots
    for _ in range(TRANSFER_THREADS):
        await asyncio.wait_for(parts.acquire(), 1)  # each one free again
    assert parts.locked()
