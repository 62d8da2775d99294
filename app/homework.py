"""Homework attempts and a student's progress (the tenant's own opaque student ids)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from .courses import CourseNotFound

_COLUMNS = "id, student_id, course_id, lesson_id, score, passed, feedback, created_at"


async def record_attempt(conn: asyncpg.Connection, *, tenant_id: uuid.UUID, course_id: uuid.UUID,
                         lesson_id: uuid.UUID, student_id: str, score: int, passed: bool,
                         feedback: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""INSERT INTO homework_attempts (tenant_id, course_id, lesson_id, student_id, score, passed, feedback)
            SELECT $1, $2, $3, $4, $5, $6, $7
            WHERE EXISTS (SELECT 1 FROM courses WHERE id = $2 AND tenant_id = $1 FOR KEY SHARE)
            RETURNING {_COLUMNS}""",
        tenant_id, course_id, lesson_id, student_id, score, passed, feedback)
    if row is None:  # the course went away while the LLM was grading
        raise CourseNotFound()
    return dict(row)


async def progress(conn: asyncpg.Connection, tenant_id: uuid.UUID, student_id: str) -> dict[str, Any]:
    """Per course and lesson: attempts, best and last score, and whether any attempt passed."""
    rows = await conn.fetch(
        """SELECT course_id, lesson_id, count(*) AS attempts, max(score) AS best_score,
                  (array_agg(score ORDER BY created_at DESC, id DESC))[1] AS last_score,
                  bool_or(passed) AS passed, min(created_at) AS first_at
           FROM homework_attempts WHERE tenant_id = $1 AND student_id = $2
           GROUP BY course_id, lesson_id
           ORDER BY course_id, first_at, lesson_id""",
        tenant_id, student_id)
    courses: dict[uuid.UUID, list[dict]] = {}
    for r in rows:
        courses.setdefault(r["course_id"], []).append(
            {"lesson_id": r["lesson_id"], "attempts": r["attempts"], "best_score": r["best_score"],
             "last_score": r["last_score"], "passed": r["passed"]})
    return {"student_id": student_id,
            "courses": [{"course_id": course_id, "lessons": lessons} for course_id, lessons in courses.items()]}
