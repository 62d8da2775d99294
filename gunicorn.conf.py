"""gunicorn settings, picked up from the repository root (gunicorn's default config file).

Bind address and worker count come from the command line or gunicorn's own
environment (``--bind``, ``--workers``, ``WEB_CONCURRENCY``, ``GUNICORN_CMD_ARGS``).
"""

import os
import shutil
import sys
import tempfile

# The workers' metrics files (prometheus-client's multiprocess mode), set before anything
# imports prometheus_client: a fresh directory per start of the service, kept across a reload
# (the environment outlives it), so that a reload's new workers lose no counter.
_METRICS_DIR_MADE_HERE = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _METRICS_DIR_MADE_HERE:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="course-supporter-metrics-")

from app import error_tracking  # noqa: E402
from app.config import ConfigError, Settings  # noqa: E402
from app.log import JsonLinesHandler  # noqa: E402
from app.metrics import mark_worker_dead  # noqa: E402
from app.release import RELEASE  # noqa: E402
from app.serve import GRACEFUL_TIMEOUT_S  # noqa: E402

worker_class = "aiohttp.GunicornWebWorker"
accesslog = None  # the app's middleware writes a JSON access line per request
graceful_timeout = GRACEFUL_TIMEOUT_S

_handler = {"()": JsonLinesHandler}
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": _handler, "error_console": _handler},
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}


def on_starting(server):
    """Refuse to start with a bad environment: one line naming the variable, no traceback. With
    SENTRY_DSN, the master reports its workers' crashes (and the workers inherit the client)."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        server.log.error(str(exc))
        sys.exit(1)
    error_tracking.setup(settings, RELEASE)


def child_exit(server, worker):
    """A worker is gone (restarted, killed, reloaded): its live gauges stop counting."""
    mark_worker_dead(worker.pid)


def on_exit(server):
    """The service stops: its metrics files go with it (the next start counts from zero)."""
    if _METRICS_DIR_MADE_HERE:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
