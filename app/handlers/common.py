"""Helpers shared by the resource handlers."""

from __future__ import annotations

import uuid

from aiohttp import web
from aiohttp_apispec import docs, response_schema

from ..auth import requires_scopes
from ..errors import NotFound
from ..schemas import ErrorSchema

_ERROR_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, unknown, revoked or expired API key, or inactive tenant",
    403: "The key lacks the scope",
    404: "No such resource for this tenant",
    413: "The body is too large: a file over MAX_UPLOAD_BYTES, or a JSON body over 8 MiB",
    415: "Unsupported media type, or a Content-Encoding other than identity, gzip or deflate",
    422: "Validation failed; details list the fields",
    429: "Rate limit exceeded; see Retry-After",
    502: "The LLM provider failed (llm_provider_error) or gave an unusable reply twice (llm_bad_output)",
    503: "A dependency is unavailable",
    504: "The LLM provider did not answer in time (llm_timeout)",
}
_RATE_HEADERS = {
    name: {"type": "integer", "description": text}
    for name, text in (("X-RateLimit-Limit", "requests per minute for the scope used"),
                       ("X-RateLimit-Remaining", "requests left now"),
                       ("X-RateLimit-Reset", "seconds until the window frees a request"))
}


def api_endpoint(*scopes: str, tags: list[str], summary: str, errors: tuple[int, ...] = (), description: str = ""):
    """Scope check + OpenAPI docs (security, common errors) for an /api/v1 handler."""
    # Whatever takes a body (and so may answer 415) may also find it too large.
    codes = sorted({401, 403, 429, 503, *errors, *((413,) if 415 in errors else ())})

    def wrap(handler):
        for code in codes:
            handler = response_schema(ErrorSchema, code, description=_ERROR_DESCRIPTIONS[code])(handler)
        handler = docs(tags=tags, summary=summary,
                       description=(description + f"\n\nScopes: {' or '.join(scopes)}.").strip(),
                       security=[{"ApiKeyAuth": []}])(handler)
        return requires_scopes(*scopes)(handler)

    return wrap


def path_uuid(request: web.Request, name: str, what: str) -> uuid.UUID:
    """A UUID path parameter; anything else is simply a resource that does not exist."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise NotFound(f"{what} not found.") from None
