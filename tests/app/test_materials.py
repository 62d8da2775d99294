"""Material uploads streamed to a real S3 server (moto, over HTTP), and what stays behind on failure."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os

import aiohttp
import pytest

from app import backup
from app.keys import storage_key
from app.main import create_app
from app.materials import clean_filename
from app.uploads import clean_content_type

MiB = 1 << 20


def _objects(s3, bucket: str, prefix: str = "tenants/") -> list[str]:
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def _multipart_uploads(s3, bucket: str) -> list[dict]:
    return s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.fixture
async def small_client(aiohttp_client, settings):
    """The app with a 6 MiB upload limit and 5 MiB parts (S3's smallest)."""
    return await aiohttp_client(await create_app(dataclasses.replace(
        settings, max_upload_bytes=6 * MiB, s3_part_bytes=5 * MiB)))


async def test_raw_upload_round_trip_with_download_url(client, auth, s3, bucket, make_course):
    course_id = (await make_course())["id"]
    data = b"lecture notes\n" * 1000
    response = await client.post(f"/api/v1/courses/{course_id}/materials?filename=notes.txt", data=data,
                                 headers={**auth, "Content-Type": "text/plain"})
    assert response.status == 201, await response.text()
    material = await response.json()
    assert material["filename"] == "notes.txt" and material["content_type"] == "text/plain"
    assert material["size_bytes"] == len(data) and material["sha256"] == hashlib.sha256(data).hexdigest()

    listed = await (await client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)).json()
    assert [m["id"] for m in listed["items"]] == [material["id"]]
    detail = await (await client.get(f"/api/v1/courses/{course_id}/materials/{material['id']}", headers=auth)).json()
    async with aiohttp.ClientSession() as session, session.get(detail["download_url"]) as download:
        assert download.status == 200
        assert await download.read() == data
        assert "notes.txt" in download.headers.get("Content-Disposition", "")


async def test_a_raw_upload_declared_as_a_form_is_stored_untyped(client, auth, make_course):
    """Found by probing: `curl --data-binary @deck.pdf …?filename=deck.pdf` declares
    application/x-www-form-urlencoded, which was stored as the file's type (and given to
    every download)."""
    course_id = (await make_course())["id"]
    response = await client.post(f"/api/v1/courses/{course_id}/materials?filename=deck.pdf", data=b"%PDF-1.4",
                                 headers={**auth, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 201 and (await response.json())["content_type"] == "application/octet-stream"


async def test_multipart_upload_of_several_parts(small_client, auth, s3, bucket, make_course):
    course_id = (await make_course(client=small_client))["id"]
    data = os.urandom(5 * MiB + 123_456)  # two S3 parts
    form = aiohttp.FormData()
    form.add_field("title", "ignored")
    form.add_field("file", data, filename="lecture.mp4", content_type="video/mp4")
    response = await small_client.post(f"/api/v1/courses/{course_id}/materials", data=form, headers=auth)
    assert response.status == 201, await response.text()
    material = await response.json()
    assert (material["filename"], material["content_type"], material["size_bytes"]) == \
        ("lecture.mp4", "video/mp4", len(data))
    assert material["sha256"] == hashlib.sha256(data).hexdigest()
    key = next(k for k in _objects(s3, bucket) if k.endswith(material["id"]))
    assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert not _multipart_uploads(s3, bucket)


def _record_s3_requests(boto_client) -> list[tuple[str, dict]]:
    """Every request the client sends from now on, as (operation, headers)."""
    sent: list[tuple[str, dict]] = []
    boto_client.meta.events.register(
        "before-send.s3", lambda request, event_name, **_: sent.append((event_name.rsplit(".", 1)[-1],
                                                                       dict(request.headers))))
    return sent


def _checksum_headers(sent: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    return [(operation, name) for operation, headers in sent for name in headers
            if name.lower().startswith(("x-amz-checksum", "x-amz-sdk-checksum", "x-amz-trailer"))]


async def test_uploads_send_no_checksum_headers_that_b2_refuses(small_client, auth, s3, bucket, make_course):
    """Backblaze B2's S3 API refuses x-amz-checksum-* headers, which botocore sends by default."""
    sent = _record_s3_requests(small_client.server.app[storage_key]._client)
    course_id = (await make_course(client=small_client))["id"]
    for size in (100_000, 5 * MiB + 1):  # one put_object, then a multipart upload of two parts
        response = await small_client.post(f"/api/v1/courses/{course_id}/materials?filename=f.bin",
                                           data=os.urandom(size), headers=auth)
        assert response.status == 201, await response.text()
    operations = [operation for operation, _ in sent]
    assert {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} <= set(operations)
    assert _checksum_headers(sent) == []


def test_backups_send_no_checksum_headers(settings, s3, bucket, tmp_path):
    client = backup._client(settings)
    sent = _record_s3_requests(client)
    archive = tmp_path / "archive"
    archive.write_bytes(os.urandom(17 * MiB))  # above the backup's multipart threshold
    client.upload_file(str(archive), bucket, "backups/test.dump", Config=backup.TRANSFER)
    assert "UploadPart" in [operation for operation, _ in sent]
    assert _checksum_headers(sent) == []


async def test_chunked_upload_without_content_length(small_client, auth, make_course):
    course_id = (await make_course(client=small_client))["id"]
    chunks = [os.urandom(MiB) for _ in range(5)] + [b"tail"]

    async def body():
        for chunk in chunks:
            yield chunk

    response = await small_client.post(f"/api/v1/courses/{course_id}/materials?filename=deck.pdf", data=body(),
                                       headers={**auth, "Content-Type": "application/pdf"})
    assert response.status == 201, await response.text()
    material = await response.json()
    assert material["size_bytes"] == sum(map(len, chunks))
    assert material["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


async def test_declared_length_over_the_limit_is_413_at_once(small_client, auth, s3, bucket, make_course):
    course_id = (await make_course(client=small_client))["id"]
    response = await small_client.post(f"/api/v1/courses/{course_id}/materials?filename=big.bin",
                                       data=os.urandom(7 * MiB), headers=auth)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"
    listed = await (await small_client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)).json()
    assert listed["items"] == []
    assert not [k for k in _objects(s3, bucket) if course_id in k]


async def test_streamed_count_over_the_limit_is_413_and_aborts_the_multipart_upload(small_client, auth, s3,
                                                                                     bucket, make_course):
    course_id = (await make_course(client=small_client))["id"]

    async def body():
        for _ in range(8):
            yield os.urandom(MiB)

    response = await small_client.post(f"/api/v1/courses/{course_id}/materials?filename=big.bin", data=body(),
                                       headers=auth)
    assert response.status == 413
    assert not [u for u in _multipart_uploads(s3, bucket) if course_id in u["Key"]]
    assert not [k for k in _objects(s3, bucket) if course_id in k]
    listed = await (await small_client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)).json()
    assert listed["items"] == []


async def test_client_disconnect_mid_body_leaves_nothing(small_client, auth, s3, bucket, make_course):
    course_id = (await make_course(client=small_client))["id"]
    path = f"/api/v1/courses/{course_id}/materials?filename=cut.bin"
    head = (f"POST {path} HTTP/1.1\r\nHost: test\r\nX-API-Key: {auth['X-API-Key']}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {6 * MiB - 1}\r\n\r\n").encode()
    # The server shares this event loop: talk to it with asyncio streams, never a blocking socket.
    reader, writer = await asyncio.open_connection(small_client.server.host, small_client.server.port)
    writer.write(head + os.urandom(5 * MiB + 1000))  # one whole part reaches S3, then the client vanishes
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.transport.abort()

    def leftovers():
        return ([u for u in _multipart_uploads(s3, bucket) if course_id in u["Key"]],
                [k for k in _objects(s3, bucket) if course_id in k])

    for _ in range(100):
        if leftovers() == ([], []):
            break
        await asyncio.sleep(0.1)
    assert leftovers() == ([], [])
    listed = await (await small_client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)).json()
    assert listed["items"] == []


async def test_an_upload_whose_course_is_deleted_midway_is_404_and_leaves_nothing(aiohttp_client, settings, auth,
                                                                                   s3, bucket, caplog, make_course):
    """Found by probing: deleting the course aborts the upload's multipart upload in S3; the
    upload then answered 503 storage_unavailable ("try again shortly") and logged an ERROR."""
    client = await aiohttp_client(await create_app(dataclasses.replace(
        settings, max_upload_bytes=20 * MiB, s3_part_bytes=5 * MiB)))
    course_id = (await make_course(client=client))["id"]
    halfway, deleted = asyncio.Event(), asyncio.Event()

    async def body():
        for sent in range(1, 17):
            yield os.urandom(MiB)
            if sent == 8:  # one 5 MiB part is in S3 by now
                halfway.set()
                await deleted.wait()

    upload = asyncio.ensure_future(client.post(f"/api/v1/courses/{course_id}/materials?filename=big.bin",
                                               data=body(), headers=auth))
    await halfway.wait()
    for _ in range(100):
        if [u for u in _multipart_uploads(s3, bucket) if course_id in u["Key"]]:
            break
        await asyncio.sleep(0.05)
    assert (await client.delete(f"/api/v1/courses/{course_id}", headers=auth)).status == 204
    deleted.set()
    response = await asyncio.wait_for(upload, 60)
    assert response.status == 404, await response.text()
    assert (await response.json())["error"]["code"] == "not_found"
    assert [u for u in _multipart_uploads(s3, bucket) if course_id in u["Key"]] == []
    assert [k for k in _objects(s3, bucket) if course_id in k] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_concurrent_uploads(small_client, auth, make_course):
    course_id = (await make_course(client=small_client))["id"]
    files = [os.urandom(MiB * 2 + i) for i in range(4)]
    responses = await asyncio.gather(*(
        small_client.post(f"/api/v1/courses/{course_id}/materials?filename=f{i}.bin", data=data, headers=auth)
        for i, data in enumerate(files)))
    assert [r.status for r in responses] == [201] * 4
    digests = sorted([(await r.json())["sha256"] for r in responses])
    assert digests == sorted(hashlib.sha256(d).hexdigest() for d in files)


async def test_delete_material_removes_object_and_row(client, auth, s3, bucket, make_course):
    course_id = (await make_course())["id"]
    material = await (await client.post(f"/api/v1/courses/{course_id}/materials?filename=a.txt", data=b"a",
                                        headers=auth)).json()
    url = f"/api/v1/courses/{course_id}/materials/{material['id']}"
    assert (await client.delete(url, headers=auth)).status == 204
    assert (await client.get(url, headers=auth)).status == 404
    assert not [k for k in _objects(s3, bucket) if material["id"] in k]


async def test_deleting_a_course_removes_its_files(client, auth, s3, bucket, make_course):
    course_id = (await make_course())["id"]
    for name in ("a.txt", "b.txt"):
        response = await client.post(f"/api/v1/courses/{course_id}/materials?filename={name}", data=b"x",
                                     headers=auth)
        assert response.status == 201
    assert len([k for k in _objects(s3, bucket) if course_id in k]) == 2
    assert (await client.delete(f"/api/v1/courses/{course_id}", headers=auth)).status == 204
    assert not [k for k in _objects(s3, bucket) if course_id in k]


async def test_other_tenants_materials_are_404(client, auth, factory, make_course):
    course_id = (await make_course())["id"]
    material = await (await client.post(f"/api/v1/courses/{course_id}/materials?filename=a.txt", data=b"a",
                                        headers=auth)).json()
    _, other = await factory.tenant_with_key()
    base = f"/api/v1/courses/{course_id}/materials"
    for method, url in (("GET", base), ("GET", f"{base}/{material['id']}"), ("DELETE", f"{base}/{material['id']}"),
                        ("POST", f"{base}?filename=x.txt")):
        response = await client.request(method, url, headers=other, data=b"x" if method == "POST" else None)
        assert response.status == 404, (method, url)
    assert (await client.get(f"{base}/{material['id']}", headers=auth)).status == 200


async def test_raw_upload_needs_a_filename_and_form_needs_a_file(client, auth, make_course):
    course_id = (await make_course())["id"]
    response = await client.post(f"/api/v1/courses/{course_id}/materials", data=b"x", headers=auth)
    assert response.status == 422
    assert "filename" in (await response.json())["error"]["details"]
    form = aiohttp.FormData()
    form.add_field("note", "no file here")
    form.add_field("other", b"bytes", filename="x.bin")
    response = await client.post(f"/api/v1/courses/{course_id}/materials", data=form, headers=auth)
    assert response.status == 422
    assert "file" in (await response.json())["error"]["details"]


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data", b""),                                          # no boundary
    ("multipart/form-data; boundary=b", b"--b\r\nFalse--b--\r\n"),         # a part without headers
    ("multipart/form-data; boundary=b", b"not a multipart body at all"),    # no boundary line
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=file; filename=a\r\n"),
])
async def test_a_malformed_multipart_body_is_400_and_keeps_nothing(client, auth, s3, bucket, content_type, body,
                                                                   make_course):
    """Found by schemathesis: these were 500s."""
    course_id = (await make_course())["id"]
    before = _objects(s3, bucket)
    response = await client.post(f"/api/v1/courses/{course_id}/materials", data=body,
                                 headers={**auth, "Content-Type": content_type})
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["code"] == "bad_request"
    listed = await client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)
    assert (await listed.json())["items"] == [] and _objects(s3, bucket) == before
    assert _multipart_uploads(s3, bucket) == []


def _form(*parts: bytes) -> bytes:
    return b"".join(b"--B0\r\n" + part + b"\r\n" for part in parts) + b"--B0--\r\n"


FILE_PART = b'Content-Disposition: form-data; name="file"; filename="%s"\r\n'


@pytest.mark.parametrize("body, status, in_message", [
    # Found by probing: the second file was dropped without a word.
    (_form(FILE_PART % b"a.txt" + b"\r\nfirst", b'Content-Disposition: form-data; name="note"\r\n\r\nx',
           FILE_PART % b"b.txt" + b"\r\nsecond"), 422, "one file per upload"),
    # Found by probing: the part was stored still in base64.
    (_form(FILE_PART % b"a.txt" + b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8="), 415,
     '"base64" is not supported'),
])
async def test_a_form_the_upload_cannot_store_as_sent_keeps_nothing(client, auth, s3, bucket, body, status,
                                                                    in_message, make_course):
    course_id = (await make_course())["id"]
    before = _objects(s3, bucket)
    response = await client.post(f"/api/v1/courses/{course_id}/materials", data=body,
                                 headers={**auth, "Content-Type": "multipart/form-data; boundary=B0"})
    assert response.status == status, await response.text()
    assert in_message in (await response.json())["error"]["message"]
    listed = await client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)
    assert (await listed.json())["items"] == [] and _objects(s3, bucket) == before
    assert _multipart_uploads(s3, bucket) == []
    # One file, with or without a plain transfer encoding and other fields around it, is stored.
    for transfer_encoding in (b"", b"Content-Transfer-Encoding: BINARY\r\n"):
        body = _form(b'Content-Disposition: form-data; name="note"\r\n\r\nx',
                     FILE_PART % b"a.txt" + transfer_encoding + b"\r\nhello")
        response = await client.post(f"/api/v1/courses/{course_id}/materials", data=body,
                                     headers={**auth, "Content-Type": "multipart/form-data; boundary=B0"})
        assert response.status == 201 and (await response.json())["size_bytes"] == 5, await response.text()


async def test_file_name_is_cleaned_and_never_part_of_the_key(client, auth, s3, bucket, make_course):
    course_id = (await make_course())["id"]
    response = await client.post(f"/api/v1/courses/{course_id}/materials", params={"filename": "../../etc/passwd"},
                                 data=b"x", headers=auth)
    material = await response.json()
    assert material["filename"] == "passwd"
    key = next(k for k in _objects(s3, bucket) if material["id"] in k)
    assert key.endswith(f"/materials/{material['id']}") and "passwd" not in key


@pytest.mark.parametrize("raw, clean", [
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\me\\slides.pdf", "slides.pdf"),
    ("a\x00b\nc\u202e.txt", "abc.txt"),
    ("..hidden", "hidden"),
    ("", "upload"),
    ("   ", "upload"),
    ("x" * 300 + ".pdf", "x" * 251 + ".pdf"),  # found by probing: the extension was cut off
    ("x" * 300, "x" * 255), ("x" * 300 + "." + "y" * 40, ("x" * 300 + "." + "y" * 40)[:255]),
    ("Лекция 1.mp4", "Лекция 1.mp4"),
    (b"\xff\xfe.txt".decode("utf-8", "surrogateescape"), "\ufffd\ufffd.txt"),  # bytes that were not UTF-8
])
def test_clean_filename(raw, clean):
    assert clean_filename(raw) == clean


@pytest.mark.parametrize("declared, stored", [
    ("text/plain; charset=utf-8", "text/plain; charset=utf-8"),
    ("application/vnd.ms-powerpoint", "application/vnd.ms-powerpoint"),
    (None, "application/octet-stream"),
    ("plain", "application/octet-stream"),
    ("text/plain; charset=\u00e9", "application/octet-stream"),  # storage signs it into a header: ASCII only
    ("text/" + "x" * 300, "application/octet-stream"),
])
def test_clean_content_type(declared, stored):
    assert clean_content_type(declared) == stored


async def test_a_multipart_file_whose_name_and_type_are_not_utf8_or_ascii_is_stored(client, auth, s3, bucket,
                                                                                    make_course):
    """Found by probing: both were a 500 (PostgreSQL refused the name, botocore could not sign the type)."""
    course_id = (await make_course())["id"]
    body = (b"--B0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\xff\xfe.txt\"\r\n"
            b"Content-Type: text/\xff\r\n\r\nhello\r\n--B0--\r\n")
    response = await client.post(f"/api/v1/courses/{course_id}/materials", data=body,
                                 headers={**auth, "Content-Type": "multipart/form-data; boundary=B0"})
    assert response.status == 201, await response.text()
    material = await response.json()
    assert (material["filename"], material["content_type"]) == ("\ufffd\ufffd.txt", "application/octet-stream")
    key = next(k for k in _objects(s3, bucket) if material["id"] in k)
    assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"hello"


async def test_startup_sweep_aborts_orphaned_multipart_uploads(aiohttp_client, settings, s3, bucket):
    """A worker killed mid-upload leaves a multipart upload; the next sweep aborts it (and only ours)."""
    client = s3.client()
    orphan = client.create_multipart_upload(Bucket=bucket, Key="tenants/t/courses/c/materials/orphan")
    other = client.create_multipart_upload(Bucket=bucket, Key="backups/not-ours")
    try:
        await aiohttp_client(await create_app(dataclasses.replace(settings, upload_orphan_age_s=0)))
        for _ in range(100):
            if not [u for u in _multipart_uploads(s3, bucket) if u["UploadId"] == orphan["UploadId"]]:
                break
            await asyncio.sleep(0.1)
        remaining = {u["UploadId"] for u in _multipart_uploads(s3, bucket)}
        assert orphan["UploadId"] not in remaining
        assert other["UploadId"] in remaining
    finally:
        client.abort_multipart_upload(Bucket=bucket, Key="backups/not-ours", UploadId=other["UploadId"])


@pytest.fixture
async def own_s3_client(aiohttp_client, settings):
    """The app against an S3 server of its own, which the test may stop."""
    from tests.support.s3 import S3Server

    with S3Server() as server:
        bucket = server.create_bucket("own")
        app = await create_app(dataclasses.replace(settings, s3_endpoint_url=server.endpoint_url, s3_bucket=bucket,
                                                   max_upload_bytes=64 * MiB, s3_part_bytes=5 * MiB))
        yield await aiohttp_client(app), server


async def test_storage_down_upload_is_503_and_nothing_is_kept(own_s3_client, auth, make_course):
    client, server = own_s3_client
    course_id = (await make_course(client=client))["id"]
    server.stop()
    response = await client.post(f"/api/v1/courses/{course_id}/materials?filename=a.txt", data=b"abc",
                                 headers=auth)
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "storage_unavailable"
    listed = await (await client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)).json()
    assert listed["items"] == []


async def test_storage_dying_mid_upload_is_503_and_nothing_is_kept(own_s3_client, auth, make_course):
    client, server = own_s3_client
    course_id = (await make_course(client=client))["id"]

    async def body():
        for i in range(12):
            if i == 6:  # one part is in S3 by now
                server.stop()
            yield os.urandom(MiB)

    response = await client.post(f"/api/v1/courses/{course_id}/materials?filename=a.bin", data=body(),
                                 headers=auth)
    assert response.status == 503
    listed = await (await client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)).json()
    assert listed["items"] == []


async def test_a_part_content_type_with_control_characters_is_refused(client, auth, s3, bucket, make_course):
    course_id = (await make_course())["id"]
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
            f"Content-Type: text/plain\x00evil\r\n\r\nhello\r\n--{boundary}--\r\n").encode()
    response = await client.post(f"/api/v1/courses/{course_id}/materials", data=body,
                                 headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status in (400, 422), await response.text()  # a header with NUL in it is malformed
    assert [key for key in _objects(s3, bucket) if course_id in key] == []
