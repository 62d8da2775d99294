"""Homework checking by the LLM, and a student's progress."""

from __future__ import annotations

from aiohttp import web

from .. import courses, homework
from ..auth import caller
from ..db import acquire
from ..errors import ValidationFailed
from ..jsonutil import json_response
from ..llm import call_context, tasks
from ..openapi import LLM, NOT_FOUND, Response, body_key, idempotent, merge_errors, operation, path_key
from ..schemas import HomeworkAttemptSchema, HomeworkRequestSchema, ProgressSchema, StudentPathSchema
from .common import path_uuid

TAGS = ["homework"]


@idempotent
@operation("check_homework", summary="Check a homework submission with the LLM", tags=TAGS, scopes=("check",),
           description="Scores the submission 0-100 against the lesson; `passed` when the score reaches the "
                       "lesson's `pass_score` (60 unless the lesson sets one). Every attempt is kept.",
           body=HomeworkRequestSchema, body_example={"student_id": "student-42",
                                                     "lesson_id": "6f1d3c8a-2b4e-4f6a-9c1d-0e2f3a4b5c6d",
                                                     "submission": "x = -b/a, since ax + b = 0 and a is not 0."},
           errors=merge_errors(NOT_FOUND, LLM), responses={201: Response("The scored attempt", HomeworkAttemptSchema)})
async def check_homework(request: web.Request) -> web.Response:
    data = request[body_key]
    tenant_id = caller(request).tenant_id
    course_id = path_uuid(request, "course_id", "Course")
    async with acquire(request) as conn:
        await courses.ensure_course(conn, tenant_id, course_id)
        try:
            lesson = await courses.get_lesson(conn, tenant_id, course_id, data["lesson_id"])
        except courses.LessonNotFound:
            await courses.ensure_course(conn, tenant_id, course_id)  # unless the course went meanwhile
            raise ValidationFailed("The lesson is not part of this course.",
                                   details={"lesson_id": ["No such lesson in this course."]}) from None
    pass_score = tasks.PASS_SCORE if lesson["pass_score"] is None else lesson["pass_score"]
    ctx = call_context(request, "check-homework")
    answer = await ctx.complete_json(tasks.homework_messages(lesson, data["submission"], pass_score),
                                     tasks.parse_homework)
    score, feedback = answer.value
    async with acquire(request) as conn:
        attempt = await homework.record_attempt(
            conn, tenant_id=tenant_id, course_id=course_id, lesson_id=lesson["id"], student_id=data["student_id"],
            score=score, passed=score >= pass_score, feedback=feedback)
    return json_response(attempt, status=201)


@operation("get_student_progress", summary="A student's homework progress", tags=TAGS, scopes=("check",),
           description="Per course and lesson: attempts, best and last score, and whether an attempt passed. "
                       "A student with no attempts has an empty list.",
           path=StudentPathSchema, responses={200: Response("The student's progress", ProgressSchema)})
async def student_progress(request: web.Request) -> web.Response:
    student_id = request[path_key]["student_id"]
    async with acquire(request) as conn:
        progress = await homework.progress(conn, caller(request).tenant_id, student_id)
    return json_response(progress)
