"""Domain errors, and every error rendered as contract JSON (``error_answer``).

``{"error": {"code": "<snake_case>", "message": "<text>", "details"?, "request_id"?}}``
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from aiohttp import web

from .jsonutil import carriable, json_response
from .keys import request_id_key

log = logging.getLogger("app.errors")


class ApiError(Exception):
    """An error with a status and code meant for the client."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = dict(headers or {})
        if code:
            self.code = code


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str, **options) -> None:
        super().__init__(message, **options)
        # RFC 9110: a 401 says how to authenticate.
        self.headers.setdefault("WWW-Authenticate", 'ApiKey header="X-API-Key"')


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(ApiError):
    status, code = 422, "validation_failed"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"


# What aiohttp's own HTTP exceptions (unknown route, wrong method, too large
# body, ...) are called in the contract's shape.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
}


def error_body(status: int, code: str, message: str, details: Any = None, request_id: str | None = None) -> dict:
    # A message may quote the request (a media type, a file name): bytes that were not
    # UTF-8 arrive as lone surrogates, which JSON cannot carry.
    error: dict[str, Any] = {"code": code, "message": carriable(message)}
    if details is not None:
        error["details"] = details
    if request_id is not None:
        error["request_id"] = request_id
    return {"error": error}


def error_response(status: int, code: str, message: str, *, details: Any = None,
                   request_id: str | None = None, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response(error_body(status, code, message, details, request_id), status=status, headers=headers)


def error_answer(request: web.Request, exc: Exception) -> web.Response | None:
    """The contract's JSON answer for an exception out of a handler; None for one that
    must go on up (a redirect, a connection the client reset). Called in the ``except``
    block, so that an unexpected error is logged with its traceback."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, details=exc.details,
                              request_id=request.get(request_id_key), headers=exc.headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:  # redirects and the like pass through untouched
            return None
        code = _HTTP_CODES.get(exc.status, "error")
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(exc.status, code, exc.reason, request_id=request.get(request_id_key), headers=headers)
    if isinstance(exc, web.RequestPayloadError):
        # The body itself is broken: a Content-Encoding it does not have, bad chunked framing.
        # The rest of it cannot be read past either: the connection closes after the answer.
        cause = getattr(exc.__cause__, "message", "") or "its framing or encoding is broken"
        response = error_response(400, "malformed_body", f"The request body could not be read: {cause}.",
                                  request_id=request.get(request_id_key))
        response.force_close()
        return response
    if isinstance(exc, ConnectionResetError):
        return None
    log.exception("unhandled error while serving %s %s", request.method, request.path)
    return error_response(500, "internal_error", "An unexpected error occurred; quote the request_id when reporting it.",
                          request_id=request.get(request_id_key))
