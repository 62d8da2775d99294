"""Resumable uploads over tus 1.0, with a real tus client (tuspy) where a client is the
point: the stored file is byte for byte the one sent, however it was cut into requests;
an interrupted request keeps what arrived; the protocol's errors (offset, checksum,
size, version, another tenant, two requests at once); termination, expiry and a deleted
course leave no multipart upload behind."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import os
import signal
import time

import aiohttp
import pytest
from tusclient.client import TusClient

from app import resumable
from app.keys import db_pool_key, storage_key
from app.main import create_app
from tests.support.courses import create_course
from tests.support.gunicorn import Gunicorn

MiB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
async def tus_client(aiohttp_client, settings):
    """The app with 5 MiB parts (S3's smallest) and a 64 MiB upload limit."""
    return await aiohttp_client(await create_app(dataclasses.replace(
        settings, max_upload_bytes=64 * MiB, s3_part_bytes=5 * MiB)))


def _multipart_uploads(s3, bucket: str, prefix: str) -> list[dict]:
    return s3.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


def _metadata(**fields: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())


async def _create(client, course, auth, length: int, **headers) -> str:
    resp = await client.post(f"/api/v1/courses/{course['id']}/uploads", headers={
        **auth, **TUS, "Upload-Length": str(length), "Upload-Metadata": _metadata(filename="talk.mp4",
                                                                                   filetype="video/mp4"), **headers})
    assert resp.status == 201, await resp.text()
    return resp.headers["Location"]


async def _patch(client, url: str, auth, offset: int, data, **headers):
    return await client.patch(url, data=data, headers={**auth, **TUS, "Upload-Offset": str(offset),
                                                       "Content-Type": "application/offset+octet-stream", **headers})


async def _offset(client, url: str, auth) -> int:
    resp = await client.head(url, headers={**auth, **TUS})
    assert resp.status == 200, resp.status
    return int(resp.headers["Upload-Offset"])


async def test_tuspy_uploads_in_chunks_that_are_not_whole_parts(tus_client, auth, make_course, s3, bucket, db):
    """12 MiB and a bit, sent by tuspy in chunks of 3 MiB + 7 bytes: the material is recorded
    as a plain upload records it, and the object is the file."""
    course = await make_course(auth=auth, client=tus_client)
    data = os.urandom(12 * MiB + 12_345)
    endpoint = str(tus_client.make_url(f"/api/v1/courses/{course['id']}/uploads"))
    uploader = TusClient(endpoint, headers=auth).uploader(
        file_stream=io.BytesIO(data), chunk_size=3 * MiB + 7, metadata={"filename": "lecture.mp4",
                                                                        "filetype": "video/mp4"})
    await asyncio.to_thread(uploader.upload)
    resp = await tus_client.get(f"/api/v1/courses/{course['id']}/materials", headers=auth)
    [material] = (await resp.json())["items"]
    assert (material["filename"], material["content_type"], material["size_bytes"]) == \
        ("lecture.mp4", "video/mp4", len(data))
    assert material["sha256"] == hashlib.sha256(data).hexdigest()
    key = await db.fetchval("SELECT object_key FROM materials WHERE id = $1", material["id"])
    assert hashlib.sha256(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest() == \
        material["sha256"]
    assert not _multipart_uploads(s3, bucket, key)
    head = await tus_client.head(uploader.url.removeprefix(str(tus_client.make_url(""))), headers={**auth, **TUS})
    assert head.status == 200 and head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    assert head.headers["Material-Location"] == f"/api/v1/courses/{course['id']}/materials/{material['id']}"


async def test_tuspy_with_checksums_and_a_small_file(tus_client, auth, make_course):
    """tuspy's Upload-Checksum (sha1) on every request; a file smaller than one part."""
    course = await make_course(auth=auth, client=tus_client)
    data = os.urandom(100_000)
    endpoint = str(tus_client.make_url(f"/api/v1/courses/{course['id']}/uploads"))
    uploader = TusClient(endpoint, headers=auth).uploader(file_stream=io.BytesIO(data), chunk_size=30_000,
                                                          upload_checksum=True, metadata={"filename": "n.pdf"})
    await asyncio.to_thread(uploader.upload)
    [material] = (await (await tus_client.get(f"/api/v1/courses/{course['id']}/materials",
                                              headers=auth)).json())["items"]
    assert material["sha256"] == hashlib.sha256(data).hexdigest() and material["size_bytes"] == len(data)


async def test_discovery_says_version_extensions_and_size(tus_client, make_course, auth):
    course = await make_course(auth=auth, client=tus_client)
    resp = await tus_client.options(f"/api/v1/courses/{course['id']}/uploads", headers=auth)
    assert resp.status == 204
    assert resp.headers["Tus-Version"] == resp.headers["Tus-Resumable"] == "1.0.0"
    assert set(resp.headers["Tus-Extension"].split(",")) == {"creation", "creation-with-upload", "termination",
                                                             "expiration", "checksum"}
    assert resp.headers["Tus-Max-Size"] == str(64 * MiB) and "sha256" in resp.headers["Tus-Checksum-Algorithm"]


async def test_creation_with_upload_then_patches_with_curl_like_requests(tus_client, auth, make_course, s3, bucket):
    course = await make_course(auth=auth, client=tus_client)
    data = os.urandom(7 * MiB)
    resp = await tus_client.post(f"/api/v1/courses/{course['id']}/uploads", data=data[:1000], headers={
        **auth, **TUS, "Upload-Length": str(len(data)), "Content-Type": "application/offset+octet-stream"})
    assert resp.status == 201 and resp.headers["Upload-Offset"] == "1000"
    assert resp.headers["Upload-Expires"].endswith(" GMT")
    url = resp.headers["Location"]
    resp = await _patch(tus_client, url, auth, 1000, data[1000:6 * MiB])
    assert resp.status == 204 and resp.headers["Upload-Offset"] == str(6 * MiB)
    assert await _offset(tus_client, url, auth) == 6 * MiB
    resp = await _patch(tus_client, url, auth, 6 * MiB, data[6 * MiB:],
                        **{"Upload-Checksum": "sha256 " + base64.b64encode(hashlib.sha256(data[6 * MiB:]).digest())
                           .decode()})
    assert resp.status == 204 and resp.headers["Upload-Offset"] == str(len(data))
    material = await (await tus_client.get(resp.headers["Material-Location"], headers=auth)).json()
    assert material["sha256"] == hashlib.sha256(data).hexdigest() and material["filename"] == "upload"


async def test_a_request_cut_off_keeps_what_arrived(tus_client, auth, make_course):
    """The client goes away mid-request: the bytes that arrived count (the part in hand is
    kept in the upload's row), and the upload goes on from there."""
    course = await make_course(auth=auth, client=tus_client)
    data = os.urandom(8 * MiB)
    url = await _create(tus_client, course, auth, len(data))
    sent = 0

    async def body():
        nonlocal sent
        for start in range(0, 6 * MiB, MiB // 2):
            sent = start + MiB // 2
            yield data[start:start + MiB // 2]
            await asyncio.sleep(0.02)
        await asyncio.sleep(30)  # never finishes: the client gives up

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(_patch(tus_client, url, auth, 0, body()), timeout=1.5)
    for _ in range(100):
        try:
            offset = await _offset(tus_client, url, auth)
        except AssertionError:
            offset = -1
        if offset > 0 and await _patch_possible(tus_client, url, auth, offset):
            break
        await asyncio.sleep(0.1)
    assert 5 * MiB < offset <= sent
    resp = await _patch(tus_client, url, auth, offset, data[offset:])
    assert resp.status == 204, await resp.text()
    material = await (await tus_client.get(resp.headers["Material-Location"], headers=auth)).json()
    assert material["sha256"] == hashlib.sha256(data).hexdigest()


async def _patch_possible(client, url, auth, offset: int) -> bool:
    """Whether the upload is free again (an empty PATCH at its offset is not 423)."""
    return (await _patch(client, url, auth, offset, b"")).status == 204


async def test_protocol_errors(tus_client, auth, factory, make_course, db):
    course = await make_course(auth=auth, client=tus_client)
    url = await _create(tus_client, course, auth, 1000)
    resp = await _patch(tus_client, url, auth, 10, b"x" * 10)
    assert resp.status == 409 and resp.headers["Upload-Offset"] == "0"
    assert (await resp.json())["error"]["code"] == "upload_offset_mismatch"
    bad = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    resp = await _patch(tus_client, url, auth, 0, b"y" * 100, **{"Upload-Checksum": bad})
    assert resp.status == 460 and (await resp.json())["error"]["code"] == "checksum_mismatch"
    assert await _offset(tus_client, url, auth) == 0  # nothing kept
    resp = await _patch(tus_client, url, auth, 0, b"z" * 1001)
    assert resp.status == 413 and resp.headers["Tus-Resumable"] == "1.0.0"
    resp = await tus_client.patch(url, data=b"z", headers={**auth, **TUS, "Upload-Offset": "0",
                                                             "Content-Type": "application/octet-stream"})
    assert resp.status == 415
    resp = await tus_client.head(url, headers=auth)  # no Tus-Resumable
    assert resp.status == 412 and resp.headers["Tus-Version"] == "1.0.0"
    resp = await tus_client.post(f"/api/v1/courses/{course['id']}/uploads",
                                 headers={**auth, **TUS, "Upload-Length": str(64 * MiB + 1)})
    assert resp.status == 413
    resp = await tus_client.post(f"/api/v1/courses/{course['id']}/uploads",
                                 headers={**auth, **TUS, "Upload-Length": "ten"})
    assert resp.status == 400
    _, other = await factory.tenant_with_key()
    for method in ("HEAD", "PATCH", "DELETE"):
        resp = await tus_client.request(method, url, data=b"" if method == "PATCH" else None, headers={
            **other, **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
        assert resp.status == 404, method
    assert await _offset(tus_client, url, auth) == 0


async def test_two_requests_on_one_upload_never_interleave(tus_client, auth, make_course, db):
    course = await make_course(auth=auth, client=tus_client)
    url = await _create(tus_client, course, auth, 2 * MiB)
    release = asyncio.Event()

    async def slow():
        yield b"a" * MiB
        await release.wait()
        yield b"b" * 1000

    first = asyncio.ensure_future(_patch(tus_client, url, auth, 0, slow()))
    upload_id = url.rsplit("/", 1)[1]
    while not await db.fetchval("SELECT locked_until > now() FROM material_uploads WHERE id = $1", upload_id):
        await asyncio.sleep(0.02)
    second = await _patch(tus_client, url, auth, 0, b"c" * 10)
    assert second.status == 423 and (await second.json())["error"]["code"] == "upload_busy"
    assert second.headers["Retry-After"] == "5"
    release.set()
    resp = await first
    assert resp.status == 204 and resp.headers["Upload-Offset"] == str(MiB + 1000)


async def test_termination_aborts_the_parts(tus_client, auth, make_course, s3, bucket, db):
    course = await make_course(auth=auth, client=tus_client)
    url = await _create(tus_client, course, auth, 12 * MiB)
    assert (await _patch(tus_client, url, auth, 0, os.urandom(6 * MiB))).status == 204
    key = await db.fetchval("SELECT object_key FROM material_uploads WHERE id = $1", url.rsplit("/", 1)[1])
    assert len(_multipart_uploads(s3, bucket, key)) == 1
    resp = await tus_client.delete(url, headers={**auth, **TUS})
    assert resp.status == 204
    assert not _multipart_uploads(s3, bucket, key)
    assert (await tus_client.head(url, headers={**auth, **TUS})).status == 404


async def test_an_expired_upload_is_gone_and_swept(tus_client, auth, make_course, s3, bucket, db):
    course = await make_course(auth=auth, client=tus_client)
    url = await _create(tus_client, course, auth, 12 * MiB)
    assert (await _patch(tus_client, url, auth, 0, os.urandom(6 * MiB))).status == 204
    upload_id = url.rsplit("/", 1)[1]
    key = await db.fetchval("SELECT object_key FROM material_uploads WHERE id = $1", upload_id)
    await db.execute("UPDATE material_uploads SET expires_at = now() - interval '1 second' WHERE id = $1", upload_id)
    assert (await tus_client.head(url, headers={**auth, **TUS})).status == 404
    app = tus_client.server.app
    assert await resumable.sweep_expired(app[db_pool_key], app[storage_key]) >= 1
    assert await db.fetchval("SELECT count(*) FROM material_uploads WHERE id = $1", upload_id) == 0
    assert not _multipart_uploads(s3, bucket, key)


async def test_a_deleted_course_takes_its_uploads(tus_client, auth, make_course, s3, bucket, db):
    course = await make_course(auth=auth, client=tus_client)
    url = await _create(tus_client, course, auth, 12 * MiB)
    assert (await _patch(tus_client, url, auth, 0, os.urandom(6 * MiB))).status == 204
    upload_id = url.rsplit("/", 1)[1]
    key = await db.fetchval("SELECT object_key FROM material_uploads WHERE id = $1", upload_id)
    assert (await tus_client.delete(f"/api/v1/courses/{course['id']}", headers=auth)).status == 204
    assert await db.fetchval("SELECT count(*) FROM material_uploads WHERE id = $1", upload_id) == 0
    assert not _multipart_uploads(s3, bucket, key)


async def test_the_orphan_sweep_leaves_uploads_still_going(tus_client, auth, make_course, s3, bucket, db):
    course = await make_course(auth=auth, client=tus_client)
    url = await _create(tus_client, course, auth, 12 * MiB)
    assert (await _patch(tus_client, url, auth, 0, os.urandom(6 * MiB))).status == 204
    key = await db.fetchval("SELECT object_key FROM material_uploads WHERE id = $1", url.rsplit("/", 1)[1])
    app = tus_client.server.app
    await app[storage_key].abort_stale_uploads("tenants/", 0, keep=await resumable.live_upload_keys(app[db_pool_key]))
    assert len(_multipart_uploads(s3, bucket, key)) == 1
    assert await _offset(tus_client, url, auth) == 6 * MiB
    assert (await tus_client.delete(url, headers={**auth, **TUS})).status == 204  # (the bucket is shared)
    assert not _multipart_uploads(s3, bucket, key)


async def test_cors_exposes_the_tus_headers(make_client, auth, make_course):
    client = await make_client(CORS_ORIGINS="https://app.example")
    course = await make_course(auth=auth, client=client)
    preflight = await client.options(f"/api/v1/courses/{course['id']}/uploads", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "tus-resumable, upload-offset, upload-length, upload-metadata"})
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert all(h in allowed for h in ("tus-resumable", "upload-offset", "upload-length", "upload-metadata",
                                      "upload-checksum"))
    assert "HEAD" in preflight.headers["Access-Control-Allow-Methods"]
    resp = await client.post(f"/api/v1/courses/{course['id']}/uploads", headers={
        **auth, **TUS, "Origin": "https://app.example", "Upload-Length": "10"})
    exposed = resp.headers["Access-Control-Expose-Headers"]
    assert all(h in exposed for h in ("Location", "Upload-Offset", "Tus-Resumable", "Upload-Expires"))


# --- any worker goes on; a killed one costs the part in hand -------------------------------

@pytest.mark.gunicorn
async def test_an_upload_goes_on_across_workers_and_past_a_killed_one(app_env, factory):
    """tuspy's requests land on either of two workers, each going on from the state the
    other left; a worker SIGKILLed mid-request loses only the bytes after the last part
    it stored, and the upload goes on once its hold has lapsed."""
    _, auth = await factory.tenant_with_key()
    env = {**app_env, "RESUMABLE_UPLOAD_HOLD_S": "3", "S3_PART_BYTES": str(5 * MiB),
           "MAX_UPLOAD_BYTES": str(64 * MiB)}
    data = os.urandom(24 * MiB + 999)
    with Gunicorn(env, workers=2) as server:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            course = await create_course(session, server.url, auth, "Videos")
            endpoint = f"{server.url}/api/v1/courses/{course['id']}/uploads"
            uploader = TusClient(endpoint, headers=auth).uploader(
                file_stream=io.BytesIO(data), chunk_size=2 * MiB + 3, metadata={"filename": "v.mp4"})
            await asyncio.to_thread(uploader.upload, 10 * MiB)
            start = uploader.offset
            port = int(server.url.rsplit(":", 1)[1])
            sent = start + 7 * MiB

            async def body():
                yield data[start:sent]
                await asyncio.sleep(60)  # held open: the worker dies meanwhile

            request = asyncio.ensure_future(session.patch(uploader.url, data=body(), headers={
                **auth, **TUS, "Upload-Offset": str(start), "Content-Type": "application/offset+octet-stream"}))
            await asyncio.sleep(2)  # the whole parts among those bytes stored, and saved
            os.kill(server.worker_with_connection(port, serving=True), signal.SIGKILL)
            with pytest.raises(aiohttp.ClientError):
                await request
            deadline = time.monotonic() + 20
            while True:  # 423 until the dead worker's hold lapses
                resp = await session.patch(uploader.url, data=b"", headers={
                    **auth, **TUS, "Upload-Offset": str((await _head(session, uploader.url, auth))),
                    "Content-Type": "application/offset+octet-stream"})
                if resp.status == 204:
                    break
                assert resp.status == 423 and time.monotonic() < deadline
                await asyncio.sleep(0.5)
            offset = await _head(session, uploader.url, auth)
            assert offset % (5 * MiB) == 0 and 0 <= sent - offset < 5 * MiB, (offset, sent)  # < one part lost
            resumed = TusClient(endpoint, headers=auth).uploader(
                file_stream=io.BytesIO(data), chunk_size=4 * MiB, url=uploader.url)
            await asyncio.to_thread(resumed.upload)
            async with session.get(f"{server.url}/api/v1/courses/{course['id']}/materials", headers=auth) as resp:
                [material] = (await resp.json())["items"]
    assert material["sha256"] == hashlib.sha256(data).hexdigest() and material["size_bytes"] == len(data)


async def _head(session, url: str, auth) -> int:
    async with session.head(url, headers={**auth, **TUS}) as resp:
        assert resp.status == 200, resp.status
        return int(resp.headers["Upload-Offset"])


async def test_an_empty_file_is_complete_at_creation(tus_client, auth, make_course):
    course = await make_course(auth=auth, client=tus_client)
    resp = await tus_client.post(f"/api/v1/courses/{course['id']}/uploads", headers={
        **auth, **TUS, "Upload-Length": "0", "Upload-Metadata": _metadata(filename="empty.txt")})
    assert resp.status == 201 and resp.headers["Upload-Offset"] == "0"
    material = await (await tus_client.get(resp.headers["Material-Location"], headers=auth)).json()
    assert (material["size_bytes"], material["sha256"], material["filename"]) == \
        (0, hashlib.sha256(b"").hexdigest(), "empty.txt")
