"""A course's slide mapping."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apispec import request_schema, response_schema

from .. import slides
from ..auth import caller
from ..db import acquire
from ..jsonutil import json_response
from ..schemas import SlideMappingInputSchema, SlideMappingSchema
from .common import api_endpoint, path_uuid

TAGS = ["slide mapping"]


@api_endpoint("prep", tags=TAGS, summary="Replace the course's slide mapping", errors=(400, 404, 415, 422),
              description="Slide numbers start at 1 and appear once; each lesson must belong to this course; "
                          "`end_s` is not before `start_s`.")
@request_schema(SlideMappingInputSchema, locations=["json"], required=True)
@response_schema(SlideMappingSchema, 201, description="The stored mapping")
async def put_mapping(request: web.Request) -> web.Response:
    course_id = path_uuid(request, "course_id", "Course")
    data = request["data"]
    async with acquire(request) as conn:
        mapping = await slides.replace_mapping(conn, caller(request).tenant_id, course_id, data["material_id"],
                                               data["items"])
    return json_response(mapping, status=201, headers={"Location": f"/api/v1/courses/{course_id}/slide-mapping"})


@api_endpoint("prep", "check", tags=TAGS, summary="Get the course's slide mapping", errors=(404,))
@response_schema(SlideMappingSchema, 200)
async def get_mapping(request: web.Request) -> web.Response:
    course_id = path_uuid(request, "course_id", "Course")
    async with acquire(request) as conn:
        mapping = await slides.get_mapping(conn, caller(request).tenant_id, course_id)
    return json_response(mapping)
