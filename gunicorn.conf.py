"""gunicorn settings, picked up from the repository root (gunicorn's default config file).

Bind address and worker count come from the command line or gunicorn's own
environment (``--bind``, ``--workers``, ``WEB_CONCURRENCY``, ``GUNICORN_CMD_ARGS``).
"""

import sys

from app.config import ConfigError, Settings
from app.log import JsonLinesHandler
from app.serve import GRACEFUL_TIMEOUT_S

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
    """Refuse to start with a bad environment: one line naming the variable, no traceback."""
    try:
        Settings.from_env()
    except ConfigError as exc:
        server.log.error(str(exc))
        sys.exit(1)
