"""Helpers shared by the resource handlers."""

from __future__ import annotations

import uuid

from aiohttp import web

from ..errors import NotFound


def path_uuid(request: web.Request, name: str, what: str) -> uuid.UUID:
    """A UUID path parameter; anything else is simply a resource that does not exist."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise NotFound(f"{what} not found.") from None
