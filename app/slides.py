"""Slide mappings: which slide of a course's deck belongs to which lesson, and when it shows.

The schema checks each item on its own (slide numbers, times); this layer checks
what needs the database: the lessons and the material belong to the course.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from .courses import ensure_course, hold_course
from .errors import NotFound, ValidationFailed


class SlideMappingNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("This course has no slide mapping yet.")


async def replace_mapping(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID,
                          material_id: uuid.UUID | None, items: list[dict[str, Any]]) -> dict[str, Any]:
    async with conn.transaction():
        # The course, its material and its lessons are held until the mapping is stored: a
        # concurrent delete or new structure waits, or has happened and they are not found.
        await hold_course(conn, tenant_id, course_id)
        await _check_references(conn, course_id, material_id, items)
        stored = [{"slide_number": i["slide_number"], "lesson_id": str(i["lesson_id"]) if i["lesson_id"] else None,
                   "start_s": i["start_s"], "end_s": i["end_s"]}
                  for i in sorted(items, key=lambda i: i["slide_number"])]
        row = await conn.fetchrow(
            """INSERT INTO slide_mappings (course_id, tenant_id, material_id, items) VALUES ($1, $2, $3, $4)
               ON CONFLICT (course_id) DO UPDATE
                   SET material_id = EXCLUDED.material_id, items = EXCLUDED.items, updated_at = now()
               RETURNING course_id, material_id, items, updated_at""",
            course_id, tenant_id, material_id, stored)
    return dict(row)


async def get_mapping(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID) -> dict[str, Any]:
    await ensure_course(conn, tenant_id, course_id)
    row = await conn.fetchrow(
        "SELECT course_id, material_id, items, updated_at FROM slide_mappings WHERE course_id = $1 AND tenant_id = $2",
        course_id, tenant_id)
    if row is None:
        raise SlideMappingNotFound()
    return dict(row)


async def _check_references(conn: asyncpg.Connection, course_id: uuid.UUID, material_id: uuid.UUID | None,
                            items: list[dict[str, Any]]) -> None:
    errors: dict[str, Any] = {}
    if material_id is not None and await conn.fetchval(
            "SELECT 1 FROM materials WHERE id = $1 AND course_id = $2 FOR KEY SHARE", material_id, course_id) is None:
        errors["material_id"] = ["Not a material of this course."]
    wanted = {i["lesson_id"] for i in items if i["lesson_id"] is not None}
    if wanted:
        known = {r["id"] for r in await conn.fetch(
            "SELECT id FROM lessons WHERE course_id = $1 AND id = ANY($2::uuid[]) FOR KEY SHARE", course_id,
            list(wanted))}
        bad = {index: {"lesson_id": ["Not a lesson of this course."]}
               for index, item in enumerate(items) if item["lesson_id"] is not None and item["lesson_id"] not in known}
        if bad:
            errors["items"] = bad
    if errors:
        raise ValidationFailed("The slide mapping refers to what this course does not have.", details=errors)
