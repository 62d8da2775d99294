"""Homework checking by the LLM, and a student's progress."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apispec import match_info_schema, request_schema, response_schema

from .. import courses, homework
from ..auth import caller
from ..db import acquire
from ..errors import ValidationFailed
from ..jsonutil import json_response
from ..llm import call_context, tasks
from ..schemas import HomeworkAttemptSchema, HomeworkRequestSchema, ProgressSchema, StudentPathSchema
from .common import api_endpoint, path_uuid

TAGS = ["homework"]


@api_endpoint("check", tags=TAGS, summary="Check a homework submission with the LLM",
              errors=(400, 404, 415, 422, 502, 504),
              description="Scores the submission 0-100 against the lesson; `passed` when the score reaches the "
                          "lesson's `pass_score` (60 unless the lesson sets one). Every attempt is kept.")
@request_schema(HomeworkRequestSchema, locations=["json"], required=True)
@response_schema(HomeworkAttemptSchema, 201)
async def check_homework(request: web.Request) -> web.Response:
    data = request["data"]
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


@api_endpoint("check", tags=TAGS, summary="A student's homework progress", errors=(422,),
              description="Per course and lesson: attempts, best and last score, and whether an attempt passed. "
                          "A student with no attempts has an empty list.")
@match_info_schema(StudentPathSchema)
@response_schema(ProgressSchema, 200)
async def student_progress(request: web.Request) -> web.Response:
    student_id = request["match_info"]["student_id"]
    async with acquire(request) as conn:
        progress = await homework.progress(conn, caller(request).tenant_id, student_id)
    return json_response(progress)
