"""The access line (app.log.log_access) is the JSON object the logging formatter would
write for such a record, and the lines of one event-loop turn reach the stream in one write."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from app import log


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stream():
    stream = CountingStream()
    log.setup_logging("INFO", stream=stream)
    yield stream
    log.setup_logging("INFO", stream=io.StringIO())


def _lines(stream: CountingStream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _in_request(request_id: str, tenant: str | None, prefix: str | None) -> None:
    log.request_id_var.set(request_id)
    log.tenant_id_var.set(tenant)
    log.key_prefix_var.set(prefix)


async def test_an_access_line_has_the_shape_of_a_formatted_record(stream):
    """Same keys and values as the same line through logging and the JSON handler."""
    _in_request("req-0123456789", "tenant-a", "cs_live_abcd")
    fields = {"method": "GET", "path": "/api/v1/courses", "status": 200, "duration_ms": 1.25, "remote": "10.0.0.7"}
    logging.getLogger(log.ACCESS_LOGGER).info("%s %s %s", "GET", "/api/v1/courses", 200, extra=fields)
    log.log_access("GET", "/api/v1/courses", 200, 1.25, "10.0.0.7")
    log.flush_access()
    via_logging, direct = _lines(stream)
    assert set(direct) == set(via_logging)
    assert {k: v for k, v in direct.items() if k != "timestamp"} == \
        {k: v for k, v in via_logging.items() if k != "timestamp"}
    assert direct["timestamp"].endswith("+00:00") and direct["timestamp"] >= via_logging["timestamp"]


async def test_context_left_unset_is_left_out(stream):
    _in_request("req-0123456789", None, None)
    log.log_access("GET", "/health", 200, 0.5, None)
    log.flush_access()
    (line,) = _lines(stream)
    assert "tenant_id" not in line and "key_prefix" not in line and line["request_id"] == "req-0123456789"


async def test_the_lines_of_one_loop_turn_are_one_write(stream):
    writes = stream.writes
    for status in (200, 201, 404):
        log.log_access("GET", "/x", status, 1.0, "127.0.0.1")
    assert stream.writes == writes  # nothing yet: the turn is not over
    await asyncio.sleep(0)
    assert stream.writes == writes + 1
    assert [line["status"] for line in _lines(stream)] == [200, 201, 404]


async def test_a_disabled_access_logger_writes_nothing(stream):
    logging.getLogger(log.ACCESS_LOGGER).setLevel(logging.WARNING)
    try:
        log.log_access("GET", "/x", 200, 1.0, "127.0.0.1")
        log.flush_access()
    finally:
        logging.getLogger(log.ACCESS_LOGGER).setLevel(logging.NOTSET)
    assert stream.getvalue() == ""


def test_outside_an_event_loop_the_line_is_written_at_once(stream):
    log.log_access("GET", "/x", 200, 1.0, "127.0.0.1")
    assert _lines(stream)[0]["path"] == "/x"
