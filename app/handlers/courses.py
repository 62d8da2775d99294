"""Courses, their structure, and lessons."""

from __future__ import annotations

from aiohttp import web

from .. import courses, material_text, materials
from ..auth import caller
from ..db import acquire
from ..jsonutil import json_response
from ..keys import storage_key
from ..llm import call_context, tasks
from ..llm.gateway import CHARS_PER_TOKEN
from ..openapi import LLM, NOT_FOUND, Response, STORAGE, body_key, idempotent, merge_errors, operation, query_key
from ..schemas import (CourseCreateSchema, CourseDetailSchema, CoursePageSchema, CourseSchema, CourseUpdateSchema,
                       GenerateStructureSchema,
                       LessonSchema, PageQuerySchema, StructureInputSchema, StructureSchema)
from .common import path_uuid

TAGS = ["courses"]
STRUCTURE_EXAMPLE = {"modules": [{"title": "Linear equations", "lessons": [
    {"title": "One unknown", "content": "Solve ax + b = 0.", "pass_score": 70},
    {"title": "Two unknowns", "content": "Substitution and elimination."}]}]}


def _course_id(request: web.Request):
    return path_uuid(request, "course_id", "Course")


@idempotent
@operation("create_course", summary="Create a course", tags=TAGS, scopes=("prep",),
           body=CourseCreateSchema, body_example={"title": "Algebra", "description": "Linear equations"},
           responses={201: Response("The new course", CourseSchema, location=True)})
async def create_course(request: web.Request) -> web.Response:
    data = request[body_key]
    async with acquire(request) as conn:
        course = await courses.create_course(conn, caller(request).tenant_id, data["title"], data["description"])
    return json_response(course, status=201, headers={"Location": f"/api/v1/courses/{course['id']}"})


@operation("list_courses", summary="List courses", tags=TAGS, scopes=("prep", "check"), query=PageQuerySchema,
           description="Oldest first; `total` counts every course of the tenant.",
           responses={200: Response("A page of courses", CoursePageSchema)})
async def list_courses(request: web.Request) -> web.Response:
    limit, offset = request[query_key]["limit"], request[query_key]["offset"]
    async with acquire(request) as conn:
        items, total = await courses.list_courses(conn, caller(request).tenant_id, limit, offset)
    return json_response({"items": items, "total": total, "limit": limit, "offset": offset})


@operation("get_course", summary="Get a course with its structure", tags=TAGS, scopes=("prep",), errors=NOT_FOUND,
           responses={200: Response("The course, its modules and lessons", CourseDetailSchema)})
async def get_course(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    async with acquire(request) as conn:
        course = await courses.get_course(conn, caller(request).tenant_id, course_id)
    return json_response(course)


@operation("update_course", summary="Change a course's title or description", tags=TAGS, scopes=("prep",),
           body=CourseUpdateSchema, body_example={"description": "Linear equations and inequalities"},
           errors=NOT_FOUND, responses={200: Response("The changed course", CourseSchema)})
async def update_course(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    async with acquire(request) as conn:
        course = await courses.update_course(conn, caller(request).tenant_id, course_id, request[body_key])
    return json_response(course)


@operation("delete_course", summary="Delete a course, its structure and its materials", tags=TAGS, scopes=("prep",),
           errors=merge_errors(NOT_FOUND, STORAGE), responses={204: Response("Deleted")})
async def delete_course(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    tenant_id = caller(request).tenant_id
    async with acquire(request) as conn, conn.transaction():
        # The course first, locked: an upload finishing meanwhile has recorded its file (which
        # the listing below finds) or waits, finds no course, and removes its file itself.
        await courses.lock_course(conn, tenant_id, course_id)
        # Files next: if storage is down the course stays (503) rather than orphaning them.
        await request.app[storage_key].delete_prefix(materials.course_prefix(tenant_id, course_id))
        await courses.delete_course(conn, tenant_id, course_id)
    return web.Response(status=204)


@operation("replace_structure", summary="Replace a course's modules and lessons", tags=TAGS, scopes=("prep",),
           description="The old structure is replaced as a whole; every module and lesson gets a new id. "
                       "The slide mapping keeps its slides and times, with `lesson_id` null.",
           body=StructureInputSchema, body_example=STRUCTURE_EXAMPLE, errors=NOT_FOUND,
           responses={200: Response("The stored structure", StructureSchema)})
async def put_structure(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    async with acquire(request) as conn:
        structure = await courses.replace_structure(conn, caller(request).tenant_id, course_id,
                                                    request[body_key]["modules"])
    return json_response(structure)


@idempotent
@operation("generate_structure", summary="Generate a course's modules and lessons with the LLM", tags=TAGS,
           scopes=("prep",),
           description="From the course's title and description, its plain-text, Markdown and PDF materials "
                       f"(up to about {tasks.MATERIAL_TOKENS} tokens, oldest first) and optional instructions. "
                       "The result replaces the structure, as with PUT.",
           body=GenerateStructureSchema, body_required=False,
           body_example={"instructions": "Three modules, at most four lessons each."},
           errors=merge_errors(NOT_FOUND, LLM, STORAGE),
           responses={200: Response("The generated and stored structure", StructureSchema)})
async def generate_structure(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    tenant_id = caller(request).tenant_id
    async with acquire(request) as conn:
        course = await courses.get_course(conn, tenant_id, course_id)
        sources = await material_text.readable_materials(conn, tenant_id, course_id)
    texts = await material_text.read_texts(request.app[storage_key], sources, tasks.MATERIAL_TOKENS * CHARS_PER_TOKEN)
    ctx = call_context(request, "structure")
    instructions = request[body_key]["instructions"]
    answer = await ctx.complete_json(tasks.structure_messages(course, texts, instructions), tasks.parse_structure)
    async with acquire(request) as conn:
        structure = await courses.replace_structure(conn, tenant_id, course_id, answer.value)
    return json_response(structure)


@operation("get_lesson", summary="Get a lesson with its content", tags=TAGS, scopes=("prep", "check"), errors=NOT_FOUND,
           responses={200: Response("The lesson", LessonSchema)})
async def get_lesson(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    lesson_id = path_uuid(request, "lesson_id", "Lesson")
    async with acquire(request) as conn:
        lesson = await courses.get_lesson(conn, caller(request).tenant_id, course_id, lesson_id)
    return json_response(lesson)
