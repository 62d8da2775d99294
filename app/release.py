"""Which release of the app this is, and since when it runs."""

from __future__ import annotations

import time
from pathlib import Path

# The app role marks a deployed release complete with its id, in the release's top directory.
RELEASE_MARK = Path(__file__).resolve().parents[1] / ".complete"
# gunicorn's master imports the app before it forks its workers: this is the service's start,
# and a reload (new workers) keeps it.
STARTED = time.monotonic()


def _release() -> str:
    try:
        return RELEASE_MARK.read_text().strip() or "unknown"
    except OSError:
        return "unpackaged"  # a checkout, not a deployed release


RELEASE = _release()


def uptime_s() -> int:
    return int(time.monotonic() - STARTED)
