"""One JSON encoding for every response: UUIDs, datetimes and decimals included."""

from __future__ import annotations

import datetime
import decimal
import functools
import json
import uuid
from typing import Any, Mapping

from aiohttp import web


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


dumps = functools.partial(json.dumps, default=_default, ensure_ascii=False, separators=(",", ":"))


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(data), status=status, headers=headers, content_type="application/json")
