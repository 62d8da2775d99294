"""The URL table, and the OpenAPI document with Swagger UI at /docs."""

from __future__ import annotations

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from . import __version__, metrics
from .handlers import courses, gpt, health, homework, llm_settings, materials, reports, slides, uploads
from .jsonutil import dumps_bytes
from .openapi import openapi_document

COURSE = "/api/v1/courses/{course_id}"


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/health", health.health)
    app.router.add_get("/ready", health.ready)
    app.router.add_get(metrics.PATH, metrics.serve_metrics)
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
    tus = app.router.add_resource(COURSE + "/uploads", name="tus_uploads")
    tus.add_route("OPTIONS", uploads.options_uploads)
    tus.add_route("POST", uploads.create_upload)
    tus_upload = app.router.add_resource(COURSE + "/uploads/{upload_id}", name="tus_upload")
    tus_upload.add_route("HEAD", uploads.head_upload)
    tus_upload.add_route("PATCH", uploads.patch_upload)
    tus_upload.add_route("DELETE", uploads.delete_upload)
    app.router.add_post(COURSE + "/slide-mapping", slides.put_mapping)
    app.router.add_get(COURSE + "/slide-mapping", slides.get_mapping)
    app.router.add_post(COURSE + "/structure", courses.generate_structure)
    app.router.add_post(COURSE + "/check-homework", homework.check_homework)
    app.router.add_get("/api/v1/students/{student_id}/progress", homework.student_progress)
    app.router.add_get("/api/v1/reports/cost", reports.cost_report)
    app.router.add_get("/api/v1/usage", reports.usage)
    app.router.add_post("/api/v1/gpt", gpt.gpt)
    app.router.add_post("/api/v1/gpt/presentation", gpt.presentation)
    app.router.add_post("/api/v1/gpt/improve", gpt.improve)
    app.router.add_put("/api/v1/settings/llm", llm_settings.put_llm_settings)
    app.router.add_get("/api/v1/settings/llm", llm_settings.get_llm_settings)
    app.router.add_delete("/api/v1/settings/llm", llm_settings.delete_llm_settings)


DOCUMENT_URL = "/api/docs/openapi.json"
# Where the Swagger 2.0 document was: it redirects to the OpenAPI 3.1 one.
OLD_DOCUMENT_URL = "/api/docs/swagger.json"
UI_URL = "/docs"
UI_ASSETS_URL = "/api/docs/ui"

_UI_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Course Supporter API</title>
  <link rel="stylesheet" href="{UI_ASSETS_URL}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{UI_ASSETS_URL}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{UI_ASSETS_URL}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "{DOCUMENT_URL}", dom_id: "#swagger-ui", deepLinking: true,
                                  presets: [SwaggerUIBundle.presets.apis]}});
  </script>
</body>
</html>
"""


def setup_openapi(app: web.Application) -> None:
    """The OpenAPI 3.1 document (built once, here), Swagger UI reading it, and the old path."""
    document = dumps_bytes(openapi_document(app, title="Course Supporter API", version=__version__))

    async def serve_document(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def serve_ui(request: web.Request) -> web.Response:
        return web.Response(text=_UI_PAGE, content_type="text/html")

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": DOCUMENT_URL})

    app.router.add_get(DOCUMENT_URL, serve_document)
    app.router.add_get(OLD_DOCUMENT_URL, moved)
    app.router.add_get(UI_URL, serve_ui)
    app.router.add_static(UI_ASSETS_URL, swagger_ui_path)
    # Every GET answers HEAD too (RFC 9110).
    for resource in app.router.resources():
        routes = {route.method: route for route in resource}
        if "GET" in routes and "HEAD" not in routes:
            resource.add_route("HEAD", routes["GET"].handler)
