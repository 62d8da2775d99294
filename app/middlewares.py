"""Cross-cutting middlewares: request ids, JSON errors and the access log; CORS; JSON bodies."""

from __future__ import annotations

import os
import re
import time

from aiohttp import hdrs, web

from . import log, metrics
from .auth import API_PREFIX
from .errors import BadRequest, UnsupportedMediaType, ValidationFailed, error_answer
from .jsonutil import loads
from .keys import cors_origin_key, draining_key, ratelimit_headers_key, request_id_key
from .openapi import operation_of, validate_input

# An incoming X-Request-ID kept as it is (nginx keeps the same ones for its own answers).
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{8,64}")
_CORS_EXPOSED = ("X-Request-ID, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After, "
                 "X-Budget-Remaining-USD, Idempotent-Replayed, Location, Tus-Resumable, Tus-Version, Tus-Extension, "
                 "Tus-Max-Size, Tus-Checksum-Algorithm, Upload-Offset, Upload-Length, Upload-Expires, "
                 "Material-Location")
_CORS_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_CORS_HEADERS = ("X-API-Key, Content-Type, X-Request-ID, Idempotency-Key, Tus-Resumable, Upload-Length, "
                 "Upload-Metadata, Upload-Offset, Upload-Checksum")


@web.middleware
async def request_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Give the request an id (a sane incoming X-Request-ID is kept), answer any error in
    the contract's JSON (``errors.error_answer``) and log the request once done. One
    middleware for the three: each layer costs every request its own coroutine."""
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else os.urandom(16).hex()
    request[request_id_key] = request_id
    tokens = [(log.request_id_var, log.request_id_var.set(request_id)),
              (log.tenant_id_var, log.tenant_id_var.set(None)),
              (log.key_prefix_var, log.key_prefix_var.set(None))]
    started = time.perf_counter()
    status = 499  # client went away before an answer
    try:
        try:
            response = await handler(request)
        except Exception as exc:
            answer = error_answer(request, exc)
            if answer is None:
                raise
            response = answer
        status = response.status
        return response
    finally:
        seconds = time.perf_counter() - started
        log.log_access(request.method, request.path, status, round(seconds * 1000, 2), request.remote)
        metrics.observe_request(request, status, seconds)
        for var, token in reversed(tokens):
            var.reset(token)


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers every response gets, errors included; and, once the
    process is shutting down, ``Connection: close`` (app.serve: nginx's keep-alive)."""
    if request.app[draining_key].is_set():
        response.force_close()  # aiohttp has chosen the Connection header before this hook: say it too
        response.headers[hdrs.CONNECTION] = "close"
    request_id = request.get(request_id_key)
    if request_id:
        response.headers["X-Request-ID"] = request_id
    for name, value in request.get(ratelimit_headers_key, {}).items():
        response.headers[name] = value
    if request.path.startswith(API_PREFIX) and hdrs.CACHE_CONTROL not in response.headers:
        # A tenant's data, behind a header no shared cache knows to key on (RFC 9111).
        response.headers[hdrs.CACHE_CONTROL] = "no-store"
    origin = request.get(cors_origin_key)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSED
        response.headers.add(hdrs.VARY, "Origin")


def cors_middleware(allowed_origins: tuple[str, ...]):
    allow_any = "*" in allowed_origins

    @web.middleware
    async def middleware(request: web.Request, handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if not origin or not (allow_any or origin in allowed_origins):
            return await handler(request)
        request[cors_origin_key] = origin
        if request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": _CORS_METHODS,
                "Access-Control-Allow-Headers": _CORS_HEADERS,
                "Access-Control-Max-Age": "600",
            })
        return await handler(request)

    return middleware


# The content codings aiohttp decodes as installed. br and zstd would need libraries this
# project does not ship: aiohttp refuses those itself, in plain text, before any
# middleware (nginx answers them first, see nginx/); any other coding would reach the
# handlers still encoded.
CONTENT_CODINGS = ("identity", "gzip", "deflate")


@web.middleware
async def validation_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Input validation for the operations their handlers declare (app.openapi).

    Any body must be in a content coding the app decodes (415). A JSON body first gets
    the checks the parser lacks: 415 for another media type, 400 for broken JSON, 422 for a
    body that is not an object or has fields the schema lacks. Then the declared path,
    query and body are parsed and validated (422 with details) onto the request."""
    if request.body_exists:
        _check_content_coding(request)
    declared = operation_of(request.match_info.handler)
    if declared is None:
        return await handler(request)
    if declared.body_schema is not None and request.body_exists:
        await _check_json_body(request, declared.body_schema)
    await validate_input(request, declared)
    return await handler(request)


def _check_content_coding(request: web.Request) -> None:
    coding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower() or "identity"
    if coding not in CONTENT_CODINGS:
        raise UnsupportedMediaType(f'Content-Encoding "{coding[:64]}" is not supported; '
                                   f"send the body as {', '.join(CONTENT_CODINGS)}.")


# Far deeper than any request body here (a course structure is 5 levels); deeper ones
# would exhaust the recursion of the validators that walk them.
MAX_JSON_DEPTH = 32


def _deeper_than(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


async def _check_json_body(request: web.Request, schema) -> None:
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"Send the body as application/json, not {content_type}.")
    if request.charset and request.charset.lower() not in ("utf-8", "utf8"):
        # JSON is UTF-8 (RFC 8259); the validators would decode it again by this charset.
        raise UnsupportedMediaType(f"Send the JSON body in UTF-8, not {request.charset}.")
    try:
        body = loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}", code="malformed_json") from None
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.", details={"_schema": ["Expected a JSON object."]})
    if _deeper_than(body, MAX_JSON_DEPTH):
        raise ValidationFailed(f"The body is nested deeper than {MAX_JSON_DEPTH} levels.",
                               details={"_schema": [f"At most {MAX_JSON_DEPTH} levels of objects and arrays."]})
    known = {field.data_key or name for name, field in schema.fields.items() if not field.dump_only}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValidationFailed("The body has unknown fields.", details={name: ["Unknown field."] for name in unknown})
