"""Courses, their structure, and lessons."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apispec import docs, querystring_schema, request_schema, response_schema

from .. import courses, material_text, materials
from ..auth import caller
from ..db import acquire
from ..jsonutil import json_response
from ..keys import storage_key
from ..llm import call_context, tasks
from ..llm.gateway import CHARS_PER_TOKEN
from ..schemas import (CourseCreateSchema, CourseDetailSchema, CoursePageSchema, CourseSchema, CourseUpdateSchema,
                       GenerateStructureSchema,
                       LessonSchema, PageQuerySchema, StructureInputSchema, StructureSchema)
from .common import api_endpoint, path_uuid

TAGS = ["courses"]


def _course_id(request: web.Request):
    return path_uuid(request, "course_id", "Course")


@api_endpoint("prep", tags=TAGS, summary="Create a course", errors=(400, 415, 422))
@request_schema(CourseCreateSchema, locations=["json"], required=True)
@response_schema(CourseSchema, 201, description="The new course")
async def create_course(request: web.Request) -> web.Response:
    data = request["data"]
    async with acquire(request) as conn:
        course = await courses.create_course(conn, caller(request).tenant_id, data["title"], data["description"])
    return json_response(course, status=201, headers={"Location": f"/api/v1/courses/{course['id']}"})


@api_endpoint("prep", "check", tags=TAGS, summary="List courses", errors=(422,),
              description="Oldest first; `total` counts every course of the tenant.")
@querystring_schema(PageQuerySchema)
@response_schema(CoursePageSchema, 200)
async def list_courses(request: web.Request) -> web.Response:
    limit, offset = request["querystring"]["limit"], request["querystring"]["offset"]
    async with acquire(request) as conn:
        items, total = await courses.list_courses(conn, caller(request).tenant_id, limit, offset)
    return json_response({"items": items, "total": total, "limit": limit, "offset": offset})


@api_endpoint("prep", tags=TAGS, summary="Get a course with its structure", errors=(404,))
@response_schema(CourseDetailSchema, 200)
async def get_course(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    async with acquire(request) as conn:
        course = await courses.get_course(conn, caller(request).tenant_id, course_id)
    return json_response(course)


@api_endpoint("prep", tags=TAGS, summary="Change a course's title or description", errors=(400, 404, 415, 422))
@request_schema(CourseUpdateSchema, locations=["json"], required=True)
@response_schema(CourseSchema, 200)
async def update_course(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    async with acquire(request) as conn:
        course = await courses.update_course(conn, caller(request).tenant_id, course_id, request["data"])
    return json_response(course)


@api_endpoint("prep", tags=TAGS, summary="Delete a course, its structure and its materials", errors=(404,))
@docs(responses={"204": {"description": "Deleted"}})
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


@api_endpoint("prep", tags=TAGS, summary="Replace a course's modules and lessons", errors=(400, 404, 415, 422),
              description="The old structure is replaced as a whole; every module and lesson gets a new id. "
                          "The slide mapping keeps its slides and times, with `lesson_id` null.")
@request_schema(StructureInputSchema, locations=["json"], required=True)
@response_schema(StructureSchema, 200)
async def put_structure(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    async with acquire(request) as conn:
        structure = await courses.replace_structure(conn, caller(request).tenant_id, course_id,
                                                    request["data"]["modules"])
    return json_response(structure)


@api_endpoint("prep", tags=TAGS, summary="Generate a course's modules and lessons with the LLM",
              errors=(400, 404, 415, 422, 502, 504),
              description="From the course's title and description, its plain-text, Markdown and PDF materials "
                          f"(up to about {tasks.MATERIAL_TOKENS} tokens, oldest first) and optional instructions. "
                          "The result replaces the structure, as with PUT.")
@request_schema(GenerateStructureSchema, locations=["json"], required=False)
@response_schema(StructureSchema, 200)
async def generate_structure(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    tenant_id = caller(request).tenant_id
    async with acquire(request) as conn:
        course = await courses.get_course(conn, tenant_id, course_id)
        sources = await material_text.readable_materials(conn, tenant_id, course_id)
    texts = await material_text.read_texts(request.app[storage_key], sources, tasks.MATERIAL_TOKENS * CHARS_PER_TOKEN)
    ctx = call_context(request, "structure")
    instructions = request.get("data", {}).get("instructions")
    answer = await ctx.complete_json(tasks.structure_messages(course, texts, instructions), tasks.parse_structure)
    async with acquire(request) as conn:
        structure = await courses.replace_structure(conn, tenant_id, course_id, answer.value)
    return json_response(structure)


@api_endpoint("prep", "check", tags=TAGS, summary="Get a lesson with its content", errors=(404,))
@response_schema(LessonSchema, 200)
async def get_lesson(request: web.Request) -> web.Response:
    course_id = _course_id(request)
    lesson_id = path_uuid(request, "lesson_id", "Lesson")
    async with acquire(request) as conn:
        lesson = await courses.get_lesson(conn, caller(request).tenant_id, course_id, lesson_id)
    return json_response(lesson)
