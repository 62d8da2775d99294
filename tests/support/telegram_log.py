"""The messages the local VPS's fake Telegram Bot API received (tests/localvps/telegram.py):
one JSON object per line of its log, read from the host."""

from __future__ import annotations

import json
from pathlib import Path

# How long Netdata may take to send an alert (or its recovery) after the cause.
ALERT_WAIT_S = 120


def count_messages(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def messages_since(path: Path, after: int) -> list[dict]:
    """The messages after the first ``after`` (a ``count_messages`` taken earlier)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines[after:]]


# The first character of a message: its level, as the netdata role's sender writes it.
LEVEL_MARK = {"WARNING": "⚠️", "CRITICAL": "🔴", "CLEAR": "✅"}


def alarm_messages(path: Path, after: int, alarm: str, level: str) -> list[dict]:
    """The messages after ``after`` saying that ``alarm`` is now at ``level`` (WARNING,
    CRITICAL, or CLEAR: recovered)."""
    name = f"<b>{alarm.replace('_', ' ')}</b>"
    return [m for m in messages_since(path, after) if name in m["text"] and m["text"].startswith(LEVEL_MARK[level])]
