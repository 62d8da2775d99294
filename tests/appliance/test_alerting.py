"""Netdata tells Telegram (the host's fake Bot API) when the app goes down, and when it is back."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import wait_for

ALERT_WAIT_S = 120


def _messages(path: Path, after: int) -> list[dict]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines[after:]]


def _count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_stopping_the_app_alerts_telegram_and_recovers(host, vps, curl):
    log = Path(vps["telegram_log"])
    before = _count(log)
    host.run_expect([0], "systemctl stop course-supporter")
    try:
        critical = wait_for(lambda: [m for m in _messages(log, before)
                                     if "course-supporter" in m["text"] and "critical" in m["text"].lower()],
                            ALERT_WAIT_S)
        assert critical, f"no critical alert naming course-supporter within {ALERT_WAIT_S}s"
        assert critical[0]["chat_id"] and critical[0]["parse_mode"] == "HTML"
    finally:
        host.run_expect([0], "systemctl start course-supporter")
    assert wait_for(lambda: curl("/health")[0] == 200, 60)
    recovered = wait_for(lambda: [m for m in _messages(log, before)
                                  if "course-supporter" in m["text"] and "recovered" in m["text"].lower()],
                         ALERT_WAIT_S)
    assert recovered, f"no recovery message within {ALERT_WAIT_S}s"
