"""Shutting the app down in the middle of an upload leaves nothing behind in S3 or the database."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest

from tests.support.courses import create_course
from tests.support.gunicorn import Gunicorn

pytestmark = pytest.mark.gunicorn
MiB = 1 << 20


async def test_shutdown_mid_upload_aborts_it(app_env, factory, db, s3, bucket):
    _, headers = await factory.tenant_with_key()
    # Uploads get 2 s to finish once shutdown starts; gunicorn's SIGKILL comes at 8 s.
    env = {**app_env, "S3_PART_BYTES": str(5 * MiB), "UPLOAD_SHUTDOWN_GRACE_S": "2"}
    with Gunicorn(env, workers=1, extra_args=("--graceful-timeout", "8")) as server:
        async with aiohttp.ClientSession() as session:
            course_id = (await create_course(session, server.url, headers, "Shutdown"))["id"]
            sent = asyncio.Event()

            async def body():
                for i in range(60):  # slow (30 s): still running when the grace period ends
                    if i == 6:
                        sent.set()  # more than one part has reached S3
                    yield os.urandom(MiB)
                    await asyncio.sleep(0.05 if i < 6 else 0.5)

            upload = asyncio.ensure_future(session.post(
                f"{server.url}/api/v1/courses/{course_id}/materials?filename=big.bin", data=body(),
                headers=headers))
            await asyncio.wait_for(sent.wait(), 30)
            await asyncio.sleep(0.5)
            assert [u for u in s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                    if course_id in u["Key"]], "the upload should be in progress"
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 40)
            try:
                response = await asyncio.wait_for(upload, 10)
                assert response.status >= 400
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # the connection went away with the server
        log = "\n".join(server.log_lines())
    assert not [u for u in s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                if course_id in u["Key"]], log
    objects = s3.client().list_objects_v2(Bucket=bucket, Prefix="tenants/").get("Contents", [])
    assert not [o for o in objects if course_id in o["Key"]]
    assert await db.fetchval("SELECT count(*) FROM materials WHERE course_id = $1", course_id) == 0
    assert "unfinished upload(s); discarding them" in log
    assert "Worker exiting" in log  # a clean exit, not gunicorn's SIGKILL


async def test_upload_that_finishes_within_the_grace_period_is_kept(app_env, factory, db):
    _, headers = await factory.tenant_with_key()
    env = {**app_env, "S3_PART_BYTES": str(5 * MiB), "UPLOAD_SHUTDOWN_GRACE_S": "5"}
    with Gunicorn(env, workers=1, extra_args=("--graceful-timeout", "10")) as server:
        async with aiohttp.ClientSession() as session:
            course_id = (await create_course(session, server.url, headers, "Grace"))["id"]
            halfway, stopping = asyncio.Event(), asyncio.Event()

            async def body():
                for i in range(8):
                    if i == 4:
                        halfway.set()
                        await stopping.wait()  # the rest arrives after shutdown began
                        await asyncio.sleep(0.3)
                    yield os.urandom(MiB)

            upload = asyncio.ensure_future(session.post(
                f"{server.url}/api/v1/courses/{course_id}/materials?filename=ok.bin", data=body(),
                headers=headers))
            await asyncio.wait_for(halfway.wait(), 30)
            server.proc.send_signal(signal.SIGTERM)
            stopping.set()
            response = await asyncio.wait_for(upload, 30)
            assert response.status == 201, await response.text()
            assert (await response.json())["size_bytes"] == 8 * MiB
            await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 40)
    assert await db.fetchval("SELECT count(*) FROM materials WHERE course_id = $1", course_id) == 1
