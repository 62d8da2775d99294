"""URL table and the OpenAPI document (Swagger UI at /docs)."""

from __future__ import annotations

import copy

from aiohttp import web
from aiohttp_apispec import setup_aiohttp_apispec

from . import __version__
from .errors import ValidationFailed
from .handlers import courses, gpt, health, homework, llm_settings, materials, reports, slides

COURSE = "/api/v1/courses/{course_id}"


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/health", health.health)
    app.router.add_post("/api/v1/courses", courses.create_course)
    app.router.add_get("/api/v1/courses", courses.list_courses)
    app.router.add_get(COURSE, courses.get_course)
    app.router.add_patch(COURSE, courses.update_course)
    app.router.add_delete(COURSE, courses.delete_course)
    app.router.add_put(COURSE + "/structure", courses.put_structure)
    app.router.add_get(COURSE + "/lessons/{lesson_id}", courses.get_lesson)
    app.router.add_post(COURSE + "/materials", materials.upload_material)
    app.router.add_get(COURSE + "/materials", materials.list_materials)
    app.router.add_get(COURSE + "/materials/{material_id}", materials.get_material)
    app.router.add_delete(COURSE + "/materials/{material_id}", materials.delete_material)
    app.router.add_post(COURSE + "/slide-mapping", slides.put_mapping)
    app.router.add_get(COURSE + "/slide-mapping", slides.get_mapping)
    app.router.add_post(COURSE + "/structure", courses.generate_structure)
    app.router.add_post(COURSE + "/check-homework", homework.check_homework)
    app.router.add_get("/api/v1/students/{student_id}/progress", homework.student_progress)
    app.router.add_get("/api/v1/reports/cost", reports.cost_report)
    app.router.add_post("/api/v1/gpt", gpt.gpt)
    app.router.add_post("/api/v1/gpt/presentation", gpt.presentation)
    app.router.add_post("/api/v1/gpt/improve", gpt.improve)
    app.router.add_put("/api/v1/settings/llm", llm_settings.put_llm_settings)
    app.router.add_get("/api/v1/settings/llm", llm_settings.get_llm_settings)
    app.router.add_delete("/api/v1/settings/llm", llm_settings.delete_llm_settings)


def _validation_error(error, request, schema, status=None, headers=None):
    """webargs' error callback: the contract's 422 with per-field details."""
    raise ValidationFailed("The request is not valid.", details=error.normalized_messages())


def _fresh_apispec_metadata(app: web.Application) -> None:
    """aiohttp-apispec consumes the metadata its decorators leave on a handler when
    it builds the document; give every app its own copy so that a second app in
    the same process (tests, benchmarks) is documented just as fully."""
    for route in app.router.routes():
        handler = route.handler
        if hasattr(handler, "__apispec__"):
            if not hasattr(handler, "_pristine_apispec"):
                handler._pristine_apispec = copy.deepcopy(handler.__apispec__)
            handler.__apispec__ = copy.deepcopy(handler._pristine_apispec)


def setup_openapi(app: web.Application) -> None:
    _fresh_apispec_metadata(app)
    setup_aiohttp_apispec(
        app,
        title="Course Supporter API",
        version=__version__,
        url="/api/docs/swagger.json",
        swagger_path="/docs",
        error_callback=_validation_error,
        in_place=True,
        securityDefinitions={"ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
    )
    # aiohttp-apispec adds its pages for GET alone; every GET answers HEAD too (RFC 9110).
    for resource in app.router.resources():
        routes = {route.method: route for route in resource}
        if "GET" in routes and "HEAD" not in routes:
            resource.add_route("HEAD", routes["GET"].handler)
