"""Course materials: the data layer, object keys and file names.

A material's object key comes from its tenant, course and id, never from the
client's file name, which is only cleaned up for display and downloads.
"""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

import asyncpg

from .courses import CourseNotFound
from .errors import NotFound


class MaterialNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Material not found.")


_COLUMNS = "id, course_id, filename, content_type, size_bytes, sha256, created_at"
MAX_FILENAME_CHARS = 255


def course_prefix(tenant_id: uuid.UUID, course_id: uuid.UUID) -> str:
    return f"tenants/{tenant_id}/courses/{course_id}/"


def object_key(tenant_id: uuid.UUID, course_id: uuid.UUID, material_id: uuid.UUID) -> str:
    return f"{course_prefix(tenant_id, course_id)}materials/{material_id}"


def media_type(content_type: str) -> str:
    """A stored Content-Type's media type, lower-case and without parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def _kept(ch: str) -> str:
    category = unicodedata.category(ch)
    if category in ("Cc", "Cf", "Zl", "Zp"):
        return ""
    # A byte that was not UTF-8 (the multipart reader keeps it as a surrogate escape).
    return "\ufffd" if category == "Cs" else ch


def clean_filename(name: str | None) -> str:
    """The last path component, without control or format characters, bytes that were not
    UTF-8 shown as U+FFFD (as in a query string), at most 255 characters: a longer name
    loses the end of its stem, not its extension."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(map(_kept, unicodedata.normalize("NFC", name)))
    name = name.strip().lstrip(".").strip()
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and 0 < len(extension) <= 16:
            name = stem[:MAX_FILENAME_CHARS - len(extension) - 1].rstrip() + dot + extension
    return name[:MAX_FILENAME_CHARS] or "upload"


async def insert_material(conn: asyncpg.Connection, *, material_id: uuid.UUID, tenant_id: uuid.UUID,
                          course_id: uuid.UUID, filename: str, content_type: str, size_bytes: int, sha256: str,
                          key: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""INSERT INTO materials (id, tenant_id, course_id, filename, content_type, size_bytes, sha256, object_key)
            SELECT $1, $2, $3, $4, $5, $6, $7, $8
            WHERE EXISTS (SELECT 1 FROM courses WHERE id = $3 AND tenant_id = $2 FOR KEY SHARE)
            RETURNING {_COLUMNS}""",
        material_id, tenant_id, course_id, filename, content_type, size_bytes, sha256, key)
    if row is None:  # the course was deleted while its file was uploading
        raise CourseNotFound()
    return dict(row)


async def list_materials(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID) -> list[dict]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM materials WHERE course_id = $1 AND tenant_id = $2 ORDER BY created_at, id",
        course_id, tenant_id)
    return [dict(r) for r in rows]


async def get_material(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID,
                       material_id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, object_key FROM materials WHERE id = $1 AND course_id = $2 AND tenant_id = $3",
        material_id, course_id, tenant_id)
    if row is None:
        raise MaterialNotFound()
    return dict(row)


async def delete_material(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID,
                          material_id: uuid.UUID) -> None:
    deleted = await conn.fetchval(
        "DELETE FROM materials WHERE id = $1 AND course_id = $2 AND tenant_id = $3 RETURNING id",
        material_id, course_id, tenant_id)
    if deleted is None:
        raise MaterialNotFound()
