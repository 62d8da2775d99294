"""Resumable uploads of course materials over tus 1.0 (tus.io): the core protocol and the
creation, creation-with-upload, termination, expiration and checksum extensions, at
``/api/v1/courses/{course_id}/uploads``. The state lives in PostgreSQL and the bytes in
S3 (app/resumable.py), so any worker on any host goes on with an upload."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid

from aiohttp import web

from .. import courses, metrics, resumable
from ..auth import caller
from ..db import acquire
from ..errors import ApiError, BadRequest, PayloadTooLarge, UnsupportedMediaType
from ..keys import db_pool_key, settings_key, storage_key
from ..openapi import NOT_FOUND, STORAGE, Response, merge_errors, operation
from ..storage import UploadsBusy
from ..uploads import CHUNK_BYTES, clean_content_type
from ..materials import clean_filename
from .common import path_uuid

TAGS = ["materials"]
TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
CHECKSUM_ALGORITHMS = ("sha256", "sha1", "md5")
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
# What every tus answer says (errors included): the protocol version it speaks.
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION}
UPLOADS = {400: ("bad_request",), 404: ("not_found",), 412: ("tus_version_unsupported",),
           413: ("payload_too_large",), 415: ("unsupported_media_type",), 503: ("uploads_busy", "storage_unavailable")}
_TUS_PARAMETER = {"in": "header", "name": "Tus-Resumable", "required": True, "schema": {"type": "string",
                                                                                         "enum": [TUS_VERSION]}}


class TusVersionUnsupported(ApiError):
    status, code = 412, "tus_version_unsupported"


def _check_version(request: web.Request) -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise TusVersionUnsupported(f"Send Tus-Resumable: {TUS_VERSION} (the tus protocol version this server "
                                    "speaks).", headers={"Tus-Version": TUS_VERSION})


def _number(request: web.Request, name: str) -> int:
    value = request.headers.get(name, "")
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise BadRequest(f"{name} must be a whole number of bytes.", details={name: ["Send digits only."]})
    return int(value)


def _metadata(request: web.Request) -> dict[str, str]:
    """Upload-Metadata: comma-separated ``key base64(value)`` pairs (a value may be missing)."""
    pairs = {}
    for item in request.headers.get("Upload-Metadata", "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, encoded = item.partition(" ")
        try:
            pairs[key] = base64.b64decode(encoded.strip(), validate=True).decode("utf-8", "surrogateescape")
        except (binascii.Error, ValueError):
            raise BadRequest("Upload-Metadata values must be base64.", details={"Upload-Metadata": [
                f"The value of {key[:40]!r} is not base64."]}) from None
    return pairs


def _checksum(request: web.Request) -> tuple[str, bytes] | None:
    value = request.headers.get("Upload-Checksum")
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise BadRequest(f"Upload-Checksum: the algorithms taken are {', '.join(CHECKSUM_ALGORITHMS)}.",
                         details={"Upload-Checksum": [f"Unsupported algorithm {algorithm[:20]!r}."]})
    try:
        expected = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        expected = b""
    size = hashlib.new(algorithm).digest_size
    if len(expected) != size:
        raise BadRequest("Upload-Checksum must be the algorithm, a space and the base64 digest.",
                         details={"Upload-Checksum": ["Not a base64 digest of that algorithm."]})
    return algorithm, expected


def _upload_url(course_id: uuid.UUID, upload_id: uuid.UUID) -> str:
    return f"/api/v1/courses/{course_id}/uploads/{upload_id}"


def _material_url(row: dict) -> str:
    return f"/api/v1/courses/{row['course_id']}/materials/{row['material_id']}"


def _state_headers(row: dict, offset: int) -> dict[str, str]:
    return {**TUS_HEADERS, "Upload-Offset": str(offset), "Upload-Expires": resumable.expires_header(row["expires_at"]),
            "Material-Location": _material_url(row)}


@operation("discover_uploads", summary="What the tus endpoint supports (tus discovery)", tags=TAGS, scopes=("prep",),
           errors=NOT_FOUND,
           responses={204: Response("The tus version, extensions, checksum algorithms and largest upload",
                                    headers=("Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size",
                                             "Tus-Checksum-Algorithm"))})
async def options_uploads(request: web.Request) -> web.Response:
    async with acquire(request) as conn:
        await courses.ensure_course(conn, caller(request).tenant_id, path_uuid(request, "course_id", "Course"))
    return web.Response(status=204, headers={
        **TUS_HEADERS, "Tus-Version": TUS_VERSION, "Tus-Extension": EXTENSIONS,
        "Tus-Max-Size": str(request.app[settings_key].max_upload_bytes),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS)})


@operation("create_upload", summary="Begin a resumable upload (tus creation)", tags=TAGS, scopes=("prep",),
           description="tus 1.0 `creation` (and `creation-with-upload`: the first bytes may come with it, as "
                       "`application/offset+octet-stream`). `Upload-Length` is the file's size; `Upload-Metadata` "
                       "may name it (`filename`) and its type (`filetype`), base64. The upload expires "
                       "`RESUMABLE_UPLOAD_TTL_S` after it began (`Upload-Expires`). `Material-Location` is where "
                       "the material will be once the last byte is in.",
           query_parameters=(_TUS_PARAMETER,), errors=merge_errors(NOT_FOUND, UPLOADS, {460: ("checksum_mismatch",)}),
           responses={201: Response("The upload: its URL in Location", location=True,
                                    headers=("Tus-Resumable", "Upload-Offset", "Upload-Expires",
                                             "Material-Location"))})
async def create_upload(request: web.Request) -> web.Response:
    tenant_id, course_id = caller(request).tenant_id, path_uuid(request, "course_id", "Course")
    async with acquire(request) as conn:
        await courses.ensure_course(conn, tenant_id, course_id)  # another tenant's course: 404 whatever else
    _check_version(request)
    settings = request.app[settings_key]
    length = _number(request, "Upload-Length")
    if length > settings.max_upload_bytes:
        raise PayloadTooLarge(f"The file is larger than the {settings.max_upload_bytes} bytes allowed.",
                              headers=TUS_HEADERS)
    with_bytes = request.content_type == OFFSET_OCTET_STREAM
    checksum = _checksum(request) if with_bytes else None
    metadata = _metadata(request)
    async with acquire(request) as conn:
        await courses.ensure_course(conn, tenant_id, course_id)
        row = await resumable.create(
            conn, tenant_id=tenant_id, course_id=course_id, length=length,
            filename=clean_filename(metadata.get("filename") or metadata.get("name")),
            content_type=clean_content_type(metadata.get("filetype") or metadata.get("content_type")),
            part_bytes=settings.s3_part_bytes, ttl_s=settings.resumable_upload_ttl_s)
    offset = 0
    if with_bytes or length == 0:  # (an empty file is complete at once)
        async with acquire(request) as conn:
            held, token = await resumable.hold(conn, tenant_id, course_id, row["id"], settings.resumable_upload_hold_s)
        offset = await _append(request, held, token, checksum)
    return web.Response(status=201, headers={"Location": _upload_url(course_id, row["id"]),
                                             **_state_headers(row, offset)})


@operation("get_upload_offset", summary="Where a resumable upload stands (tus HEAD)", tags=TAGS, scopes=("prep",),
           query_parameters=(_TUS_PARAMETER,), errors=merge_errors(NOT_FOUND, UPLOADS),
           responses={200: Response("The offset to go on from (the length when it is complete)",
                                    headers=("Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Expires",
                                             "Material-Location"))})
async def head_upload(request: web.Request) -> web.Response:
    _check_version(request)
    tenant_id, course_id = caller(request).tenant_id, path_uuid(request, "course_id", "Course")
    async with acquire(request) as conn:
        row = await resumable.find(conn, tenant_id, course_id, path_uuid(request, "upload_id", "Upload"))
    return web.Response(status=200, headers={**_state_headers(row, row["upload_offset"]),
                                             "Upload-Length": str(row["length"]), "Cache-Control": "no-store"})


@operation("append_to_upload", summary="Send bytes of a resumable upload (tus PATCH)", tags=TAGS, scopes=("prep",),
           description="`Upload-Offset` must be where the upload stands (HEAD); the body, "
                       "`application/offset+octet-stream`, goes on from there. With `Upload-Checksum` "
                       "(`sha256 <base64>`; also sha1, md5) the bytes count only if the whole body matches. One "
                       "request at a time per upload. The request that brings the last byte records the material "
                       "(`Material-Location`).",
           query_parameters=(_TUS_PARAMETER,),
           body_content={OFFSET_OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
           errors=merge_errors(NOT_FOUND, UPLOADS, {409: ("upload_offset_mismatch",), 423: ("upload_busy",),
                                                    460: ("checksum_mismatch",)}),
           responses={204: Response("The bytes are stored; the new offset",
                                    headers=("Tus-Resumable", "Upload-Offset", "Upload-Expires",
                                             "Material-Location"))})
async def patch_upload(request: web.Request) -> web.Response:
    _check_version(request)
    if request.content_type != OFFSET_OCTET_STREAM:
        raise UnsupportedMediaType(f"Send the bytes as {OFFSET_OCTET_STREAM}.", headers=TUS_HEADERS)
    offset = _number(request, "Upload-Offset")
    checksum = _checksum(request)
    tenant_id, course_id = caller(request).tenant_id, path_uuid(request, "course_id", "Course")
    upload_id = path_uuid(request, "upload_id", "Upload")
    async with acquire(request) as conn:
        row, token = await resumable.hold(conn, tenant_id, course_id, upload_id,
                                          request.app[settings_key].resumable_upload_hold_s)
    if row["upload_offset"] != offset:
        async with acquire(request) as conn:
            await conn.execute("UPDATE material_uploads SET locked_until = NULL, lock_token = NULL "
                               "WHERE id = $1 AND lock_token = $2", upload_id, token)
        raise resumable.OffsetMismatch(f"The upload stands at {row['upload_offset']} bytes, not {offset}: go on from "
                                       "there.", headers={**TUS_HEADERS, "Upload-Offset": str(row["upload_offset"])})
    offset = await _append(request, row, token, checksum)
    return web.Response(status=204, headers=_state_headers(row, offset))


async def _append(request: web.Request, row: dict, token: uuid.UUID, checksum: tuple[str, bytes] | None) -> int:
    """The request's body onto the held upload; its offset after. Records the material when
    the last byte is in."""
    settings = request.app[settings_key]
    storage = request.app[storage_key]
    appender = resumable.Appender(request.app[db_pool_key], storage, row, token, settings.resumable_upload_hold_s,
                                  settings.s3_parts_in_flight, checksum)
    if row["finished_at"] is not None:
        await appender.let_go()
        return row["length"]
    declared = request.content_length
    if declared is not None and row["upload_offset"] + declared > row["length"]:
        await appender.let_go()
        raise PayloadTooLarge(f"The upload is {row['length']} bytes; these would take it past that.",
                              headers=TUS_HEADERS)
    holding = asyncio.ensure_future(appender.keep_hold())
    try:
        async with storage.upload_slot(settings.upload_queue_wait_s):
            try:
                async for chunk in request.content.iter_chunked(CHUNK_BYTES):
                    if appender.offset + len(chunk) > row["length"]:
                        raise PayloadTooLarge(f"The upload is {row['length']} bytes; these take it past that.",
                                              headers=TUS_HEADERS)
                    metrics.upload_bytes.inc(len(chunk))
                    await appender.write(chunk)
                await appender.end()
            except BaseException:
                await asyncio.shield(appender.stop())  # keeps what arrived (unless a checksum failed it)
                raise
            if appender.offset == row["length"]:
                async with acquire(request) as conn:
                    await appender.finish(conn)
    except UploadsBusy:
        await appender.let_go()  # never began: the upload is free for the retry
        raise
    finally:
        holding.cancel()
    return appender.offset


@operation("delete_upload", summary="Give up a resumable upload (tus termination)", tags=TAGS, scopes=("prep",),
           description="Aborts its stored parts at once. A finished upload's material stays.",
           query_parameters=(_TUS_PARAMETER,), errors=merge_errors(NOT_FOUND, UPLOADS, STORAGE,
                                                                   {423: ("upload_busy",)}),
           responses={204: Response("Terminated", headers=("Tus-Resumable",))})
async def delete_upload(request: web.Request) -> web.Response:
    _check_version(request)
    tenant_id, course_id = caller(request).tenant_id, path_uuid(request, "course_id", "Course")
    async with acquire(request) as conn:
        await resumable.terminate(conn, request.app[storage_key], tenant_id, course_id,
                                  path_uuid(request, "upload_id", "Upload"))
    return web.Response(status=204, headers=TUS_HEADERS)


async def tus_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: a tus endpoint's every answer, errors included, says its version."""
    if request.match_info.route.name in ROUTE_NAMES:
        response.headers.setdefault("Tus-Resumable", TUS_VERSION)


ROUTE_NAMES = ("tus_uploads", "tus_upload")
