"""JSON-lines logging (python-json-logger) with per-request context.

Every record carries ``request_id``, ``tenant_id`` and ``key_prefix`` when a
request is being served; the values live in context variables that the
middlewares set, so any logger anywhere picks them up. Never pass a full API
key to a logger: only its prefix is ever put into the context.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

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
    root = logging.getLogger()
    if stream is not None or not any(isinstance(h, JsonLinesHandler) for h in root.handlers):
        for existing in [h for h in root.handlers if isinstance(h, JsonLinesHandler)]:
            root.removeHandler(existing)
        root.addHandler(JsonLinesHandler(stream))
    root.setLevel(level)
    # botocore is chatty at DEBUG and may echo signed headers; keep it at INFO+.
    logging.getLogger("botocore").setLevel(max(logging.INFO, logging.getLevelName(level)))
    # The LLM client's HTTP library logs every request at INFO; our own line per call says more.
    logging.getLogger("httpx2").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("aiohttp.server").addFilter(_drained_broken_body_filter)  # adding it again: no-op
    # Our middleware writes the access log; aiohttp's own is switched off.
    logging.getLogger("aiohttp.access").disabled = True
