"""Course materials: streamed uploads to S3, listing, pre-signed downloads, deletion."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid

from aiohttp import web

from .. import courses, idempotency, materials, metrics
from ..auth import caller
from ..config import Settings
from ..db import acquire
from ..errors import ApiError, BadRequest, PayloadTooLarge
from ..jsonutil import json_response
from ..keys import settings_key, storage_key
from ..openapi import NOT_FOUND, STORAGE, UPLOAD, Response, idempotent_upload, merge_errors, operation
from ..schemas import MaterialDetailSchema, MaterialListSchema, MaterialSchema
from ..storage import Storage, StorageUnavailable
from ..uploads import declared_file_bytes, incoming_file
from .common import path_uuid

log = logging.getLogger("app.materials")
TAGS = ["materials"]
# An upload is the file itself: a multipart form with one `file` part, or the raw bytes.
_FILE = {"type": "string", "format": "binary"}
# (A raw body may carry the file's own Content-Type; the document says application/octet-stream,
# which client generators take, and the operation's description says the rest.)
_UPLOAD_CONTENT = {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {
        **_FILE, "description": "the file; its part's filename names the material"}}, "required": ["file"]},
        "encoding": {"file": {"contentType": "*/*"}}},
    "application/octet-stream": {"schema": {**_FILE, "description": "the raw file, named by `?filename=`"}},
}
_FILENAME = {"in": "query", "name": "filename", "required": False,
             "description": "the file's name, for a raw body (a multipart part names itself)",
             "schema": {"type": "string", "maxLength": 1000}}


def _ids(request: web.Request) -> tuple[uuid.UUID, uuid.UUID]:
    return caller(request).tenant_id, path_uuid(request, "course_id", "Course")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is larger than the {limit} bytes allowed.")


def _content_digest(filename: str, content_type: str, sha256: str) -> bytes:
    """What an upload's Idempotency-Key is bound to besides its course: the file."""
    return hashlib.sha256(json.dumps([filename, content_type, sha256]).encode()).digest()


async def _repeat_digest(request: web.Request) -> bytes:
    """A repeated upload's file read and hashed, not stored (app/idempotency.py)."""
    limit = request.app[settings_key].max_upload_bytes
    incoming = await incoming_file(request)
    digest = hashlib.sha256()
    await _stream(incoming, None, digest, limit)
    return _content_digest(incoming.filename, incoming.content_type, digest.hexdigest())


@idempotent_upload(_repeat_digest)
@operation("upload_material", summary="Upload a material (streamed to storage)", tags=TAGS, scopes=("prep",),
           description="`multipart/form-data` with one `file` part, or the raw file with `?filename=` (as "
                       "`application/octet-stream` or with the file's own Content-Type: any type but a form is "
                       "taken as the raw file). Streamed to storage as it arrives; nothing is kept unless the whole "
                       "file arrived. A worker streams a few uploads at once; more wait their turn, and one "
                       "that waited too long is a 503 `uploads_busy` with Retry-After.",
           body_content=_UPLOAD_CONTENT, query_parameters=(_FILENAME,), errors=merge_errors(NOT_FOUND, UPLOAD),
           responses={201: Response("The stored material", MaterialSchema, location=True)})
async def upload_material(request: web.Request) -> web.Response:
    try:
        return await _upload(request)
    except BaseException as exc:
        metrics.uploads_failed.labels(_failure(exc)).inc()
        raise


def _failure(exc: BaseException) -> str:
    """Why an upload stored nothing: its error code, or the client gone."""
    if isinstance(exc, ApiError):
        return exc.code
    if isinstance(exc, (asyncio.CancelledError, ConnectionError)):
        return "client_gone"
    return "internal_error"


async def _upload(request: web.Request) -> web.Response:
    tenant_id, course_id = _ids(request)
    settings = request.app[settings_key]
    limit = settings.max_upload_bytes
    async with acquire(request) as conn:
        await courses.ensure_course(conn, tenant_id, course_id)
    declared = declared_file_bytes(request)
    if declared is not None and declared > limit:
        raise _too_large(limit)

    storage = request.app[storage_key]
    async with storage.upload_slot(settings.upload_queue_wait_s):
        return await _store(request, storage, settings, tenant_id, course_id)


async def _store(request: web.Request, storage: Storage, settings: Settings, tenant_id: uuid.UUID,
                 course_id: uuid.UUID) -> web.Response:
    """The body into storage and its row into the database, or nothing at all."""
    limit = settings.max_upload_bytes
    incoming = await incoming_file(request)
    material_id = uuid.uuid4()
    key = materials.object_key(tenant_id, course_id, material_id)
    upload = storage.upload(key, incoming.content_type, part_bytes=settings.s3_part_bytes,
                            parts_in_flight=settings.s3_parts_in_flight)
    digest = hashlib.sha256()
    try:
        try:
            await _stream(incoming, upload, digest, limit)
        except StorageUnavailable:
            # Deleting the course aborts its uploads in progress: then the answer is its 404.
            async with acquire(request) as conn:
                await courses.ensure_course(conn, tenant_id, course_id)
            raise
        async with acquire(request) as conn:
            material = await materials.insert_material(
                conn, material_id=material_id, tenant_id=tenant_id, course_id=course_id,
                filename=incoming.filename, content_type=incoming.content_type, size_bytes=upload.size,
                sha256=digest.hexdigest(), key=key)
    except BaseException:
        # Client gone, too large, storage or database failure, shutdown: leave nothing behind.
        log.info("upload of %s abandoned after %d bytes; cleaning up", key, upload.size)
        await asyncio.shield(upload.discard())
        raise
    upload.finished()
    idempotency.note_content(request, _content_digest(incoming.filename, incoming.content_type, material["sha256"]))
    log.info("stored %s (%d bytes)", key, upload.size)
    return json_response(material, status=201,
                         headers={"Location": f"/api/v1/courses/{course_id}/materials/{material['id']}"})


async def _stream(incoming, upload, digest, limit: int) -> None:
    """The file into storage as it arrives (or, without an upload, nowhere), counted and
    hashed on the way."""
    size = 0
    try:
        async for chunk in incoming.chunks:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            digest.update(chunk)
            if upload is not None:
                metrics.upload_bytes.inc(len(chunk))
                await upload.write(chunk)
    except (ConnectionError, asyncio.IncompleteReadError, web.HTTPException) as exc:
        raise BadRequest("The upload was interrupted before the whole file arrived.",
                         code="upload_incomplete") from exc
    if upload is not None:
        await upload.complete()


@operation("list_materials", summary="List a course's materials", tags=TAGS, scopes=("prep", "check"),
           errors=NOT_FOUND, responses={200: Response("The course's materials, oldest first", MaterialListSchema)})
async def list_materials(request: web.Request) -> web.Response:
    tenant_id, course_id = _ids(request)
    async with acquire(request) as conn:
        await courses.ensure_course(conn, tenant_id, course_id)
        items = await materials.list_materials(conn, tenant_id, course_id)
    return json_response({"items": items})


@operation("get_material", summary="Get a material with a download URL", tags=TAGS, scopes=("prep", "check"),
           description="`download_url` is a pre-signed GET that expires after `DOWNLOAD_URL_TTL_S` seconds.",
           errors=NOT_FOUND, responses={200: Response("The material", MaterialDetailSchema)})
async def get_material(request: web.Request) -> web.Response:
    tenant_id, course_id = _ids(request)
    material_id = path_uuid(request, "material_id", "Material")
    async with acquire(request) as conn:
        material = await materials.get_material(conn, tenant_id, course_id, material_id)
    key = material.pop("object_key")
    material["download_url"] = request.app[storage_key].download_url(
        key, material["filename"], request.app[settings_key].download_url_ttl_s)
    return json_response(material)


@operation("delete_material", summary="Delete a material and its file", tags=TAGS, scopes=("prep",),
           errors=merge_errors(NOT_FOUND, STORAGE), responses={204: Response("Deleted")})
async def delete_material(request: web.Request) -> web.Response:
    tenant_id, course_id = _ids(request)
    material_id = path_uuid(request, "material_id", "Material")
    async with acquire(request) as conn:
        material = await materials.get_material(conn, tenant_id, course_id, material_id)
        await request.app[storage_key].delete(material["object_key"])  # storage down: 503, the row stays
        await materials.delete_material(conn, tenant_id, course_id, material_id)
    return web.Response(status=204)
