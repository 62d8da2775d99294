"""The API's description and its input validation, from one declaration per operation.

A handler declares itself with ``@operation(...)``: its operationId, summary, tags, the
scopes it needs (or none: public), its JSON body, query or path schema (marshmallow),
its success responses and the errors it can answer. From these:

- ``validation_middleware`` parses and validates the input with webargs (422 with field
  details) and puts the result on the request (``body_key``, ``query_key``, ``path_key``);
- ``openapi_document`` builds the OpenAPI 3.1 document with apispec and its marshmallow
  plugin, served at ``/api/docs/openapi.json`` with Swagger UI at ``/docs``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema
from webargs.aiohttpparser import AIOHTTPParser

from .errors import ValidationFailed
from .schemas import ErrorSchema

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "ApiKeyAuth"

body_key: web.RequestKey[dict] = web.RequestKey("body", dict)
query_key: web.RequestKey[dict] = web.RequestKey("query", dict)
path_key: web.RequestKey[dict] = web.RequestKey("path", dict)


# --- the errors an operation can answer: status -> the codes it may carry ------------

def merge_errors(*groups: Mapping[int, tuple[str, ...]]) -> dict[int, tuple[str, ...]]:
    """The union of error groups, codes merged per status."""
    merged: dict[int, tuple[str, ...]] = {}
    for group in groups:
        for status, codes in group.items():
            merged[status] = tuple(dict.fromkeys(merged.get(status, ()) + codes))
    return dict(sorted(merged.items()))


# Every /api/v1 operation: a key is needed and counted, and the database must answer.
KEYED = {401: ("missing_api_key", "invalid_api_key"), 403: ("insufficient_scope",), 429: ("rate_limited",),
         503: ("database_unavailable",)}
JSON_BODY = {400: ("malformed_json", "malformed_body"), 413: ("payload_too_large",),
             415: ("unsupported_media_type",), 422: ("validation_failed",)}
INVALID = {422: ("validation_failed",)}
IDEMPOTENT = {409: ("idempotency_in_progress",), 422: ("validation_failed", "idempotency_key_reused")}
NOT_FOUND = {404: ("not_found",)}
STORAGE = {503: ("storage_unavailable",)}
UPLOAD = {400: ("bad_request", "malformed_body", "upload_incomplete"), 413: ("payload_too_large",),
          415: ("unsupported_media_type",), 422: ("validation_failed",), 503: ("uploads_busy", "storage_unavailable")}
LLM = {402: ("budget_exceeded",), 502: ("llm_provider_error", "llm_bad_output"),
       503: ("llm_not_configured", "encryption_unavailable"),
       504: ("llm_timeout",)}

ERROR_MEANINGS = {
    "malformed_json": "the body is not valid JSON",
    "malformed_body": "the body is not in its declared Content-Encoding, or its chunked framing is broken",
    "bad_request": "a malformed multipart/form-data body",
    "upload_incomplete": "the upload ended before the whole file arrived; nothing is kept",
    "tus_version_unsupported": "no `Tus-Resumable: 1.0.0` header (the tus version this server speaks)",
    "upload_offset_mismatch": "`Upload-Offset` is not where the upload stands (HEAD tells)",
    "upload_busy": "another request is sending this upload's bytes; go on when it has ended",
    "checksum_mismatch": "the body does not match its `Upload-Checksum`; its bytes were not kept",
    "missing_api_key": "no X-API-Key header",
    "invalid_api_key": "a malformed, unknown, revoked or expired key, an inactive tenant, or several keys",
    "insufficient_scope": "the key lacks the operation's scope",
    "not_found": "no such resource for this tenant",
    "payload_too_large": "a file over MAX_UPLOAD_BYTES, or a JSON body over 8 MiB",
    "unsupported_media_type": "another media type or charset than the operation takes, or a Content-Encoding "
                              "other than identity, gzip or deflate",
    "validation_failed": "the input breaks a rule; details name the fields",
    "rate_limited": "the key's per-minute limit for the scope; wait Retry-After seconds",
    "idempotency_key_reused": "the Idempotency-Key was used in the last 24 hours for another request",
    "idempotency_in_progress": "a request with this Idempotency-Key is still running; repeat it after Retry-After "
                               "seconds to get its answer",
    "budget_exceeded": "the call's worst case does not fit what is left of the tenant's or the key's monthly LLM "
                       "budget (`details`: `budget`, `remaining_usd`, `needed_usd`); no provider was called",
    "llm_provider_error": "the LLM provider failed, after retries and the fallback provider",
    "llm_bad_output": "the LLM's reply was unusable twice",
    "llm_timeout": "the LLM provider did not answer in time, after retries and the fallback provider",
    "database_unavailable": "the database is unavailable; retry shortly",
    "storage_unavailable": "the file storage is unavailable; nothing was changed",
    "uploads_busy": "the server is busy with other uploads, or restarting; retry after Retry-After",
    "llm_not_configured": "the server has no LLM provider and the tenant has none of its own",
    "encryption_unavailable": "the server cannot store provider keys, or cannot decrypt the tenant's stored one",
}
_STATUS_TEXT = {400: "Malformed request", 401: "No usable API key", 402: "Over the LLM budget",
                403: "The key lacks the scope", 404: "Not found",
                409: "A request with the same Idempotency-Key is running, or the upload is elsewhere",
                412: "Unsupported tus version", 423: "Another request is sending this upload",
                460: "Checksum mismatch", 413: "Too large",
                415: "Unsupported media type", 422: "Validation failed", 429: "Rate limit exceeded",
                502: "LLM provider error", 503: "A dependency is unavailable", 504: "LLM provider timeout"}


# --- the declaration ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Response:
    description: str
    schema: type[Schema] | None = None  # None: no body (204)
    content: Mapping[str, Any] | None = None  # further media types, as OpenAPI content objects
    location: bool = False  # a 201 that says where the new resource is
    headers: tuple[str, ...] = ()  # further response headers (components in _HEADERS)


@dataclasses.dataclass(frozen=True)
class Operation:
    operation_id: str
    summary: str
    tags: tuple[str, ...]
    scopes: tuple[str, ...] | None  # None: public, no key
    responses: Mapping[int, Response]
    errors: Mapping[int, tuple[str, ...]]
    description: str = ""
    body: type[Schema] | None = None  # a JSON body
    body_required: bool = True
    body_example: Mapping[str, Any] | None = None
    body_content: Mapping[str, Any] | None = None  # a body that is not JSON (uploads), as OpenAPI content
    query: type[Schema] | None = None
    query_parameters: tuple[Mapping[str, Any], ...] = ()  # described only (the handler reads them itself)
    path: type[Schema] | None = None
    idempotent: bool = False  # accepts Idempotency-Key (app/idempotency.py)
    # An upload's: a repeat's file read and hashed (not stored), as the handler noted the first's.
    content_digest: Callable[[web.Request], Awaitable[bytes]] | None = None

    # The schemas' instances, made once (validating reuses them for every request).
    @functools.cached_property
    def body_schema(self) -> Schema | None:
        return self.body() if self.body is not None else None

    @functools.cached_property
    def query_schema(self) -> Schema | None:
        return self.query() if self.query is not None else None

    @functools.cached_property
    def path_schema(self) -> Schema | None:
        return self.path() if self.path is not None else None


def operation(operation_id: str, *, summary: str, tags: tuple[str, ...] | list[str], scopes: tuple[str, ...] | None,
              responses: Mapping[int, Response], errors: Mapping[int, tuple[str, ...]] | None = None,
              **details) -> Callable:
    """Declare a handler's operation (see ``Operation``). The errors that follow from the rest
    are implied: a key's (KEYED) for an operation with scopes, a JSON body's, and 422 for
    a query or path schema."""
    implied = [KEYED if scopes is not None else {}, JSON_BODY if details.get("body") is not None else {},
               INVALID if details.get("query") is not None or details.get("path") is not None else {}]
    declared = Operation(operation_id, summary, tuple(tags), scopes, dict(responses),
                         merge_errors(*implied, errors or {}), **details)

    def mark(handler):
        handler.operation = declared
        return handler

    return mark


def idempotent(handler):
    """Above ``@operation``: the operation accepts ``Idempotency-Key`` (app/idempotency.py)."""
    declared = handler.operation
    handler.operation = dataclasses.replace(declared, idempotent=True,
                                            errors=merge_errors(declared.errors, IDEMPOTENT))
    return handler


def idempotent_upload(content_digest: Callable[[web.Request], Awaitable[bytes]]):
    """Above ``@operation`` of an upload: ``Idempotency-Key`` with the file as part of the
    request. The handler notes what it stored (``idempotency.note_content``); a repeat of a
    finished upload is compared by ``content_digest(request)``, which reads its file without
    storing it."""
    def mark(handler):
        idempotent(handler)
        handler.operation = dataclasses.replace(handler.operation, content_digest=content_digest)
        return handler

    return mark


def operation_of(handler) -> Operation | None:
    return getattr(handler, "operation", None)


# --- validation -----------------------------------------------------------------------

class _Parser(AIOHTTPParser):
    def handle_error(self, error, req, schema, *, error_status_code, error_headers):
        messages = error.normalized_messages()
        if len(messages) == 1:  # webargs nests them under the one location parsed ("json", "query", ...)
            messages = next(iter(messages.values()))
        raise ValidationFailed("The request is not valid.", details=messages)


_parser = _Parser()


async def validate_input(request: web.Request, declared: Operation) -> None:
    """The declared path, query and JSON body, parsed and validated (422 with details)."""
    if declared.path_schema is not None:
        request[path_key] = await _parser.parse(declared.path_schema, request, location="match_info")
    if declared.query_schema is not None:
        request[query_key] = await _parser.parse(declared.query_schema, request, location="query")
    if declared.body_schema is not None:
        request[body_key] = await _parser.parse(declared.body_schema, request, location="json")


# --- the document -----------------------------------------------------------------------

TAG_DESCRIPTIONS = {
    "health": "Whether the app and its dependencies answer",
    "courses": "Courses, their modules and lessons",
    "materials": "Course materials: streamed uploads up to MAX_UPLOAD_BYTES, pre-signed downloads",
    "slide mapping": "Which slide of a deck belongs to which lesson, and when",
    "homework": "Homework checked by the LLM, and students' progress",
    "llm": "Free-form LLM features",
    "reports": "What the tenant's LLM calls cost",
    "settings": "The tenant's own LLM provider",
}
_DESCRIPTION = """\
Course preparation and homework checking for B2B tenants.

Every `/api/v1` request carries `X-API-Key: cs_live_<32 hex>` (or `cs_test_...`) with the
operation's scope (`prep` or `check`); each key has a per-minute limit per scope, and every
`/api/v1` response says where it stands (`X-RateLimit-*`). Every error is
`{"error": {"code", "message", "details"?, "request_id"?}}`: program against `code`.
The full contract, with what is not expressible here, is docs/api.md in the repository."""

_HEADERS = {
    "X-Request-ID": {"description": "The request's id: a sane incoming one (8-64 of `A-Za-z0-9._-`) is kept. "
                                    "Quote it when reporting a problem.",
                     "schema": {"type": "string"}},
    "X-RateLimit-Limit": {"description": "The key's requests per minute for the scope this request counted "
                                         "against (0 when no usable key with the scope was presented).",
                          "schema": {"type": "integer", "minimum": 0}},
    "X-RateLimit-Remaining": {"description": "Requests left in the current window.",
                              "schema": {"type": "integer", "minimum": 0}},
    "X-RateLimit-Reset": {"description": "Seconds until the window frees a request (0 with no usable key).",
                          "schema": {"type": "integer", "minimum": 0}},
    "X-Budget-Remaining-USD": {"description": "On LLM operations when a monthly budget is over the caller's calls: "
                                              "USD left of the tightest one (the tenant's or the key's) when this "
                                              "call was admitted, its worst case set aside.",
                               "schema": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}},
    "Idempotent-Replayed": {"description": "`true` on the stored answer to a repeat with the same Idempotency-Key "
                                           "(nothing was done again).", "schema": {"type": "string", "enum": ["true"]}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}},
    "Location": {"description": "Where the new resource is.", "schema": {"type": "string"}},
    "Tus-Resumable": {"description": "The tus protocol version spoken: `1.0.0`.", "schema": {"type": "string"}},
    "Tus-Version": {"description": "The tus versions this server speaks.", "schema": {"type": "string"}},
    "Tus-Extension": {"description": "The tus extensions supported, comma-separated.", "schema": {"type": "string"}},
    "Tus-Max-Size": {"description": "The largest upload, in bytes (`MAX_UPLOAD_BYTES`).",
                     "schema": {"type": "integer", "minimum": 0}},
    "Tus-Checksum-Algorithm": {"description": "The algorithms `Upload-Checksum` may name.",
                               "schema": {"type": "string"}},
    "Upload-Offset": {"description": "Bytes of the upload stored so far: where the next PATCH goes on.",
                      "schema": {"type": "integer", "minimum": 0}},
    "Upload-Length": {"description": "The upload's whole size in bytes.", "schema": {"type": "integer", "minimum": 0}},
    "Upload-Expires": {"description": "When an unfinished upload is aborted (an HTTP date).",
                       "schema": {"type": "string"}},
    "Material-Location": {"description": "Where the material is (once the upload's last byte is in).",
                          "schema": {"type": "string"}},
}
_RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
IDEMPOTENCY_KEY_PARAMETER = {
    "in": "header", "name": "Idempotency-Key", "required": False,
    "description": "Makes a repeat of this request (after a timeout or a dropped connection) return the first "
                   "answer instead of doing it again: 1-255 printable ASCII characters, unique per request, kept "
                   "24 hours. Not with `\"stream\": true`.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7E]+$"}}


def _headers(names) -> dict:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _error_response(status: int, codes: tuple[str, ...], keyed: bool, extra: tuple[str, ...] = ()) -> dict:
    names = ["X-Request-ID", *(_RATE_HEADERS if keyed else ()),
             *(("Retry-After",) if status in (409, 429, 503) else ()), *(extra if status == 402 else ())]
    examples = {code: {"summary": ERROR_MEANINGS[code],
                       "value": {"error": {"code": code, "message": ERROR_MEANINGS[code].capitalize() + ".",
                                           "request_id": "9f1c6e0c2b7a4d8e9a0b1c2d3e4f5a6b"}}}
                for code in codes}
    listed = "; ".join(f"`{code}`: {ERROR_MEANINGS[code]}" for code in codes)
    return {"description": f"{_STATUS_TEXT[status]}. Codes: {listed}.", "headers": _headers(names),
            "content": {"application/json": {"schema": ErrorSchema, "examples": examples}}}


def _success_response(response: Response, keyed: bool, extra: tuple[str, ...] = ()) -> dict:
    names = ["X-Request-ID", *(_RATE_HEADERS if keyed else ()), *(("Location",) if response.location else ()),
             *response.headers, *extra]
    described: dict[str, Any] = {"description": response.description, "headers": _headers(names)}
    content = {"application/json": {"schema": response.schema}} if response.schema is not None else {}
    content.update(response.content or {})
    if content:
        described["content"] = content
    return described


def _operation_object(declared: Operation) -> dict:
    keyed = declared.scopes is not None
    budgeted = ("X-Budget-Remaining-USD",) if "budget_exceeded" in declared.errors.get(402, ()) else ()
    replayed = ("Idempotent-Replayed",) if declared.idempotent else ()
    scopes = f"\n\nScope: {' or '.join(declared.scopes)}." if keyed else ""
    described: dict[str, Any] = {
        "operationId": declared.operation_id,
        "summary": declared.summary,
        "description": (declared.description + scopes).strip(),
        "tags": list(declared.tags),
        "security": [{SECURITY_SCHEME: []}] if keyed else [],
        "responses": {
            **{str(status): _success_response(response, keyed, budgeted + replayed)
               for status, response in declared.responses.items()},
            **{str(status): _error_response(status, codes, keyed, budgeted)
               for status, codes in declared.errors.items()},
        },
    }
    parameters = []
    if declared.path is not None:
        parameters.append({"in": "path", "schema": declared.path})
    if declared.query is not None:
        parameters.append({"in": "query", "schema": declared.query})
    parameters += [dict(p) for p in declared.query_parameters]
    if declared.idempotent:
        parameters.append(IDEMPOTENCY_KEY_PARAMETER)
    if parameters:
        described["parameters"] = parameters
    if declared.body is not None:
        media = {"schema": declared.body}
        if declared.body_example is not None:
            media["example"] = declared.body_example
        described["requestBody"] = {"required": declared.body_required, "content": {"application/json": media}}
    elif declared.body_content is not None:
        described["requestBody"] = {"required": True, "content": copy.deepcopy(dict(declared.body_content))}
    return described


def _path_parameters(canonical: str, declared: Operation) -> list[dict]:
    """Path parameters the path schema does not describe: ids, as UUIDs."""
    if declared.path is not None:
        return []
    names = [part[1:-1] for part in canonical.split("/") if part.startswith("{")]
    return [{"in": "path", "name": name, "required": True, "schema": {"type": "string", "format": "uuid"}}
            for name in names]


def _schema_name(schema) -> str:
    """A schema's name in the document: its class's, without "Schema"."""
    return (schema if isinstance(schema, type) else type(schema)).__name__.removesuffix("Schema")


def openapi_document(app: web.Application, *, title: str, version: str) -> dict:
    """The OpenAPI 3.1 document of every operation the app's routes declare."""
    spec = APISpec(title=title, version=version, openapi_version=OPENAPI_VERSION,
                   plugins=[MarshmallowPlugin(schema_name_resolver=_schema_name)],
                   info={"description": _DESCRIPTION,
                         "license": {"name": "Proprietary", "identifier": "LicenseRef-Proprietary"}},
                   tags=[{"name": name, "description": text} for name, text in TAG_DESCRIPTIONS.items()],
                   servers=[{"url": "/", "description": "the server this document is served from"}])
    spec.components.security_scheme(SECURITY_SCHEME, {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    for name, header in _HEADERS.items():
        spec.components.header(name, header)
    by_path: dict[str, dict] = {}
    implied_heads = {(route.resource, route.handler) for route in app.router.routes() if route.method == "GET"}
    for route in app.router.routes():
        declared = operation_of(route.handler)
        if declared is None or (route.method == "HEAD" and (route.resource, route.handler) in implied_heads):
            continue
        canonical = route.resource.canonical
        described = _operation_object(declared)
        extra = _path_parameters(canonical, declared)
        if extra:
            described["parameters"] = extra + described.get("parameters", [])
        by_path.setdefault(canonical, {})[route.method.lower()] = described
    for path, operations in by_path.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()
