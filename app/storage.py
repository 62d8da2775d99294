"""S3-compatible object storage (boto3), kept off the event loop.

boto3 is blocking, so every call runs in a thread: transfers in a pool of
their own (a busy upload never delays a health check), the rest in the loop's
default pool. The client is created once per worker (it is thread-safe) with
short timeouts: a dead storage endpoint gives a fast 503, never a hung request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable

import boto3
import botocore.exceptions
from aiohttp import web
from botocore.config import Config

from . import metrics
from .config import Settings
from .errors import ServiceUnavailable
from .keys import db_pool_key, settings_key, storage_key

log = logging.getLogger("app.storage")

HEALTH_TIMEOUT_S = 3.0


class StorageUnavailable(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("The file storage is unavailable; try again shortly.", code="storage_unavailable")


UPLOADS_BUSY_RETRY_AFTER_S = 10
_RESTARTING = "The server is restarting; try again shortly."


class UploadsBusy(ServiceUnavailable):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="uploads_busy", headers={"Retry-After": str(UPLOADS_BUSY_RETRY_AFTER_S)})


_STORAGE_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


# The store's answers meaning "no such object" (a HEAD's error has only the status).
_NO_SUCH_OBJECT = ("NoSuchKey", "404")


def _error_code(exc: BaseException | None) -> str | None:
    """The S3 error code of a storage failure (``NoSuchKey``...), if the store answered one."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


class ObjectMissing(Exception):
    """The store answered, and the object is not there (deleted behind the app's back,
    or a database restored to a time when it still existed)."""
TRANSFER_THREADS = 16
# Send and check the x-amz-checksum-* headers only where an operation requires them.
# botocore's default ("when_supported") adds a CRC32 header to every put_object and
# upload_part, which Backblaze B2 lists as unsupported in its S3 API. Integrity does not rest on
# them: over HTTPS the transport protects the bytes, over plain HTTP SigV4 signs every
# payload's SHA-256, and the app records its own SHA-256 of the whole file.
CHECKSUM_POLICY = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}


class Storage:
    def __init__(self, bucket: str, endpoint_url: str | None, *, connect_timeout: float = 3.0,
                 read_timeout: float = 30.0, max_attempts: int = 3, uploads_at_once: int = 8) -> None:
        self.bucket = bucket
        self._transfers = ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="s3-transfer")
        self.active: set[ObjectUpload] = set()  # unfinished uploads, discarded at shutdown
        self._upload_slots = asyncio.Semaphore(uploads_at_once)
        # Parts handed to the transfer pool, across this worker's uploads: more would
        # only wait in its queue, each holding a part in memory.
        self.part_slots = asyncio.Semaphore(TRANSFER_THREADS)
        self._closing = asyncio.Event()  # set at shutdown: uploads waiting for a slot are refused
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                          retries={"max_attempts": max_attempts, "mode": "standard"},
                          max_pool_connections=32, **CHECKSUM_POLICY),
        )
        # Health checks get their own client with no retries and tight timeouts.
        self._probe = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=1.0, read_timeout=2.0, retries={"max_attempts": 1}, **CHECKSUM_POLICY),
        )

    async def _run(self, func, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(None, lambda: func(*args, **kwargs))

    async def call(self, method: str, **params):
        """One S3 API call in the transfer pool; any storage failure becomes a 503."""
        func = functools.partial(getattr(self._client, method), Bucket=self.bucket, **params)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._transfers, func)
        except _STORAGE_ERRORS as exc:
            log.warning("storage %s failed: %s", method, exc)
            metrics.s3_errors.labels(method).inc()
            raise StorageUnavailable() from exc

    async def read_head(self, key: str, max_bytes: int) -> bytes:
        """The first ``max_bytes`` of an object: one ranged GET, read in the transfer pool."""
        def fetch() -> bytes:
            reply = self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{max_bytes - 1}")
            with reply["Body"] as body:
                return body.read(max_bytes)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._transfers, fetch)
        except _STORAGE_ERRORS as exc:
            if _error_code(exc) in _NO_SUCH_OBJECT:
                raise ObjectMissing(key) from exc
            log.warning("storage get_object failed: %s", exc)
            metrics.s3_errors.labels("get_object").inc()
            raise StorageUnavailable() from exc

    @property
    def upload_slots_all_taken(self) -> bool:
        """Whether an upload arriving now would wait for a slot."""
        return self._upload_slots.locked()

    @contextlib.asynccontextmanager
    async def upload_slot(self, wait_s: float) -> AsyncIterator[None]:
        """One of the worker's upload slots, for the whole of one upload.

        Each upload holds a part in memory while it fills, so the slots (with the
        worker-wide cap on parts in flight) bound the worker's memory however many
        uploads arrive at once. An upload without a slot waits for one, its body
        unread, for at most ``wait_s`` seconds; then, or once the worker shuts down,
        it is a 503 with Retry-After."""
        metrics.uploads_waiting.inc()
        try:
            await self._take_upload_slot(wait_s)
        finally:
            metrics.uploads_waiting.dec()
        metrics.uploads_in_flight.inc()
        try:
            yield
        finally:
            metrics.uploads_in_flight.dec()
            self._upload_slots.release()

    async def _take_upload_slot(self, wait_s: float) -> None:
        if self._closing.is_set():
            raise UploadsBusy(_RESTARTING)
        if not self._upload_slots.locked():
            await self._upload_slots.acquire()  # a free slot: taken at once
            return
        slot = asyncio.ensure_future(self._upload_slots.acquire())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait((slot, closing), timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the request cancelled while it waited
            self._give_back(slot)
            raise
        finally:
            closing.cancel()
        if slot.done() and not self._closing.is_set():
            return
        self._give_back(slot)
        if self._closing.is_set():
            raise UploadsBusy(_RESTARTING)
        log.warning("upload refused: every upload slot stayed busy for %s s", wait_s)
        raise UploadsBusy("The server is busy with other uploads; try again shortly.")

    def _give_back(self, slot: asyncio.Future) -> None:
        """A slot being waited for that is not wanted any more: released if it came."""
        if not slot.done():
            slot.cancel()  # the semaphore hands on a slot granted meanwhile
        elif not slot.cancelled() and slot.exception() is None:
            self._upload_slots.release()

    def upload(self, key: str, content_type: str, *, part_bytes: int, parts_in_flight: int) -> "ObjectUpload":
        upload = ObjectUpload(self, key, content_type, part_bytes, parts_in_flight)
        self.active.add(upload)
        return upload

    async def finish_or_discard_active(self, grace_s: float) -> None:
        """At shutdown: let uploads in progress finish for ``grace_s`` seconds, then
        stop the rest and undo them while the worker is still alive to do it. Uploads
        still waiting for a slot are refused."""
        self._closing.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.active and loop.time() < deadline:
            await asyncio.sleep(0.1)
        unfinished = list(self.active)
        if not unfinished:
            return
        log.warning("shutting down with %d unfinished upload(s); discarding them", len(unfinished))
        for upload in unfinished:
            if upload.request_task is not None and not upload.request_task.done():
                upload.request_task.cancel()
        await asyncio.gather(*(u.discard() for u in unfinished), return_exceptions=True)

    def download_url(self, key: str, filename: str, ttl_s: int) -> str:
        """A pre-signed GET that saves under the original name (computed locally, no request)."""
        disposition = f"attachment; filename*=UTF-8''{urllib.parse.quote(filename)}"
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key, "ResponseContentDisposition": disposition},
            ExpiresIn=ttl_s)

    async def delete(self, key: str) -> None:
        await self.call("delete_object", Key=key)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` and abort its unfinished multipart uploads."""
        deleted = 0
        async for objects in self.object_pages(prefix):
            keys = [{"Key": item["Key"]} for item in objects]
            if keys:
                await self.call("delete_objects", Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        for upload in [u async for u in self._multipart_uploads(prefix)]:
            await self.call("abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])
        return deleted

    async def abort_stale_uploads(self, prefix: str, older_than_s: float, keep: set[str] = frozenset()) -> int:
        """Abort multipart uploads under ``prefix`` begun more than ``older_than_s`` ago:
        what a worker killed mid-upload left behind (but not those of the keys in ``keep``)."""
        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than_s)
        stale = [u async for u in self._multipart_uploads(prefix) if u["Initiated"] <= cutoff and u["Key"] not in keep]
        for upload in stale:
            await self.call("abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"])
        return len(stale)

    async def object_pages(self, prefix: str) -> AsyncIterator[list[dict]]:
        """The objects under ``prefix`` (S3's listing: Key, LastModified, Size, ...), page by page."""
        token: dict = {}
        while True:
            page = await self.call("list_objects_v2", Prefix=prefix, **token)
            yield page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def _multipart_uploads(self, prefix: str) -> AsyncIterator[dict]:
        """Every unfinished multipart upload under ``prefix``, page by page."""
        markers: dict = {}
        while True:
            page = await self.call("list_multipart_uploads", Prefix=prefix, **markers)
            for upload in page.get("Uploads", []):
                yield upload
            if not page.get("IsTruncated"):
                return
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    def close(self) -> None:
        self._transfers.shutdown(wait=False, cancel_futures=True)

    async def is_healthy(self) -> bool:
        """A cheap HEAD of the bucket, bounded in time."""
        try:
            await asyncio.wait_for(self._run(self._probe.head_bucket, Bucket=self.bucket), HEALTH_TIMEOUT_S)
            return True
        except Exception as exc:  # any failure means "not usable now"
            log.warning("storage health check failed: %s", exc.__class__.__name__)
            return False


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings: Settings = app[settings_key]
    app[storage_key] = Storage(settings.s3_bucket, settings.s3_endpoint_url,
                               uploads_at_once=settings.uploads_per_worker)
    sweeper = asyncio.create_task(_sweep_orphans(app[storage_key], settings, app[db_pool_key]))
    yield
    sweeper.cancel()
    await asyncio.gather(sweeper, return_exceptions=True)
    await app[storage_key].finish_or_discard_active(0)
    app[storage_key].close()


async def stop_uploads_on_shutdown(app: web.Application) -> None:
    """on_shutdown: runs before aiohttp waits for (and then cancels) requests."""
    await app[storage_key].finish_or_discard_active(app[settings_key].upload_shutdown_grace_s)


UPLOADS_PREFIX = "tenants/"


async def _sweep_orphans(storage: Storage, settings: Settings, pool) -> None:
    """At start-up and then periodically, abort the multipart uploads of dead workers (not
    those of resumable uploads still going), and the resumable uploads past their expiry.
    Every worker sweeps; aborting twice is harmless."""
    from . import resumable  # (it builds on this module)

    while True:
        try:
            expired = await resumable.sweep_expired(pool, storage)
            if expired:
                log.info("removed %d expired resumable upload(s)", expired)
            aborted = await storage.abort_stale_uploads(UPLOADS_PREFIX, settings.upload_orphan_age_s,
                                                        keep=await resumable.live_upload_keys(pool))
            if aborted:
                log.warning("aborted %d orphaned multipart upload(s)", aborted)
        except StorageUnavailable:
            pass  # already logged; the next sweep tries again
        except Exception:
            log.exception("orphan upload sweep failed")
        await asyncio.sleep(settings.upload_sweep_interval_s)


class ObjectUpload:
    """One object written as its bytes arrive, with bounded memory.

    Until a whole part has arrived nothing is sent; a file smaller than one part
    becomes a single ``put_object``. Larger files become an S3 multipart upload
    whose parts upload in the transfer pool, at most ``parts_in_flight`` at a
    time, and at most ``TRANSFER_THREADS`` across the worker's uploads: ``write``
    waits when they are all busy, so the request body is read no faster than S3
    takes it. Memory: at most (parts_in_flight + 1) parts per upload, and about
    (TRANSFER_THREADS + uploads at once) parts per worker.
    ``discard`` undoes everything (an aborted multipart upload, a deleted object).
    """

    def __init__(self, storage: Storage, key: str, content_type: str, part_bytes: int, parts_in_flight: int):
        self.storage, self.key, self.content_type = storage, key, content_type
        self.part_bytes = part_bytes
        self.size = 0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._slots = asyncio.Semaphore(parts_in_flight)
        self._tasks: set[asyncio.Task] = set()
        self._etags: dict[int, str] = {}
        self._failure: BaseException | None = None
        self._upload_id: str | None = None
        self._parts_sent = 0
        self._completed = False
        self._discarding: asyncio.Future | None = None
        # The request streaming into this upload: a shutdown stops it when its grace ends.
        self.request_task = asyncio.current_task()
        self.part_stored: Callable[[], None] | None = None  # called as each part is in S3

    def resume(self, upload_id: str | None, etags: list[str], tail: bytes, size: int) -> None:
        """Go on with a multipart upload begun earlier (a resumable upload): its parts so far
        (ETags in order), and the bytes after them, ``size`` in all."""
        self._upload_id = upload_id
        self._etags = {number: etag for number, etag in enumerate(etags, start=1)}
        self._parts_sent = len(etags)
        self._chunks, self._buffered = ([tail], len(tail)) if tail else ([], 0)
        self.size = size

    @property
    def upload_id(self) -> str | None:
        return self._upload_id

    def parts_done(self) -> list[str]:
        """The ETags of the parts stored so far without a gap, in order."""
        done = []
        while len(done) + 1 in self._etags:
            done.append(self._etags[len(done) + 1])
        return done

    def pending(self) -> bytes:
        """The bytes written after the last part sent (fewer than a part)."""
        return b"".join(self._chunks)

    async def settle(self) -> None:
        """Wait for the parts in flight; raise the first failure of any."""
        await self._drain()
        self._raise_failure()

    async def write(self, chunk: bytes) -> None:
        self._raise_failure()
        self.size += len(chunk)
        while chunk:
            room = self.part_bytes - self._buffered
            piece, chunk = chunk[:room], chunk[room:]
            self._chunks.append(piece)
            self._buffered += len(piece)
            if self._buffered == self.part_bytes:
                await self._send(self._take())

    def _take(self) -> bytes:
        """The buffered bytes as one part (a single copy)."""
        part = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return part

    async def complete(self) -> None:
        if self._upload_id is None:
            await self.storage.call("put_object", Key=self.key, Body=self._take(), ContentType=self.content_type)
        else:
            if self._buffered:
                await self._send(self._take())
            await self._drain()
            self._raise_failure()
            parts = [{"PartNumber": n, "ETag": self._etags[n]} for n in sorted(self._etags)]
            await self.storage.call("complete_multipart_upload", Key=self.key, UploadId=self._upload_id,
                                    MultipartUpload={"Parts": parts})
        self._completed = True

    def finished(self) -> None:
        """The object is complete and recorded: nothing to undo any more."""
        self.storage.active.discard(self)

    def discard(self) -> asyncio.Future:
        """Leave nothing behind: wait for parts in flight, then abort or delete.
        Idempotent: the request's own clean-up and the shutdown's share one run."""
        if self._discarding is None:
            self._discarding = asyncio.ensure_future(self._discard())
        return self._discarding

    async def _discard(self) -> None:
        self._chunks, self._buffered = [], 0
        await self._drain()
        try:
            if self._completed:
                await self.storage.call("delete_object", Key=self.key)
            elif self._upload_id is not None:
                await self.storage.call("abort_multipart_upload", Key=self.key, UploadId=self._upload_id)
        except StorageUnavailable as exc:
            if _error_code(exc.__cause__) in ("NoSuchUpload", *_NO_SUCH_OBJECT):
                log.info("upload of %s was gone already (its course deleted meanwhile)", self.key)
            else:
                log.error("could not clean up upload of %s; the orphan sweep will", self.key)
        finally:
            self.storage.active.discard(self)

    async def _send(self, part: bytes) -> None:
        if self._upload_id is None:
            created = await self.storage.call("create_multipart_upload", Key=self.key, ContentType=self.content_type)
            self._upload_id = created["UploadId"]
        await self._slots.acquire()  # back-pressure: no more than parts_in_flight parts at once
        try:
            # ... and, across the worker's uploads, no more parts than threads to send them.
            await self.storage.part_slots.acquire()
        except BaseException:
            self._slots.release()
            raise
        if self._failure is not None:
            self._release_slots()
            raise self._failure
        self._parts_sent += 1
        number = self._parts_sent
        task = asyncio.ensure_future(self._upload_part(number, part))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload_part(self, number: int, part: bytes) -> None:
        try:
            result = await self.storage.call("upload_part", Key=self.key, UploadId=self._upload_id,
                                             PartNumber=number, Body=part)
            self._etags[number] = result["ETag"]
            if self.part_stored is not None:
                self.part_stored()
        except BaseException as exc:
            self._failure = self._failure or exc
        finally:
            self._release_slots()

    def _release_slots(self) -> None:
        self.storage.part_slots.release()
        self._slots.release()

    async def _drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
