"""Courses, their module/lesson structure, and lessons: the data layer.

Every function takes the caller's tenant id and filters by it, so another
tenant's course is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import uuid
from typing import Any, Sequence

import asyncpg

from .errors import NotFound


class CourseNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Course not found.")


class LessonNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("Lesson not found.")


_COURSE_COLUMNS = "id, title, description, created_at, updated_at"

# The structure as one JSON value, built by the database in the same query.
_STRUCTURE_SQL = """
    json_build_object('modules', COALESCE((
        SELECT json_agg(json_build_object(
                   'id', m.id, 'title', m.title, 'position', m.position,
                   'lessons', COALESCE((
                       SELECT json_agg(json_build_object('id', l.id, 'title', l.title, 'position', l.position)
                                       ORDER BY l.position)
                       FROM lessons l WHERE l.module_id = m.id), '[]'::json))
               ORDER BY m.position)
        FROM modules m WHERE m.course_id = c.id), '[]'::json))
"""


async def create_course(conn: asyncpg.Connection, tenant_id: uuid.UUID, title: str, description: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"INSERT INTO courses (tenant_id, title, description) VALUES ($1, $2, $3) RETURNING {_COURSE_COLUMNS}",
        tenant_id, title, description)
    return dict(row)


async def list_courses(conn: asyncpg.Connection, tenant_id: uuid.UUID, limit: int, offset: int) -> tuple[list[dict], int]:
    rows = await conn.fetch(
        f"""SELECT {_COURSE_COLUMNS}, count(*) OVER () AS total
            FROM courses WHERE tenant_id = $1
            ORDER BY created_at, id LIMIT $2 OFFSET $3""",
        tenant_id, limit, offset)
    if rows:
        total = rows[0]["total"]
    else:  # past the end of the list: the window function had no row to ride on
        total = await conn.fetchval("SELECT count(*) FROM courses WHERE tenant_id = $1", tenant_id)
    return [{k: v for k, v in r.items() if k != "total"} for r in rows], total


async def ensure_course(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID) -> None:
    if await conn.fetchval("SELECT 1 FROM courses WHERE id = $1 AND tenant_id = $2", course_id, tenant_id) is None:
        raise CourseNotFound()


async def hold_course(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID) -> None:
    """``ensure_course``, and no one deletes the course until this transaction ends (a delete
    under way is waited for: then the course is not found)."""
    if await conn.fetchval("SELECT 1 FROM courses WHERE id = $1 AND tenant_id = $2 FOR KEY SHARE",
                           course_id, tenant_id) is None:
        raise CourseNotFound()


async def lock_course(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID) -> None:
    """``ensure_course``, and nothing is added to the course (no file, mapping or attempt is
    recorded, no structure replaced) until this transaction ends."""
    if await conn.fetchval("SELECT 1 FROM courses WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
                           course_id, tenant_id) is None:
        raise CourseNotFound()


async def get_course(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID) -> dict[str, Any]:
    """The course with its structure, in one round trip."""
    row = await conn.fetchrow(
        f"SELECT {_COURSE_COLUMNS}, {_STRUCTURE_SQL} AS structure FROM courses c WHERE c.id = $1 AND c.tenant_id = $2",
        course_id, tenant_id)
    if row is None:
        raise CourseNotFound()
    return dict(row)


async def update_course(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID,
                        changes: dict[str, Any]) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""UPDATE courses SET title = COALESCE($3, title), description = COALESCE($4, description),
                               updated_at = now()
            WHERE id = $1 AND tenant_id = $2 RETURNING {_COURSE_COLUMNS}""",
        course_id, tenant_id, changes.get("title"), changes.get("description"))
    if row is None:
        raise CourseNotFound()
    return dict(row)


async def delete_course(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID) -> None:
    deleted = await conn.fetchval("DELETE FROM courses WHERE id = $1 AND tenant_id = $2 RETURNING id",
                                  course_id, tenant_id)
    if deleted is None:
        raise CourseNotFound()


async def replace_structure(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID,
                            modules: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Replace all modules and lessons of a course atomically; every id is new."""
    async with conn.transaction():
        locked = await conn.fetchval(
            "SELECT id FROM courses WHERE id = $1 AND tenant_id = $2 FOR UPDATE", course_id, tenant_id)
        if locked is None:
            raise CourseNotFound()
        await conn.execute("DELETE FROM modules WHERE course_id = $1", course_id)
        module_ids = [uuid.uuid4() for _ in modules]
        await conn.execute(
            """INSERT INTO modules (id, course_id, title, position)
               SELECT id, $1, title, position FROM unnest($2::uuid[], $3::text[]) WITH ORDINALITY AS m(id, title, position)""",
            course_id, module_ids, [m["title"] for m in modules])
        lesson_rows = [(module_id, position, lesson["title"], lesson.get("content", ""), lesson.get("pass_score"))
                       for module_id, module in zip(module_ids, modules)
                       for position, lesson in enumerate(module.get("lessons", []), start=1)]
        if lesson_rows:
            await conn.execute(
                """INSERT INTO lessons (course_id, module_id, position, title, content, pass_score)
                   SELECT $1, * FROM unnest($2::uuid[], $3::int[], $4::text[], $5::text[], $6::smallint[])""",
                course_id, *map(list, zip(*lesson_rows)))
        # The old lessons are gone: the slide mapping keeps its slides and times, without lessons.
        await conn.execute(
            """UPDATE slide_mappings
               SET items = (SELECT jsonb_agg(item || '{"lesson_id": null}' ORDER BY position)
                            FROM jsonb_array_elements(items) WITH ORDINALITY AS e(item, position)),
                   updated_at = now()
               WHERE course_id = $1 AND jsonb_path_exists(items, '$[*] ? (@.lesson_id != null)')""",
            course_id)
        await conn.execute("UPDATE courses SET updated_at = now() WHERE id = $1", course_id)
        return await conn.fetchval(f"SELECT {_STRUCTURE_SQL} FROM courses c WHERE c.id = $1", course_id)


async def get_lesson(conn: asyncpg.Connection, tenant_id: uuid.UUID, course_id: uuid.UUID,
                     lesson_id: uuid.UUID) -> dict[str, Any]:
    row = await conn.fetchrow(
        """SELECT l.id, l.course_id, l.module_id, l.title, l.position, l.content, l.pass_score
           FROM lessons l JOIN courses c ON c.id = l.course_id
           WHERE l.id = $1 AND l.course_id = $2 AND c.tenant_id = $3""",
        lesson_id, course_id, tenant_id)
    if row is None:
        raise LessonNotFound()
    return dict(row)
