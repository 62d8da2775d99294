"""Resumable uploads of materials (tus 1.0): the state any worker goes on from, in
PostgreSQL (migration 0014), and one request's bytes onto it.

An upload's bytes go into an S3 multipart upload of fixed-size parts as they arrive
(``ObjectUpload``, as a plain upload's do). What is fewer than a part is kept in the
upload's row (``tail``) when the request ends, so the next request, on any worker and
any host, goes on from exactly there; the SHA-256 of everything so far goes on from
the hasher's saved state (``resumablesha256``: hashlib's cannot be saved). While a
request streams, every part stored moves the row on (a checkpoint: offset, parts and
the hash at that part's end), so a worker killed mid-request costs the client at most
the part in hand.

A request holds the upload (``locked_until``, renewed while it streams) so that two
never interleave; a killed worker's hold lapses after ``RESUMABLE_UPLOAD_HOLD_S``. When the last byte is
in, the object is completed and the material recorded exactly as a plain upload
records it, in the transaction that removes the upload. An upload not finished by its
expiry is aborted in S3 and removed by ``sweep_expired``; a deleted course takes its
uploads with it (its multipart uploads are aborted with its files).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import resumablesha256

from . import materials
from .errors import ApiError, NotFound
from .storage import ObjectUpload, Storage, StorageUnavailable

log = logging.getLogger("app.uploads")

DB_TIMEOUT_S = 5.0


class UploadNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Upload not found (finished, terminated, expired, or never made here).")


class UploadBusy(ApiError):
    status, code = 423, "upload_busy"


class OffsetMismatch(ApiError):
    status, code = 409, "upload_offset_mismatch"


class ChecksumMismatch(ApiError):
    status, code = 460, "checksum_mismatch"


class LostHold(ApiError):
    status, code = 409, "upload_busy"


def saved_hash(hasher: Any) -> bytes:
    """The hasher's state (112 bytes), as ``resumablesha256`` gives it to pickle."""
    return hasher.__reduce_ex__(2)[2]


def hasher_from(state: bytes | None) -> Any:
    hasher = resumablesha256.sha256()
    if state is not None:
        hasher.__setstate__(bytes(state))
    return hasher


_COLUMNS = ("id, tenant_id, course_id, material_id, object_key, filename, content_type, length, part_bytes, "
            "s3_upload_id, parts, tail, upload_offset, sha256_state, created_at, expires_at, finished_at")


async def create(conn: asyncpg.Connection, *, tenant_id: uuid.UUID, course_id: uuid.UUID, length: int,
                 filename: str, content_type: str, part_bytes: int, ttl_s: int) -> dict[str, Any]:
    upload_id, material_id = uuid.uuid4(), uuid.uuid4()
    row = await conn.fetchrow(
        f"""INSERT INTO material_uploads (id, tenant_id, course_id, material_id, object_key, filename, content_type,
                                          length, part_bytes, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10))
            RETURNING {_COLUMNS}""",
        upload_id, tenant_id, course_id, material_id, materials.object_key(tenant_id, course_id, material_id),
        filename, content_type, length, part_bytes, float(ttl_s))
    return dict(row)


async def find(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID,
               upload_id: uuid.UUID) -> dict[str, Any]:
    """An upload not expired, or ``UploadNotFound``."""
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM material_uploads
            WHERE id = $1 AND tenant_id = $2 AND course_id = $3 AND expires_at > now()""",
        upload_id, tenant_id, course_id)
    if row is None:
        raise UploadNotFound()
    return dict(row)


async def hold(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID, upload_id: uuid.UUID,
               hold_s: float) -> tuple[dict[str, Any], uuid.UUID]:
    """Take the upload for one request: (its row, the hold's token); ``UploadBusy`` while
    another request has it."""
    token = uuid.uuid4()
    row = await conn.fetchrow(
        f"""UPDATE material_uploads SET locked_until = now() + make_interval(secs => $4), lock_token = $5
            WHERE id = $1 AND tenant_id = $2 AND course_id = $3 AND expires_at > now()
              AND (locked_until IS NULL OR locked_until < now())
            RETURNING {_COLUMNS}""",
        upload_id, tenant_id, course_id, float(hold_s), token)
    if row is None:
        await find(conn, tenant_id, course_id, upload_id)  # UploadNotFound, or else:
        raise UploadBusy("Another request is sending this upload's bytes; ask for its offset (HEAD) and go on "
                         "when it has ended.", headers={"Retry-After": "5"})
    return dict(row), token


_SAVE_SQL = """UPDATE material_uploads
               SET s3_upload_id = $3, parts = $4, tail = $5, upload_offset = $6, sha256_state = $7,
                   locked_until = CASE WHEN $8 THEN NULL ELSE now() + make_interval(secs => $9) END,
                   lock_token = CASE WHEN $8 THEN NULL ELSE lock_token END
               WHERE id = $1 AND lock_token = $2
               RETURNING true"""
_RENEW_SQL = """UPDATE material_uploads SET locked_until = now() + make_interval(secs => $3)
                WHERE id = $1 AND lock_token = $2 RETURNING true"""
_LET_GO_SQL = "UPDATE material_uploads SET locked_until = NULL, lock_token = NULL WHERE id = $1 AND lock_token = $2"


@dataclass
class Checkpoint:
    """Where an upload can go on from: all of it in S3 parts and the row."""

    s3_upload_id: str | None
    parts: list[str]
    tail: bytes
    offset: int
    sha256_state: bytes


class Appender:
    """One request's bytes onto a held upload: whole parts into S3 as they fill, the row
    moved on with each (unless the request carries a checksum: then nothing counts
    before the whole request has arrived and matched it)."""

    def __init__(self, pool: asyncpg.Pool, storage: Storage, row: dict[str, Any], token: uuid.UUID, hold_s: float,
                 parts_in_flight: int, checksum: tuple[str, bytes] | None) -> None:
        self._pool, self.row, self._token, self._hold_s = pool, row, token, float(hold_s)
        self._upload = ObjectUpload(storage, row["object_key"], row["content_type"], row["part_bytes"],
                                    parts_in_flight)
        self._upload.resume(row["s3_upload_id"], list(row["parts"]), bytes(row["tail"]), row["upload_offset"])
        self._hasher = hasher_from(row["sha256_state"])
        self._part_bytes = row["part_bytes"]
        self._hash_at_part: dict[int, bytes] = {}  # part number -> the hash state at its end
        self._saved_parts = len(row["parts"])
        self._checksum = checksum
        self._request_digest = hashlib.new(checksum[0]) if checksum else None
        self._lost = False
        self._saving = asyncio.Lock()  # one save at a time, in order
        self._checkpoints: set[asyncio.Task] = set()
        if checksum is None:  # (with one, nothing counts before the whole request has matched it)
            self._upload.part_stored = self._part_stored

    @property
    def offset(self) -> int:
        return self._upload.size

    async def write(self, chunk: bytes) -> None:
        if self._lost:
            raise LostHold("This request lost its hold on the upload (it stalled); ask for the offset (HEAD) and "
                           "go on from there.")
        if self._request_digest is not None:
            self._request_digest.update(chunk)
        self._hash(chunk)
        await self._upload.write(chunk)

    def _part_stored(self) -> None:
        """A part is in S3: move the row on to the parts stored without a gap (in the background)."""
        task = asyncio.ensure_future(self._checkpoint())
        self._checkpoints.add(task)
        task.add_done_callback(self._checkpoints.discard)

    async def _checkpoint(self) -> None:
        try:
            async with self._saving:
                if len(self._upload.parts_done()) > self._saved_parts:
                    await self._save(self._at_last_part(), release=False)
        except LostHold:
            pass  # the request finds out at its next write
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            log.warning("could not save an upload's progress; the next part tries again",
                        extra={"upload_id": str(self.row["id"])})

    def _hash(self, chunk: bytes) -> None:
        """Hash ``chunk``, noting the state at each part boundary it crosses."""
        position = self._upload.size
        while chunk:
            boundary = (position // self._part_bytes + 1) * self._part_bytes
            piece, chunk = chunk[:boundary - position], chunk[boundary - position:]
            self._hasher.update(piece)
            position += len(piece)
            if position == boundary:
                self._hash_at_part[boundary // self._part_bytes] = saved_hash(self._hasher)

    def _at_last_part(self) -> Checkpoint:
        parts = self._upload.parts_done()
        return Checkpoint(self._upload.upload_id, parts, b"", len(parts) * self._part_bytes,
                          self._hash_at_part[len(parts)])

    def _now(self) -> Checkpoint:
        return Checkpoint(self._upload.upload_id, self._upload.parts_done(), self._upload.pending(),
                          self._upload.size, saved_hash(self._hasher))

    async def _save(self, point: Checkpoint, *, release: bool) -> None:
        """Move the row to ``point`` (the caller holds ``_saving``), letting go of the upload
        with ``release``."""
        async with self._pool.acquire(timeout=DB_TIMEOUT_S) as conn:
            saved = await conn.fetchval(_SAVE_SQL, self.row["id"], self._token, point.s3_upload_id, point.parts,
                                        point.tail, point.offset, point.sha256_state, release, self._hold_s,
                                        timeout=DB_TIMEOUT_S)
        if not saved:
            self._lost = True
            raise LostHold("This request lost its hold on the upload (it stalled); ask for the offset (HEAD) and "
                           "go on from there.")
        self._saved_parts = len(point.parts)
        for number in [n for n in self._hash_at_part if n <= self._saved_parts]:
            del self._hash_at_part[number]

    async def end(self) -> None:
        """The request's bytes are all in: check its checksum, store the parts in flight and
        save the upload where it now stands (letting go of it unless it is complete: then
        ``finish`` does)."""
        if self._checksum is not None and not hmac.compare_digest(self._request_digest.digest(), self._checksum[1]):
            await self.let_go()
            raise ChecksumMismatch(f"The request's {self._checksum[0]} checksum does not match its bytes; they "
                                   "were not kept. Send them again.")
        await self._upload.settle()
        async with self._saving:
            await self._save(self._now(), release=self.offset < self.row["length"])

    async def stop(self) -> None:
        """The request broke off (client gone, worker stopping, a failure): keep what arrived,
        unless a checksum was promised for the whole of it."""
        if self._checksum is not None or self._lost or self._upload.size == self.row["upload_offset"]:
            await self.let_go()
            return
        async with self._saving:
            try:
                await self._upload.settle()
                point = self._now()
            except (StorageUnavailable, OSError):
                stored = len(self._upload.parts_done())
                point = self._at_last_part() if stored > self._saved_parts else None
            if point is None:
                await self.let_go()
            else:
                await self._save(point, release=True)

    async def let_go(self) -> None:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            async with self._pool.acquire(timeout=DB_TIMEOUT_S) as conn:
                await conn.execute(_LET_GO_SQL, self.row["id"], self._token, timeout=DB_TIMEOUT_S)

    async def keep_hold(self) -> None:
        """Renew the hold every third of its length while the request streams."""
        while True:
            await asyncio.sleep(self._hold_s / 3)
            try:
                async with self._pool.acquire(timeout=DB_TIMEOUT_S) as conn:
                    if not await conn.fetchval(_RENEW_SQL, self.row["id"], self._token, self._hold_s,
                                               timeout=DB_TIMEOUT_S):
                        self._lost = True
                        return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                log.warning("could not renew an upload's hold", extra={"upload_id": str(self.row["id"])})

    async def finish(self, conn: asyncpg.Connection) -> dict[str, Any]:
        """Every byte is in (and saved, the upload still held): complete the object and record
        the material in one transaction with the upload's end; the material as a plain upload
        records it. The finished upload stays until it expires, so that its offset says so."""
        row = self.row
        try:
            await self._upload.complete()
        except BaseException:
            await asyncio.shield(self.let_go())  # the next request with the last offset tries again
            raise
        try:
            async with conn.transaction():
                material = await materials.insert_material(
                    conn, material_id=row["material_id"], tenant_id=row["tenant_id"], course_id=row["course_id"],
                    filename=row["filename"], content_type=row["content_type"], size_bytes=self._upload.size,
                    sha256=self._hasher.hexdigest(), key=row["object_key"])
                await conn.execute(
                    """UPDATE material_uploads SET finished_at = now(), s3_upload_id = NULL, parts = '{}', tail = '',
                                                   sha256_state = NULL, locked_until = NULL, lock_token = NULL
                       WHERE id = $1""", row["id"])
        except BaseException:
            await asyncio.shield(self._upload.discard())
            raise
        log.info("resumable upload %s finished: %s (%d bytes)", row["id"], row["object_key"], self._upload.size)
        return material


async def terminate(conn: asyncpg.Connection, storage: Storage, tenant_id: uuid.UUID, course_id: uuid.UUID,
                    upload_id: uuid.UUID) -> None:
    """Remove an upload and abort its S3 multipart upload (``UploadBusy`` while a request sends to it)."""
    row, _ = await hold(conn, tenant_id, course_id, upload_id, 60)
    await _abort(storage, row)
    await conn.execute("DELETE FROM material_uploads WHERE id = $1", upload_id)


async def _abort(storage: Storage, row: dict[str, Any]) -> None:
    if row["s3_upload_id"] is None:
        return
    try:
        await storage.call("abort_multipart_upload", Key=row["object_key"], UploadId=row["s3_upload_id"])
    except StorageUnavailable as exc:
        if "NoSuchUpload" not in repr(exc.__cause__):
            raise


async def sweep_expired(pool: asyncpg.Pool, storage: Storage) -> int:
    """Abort and remove the uploads past their expiry (none held by a live request)."""
    removed = 0
    async with pool.acquire(timeout=DB_TIMEOUT_S) as conn:
        rows = await conn.fetch(
            f"""SELECT {_COLUMNS} FROM material_uploads
                WHERE expires_at <= now() AND (locked_until IS NULL OR locked_until < now())
                ORDER BY expires_at LIMIT 100""")
        for row in rows:
            await _abort(storage, dict(row))
            removed += int((await conn.execute("DELETE FROM material_uploads WHERE id = $1 AND expires_at <= now()",
                                               row["id"])).split()[-1])
    return removed


async def live_upload_keys(pool: asyncpg.Pool) -> set[str]:
    """The object keys of uploads still going (the orphan sweep leaves their multipart uploads)."""
    async with pool.acquire(timeout=DB_TIMEOUT_S) as conn:
        return {r["object_key"] for r in await conn.fetch(
            "SELECT object_key FROM material_uploads WHERE finished_at IS NULL")}


def expires_header(expires_at: datetime.datetime) -> str:
    """Upload-Expires: an RFC 9110 date."""
    return expires_at.astimezone(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")
