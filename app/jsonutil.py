"""One JSON encoding for every response (orjson: UUIDs and datetimes natively)."""

from __future__ import annotations

import decimal
import uuid
from typing import Any, Mapping

import orjson
from aiohttp import web

loads = orjson.loads


def carriable(text: str) -> str:
    """``text`` as JSON can carry it: a lone surrogate (an undecodable byte kept as an
    escape, or half a pair) becomes U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):  # asyncpg's own UUID type, which orjson does not know
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps_bytes(data: Any) -> bytes:
    # Validation details key list items by index (int keys).
    return orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)


def dumps(data: Any) -> str:
    return dumps_bytes(data).decode("utf-8")


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps_bytes(data), status=status, headers=headers, content_type="application/json")
