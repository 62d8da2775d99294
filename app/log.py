"""JSON-lines logging (python-json-logger) with per-request context.

Every record carries ``request_id``, ``tenant_id`` and ``key_prefix`` when a
request is being served; the values live in context variables that the
middlewares set, so any logger anywhere picks them up. Never pass a full API
key to a logger: only its prefix is ever put into the context. The access line
of each request (``app.access``) is written by ``log_access``, in the same
JSON shape, past the logging module's per-record machinery.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import sys
from contextvars import ContextVar

import orjson

from aiohttp.web import RequestPayloadError
from pythonjsonlogger.orjson import OrjsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
tenant_id_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)
key_prefix_var: ContextVar[str | None] = ContextVar("key_prefix", default=None)

_CONTEXT = (("request_id", request_id_var), ("tenant_id", tenant_id_var), ("key_prefix", key_prefix_var))

FORMAT = "%(levelname)s %(name)s %(message)s"
RENAMES = {"levelname": "level", "name": "logger"}


class RequestContextFilter(logging.Filter):
    """Copies the request context variables onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT:
            if not hasattr(record, name):
                value = var.get()
                if value is not None:
                    setattr(record, name, value)
        return True


def json_formatter() -> OrjsonFormatter:
    return OrjsonFormatter(FORMAT, rename_fields=RENAMES, timestamp=True)


class JsonLinesHandler(logging.StreamHandler):
    """A stream handler writing JSON lines with the request context."""

    def __init__(self, stream=None) -> None:
        super().__init__(stream or sys.stderr)
        self.setFormatter(json_formatter())
        self.addFilter(RequestContextFilter())


class DrainedBrokenBodyFilter(logging.Filter):
    """Drops aiohttp's "Unhandled exception" traceback for a request body that cannot be
    decoded. After the answer, aiohttp reads what is left of the body to discard it, which
    raises the body's decoding error again. The app has already answered that request
    with a 400 malformed_body and logged it, so the traceback adds nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.msg == "Unhandled exception" and isinstance(exc, RequestPayloadError))


_drained_broken_body_filter = DrainedBrokenBodyFilter()


# --- the access log ---------------------------------------------------------------------
# One line per request is the hottest logging there is: through the logging module (a
# record, the formatter's generic field walk, a write and flush each) it cost about a
# seventh of a cached request's CPU. The access line is built here instead, as the same
# JSON object the formatter would write, and the lines of one event-loop turn reach the
# JSON handler's stream in one write at the end of that turn.
ACCESS_LOGGER = "app.access"
_access_logger = logging.getLogger(ACCESS_LOGGER)
_json_handler: JsonLinesHandler | None = None
_pending_access: list[bytes] = []
_UTC = datetime.timezone.utc


def log_access(method: str, path: str, status: int, duration_ms: float, remote: str | None) -> None:
    """The request's access line, with the request context; written by the end of this
    event-loop turn (at once outside a loop). Off like any logger: ``app.access`` disabled
    or above INFO."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    line = {"level": "INFO", "logger": ACCESS_LOGGER, "message": f"{method} {path} {status}",
            "method": method, "path": path, "status": status, "duration_ms": duration_ms, "remote": remote}
    for name, var in _CONTEXT:
        value = var.get()
        if value is not None:
            line[name] = value
    line["timestamp"] = datetime.datetime.now(_UTC)  # orjson writes it as isoformat() would
    _pending_access.append(orjson.dumps(line))
    if len(_pending_access) == 1:
        try:
            asyncio.get_running_loop().call_soon(flush_access)
        except RuntimeError:
            flush_access()


def flush_access() -> None:
    """Write the pending access lines in one go (through the JSON handler's lock)."""
    if not _pending_access:
        return
    text = (b"\n".join(_pending_access) + b"\n").decode()
    _pending_access.clear()
    handler = _json_handler
    if handler is None:  # logging not set up: the lines go where other warnings would
        sys.stderr.write(text)
        return
    with handler.lock:
        handler.stream.write(text)
        handler.flush()


# The logging HOWTO's "Optimization": our JSON lines carry no file/line/thread/process
# fields, so skip collecting them for every record.
logging._srcfile = None
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False


def setup_logging(level: str = "INFO", stream=None) -> None:
    """Route every logger (ours, aiohttp's, asyncpg's) to one JSON handler on the root
    logger; a JSON handler already there (gunicorn.conf.py installs one) is reused,
    other handlers (pytest's capture) are left alone."""
    global _json_handler
    root = logging.getLogger()
    if stream is not None or not any(isinstance(h, JsonLinesHandler) for h in root.handlers):
        flush_access()  # what is pending goes where it was meant to
        for existing in [h for h in root.handlers if isinstance(h, JsonLinesHandler)]:
            root.removeHandler(existing)
        root.addHandler(JsonLinesHandler(stream))
    _json_handler = next(h for h in root.handlers if isinstance(h, JsonLinesHandler))
    root.setLevel(level)
    # botocore is chatty at DEBUG and may echo signed headers; keep it at INFO+.
    logging.getLogger("botocore").setLevel(max(logging.INFO, logging.getLevelName(level)))
    # The LLM client's HTTP library logs every request at INFO; our own line per call says more.
    logging.getLogger("httpx2").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("aiohttp.server").addFilter(_drained_broken_body_filter)  # adding it again: no-op
    # Our middleware writes the access log (log_access); aiohttp's own is switched off.
    logging.getLogger("aiohttp.access").disabled = True
