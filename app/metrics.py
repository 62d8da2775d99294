"""The app's metrics, in the Prometheus text format at ``GET /metrics`` (loopback only on the
appliance: nginx does not pass it on without credentials).

Under gunicorn every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(gunicorn.conf.py makes a fresh one at start-up, and marks a dead worker's gauges dead),
and a scrape of any worker reads them all: counters survive a worker's restart, gauges count
the live workers only. Outside gunicorn (tests, ``make dev`` in-process) the values are the
process's own.

Every label is bounded: routes are templates, never paths or ids; methods, statuses, scopes,
providers and outcomes are small fixed sets; a model the server does not know is ``other``.
Nothing is labelled by tenant or key, so the number of series does not grow with them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
from typing import AsyncIterator

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import choose_encoder

from .errors import NotFound

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


# In multiprocess mode every write asks the process identifier, to notice a fork; by
# default that is os.getpid(), a system call per write, which on these machines cost
# more than the rest of the metrics together. The pid is kept here instead, and renewed
# in every child process as it is forked (gunicorn's workers).
_pid = os.getpid()


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


def _process_identifier() -> int:
    return _pid


os.register_at_fork(after_in_child=_renew_pid)
if os.environ.get(MULTIPROC_DIR_ENV):
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_identifier)
PATH = "/metrics"

_PREFIX = "course_supporter_"
# Request latencies: from a cached key lookup to a minute-long LLM call or upload.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_LLM_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
OTHER = "other"

http_requests = Counter(_PREFIX + "http_requests", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])
http_duration = Histogram(_PREFIX + "http_request_duration_seconds", "Time to answer a request, by route template",
                          ["route", "method"], buckets=_LATENCY_BUCKETS)
auth_duration = Histogram(_PREFIX + "auth_duration_seconds",
                          "Time to authenticate and admit an /api/v1 request (key cache, rate-limit slice, "
                          "and the database when they need it)", buckets=_FAST_BUCKETS)
key_lookups = Counter(_PREFIX + "key_lookups", "API keys looked up in the database: not in the worker's cache "
                      "(miss), or while the cache's listener is not proven connected (untrusted)", ["reason"])
rate_limit_leases = Counter(_PREFIX + "rate_limit_leases", "Slices of rate-limit quota leased from the database, "
                            "by whether quota was granted", ["granted"])
rate_limited = Counter(_PREFIX + "rate_limited", "Requests refused for the key's per-minute limit, by scope", ["scope"])

llm_calls = Counter(_PREFIX + "llm_calls", "LLM provider calls, by provider, model and outcome",
                    ["provider", "model", "outcome"])
llm_attempts = Counter(_PREFIX + "llm_attempts", "Attempts the LLM calls made (1 + retries each)", ["provider"])
llm_fallbacks = Counter(_PREFIX + "llm_fallbacks", "LLM calls handed to the fallback provider")
llm_tokens = Counter(_PREFIX + "llm_tokens", "LLM tokens, by provider and direction", ["provider", "direction"])
llm_cost = Counter(_PREFIX + "llm_cost_usd", "What the LLM calls cost, in USD", ["provider"])
llm_latency = Histogram(_PREFIX + "llm_provider_latency_seconds", "Time an LLM call took, retries included",
                        ["provider"], buckets=_LLM_BUCKETS)

uploads_in_flight = Gauge(_PREFIX + "uploads_in_flight", "Uploads streaming to storage now",
                          multiprocess_mode="livesum")
uploads_waiting = Gauge(_PREFIX + "uploads_waiting", "Uploads waiting for a worker's upload slot",
                        multiprocess_mode="livesum")
upload_bytes = Counter(_PREFIX + "upload_bytes", "Bytes of uploads received")
uploads_failed = Counter(_PREFIX + "uploads_failed", "Uploads that stored nothing, by their error code (or client_gone)",
                         ["reason"])
s3_errors = Counter(_PREFIX + "s3_errors", "S3 calls that failed, by operation", ["operation"])

db_connections_in_use = Gauge(_PREFIX + "db_pool_connections_in_use", "Pooled database connections held by requests",
                              multiprocess_mode="livesum")
db_acquires_waiting = Gauge(_PREFIX + "db_pool_acquires_waiting", "Requests waiting for a pooled connection",
                            multiprocess_mode="livesum")
db_pool_size = Gauge(_PREFIX + "db_pool_max_connections", "The most connections the workers' pools may open",
                     multiprocess_mode="livesum")
last_backup = Gauge(_PREFIX + "last_backup_timestamp_seconds",
                    "When the newest database backup in the bucket was taken (Unix time)",
                    multiprocess_mode="livemax")
drill_last_success = Gauge(_PREFIX + "restore_drill_last_success_timestamp_seconds",
                           "When the last restore drill that brought every table back as taken finished (Unix time)",
                           multiprocess_mode="livemax")
drill_last_ok = Gauge(_PREFIX + "restore_drill_last_ok", "Whether the last restore drill passed (1) or failed (0)",
                      multiprocess_mode="livemax")
drill_last_seconds = Gauge(_PREFIX + "restore_drill_last_duration_seconds", "How long the last restore drill took",
                           multiprocess_mode="livemax")


def route_of(request: web.Request) -> str:
    """The request's route template (``/api/v1/courses/{course_id}``), never its path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def method_of(request: web.Request) -> str:
    return request.method if request.method in KNOWN_METHODS else OTHER


# The per-request values are tallied in the worker's memory and written to the metrics
# files (a locked mmap write each) once a FLUSH_INTERVAL_S by a background task, before
# every scrape the worker answers, and when it stops: the hot path costs a few dict and
# list operations instead of seven file writes.
FLUSH_INTERVAL_S = 1.0


class _HistogramTally:
    """One histogram child's observations since the last flush."""

    __slots__ = ("child", "bounds", "counts", "total", "seen")

    def __init__(self, child) -> None:
        self.child = child
        self.bounds = tuple(child._upper_bounds)  # prometheus-client's buckets, +Inf last
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.seen = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1  # the first bucket with seconds <= bound
        self.total += seconds
        self.seen += 1

    def flush(self) -> None:
        if not self.seen:
            return
        self.child._sum.inc(self.total)  # what Histogram.observe writes, once for all of them
        for bucket, count in zip(self.child._buckets, self.counts):
            if count:
                bucket.inc(count)
        self.counts = [0] * len(self.bounds)
        self.total, self.seen = 0.0, 0


class _RequestTally:
    """One (route, method, status) series: its count and latencies since the last flush."""

    __slots__ = ("counter", "latency")

    def __init__(self, route: str, method: str, status: int) -> None:
        self.counter = http_requests.labels(route, method, str(status))
        self.latency = _HistogramTally(http_duration.labels(route, method))

    def flush(self) -> None:
        if self.latency.seen:
            self.counter.inc(self.latency.seen)
        self.latency.flush()


# Bounded like the series themselves.
_request_tallies: dict[tuple[str, str, int], _RequestTally] = {}
_auth_tally: _HistogramTally | None = None


class _Level:
    """A level this worker keeps in memory and writes to its gauge at each flush."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def up(self) -> None:
        self.value += 1

    def down(self) -> None:
        self.value -= 1


_connections_in_use, _acquires_waiting = _Level(), _Level()
connection_taken, connection_returned = _connections_in_use.up, _connections_in_use.down
acquire_waits, acquire_waited = _acquires_waiting.up, _acquires_waiting.down


def observe_request(request: web.Request, status: int, seconds: float) -> None:
    if not enabled:
        return
    key = (route_of(request), method_of(request), status)
    tally = _request_tallies.get(key)
    if tally is None:
        tally = _request_tallies[key] = _RequestTally(*key)
    tally.latency.observe(seconds)


def observe_auth(seconds: float) -> None:
    """Time to authenticate and admit one /api/v1 request."""
    global _auth_tally
    if not enabled:
        return
    if _auth_tally is None:
        _auth_tally = _HistogramTally(auth_duration)
    _auth_tally.observe(seconds)


def flush() -> None:
    """Write what this worker tallied since the last flush to the metrics files."""
    if not enabled:
        return
    for tally in _request_tallies.values():
        tally.flush()
    if _auth_tally is not None:
        _auth_tally.flush()
    db_connections_in_use.set(_connections_in_use.value)
    db_acquires_waiting.set(_acquires_waiting.value)


async def flush_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: flush every FLUSH_INTERVAL_S, and a last time as the worker stops."""

    async def keep_flushing() -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            flush()

    task = asyncio.create_task(keep_flushing())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    flush()


def observe_llm_call(provider: str, model: str, outcome: str, attempts: int, input_tokens: int, output_tokens: int,
                     cost_usd: float, seconds: float) -> None:
    llm_calls.labels(provider, model, outcome).inc()
    llm_attempts.labels(provider).inc(attempts)
    if provider == "fallback":
        llm_fallbacks.inc()
    llm_tokens.labels(provider, "input").inc(input_tokens)
    llm_tokens.labels(provider, "output").inc(output_tokens)
    llm_cost.labels(provider).inc(cost_usd)
    llm_latency.labels(provider).observe(seconds)


class _Off:
    """An instrument that records nothing: every instrument, with ``METRICS_ENABLED=false``."""

    def labels(self, *values: str) -> "_Off":
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    dec = set = observe = inc


_INSTRUMENTS = ("http_requests", "http_duration", "auth_duration", "key_lookups", "rate_limit_leases", "rate_limited",
                "llm_calls", "llm_attempts", "llm_fallbacks", "llm_tokens", "llm_cost", "llm_latency",
                "uploads_in_flight", "uploads_waiting",
                "upload_bytes", "uploads_failed", "s3_errors", "db_connections_in_use", "db_acquires_waiting",
                "db_pool_size", "last_backup", "drill_last_success", "drill_last_ok", "drill_last_seconds")
enabled = True


def switch_off() -> None:
    """``METRICS_ENABLED=false``: this process records nothing, and ``/metrics`` is a 404."""
    global enabled
    enabled = False
    for name in _INSTRUMENTS:
        globals()[name] = _Off()


def _registry() -> CollectorRegistry:
    if os.environ.get(MULTIPROC_DIR_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


async def serve_metrics(request: web.Request) -> web.Response:
    """Every worker's metrics, in the format the scraper asks for (Prometheus text by default)."""
    if not enabled:
        raise NotFound("Metrics are switched off on this server (METRICS_ENABLED=false).")
    flush()  # this worker's latest; the others' are at most FLUSH_INTERVAL_S old
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(_registry()), headers={"Content-Type": content_type})


def mark_worker_dead(pid: int) -> None:
    """gunicorn's child_exit: the dead worker's live gauges stop counting (its counters stay)."""
    if os.environ.get(MULTIPROC_DIR_ENV):
        multiprocess.mark_process_dead(pid)

