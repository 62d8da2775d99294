"""Names no other test has taken: the tests share one database, one bucket and one admin CLI."""

from __future__ import annotations

import uuid


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"
