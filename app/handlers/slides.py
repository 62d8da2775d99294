"""A course's slide mapping."""

from __future__ import annotations

from aiohttp import web

from .. import slides
from ..auth import caller
from ..db import acquire
from ..jsonutil import json_response
from ..openapi import NOT_FOUND, Response, body_key, operation
from ..schemas import SlideMappingInputSchema, SlideMappingSchema
from .common import path_uuid

TAGS = ["slide mapping"]


@operation("replace_slide_mapping", summary="Replace the course's slide mapping", tags=TAGS, scopes=("prep",),
           description="Slide numbers start at 1 and appear once; each lesson must belong to this course; "
                       "`end_s` is not before `start_s`.",
           body=SlideMappingInputSchema, body_example={"material_id": None, "items": [
               {"slide_number": 1, "lesson_id": "6f1d3c8a-2b4e-4f6a-9c1d-0e2f3a4b5c6d", "start_s": 0, "end_s": 95.5},
               {"slide_number": 2, "lesson_id": None, "start_s": 95.5, "end_s": None}]},
           errors=NOT_FOUND, responses={201: Response("The stored mapping", SlideMappingSchema, location=True)})
async def put_mapping(request: web.Request) -> web.Response:
    course_id = path_uuid(request, "course_id", "Course")
    data = request[body_key]
    async with acquire(request) as conn:
        mapping = await slides.replace_mapping(conn, caller(request).tenant_id, course_id, data["material_id"],
                                               data["items"])
    return json_response(mapping, status=201, headers={"Location": f"/api/v1/courses/{course_id}/slide-mapping"})


@operation("get_slide_mapping", summary="Get the course's slide mapping", tags=TAGS, scopes=("prep", "check"),
           errors=NOT_FOUND, responses={200: Response("The mapping", SlideMappingSchema)})
async def get_mapping(request: web.Request) -> web.Response:
    course_id = path_uuid(request, "course_id", "Course")
    async with acquire(request) as conn:
        mapping = await slides.get_mapping(conn, caller(request).tenant_id, course_id)
    return json_response(mapping)
